#!/usr/bin/env python3
"""A real SMTP server on loopback for lifeboat's tests and benchmark.

Usage:
    python tools/smtp_sink.py --dir DIR [--port N] [--fail-after K]
                              [--auth USER:PASSWORD] [--no-fsync]
                              [--tls starttls|implicit] [--no-pipelining]
                              [--auth-only LOGIN|PLAIN]

Run it with the venv python printed by tools/synapse-venv.sh (it has
aiosmtpd). It listens on 127.0.0.1 only (port N, or a free one) and stores
every accepted message twice:

  DIR/maildir/new/<unique>.eml   the message as received (Maildir, readable)
  DIR/json/<seq>.json            the message parsed, for tests:
      {"seq", "mail_from", "rcpt_tos", "message_id", "subject", "date",
       "list_unsubscribe", "list_unsubscribe_post", "to", "from",
       "text", "html", "headers": {name: value}}

Both are written to a temporary name, fsynced and renamed into place before
the server answers 250, so an accepted message is never half-written (the
JSON file appears last). `--no-fsync` skips the fsyncs (benchmarks on slow
disks); the renames still make each file appear whole.

`--fail-after K`: after K accepted messages, every further DATA gets
`451 4.3.0 temporarily unavailable` (a transient failure) until healed.
`--auth USER:PASSWORD`: offer AUTH (PLAIN, LOGIN), also over a plain
connection, and require it before MAIL; `--auth-only M` offers only M.
`--tls starttls`: offer STARTTLS and require it before MAIL; `--tls
implicit`: TLS from the first byte. Either way the sink makes a throwaway CA
and a certificate for 127.0.0.1 and localhost in DIR/tls/ and names the CA
file in its first line (`"ca"`), for clients to trust (SSL_CERT_FILE).
The sink offers PIPELINING (RFC 2920), as Postfix does; aiosmtpd reads
commands one at a time, so pipelined ones are served in order.
`--no-pipelining` leaves it out of the EHLO reply.

Protocol on stdio: prints one JSON line `{"port": N}` once listening
(with `"ca": PATH` under --tls), then
reads commands from stdin, one per line:
  heal   -> stop failing (and refusing), answers `ok`
  refuse -> every further DATA gets `550 5.7.1 refused by policy` (a
            permanent failure) until healed, answers `ok`
  quota  -> every further DATA gets `550 5.4.5 Daily user sending limit
            exceeded` (the relay's allowance spent) until healed, `ok`
  count  -> answers the number of accepted messages
EOF on stdin or SIGTERM/SIGINT stops the server.
"""

import argparse
import asyncio
import datetime
import ipaddress
import ssl
import concurrent.futures
import email
import email.policy
from email.header import decode_header, make_header
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import warnings

from aiosmtpd.smtp import SMTP


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(directory, name, data, durable):
    """Writes `data` to directory/name through a temporary file and rename."""
    tmp = os.path.join(directory, f".{name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.rename(tmp, os.path.join(directory, name))
    if durable:
        fsync_dir(directory)


def unfold_decode(value):
    """A header value unfolded and with RFC 2047 encoded words decoded."""
    if value is None:
        return None
    unfolded = re.sub(r"\r?\n(?=[ \t])", "", str(value))
    return str(make_header(decode_header(unfolded)))


def part_content(msg, subtype):
    """The first inline text/<subtype> part, decoded to str with \\n endings."""
    for part in msg.walk():
        if (
            part.get_content_maintype() == "text"
            and part.get_content_subtype() == subtype
            and part.get_filename() is None
        ):
            payload = part.get_payload(decode=True) or b""
            charset = part.get_content_charset() or "utf-8"
            try:
                text = payload.decode(charset, errors="replace")
            except LookupError:  # unknown charset
                text = payload.decode("utf-8", errors="replace")
            return text.replace("\r\n", "\n")
    return None


def parse_message(seq, mail_from, rcpt_tos, raw):
    # Parse with plain newlines so text and html come out with \n endings.
    raw = raw.replace(b"\r\n", b"\n")
    try:
        # The compat32 policy with explicit decoding is ~8x faster than
        # email.policy.default, which would cap the sink at a few hundred
        # messages per second; the results are the same for lifeboat's mail.
        return record(seq, mail_from, rcpt_tos, email.message_from_bytes(raw), unfold_decode)
    except Exception:
        # Unusual headers (raw UTF-8, broken encoded words): the slow,
        # thorough parser.
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        return record(seq, mail_from, rcpt_tos, msg, lambda v: None if v is None else str(v))


def record(seq, mail_from, rcpt_tos, msg, header_value):
    headers = {}
    for name, value in msg.items():
        value = header_value(value)
        # A repeated header keeps every value, one per line.
        headers[name] = f"{headers[name]}\n{value}" if name in headers else value
    return {
        "seq": seq,
        "mail_from": mail_from,
        "rcpt_tos": list(rcpt_tos),
        "message_id": header_value(msg.get("Message-ID")),
        "subject": header_value(msg.get("Subject")),
        "date": header_value(msg.get("Date")),
        "list_unsubscribe": header_value(msg.get("List-Unsubscribe")),
        "list_unsubscribe_post": header_value(msg.get("List-Unsubscribe-Post")),
        "to": header_value(msg.get("To")),
        "from": header_value(msg.get("From")),
        "text": part_content(msg, "plain"),
        "html": part_content(msg, "html"),
        "headers": headers,
    }


def make_certificates(directory):
    """A throwaway CA and a server certificate it signed, for 127.0.0.1 and
    localhost. Returns (ca.pem, server.pem, server.key) paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=2)

    def name(common_name):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("lifeboat smtp_sink test CA"))
        .issuer_name(name("lifeboat smtp_sink test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    server = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = [os.path.join(directory, name) for name in ("ca.pem", "server.pem", "server.key")]
    with open(paths[0], "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths[1], "wb") as f:
        f.write(server.public_bytes(serialization.Encoding.PEM))
    with open(paths[2], "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return paths


class Sink:
    def __init__(self, directory, fail_after, durable, delay=0.0, pipelining=True):
        self.dir = os.path.abspath(directory)
        self.maildir = os.path.join(self.dir, "maildir")
        self.json_dir = os.path.join(self.dir, "json")
        for sub in ("tmp", "new", "cur"):
            os.makedirs(os.path.join(self.maildir, sub), exist_ok=True)
        os.makedirs(self.json_dir, exist_ok=True)
        self.fail_after = fail_after
        self.refusing = False
        self.quota_spent = False
        self.durable = durable
        # Seconds to wait before answering DATA: a slow server, so tests can
        # act while a send is under way.
        self.delay = delay
        self.pipelining = pipelining
        self.next_seq = 1
        # Messages given a sequence number (being written or written) and
        # messages fully written; only the event loop thread touches these.
        self.reserved = 0
        self.accepted = 0
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=8)

    def store(self, seq, mail_from, rcpt_tos, raw):
        # Maildir first: write in tmp/, move into new/.
        name = f"{int(time.time())}.P{os.getpid()}Q{seq}.smtp-sink.eml"
        tmp = os.path.join(self.maildir, "tmp", name)
        with open(tmp, "wb") as f:
            f.write(raw)
            if self.durable:
                f.flush()
                os.fsync(f.fileno())
        new_dir = os.path.join(self.maildir, "new")
        os.rename(tmp, os.path.join(new_dir, name))
        if self.durable:
            fsync_dir(new_dir)
        # Then the parsed JSON, which is what tests count.
        record = parse_message(seq, mail_from, rcpt_tos, raw)
        data = json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8")
        write_atomically(self.json_dir, f"{seq}.json", data, self.durable)

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        # With this hook aiosmtpd leaves recording the name to it.
        session.host_name = hostname
        if self.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_DATA(self, server, session, envelope):
        if self.refusing:
            return "550 5.7.1 refused by policy"
        if self.quota_spent:
            return "550 5.4.5 Daily user sending limit exceeded"
        if self.fail_after is not None and self.reserved >= self.fail_after:
            return "451 4.3.0 temporarily unavailable"
        if self.delay:
            await asyncio.sleep(self.delay)
        seq = self.next_seq
        self.next_seq += 1
        self.reserved += 1
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(
                self.executor,
                self.store,
                seq,
                envelope.mail_from,
                envelope.rcpt_tos,
                envelope.original_content or b"",
            )
        except Exception as err:  # disk full, …: tell the client to retry
            self.reserved -= 1
            print(f"smtp_sink: could not store message {seq}: {err}", file=sys.stderr)
            return "451 4.3.0 could not store the message"
        self.accepted += 1
        return "250 2.0.0 OK: queued as %d" % seq


def read_commands(loop, sink, stop):
    """Runs in a thread: answers stdin commands until EOF."""
    def ask(fn):
        done = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: done.set_result(fn()))
        return done.result()

    for line in sys.stdin:
        command = line.strip()
        if command == "heal":
            def heal():
                sink.fail_after = None
                sink.refusing = False
                sink.quota_spent = False
                return "ok"
            answer = ask(heal)
        elif command == "refuse":
            def refuse():
                sink.refusing = True
                return "ok"
            answer = ask(refuse)
        elif command == "quota":
            def quota():
                sink.quota_spent = True
                return "ok"
            answer = ask(quota)
        elif command == "count":
            answer = str(ask(lambda: sink.accepted))
        elif command == "":
            continue
        else:
            answer = f"error: unknown command {command!r} (heal, refuse, quota, count)"
        sys.stdout.write(answer + "\n")
        sys.stdout.flush()
    loop.call_soon_threadsafe(stop.set)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="where to store messages")
    parser.add_argument("--port", type=int, default=0, help="default: a free loopback port")
    parser.add_argument("--fail-after", type=int, default=None, metavar="K")
    parser.add_argument("--auth", default=None, metavar="USER:PASSWORD")
    parser.add_argument("--no-fsync", action="store_true")
    parser.add_argument("--delay-ms", type=int, default=0, help="wait this long before accepting each message")
    parser.add_argument("--tls", choices=["starttls", "implicit"], default=None)
    parser.add_argument("--no-pipelining", action="store_true")
    parser.add_argument("--auth-only", choices=["LOGIN", "PLAIN"], default=None)
    args = parser.parse_args()

    sink = Sink(
        args.dir,
        args.fail_after,
        durable=not args.no_fsync,
        delay=args.delay_ms / 1000,
        pipelining=not args.no_pipelining,
    )
    loop = asyncio.get_running_loop()

    smtp_options = {}
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep:
            parser.error("--auth takes USER:PASSWORD")

        def check(mechanism, login, secret):
            return login == user.encode() and secret == password.encode()

        smtp_options = dict(
            auth_required=True, auth_require_tls=False, auth_callback=check
        )
        if args.auth_only is not None:
            others = {"LOGIN", "PLAIN"} - {args.auth_only}
            smtp_options["auth_exclude_mechanism"] = sorted(others)
        # Plain-text AUTH is deliberate here (loopback tests): keep aiosmtpd's
        # warnings about it off stderr.
        warnings.filterwarnings("ignore", module="aiosmtpd")
        logging.getLogger("mail.log").setLevel(logging.ERROR)

    listening = {}
    server_tls = None
    if args.tls is not None:
        ca, cert, key = make_certificates(os.path.join(sink.dir, "tls"))
        listening["ca"] = ca
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(cert, key)
        if args.tls == "starttls":
            smtp_options.update(tls_context=server_tls, require_starttls=True)
        # Keep aiosmtpd's warnings and the tracebacks of handshakes a test
        # makes fail on purpose (an untrusted certificate) off stderr.
        warnings.filterwarnings("ignore", module="aiosmtpd")
        logging.getLogger("mail.log").setLevel(logging.CRITICAL)

    def factory():
        return SMTP(
            sink,
            hostname="smtp-sink.localhost",
            ident="lifeboat smtp_sink",
            enable_SMTPUTF8=True,
            decode_data=False,
            loop=loop,
            **smtp_options,
        )

    implicit = server_tls if args.tls == "implicit" else None
    server = await loop.create_server(factory, host="127.0.0.1", port=args.port or 0, ssl=implicit)
    listening["port"] = server.sockets[0].getsockname()[1]

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    threading.Thread(target=read_commands, args=(loop, sink, stop), daemon=True).start()

    sys.stdout.write(json.dumps(listening) + "\n")
    sys.stdout.flush()

    await stop.wait()
    server.close()
    sink.executor.shutdown(wait=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
