#!/usr/bin/env python3
"""Start and control one throwaway Synapse homeserver for lifeboat.

Used by lifeboat's integration tests, its benchmark and the newcomer sandbox
(tools/sandbox.sh). Run it with the python of the venv made by
tools/synapse-venv.sh; it needs only the standard library plus PyYAML, which
Synapse ships.

    python tools/synapse_harness.py --dir DIR [--port N] [--server-name NAME]
                                    [--federation [--federation-port F]]
                                    [--postgres DATABASE] [--bridge]
                                    [--demo] [--no-admin]
                                    [--daemon --pidfile FILE]

It writes DIR/homeserver.yaml once (reused later, so a wiped server keeps its
port and shared secret), starts Synapse bound to 127.0.0.1 only, waits until
it answers, registers the admin account "admin" through shared-secret
registration and prints one JSON line on stdout:

    {"url": ..., "port": ..., "federation_port": ..., "server_name": ...,
     "admin_user": ..., "admin_token": ..., "shared_secret": ..., "dir": ...,
     "pid": ...}

("federation_port" is null without --federation; "bridge_token" without
--bridge.)

--bridge registers an application service, as a bridge has: its users are
"@puppet_...", a namespace only it may register in (exclusive), and it
registers them with the "bridge_token" the JSON line gives (the Client-Server
API's m.login.application_service). It has no URL: Synapse sends it nothing.

--federation makes a server that federates with other harness servers on
this machine (and nothing else). A second free port F gets a TLS listener
serving only the federation API, with a self-signed certificate (made with
openssl(1), which must be installed) kept in DIR/federation.crt and .key. The
server name defaults to "127.0.0.1:F", an IP literal with port, so servers
find each other without DNS or .well-known. Certificates are not verified,
key servers are not used (keys are fetched from each server itself), and
outgoing federation may reach 127.0.0.1 only (every other address is
blocked). Anyone may publish rooms in the room directory (Synapse's
default lets nobody). Servers that were down are retried after a second or
two instead of minutes. A wipe keeps certificate, signing key and ports, so
the other servers see the same server come back with an empty database.
--federation-port F picks F instead of a free port (the
server name is then "127.0.0.1:F"). Like the other options it only counts
when DIR/homeserver.yaml is first written.

While a harness runs, its server's ports are reserved for it (a file per
port in $TMPDIR/lifeboat-test-ports, or /tmp/..., holding the harness's
pid): a server being wiped or restarted leaves its port free for a moment,
and no other harness, nor the Rust tests' free_port, picks it then.

--postgres DATABASE keeps Synapse's database in PostgreSQL on
127.0.0.1:5432 (user postgres, no password, as on these machines) instead
of SQLite, as large servers do; the benchmarks at size use it. The
database is created if missing (UTF8, C collation, as Synapse requires;
an existing one is used as it is) and a wipe drops and creates it again.
Synapse needs psycopg2 for it, which tools/synapse-venv.sh installs.

Normal mode then answers commands read from stdin, one line each:

    stop                     -> ok        (Synapse stopped gracefully)
    start                    -> ok        (started again and ready)
    wipe                     -> ok        (stop, delete the database, start:
                                           the "seed incident")
    backup                   -> ok        (stop, copy the SQLite database
                                           aside, start: the nightly backup)
    restore                  -> ok        (stop, put that copy back, start:
                                           Synapse restored from an older
                                           backup)
    register-admin LOCALPART -> {"user_id", "access_token", "device_id", "password"}
    register LOCALPART       -> same, for a non-admin account
    info                     -> the startup JSON with the current pid
    anything failing         -> error <one sentence>

EOF on stdin, SIGTERM, SIGINT or SIGHUP stop Synapse and exit 0. Synapse
never outlives the harness (it also gets SIGKILL from the kernel should the
harness be killed outright).

Daemon mode (--daemon --pidfile FILE) detaches after the JSON line (also
written to DIR/harness.json) and keeps Synapse running until the harness gets
SIGTERM; its own log goes to DIR/harness.log.
"""

import argparse
import base64
import ctypes
import hashlib
import hmac
import http.client
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import yaml  # PyYAML is a Synapse dependency, so it is in the venv.

READY_TIMEOUT_S = 120
STOP_GRACE_S = 10
LOG_TAIL_LINES = 40
# SQLite keeps a database in up to four files; a wipe must remove them all.
DB_SUFFIXES = ("", "-wal", "-shm", "-journal")
# Where --postgres databases live.
POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}
# High enough that no test or benchmark ever meets a rate limit.
RATE_UNLIMITED = {"per_second": 100000, "burst_count": 100000}
DEMO_USERS = [
    # (localpart, display name, extra admin-API state applied after creation)
    ("alice", "Alice Liddell", None),
    ("bob", "Bob Builder", None),
    ("carol", "Carol Danvers", None),
    ("dave", "Dave Locked", {"locked": True}),
    ("erin", "Erin Deactivated", {"deactivated": True}),
]


class HarnessError(Exception):
    """A failure reported to the caller as one sentence."""


class Shutdown(BaseException):
    """Raised from signal handlers to unwind into the cleanup code.

    A BaseException so that no `except Exception` on the way swallows it.
    """


def log(message):
    print(f"synapse_harness: {message}", file=sys.stderr, flush=True)


def port_is_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR like Twisted's listener, so sockets in TIME_WAIT from a
        # previous run do not count as "taken" but a live listener does.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def everything_but_loopback():
    """CIDR ranges covering every address except 127.0.0.1."""
    rest = ipaddress.ip_network("0.0.0.0/0").address_exclude(ipaddress.ip_network("127.0.0.1/32"))
    return [str(net) for net in sorted(rest)] + ["::/0"]


def federation_port_of(config):
    """The port of the listener serving the federation API, or None."""
    for listener in config.get("listeners") or []:
        for resource in listener.get("resources") or []:
            if "federation" in (resource.get("names") or []):
                return int(listener["port"])
    return None


def ephemeral_low():
    """The lowest port the kernel hands out for outgoing connections."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


# Tries to start a new server on ports that are free, if one is taken meanwhile.
PORT_ATTEMPTS = 3


def pick_free_port():
    """A free port below the kernel's ephemeral range: one picked inside it
    may be taken, between the pick and Synapse's bind, as the source port of
    any outgoing connection on the machine (tests make many), and Synapse
    then fails to start with EADDRINUSE. Random, so parallel harnesses
    rarely try the same one."""
    low = ephemeral_low()
    if low > 11000:
        for _ in range(200):
            port = secrets.randbelow(low - 10000) + 10000
            if port_is_free(port) and reserve_port(port):
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    reserve_port(port)
    return port


# Ports of servers harnesses here keep, one file each naming the harness's
# pid: a server being wiped or restarted leaves its port free for a moment,
# and another harness (or a test's free_port) must not pick it then.
# In $TMPDIR or /tmp, where the Rust tests' free_port looks (std::env::temp_dir).
RESERVED_PORTS_DIR = os.path.join(os.environ.get("TMPDIR") or "/tmp", "lifeboat-test-ports")
reserved_here = []


def reserve_port(port):
    """Marks `port` as this harness's; False if a live harness has it."""
    os.makedirs(RESERVED_PORTS_DIR, exist_ok=True)
    path = os.path.join(RESERVED_PORTS_DIR, str(port))
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                with open(path) as f:
                    holder = int(f.read().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder == os.getpid():
                return True
            if holder and pid_alive(holder):
                return False
            # Left by a harness that is gone.
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        reserved_here.append(path)
        return True
    return False


def take_over_ports():
    """Puts this process's pid in the ports reserved before it forked (a
    daemon), so the launcher's exit does not give them back."""
    for path in reserved_here:
        write_private(path, str(os.getpid()))


def release_ports():
    """Gives back the ports this harness reserved (on its way out)."""
    for path in reserved_here:
        try:
            with open(path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.remove(path)
        except OSError:
            pass


def listener_is(pid, port):
    """Whether the socket listening on 127.0.0.1:`port` is `pid`'s: the
    readiness probe must not take another server's answer for its own (one
    that got the port while ours was still starting). True where /proc
    cannot tell."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    try:
        with open("/proc/net/tcp") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[1] == wanted and fields[3] == "0A":  # LISTEN
                    inodes.add(f"socket:[{fields[9]}]")
        if not inodes:
            return True
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return True
            except OSError:
                pass
    except (OSError, IndexError):
        return True
    return False


def write_private(path, text):
    """Write a file readable only by us, atomically (write, then rename)."""
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def said_since(path, offset):
    """What `path` got after its first `offset` bytes (up to 64 KiB)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read(64 * 1024).decode("utf-8", "replace")
    except OSError:
        return ""


def tail(path, lines=LOG_TAIL_LINES):
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            data = f.read().decode("utf-8", "replace")
    except OSError:
        return f"({path} not readable)"
    return "\n".join(data.splitlines()[-lines:])


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def die_with_parent(parent_pid):
    """Runs in the forked child before exec: own session, SIGKILL when we die.

    The new session keeps terminal signals (Ctrl-C) away from Synapse so the
    harness can stop it in order; PR_SET_PDEATHSIG makes the kernel kill it
    even if the harness itself is SIGKILLed, so it can never be orphaned.
    """
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # Not Linux: rely on the harness's own cleanup.
    # The parent may have died between fork and prctl; then nobody will
    # signal us, so leave now.
    if os.getppid() != parent_pid:
        os._exit(1)


class Synapse:
    """One Synapse process and the directory holding its state."""

    def __init__(self, directory, port, server_name, rates=None, federation=False, fed_port=None,
                 postgres=None, bridge=False):
        # {limiter: (per_second, burst)} for limiters that are to bite (e.g.
        # rc_message, rc_room_creation), to make Synapse answer 429.
        self.rates = rates or {}
        self.dir = os.path.abspath(directory)
        self.config_path = os.path.join(self.dir, "homeserver.yaml")
        self.db_path = os.path.join(self.dir, "homeserver.db")
        self.log_path = os.path.join(self.dir, "homeserver.log")
        # Synapse prints config errors to stderr before its logging is set up.
        self.stderr_path = os.path.join(self.dir, "synapse.stderr.log")
        self.admin_password_path = os.path.join(self.dir, "admin_password")
        self.tls_certificate_path = os.path.join(self.dir, "federation.crt")
        self.tls_private_key_path = os.path.join(self.dir, "federation.key")
        self.bridge_path = os.path.join(self.dir, "bridge.yaml")
        self.bridge_token = None
        self.proc = None
        # The PostgreSQL database's name, or None on SQLite.
        self.postgres = postgres
        os.makedirs(self.dir, exist_ok=True)
        # Ports picked here for a new server may be taken between the pick
        # and Synapse's bind (tests start many servers at once): its first
        # start may move it to others.
        self._may_move_ports = port is None and fed_port is None and not os.path.exists(self.config_path)
        self._asked = (server_name, federation)
        self._load_or_write_config(port, server_name, federation, fed_port, bridge)
        if self.postgres is not None:
            postgres_database(self.postgres, drop=False)
        # Never send loopback requests through an http_proxy from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # ---- configuration -------------------------------------------------

    def _load_or_write_config(self, port, server_name, federation, fed_port=None, bridge=False):
        if os.path.exists(self.config_path):
            # Reuse: a wiped or restarted server keeps its port and secret.
            with open(self.config_path) as f:
                config = yaml.safe_load(f)
            self.port = int(config["listeners"][0]["port"])
            self.fed_port = federation_port_of(config)
            for kept_port in (self.port, self.fed_port):
                if kept_port is not None:
                    reserve_port(kept_port)
            self.server_name = config["server_name"]
            self.shared_secret = config["registration_shared_secret"]
            if config.get("app_service_config_files"):
                with open(self.bridge_path) as f:
                    self.bridge_token = yaml.safe_load(f)["as_token"]
            elif bridge:
                log(f"--bridge ignored: {self.config_path} exists and has no application service")
            database = config["database"]
            kept = database["args"]["database"] if database["name"] == "psycopg2" else None
            if self.postgres is not None and self.postgres != kept:
                log(f"--postgres {self.postgres} ignored: {self.config_path} exists")
            self.postgres = kept
            if federation and self.fed_port is None:
                log(f"--federation ignored: {self.config_path} exists and has no federation listener")
            if port is not None and port != self.port:
                log(f"--port {port} ignored: {self.config_path} exists and uses port {self.port}")
            if fed_port is not None and fed_port != self.fed_port:
                log(f"--federation-port {fed_port} ignored: {self.config_path} exists")
            if server_name is not None and server_name != self.server_name:
                log(f"--server-name {server_name} ignored: existing config uses {self.server_name}")
            return

        self.port = port if port is not None else pick_free_port()
        self.fed_port = None
        if federation:
            self.fed_port = fed_port if fed_port is not None else pick_free_port()
            if self.fed_port == self.port and fed_port is not None:
                raise HarnessError(f"--federation-port {fed_port} is the client port too")
            while self.fed_port == self.port:
                self.fed_port = pick_free_port()
            # Before anything is written, so a missing openssl leaves no
            # half-made directory behind.
            self._write_certificate()
        default_name = f"127.0.0.1:{self.fed_port}" if federation else "lifeboat.test"
        self.server_name = server_name or default_name
        self.shared_secret = secrets.token_urlsafe(32)
        signing_key_path = os.path.join(self.dir, "signing.key")
        log_config_path = os.path.join(self.dir, "log.config")

        if not os.path.exists(signing_key_path):
            # Synapse's key file format: "<algorithm> <version> <unpadded
            # base64 seed>". Writing it here saves a generate-keys run.
            version = "a_" + "".join(
                secrets.choice(string.ascii_letters + string.digits) for _ in range(4)
            )
            seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
            write_private(signing_key_path, f"ed25519 {version} {seed}\n")

        log_config = {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - "
                    "%(levelname)s - %(request)s - %(message)s"
                }
            },
            # Supplies %(request)s; Synapse adds it too, but being explicit
            # keeps the format string safe.
            "filters": {
                "context": {
                    "()": "synapse.logging.context.LoggingContextFilter",
                    "request": "",
                }
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filters": ["context"],
                    "filename": self.log_path,
                    "encoding": "utf8",
                }
            },
            "loggers": {
                # SQL and twisted chatter is useless for our tests.
                "synapse.storage.SQL": {"level": "WARNING"},
                "twisted": {"level": "WARNING"},
            },
            "root": {"level": "INFO", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        with open(log_config_path, "w") as f:
            yaml.safe_dump(log_config, f, sort_keys=False)

        def unlimited():
            # A fresh dict each time: a shared one would be dumped as YAML
            # anchors and aliases (&id001/*id001), valid but hard to read.
            return dict(RATE_UNLIMITED)

        config = {
            "server_name": self.server_name,
            "public_baseurl": f"http://127.0.0.1:{self.port}/",
            # Client API (which also serves /_synapse/admin) on loopback only;
            # no federation listener unless --federation (added below).
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": (
                {"name": "sqlite3", "args": {"database": self.db_path}}
                if self.postgres is None
                else {
                    "name": "psycopg2",
                    "args": {**POSTGRES, "database": self.postgres, "cp_min": 5, "cp_max": 10},
                }
            ),
            "log_config": log_config_path,
            "media_store_path": os.path.join(self.dir, "media_store"),
            "signing_key_path": signing_key_path,
            # Token registration is what lifeboat hands out; Synapse accepts
            # enable_registration without its "no verification" error because
            # registration_requires_token counts as verification.
            "enable_registration": True,
            "registration_requires_token": True,
            "registration_shared_secret": self.shared_secret,
            "report_stats": False,
            "enable_metrics": False,
            # Fast password hashing: accounts made with passwords (tests,
            # benchmarks) would otherwise take ~0.2 s each.
            "bcrypt_rounds": 4,
            # Nothing may leave the machine: no key servers, an empty
            # federation allow-list (--federation replaces it with IP
            # ranges, below), no URL previews, no presence fan-out.
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "federation_domain_whitelist": [],
            "url_preview_enabled": False,
            "presence": {"enabled": False},
            # Every per-user/per-IP rate limiter Synapse 1.163.2 reads,
            # raised out of reach (config/ratelimiting.py).
            "rc_message": self.rate_of("rc_message"),
            "rc_registration": unlimited(),
            "rc_registration_token_validity": unlimited(),
            "rc_login": {
                "address": unlimited(),
                "account": unlimited(),
                "failed_attempts": unlimited(),
            },
            "rc_admin_redaction": unlimited(),
            "rc_joins": {"local": unlimited(), "remote": unlimited()},
            "rc_joins_per_room": unlimited(),
            "rc_invites": {
                "per_room": unlimited(),
                "per_user": unlimited(),
                "per_issuer": unlimited(),
            },
            "rc_third_party_invite": unlimited(),
            "rc_3pid_validation": unlimited(),
            "rc_room_creation": self.rate_of("rc_room_creation"),
            "rc_presence": {"per_user": unlimited()},
            "rc_media_create": unlimited(),
            "rc_delayed_event_mgmt": unlimited(),
            "rc_reports": unlimited(),
            "rc_user_directory": unlimited(),
            "rc_profile": unlimited(),
            "rc_key_requests": unlimited(),
        }
        if federation:
            config["listeners"].append(
                {
                    "port": self.fed_port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": True,
                    "x_forwarded": False,
                    "resources": [{"names": ["federation"], "compress": False}],
                }
            )
            config["tls_certificate_path"] = self.tls_certificate_path
            config["tls_private_key_path"] = self.tls_private_key_path
            # The peers' certificates are self-signed too.
            config["federation_verify_certificates"] = False
            # An empty list would block all federation; absent means any
            # server name, and the IP ranges below keep it on this machine.
            del config["federation_domain_whitelist"]
            # Loopback is blocked by default; block everything else instead.
            # Listing 0.0.0.0/0 and allowing 127.0.0.1 is not enough: the
            # check on IP-literal server names reads the block-list alone.
            config["ip_range_blacklist"] = everything_but_loopback()
            config["ip_range_whitelist"] = ["127.0.0.1"]
            # Synapse's default ([]) lets nobody publish a room in the room
            # directory, admins included (createRoom with "visibility":
            # "public" silently leaves the room unlisted). Tests of directory
            # entries lost in a wipe need publishing to work.
            config["room_list_publication_rules"] = [{"action": "allow"}]
            # Retry a server that was down (stopped, or wiped) within a
            # second or two, not Synapse's up to 60 s per request and 10 min
            # per destination: a queued transaction to a server that was
            # restarted otherwise holds back everything after it.
            config["federation"] = {
                "max_long_retry_delay": "1s",
                "destination_min_retry_interval": "1s",
                "destination_max_retry_interval": "5s",
            }
        if bridge:
            self.bridge_token = secrets.token_urlsafe(24)
            escaped_name = self.server_name.replace(".", "\\.")
            registration = {
                "id": "lifeboat-test-bridge",
                "url": None,
                "as_token": self.bridge_token,
                "hs_token": secrets.token_urlsafe(24),
                "sender_localpart": "puppetbridge",
                "namespaces": {
                    "users": [{"exclusive": True, "regex": f"@puppet_.*:{escaped_name}"}],
                    "rooms": [],
                    "aliases": [],
                },
                "rate_limited": False,
            }
            write_private(self.bridge_path, yaml.safe_dump(registration, sort_keys=False))
            config["app_service_config_files"] = [self.bridge_path]
        # Written last and atomically: its presence means "directory set up".
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            f.write("# Written by tools/synapse_harness.py for a throwaway test server.\n")
            yaml.safe_dump(config, f, sort_keys=False)
        os.chmod(tmp, 0o600)  # It holds the shared secret.
        os.replace(tmp, self.config_path)

    def rate_of(self, limiter):
        """The limiter's setting: as asked for with --rate, or out of reach."""
        if limiter not in self.rates:
            return dict(RATE_UNLIMITED)
        per_second, burst = self.rates[limiter]
        return {"per_second": per_second, "burst_count": burst}

    def _write_certificate(self):
        """A self-signed certificate for the federation listener (kept if
        there already is one)."""
        if os.path.exists(self.tls_certificate_path) and os.path.exists(self.tls_private_key_path):
            return
        openssl = shutil.which("openssl")
        if openssl is None:
            raise HarnessError(
                "--federation needs openssl(1) to make a TLS certificate, and it is not on PATH"
            )
        key_tmp = f"{self.tls_private_key_path}.tmp.{os.getpid()}"
        cert_tmp = f"{self.tls_certificate_path}.tmp.{os.getpid()}"
        result = subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-subj", "/CN=127.0.0.1", "-days", "30",
             "-keyout", key_tmp, "-out", cert_tmp],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        if result.returncode != 0:
            output = " ".join(result.stdout.decode("utf-8", "replace").split())[-300:]
            raise HarnessError(f"openssl could not make a certificate (status {result.returncode}): {output}")
        os.chmod(key_tmp, 0o600)
        os.replace(key_tmp, self.tls_private_key_path)
        os.replace(cert_tmp, self.tls_certificate_path)

    # ---- HTTP ----------------------------------------------------------

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def request(self, method, path, body=None, token=None, timeout=30):
        """Return (status, parsed JSON body or {}) for any HTTP status."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as e:
            status, raw = e.code, e.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"error": raw[:200].decode("utf-8", "replace")}
        return status, parsed

    @staticmethod
    def describe(status, body):
        return f"HTTP {status} {body.get('errcode', '')} {body.get('error', '')}".strip()

    # ---- process control -----------------------------------------------

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self):
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                said_before = os.path.getsize(self.stderr_path)
            except OSError:
                said_before = 0
            try:
                self._start_once()
                self._may_move_ports = False
                return
            except HarnessError as e:
                said = f"{e}\n{said_since(self.stderr_path, said_before)}"
                port_taken = "already in use" in said or "Failed to listen" in said
                if not (self._may_move_ports and port_taken) or attempt == PORT_ATTEMPTS:
                    raise
                log(f"{e}: a port was taken meanwhile, trying others")
                os.remove(self.config_path)
                self._load_or_write_config(None, *self._asked)

    def _start_once(self):
        if self.running():
            return
        # Otherwise the readiness probe could be answered by someone else.
        for port in (self.port, self.fed_port):
            if port is not None and not port_is_free(port):
                raise HarnessError(f"port {port} on 127.0.0.1 is already in use")
        started = time.monotonic()
        parent_pid = os.getpid()
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "synapse.app.homeserver", "-c", self.config_path],
                cwd=self.dir,
                stdin=subprocess.DEVNULL,
                # Never our stdout: that is the protocol channel.
                stdout=err,
                stderr=err,
                preexec_fn=lambda: die_with_parent(parent_pid),
            )
        self._wait_ready()
        log(f"synapse pid {self.proc.pid} ready on {self.url} "
            f"in {time.monotonic() - started:.1f}s")

    def _wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT_S
        delay = 0.05
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.proc = None
                self._report_logs()
                raise HarnessError(f"synapse exited with status {code} during startup")
            try:
                status, _ = self.request("GET", "/_matrix/client/versions", timeout=2)
                if status == 200 and self._federation_listening() and listener_is(self.proc.pid, self.port):
                    return
            except (OSError, http.client.HTTPException):
                pass  # Not listening yet (URLError is an OSError).
            if time.monotonic() >= deadline:
                self._report_logs()
                self.stop()
                raise HarnessError(f"synapse was not ready after {READY_TIMEOUT_S} s")
            # Poll quickly at first (startup is a few seconds), then back off.
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def _federation_listening(self):
        if self.fed_port is None:
            return True
        try:
            with socket.create_connection(("127.0.0.1", self.fed_port), timeout=2):
                return True
        except OSError:
            return False

    def _report_logs(self):
        log(f"--- tail of {self.stderr_path} ---\n{tail(self.stderr_path, 15)}")
        log(f"--- tail of {self.log_path} ---\n{tail(self.log_path)}")

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # Synapse leads its own process group (setsid in die_with_parent);
            # signalling the group catches anything it may have spawned. The
            # pid is not reaped yet, so the group id cannot have been reused.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                log(f"synapse did not stop within {STOP_GRACE_S} s; killing it")
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def wipe(self):
        """The seed incident: the database is lost, the config survives."""
        self.stop()
        if self.postgres is not None:
            postgres_database(self.postgres, drop=True)
        for suffix in DB_SUFFIXES:
            try:
                os.remove(self.db_path + suffix)
            except FileNotFoundError:
                pass
        self.start()

    def backup(self):
        """A copy of the database as it is now, for `restore` (SQLite only)."""
        self._copy_database(self.db_path, self.db_path + ".backup")

    def restore(self):
        """Synapse restored from the copy `backup` made: what came since is lost."""
        if not os.path.exists(self.db_path + ".backup"):
            raise HarnessError("there is no backup to restore: run backup first")
        self._copy_database(self.db_path + ".backup", self.db_path)

    def _copy_database(self, source, target):
        if self.postgres is not None:
            raise HarnessError("backup and restore work on SQLite only")
        self.stop()
        for suffix in DB_SUFFIXES:
            try:
                os.remove(target + suffix)
            except FileNotFoundError:
                pass
            if os.path.exists(source + suffix):
                shutil.copyfile(source + suffix, target + suffix)
        self.start()

    # ---- accounts ------------------------------------------------------

    def register(self, localpart, admin, password=None):
        """Shared-secret registration (/_synapse/admin/v1/register)."""
        password = password or secrets.token_urlsafe(18)
        status, body = self.request("GET", "/_synapse/admin/v1/register")
        if status != 200 or "nonce" not in body:
            raise HarnessError(f"getting a registration nonce failed: {self.describe(status, body)}")
        nonce = body["nonce"]
        # mac = HMAC-SHA1(secret, nonce \0 user \0 password \0 admin|notadmin)
        mac = hmac.new(self.shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(nonce.encode())
        mac.update(b"\x00")
        mac.update(localpart.encode())
        mac.update(b"\x00")
        mac.update(password.encode())
        mac.update(b"\x00")
        mac.update(b"admin" if admin else b"notadmin")
        status, body = self.request(
            "POST",
            "/_synapse/admin/v1/register",
            {
                "nonce": nonce,
                "username": localpart,
                "password": password,
                "admin": admin,
                "mac": mac.hexdigest(),
            },
        )
        if status != 200:
            raise HarnessError(f"registering {localpart} failed: {self.describe(status, body)}")
        if localpart == "admin":
            # Remembered so a restart on the same database can log back in.
            write_private(self.admin_password_path, password)
        return {
            "user_id": body["user_id"],
            "access_token": body["access_token"],
            "device_id": body.get("device_id"),
            "password": password,
        }

    def admin_session(self):
        """Register "admin", or log it back in if the database already has it."""
        try:
            return self.register("admin", admin=True)
        except HarnessError as e:
            if "M_USER_IN_USE" not in str(e):
                raise
        try:
            with open(self.admin_password_path) as f:
                password = f.read().strip()
        except OSError:
            raise HarnessError(
                f"user admin already exists and {self.admin_password_path} is missing; "
                "wipe the database or the directory"
            ) from None
        status, body = self.request(
            "POST",
            "/_matrix/client/v3/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": "admin"},
                "password": password,
                "initial_device_display_name": "synapse_harness",
            },
        )
        if status != 200:
            raise HarnessError(f"logging admin back in failed: {self.describe(status, body)}")
        return {
            "user_id": body["user_id"],
            "access_token": body["access_token"],
            "device_id": body.get("device_id"),
            "password": password,
        }

    def create_demo_users(self, admin_token):
        """A few accounts for the sandbox, through the admin user API."""
        for localpart, displayname, extra in DEMO_USERS:
            user_id = f"@{localpart}:{self.server_name}"
            path = "/_synapse/admin/v2/users/" + urllib.parse.quote(user_id)
            status, _ = self.request("GET", path, token=admin_token)
            if status == 200:
                continue  # Kept from an earlier run: leave it as it is.
            status, body = self.request(
                "PUT",
                path,
                {
                    "password": f"{localpart}-sandbox",
                    "displayname": displayname,
                    "threepids": [{"medium": "email", "address": f"{localpart}@example.org"}],
                },
                token=admin_token,
            )
            if status not in (200, 201):
                raise HarnessError(f"creating {user_id} failed: {self.describe(status, body)}")
            if extra:
                # Synapse 1.163.2 ignores "locked"/"deactivated" when creating
                # a user, so they are applied with a second PUT.
                status, body = self.request("PUT", path, extra, token=admin_token)
                if status != 200:
                    raise HarnessError(f"updating {user_id} failed: {self.describe(status, body)}")
            state = " ".join(k for k, v in (extra or {}).items() if v)
            log(f"demo user {user_id}, password {localpart}-sandbox {state}".rstrip())


# ---- modes -----------------------------------------------------------------


def postgres_database(name, drop):
    """Creates the --postgres database if it is missing (after dropping it
    with `drop`), with the encoding and collation Synapse insists on."""
    if not all(c in string.ascii_lowercase + string.digits + "_" for c in name) or not name:
        raise HarnessError(f"--postgres {name!r}: use lowercase letters, digits and _ only")
    try:
        import psycopg2  # Only --postgres needs it (tools/synapse-venv.sh installs it).
    except ImportError as e:
        raise HarnessError(f"--postgres needs psycopg2 in Synapse's venv (tools/synapse-venv.sh): {e}")
    try:
        conn = psycopg2.connect(dbname="postgres", **POSTGRES)
    except psycopg2.Error as e:
        raise HarnessError(f"cannot reach PostgreSQL on 127.0.0.1:5432 as postgres: {e}".strip())
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            if drop:
                cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if cur.fetchone() is None:
                cur.execute(
                    f'CREATE DATABASE "{name}" ENCODING \'UTF8\' LC_COLLATE \'C\' LC_CTYPE \'C\' '
                    "TEMPLATE template0"
                )
    finally:
        conn.close()


def install_signal_handlers(signals):
    def handler(signum, _frame):
        # Only the first signal unwinds; later ones must not interrupt cleanup.
        for s in signals:
            signal.signal(s, signal.SIG_IGN)
        raise Shutdown(signum)

    for s in signals:
        signal.signal(s, handler)


def bring_up(synapse, demo, admin_account=True):
    """Start Synapse, get an admin session (unless told not to: after a
    wipe, the admin's ID may be held by lifeboat for its owner), return the
    JSON info dict."""
    synapse.start()
    admin = synapse.admin_session() if admin_account else {"user_id": None, "access_token": None}
    if demo and admin_account:
        synapse.create_demo_users(admin["access_token"])
    return {
        "url": synapse.url,
        "port": synapse.port,
        "federation_port": synapse.fed_port,
        "server_name": synapse.server_name,
        "admin_user": admin["user_id"],
        "admin_token": admin["access_token"],
        "shared_secret": synapse.shared_secret,
        "bridge_token": synapse.bridge_token,
        "dir": synapse.dir,
        "pid": synapse.proc.pid,
    }


def handle_command(synapse, info, line):
    words = line.split()
    if not words:
        return None
    cmd, args = words[0], words[1:]
    if cmd in ("stop", "start", "wipe", "backup", "restore", "info") and args:
        raise HarnessError(f"{cmd} takes no argument")
    if cmd == "stop":
        synapse.stop()
        return "ok"
    if cmd == "start":
        synapse.start()
        return "ok"
    if cmd == "wipe":
        synapse.wipe()
        return "ok"
    if cmd == "backup":
        synapse.backup()
        return "ok"
    if cmd == "restore":
        synapse.restore()
        return "ok"
    if cmd == "info":
        # Startup JSON with the current pid (null while stopped). The admin
        # token is the one from startup, dead after a wipe.
        return json.dumps(dict(info, pid=synapse.proc.pid if synapse.running() else None))
    if cmd in ("register-admin", "register"):
        if len(args) != 1:
            raise HarnessError(f"usage: {cmd} LOCALPART")
        if not synapse.running():
            raise HarnessError("synapse is stopped")
        return json.dumps(synapse.register(args[0], admin=(cmd == "register-admin")))
    raise HarnessError(f"unknown command {cmd!r}")


def run_interactive(synapse, demo, admin_account=True):
    install_signal_handlers((signal.SIGTERM, signal.SIGINT, signal.SIGHUP))
    try:
        try:
            info = bring_up(synapse, demo, admin_account)
        except (HarnessError, OSError) as e:
            log(f"error: {e}")
            return 1
        print(json.dumps(info), flush=True)
        while True:
            line = sys.stdin.readline()
            if not line:
                break  # EOF: whoever drove us is gone or done.
            try:
                reply = handle_command(synapse, info, line)
            except HarnessError as e:
                reply = "error " + " ".join(str(e).split())
            except OSError as e:  # Typically Synapse died under us.
                reply = f"error request to synapse failed: {' '.join(str(e).split())}"
            except Exception as e:  # Unexpected: keep serving, but say it.
                reply = f"error internal error: {type(e).__name__}: {' '.join(str(e).split())}"
            if reply is not None:
                print(reply, flush=True)
    except Shutdown:
        pass
    except BrokenPipeError:
        pass  # Our reader went away: same as EOF.
    finally:
        synapse.stop()
    return 0


def run_daemon(synapse, demo, pidfile, admin_account=True):
    pidfile = os.path.abspath(pidfile)
    try:
        with open(pidfile) as f:
            old = int(f.read().strip() or 0)
        if old and pid_alive(old):
            log(f"error: already running as pid {old} ({pidfile})")
            return 1
    except (OSError, ValueError):
        pass

    # The daemon reports its JSON line (or error) to the caller through a
    # pipe, so the caller can print it and return once Synapse is ready.
    read_fd, write_fd = os.pipe()
    first = os.fork()
    if first > 0:
        os.close(write_fd)
        os.waitpid(first, 0)  # The intermediate child exits at once.
        with os.fdopen(read_fd) as pipe:
            message = pipe.readline()
        if message.startswith("{"):
            sys.stdout.write(message)
            sys.stdout.flush()
            return 0
        log(message.strip() or "error: the daemon died during startup")
        log(f"see {os.path.join(synapse.dir, 'harness.log')}")
        return 1

    # Double fork: a new session without a controlling terminal, and a
    # grandchild that is not a session leader so it can never acquire one.
    os.close(read_fd)
    os.setsid()
    if os.fork() > 0:
        os._exit(0)
    os.chdir(synapse.dir)
    os.umask(0o077)
    devnull = os.open(os.devnull, os.O_RDONLY)
    log_fd = os.open(os.path.join(synapse.dir, "harness.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    report = os.fdopen(write_fd, "w")

    code = 1
    install_signal_handlers((signal.SIGTERM, signal.SIGINT))
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        write_private(pidfile, f"{os.getpid()}\n")
        take_over_ports()
        log(f"daemon pid {os.getpid()} starting")
        try:
            info = bring_up(synapse, demo, admin_account)
        except (HarnessError, OSError) as e:
            log(f"error: {e}")
            report.write(f"error: {e}\n")
            report.close()
            return 1
        write_private(os.path.join(synapse.dir, "harness.json"), json.dumps(info) + "\n")
        report.write(json.dumps(info) + "\n")
        report.close()
        # Until SIGTERM (raises Shutdown) or Synapse ending on its own.
        status = synapse.proc.wait()
        log(f"synapse exited on its own with status {status}")
        synapse.proc = None
    except Shutdown:
        log("SIGTERM: stopping synapse")
        code = 0
    finally:
        synapse.stop()
        try:
            with open(pidfile) as f:
                mine = f.read().strip() == str(os.getpid())
            if mine:
                os.remove(pidfile)
        except OSError:
            pass
        log(f"daemon exiting with status {code}")
    return code


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True, help="state directory (created if missing)")
    parser.add_argument("--port", type=int, help="loopback port (default: a free one)")
    parser.add_argument("--server-name", help='server name (default "lifeboat.test")')
    parser.add_argument(
        "--federation",
        action="store_true",
        help='federate with other harness servers on 127.0.0.1 (TLS listener on a second '
        'port F, server name "127.0.0.1:F"; needs openssl)',
    )
    parser.add_argument(
        "--federation-port",
        type=int,
        metavar="F",
        help="the federation listener's port with --federation (default: a free one)",
    )
    parser.add_argument(
        "--postgres",
        metavar="DATABASE",
        help="keep Synapse's database in PostgreSQL on 127.0.0.1:5432 (created if missing; needs psycopg2)",
    )
    parser.add_argument(
        "--bridge",
        action="store_true",
        help='register an application service owning the users "@puppet_..." (its token: "bridge_token")',
    )
    parser.add_argument("--demo", action="store_true", help="create demo accounts")
    parser.add_argument(
        "--rate",
        action="append",
        default=[],
        metavar="LIMITER=PER_SECOND:BURST",
        help="make a rate limiter bite so Synapse answers 429, e.g. rc_message=1:2 or rc_room_creation=0.2:1 "
        "(repeatable; only these two; default: every limiter out of reach)",
    )
    parser.add_argument(
        "--no-admin",
        action="store_true",
        help='do not register or log in "admin" (after a wipe, lifeboat holds that ID for its owner)',
    )
    parser.add_argument("--daemon", action="store_true", help="detach after startup")
    parser.add_argument("--pidfile", help="daemon pid file (required with --daemon)")
    args = parser.parse_args()
    if args.daemon and not args.pidfile:
        parser.error("--daemon needs --pidfile")
    if args.federation_port is not None and not args.federation:
        parser.error("--federation-port needs --federation")

    try:
        rates = {}
        for setting in args.rate:
            limiter, _, rate = setting.partition("=")
            if limiter not in ("rc_message", "rc_room_creation"):
                raise ValueError(f"--rate {setting}: only rc_message and rc_room_creation can be made to bite")
            per_second, burst = rate.split(":")
            rates[limiter] = (float(per_second), int(burst))
        synapse = Synapse(
            args.dir, args.port, args.server_name, rates, args.federation, args.federation_port, args.postgres,
            args.bridge,
        )
    except (HarnessError, OSError, KeyError, TypeError, ValueError, yaml.YAMLError) as e:
        log(f"error: cannot prepare {args.dir}: {e}")
        return 1
    if args.daemon:
        return run_daemon(synapse, args.demo, args.pidfile, not args.no_admin)
    return run_interactive(synapse, args.demo, not args.no_admin)


if __name__ == "__main__":
    try:
        exit_code = main()
    finally:
        release_ports()
    sys.exit(exit_code)
