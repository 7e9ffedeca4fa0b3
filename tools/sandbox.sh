#!/usr/bin/env bash
# lifeboat newcomer sandbox: the whole story on one machine. A throwaway
# Synapse on 127.0.0.1 with demo accounts and emails ("ours", the one
# lifeboat watches), a neighbour Synapse it federates with over loopback,
# demo rooms shared between the two, a local SMTP server whose mails you can
# read, and `lifeboat serve` (web page, admin-room bot, watcher). Everything
# lives in ./sandbox (git-ignored).
#
# Usage (from the repository root):
#   tools/sandbox.sh start          build lifeboat; start both Synapses (demo
#                                   users and rooms), the SMTP sink and
#                                   `lifeboat serve`; print what is where
#   tools/sandbox.sh incident       the seed incident: stop our Synapse, delete
#                                   its database, start it again (alias: wipe);
#                                   the neighbour keeps running
#   tools/sandbox.sh mail [N]       list the mails received; N: print mail N
#   tools/sandbox.sh say TEXT       post TEXT in the admin room as the admin
#                                   and print the bot's replies (no Matrix
#                                   client needed), e.g. say '!lifeboat status'
#   tools/sandbox.sh rooms NAME [PASSWORD]
#                                   sign in as NAME on our Synapse (password
#                                   default <NAME>-sandbox) and print their
#                                   rooms, invites, and where #harbour points
#   tools/sandbox.sh status         what runs, where
#   tools/sandbox.sh stop [--clean] stop everything (--clean: delete ./sandbox)
#
# Environment:
#   LIFEBOAT_SANDBOX_PROFILE=release  build and use target/release (default
#                                   debug: quicker to build on a fresh machine)
#   LIFEBOAT_BIN=/path/to/lifeboat  use this binary and skip cargo build
#   LIFEBOAT_SYNAPSE_VENV           where the Synapse venv lives (synapse-venv.sh)
#   LIFEBOAT_SANDBOX_DIR            use this folder instead of ./sandbox (the
#                                   test suite runs the sandbox this way)
#   LIFEBOAT_SANDBOX_WEB_PORT       the web page's port (default 8090 when
#                                   free; 0: any free port)
#   LIFEBOAT_SANDBOX_SYNAPSE_PORT   our Synapse's port on first start (default
#                                   8008 when free, its federation port 8448,
#                                   the neighbour's 8009 and 8449; 0: free
#                                   ports for all four)
#   LIFEBOAT_SANDBOX_WATCH_INTERVAL how often serve checks Synapse (default 10s)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SANDBOX="${LIFEBOAT_SANDBOX_DIR:-$ROOT/sandbox}"
SYN_DIR="$SANDBOX/synapse"
PIDFILE="$SYN_DIR/harness.pid"
NB_DIR="$SANDBOX/neighbour"          # the neighbour homeserver
NB_PIDFILE="$NB_DIR/harness.pid"
ROOMS_FILE="$SANDBOX/rooms.json"     # the demo rooms start made
MAIL_DIR="$SANDBOX/mail"
SINK_PIDFILE="$MAIL_DIR/sink.pid"
KEEPER_PIDFILE="$MAIL_DIR/stdin-keeper.pid"
SERVE_PIDFILE="$SANDBOX/serve.pid"
SERVE_LOG="$SANDBOX/serve.log"
CONFIG="$SANDBOX/lifeboat.toml"
BIN_RECORD="$SANDBOX/lifeboat-bin"   # the binary start used, for incident
ROOM_FILE="$SANDBOX/admin_room"      # the admin room start made
WEB_PORT_FILE="$SANDBOX/web_port"
HARNESS="$ROOT/tools/synapse_harness.py"
SINK="$ROOT/tools/smtp_sink.py"
PROFILE="${LIFEBOAT_SANDBOX_PROFILE:-debug}"
DEFAULT_PORT=8008
DEFAULT_FED_PORT=8448
DEFAULT_NB_PORT=8009
DEFAULT_NB_FED_PORT=8449
DEFAULT_WEB_PORT=8090
# The person on the neighbour homeserver who shares rooms with ours.
NB_USER=nina
# Both servers federate, so each is named by its federation listener,
# "127.0.0.1:<port>" (a name like lifeboat.test could not be reached by the
# neighbour); names() reads them from the harness once Synapse has run.
SERVER_NAME=""
BOT_USER=""
ALERT_EMAIL="admin@example.org"
WATCH_INTERVAL="${LIFEBOAT_SANDBOX_WATCH_INTERVAL:-10s}"

say() { printf '==> %s\n' "$*"; }
warn() { printf 'sandbox: %s\n' "$*" >&2; }
die() { warn "error: $*"; exit 1; }
# Paths as the person sees them: relative to the repository when inside it.
show() { local p="$1"; printf '%s\n' "${p#"$ROOT"/}"; }

case "$PROFILE" in
    release | debug) ;;
    *) die "LIFEBOAT_SANDBOX_PROFILE must be release or debug, not '$PROFILE'" ;;
esac

# Small Matrix client-server and admin API calls, with the standard library
# only: python3 -c "$MATRIX_PY" ACTION ARGS...
MATRIX_PY='
import hashlib, hmac, json, os, secrets, signal, sqlite3, sys, time, urllib.error, urllib.parse, urllib.request

# Output piped into a reader that went away (`mail N | head`) ends quietly.
signal.signal(signal.SIGPIPE, signal.SIG_DFL)

opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

def call(base, method, path, body=None, token=None, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with opener.open(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        try:
            return e.code, json.loads(e.read() or b"{}")
        except ValueError:
            return e.code, {}

def q(s):
    return urllib.parse.quote(s, safe="")

def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)

def register_bot(base, secret_file, localpart, password_file):
    # Shared-secret registration of the bot as a Synapse admin; the password
    # is generated once and kept in password_file.
    secret = open(secret_file).read().strip()
    if os.path.exists(password_file):
        password = open(password_file).read().strip()
    else:
        password = secrets.token_urlsafe(18)
    s, b = call(base, "GET", "/_synapse/admin/v1/register")
    if s != 200:
        fail(f"no registration nonce: {s} {b}")
    mac = hmac.new(secret.encode(), digestmod=hashlib.sha1)
    for part in (b["nonce"], localpart, password):
        mac.update(part.encode()); mac.update(b"\x00")
    mac.update(b"admin")
    s, b = call(base, "POST", "/_synapse/admin/v1/register", {"nonce": b["nonce"], "username": localpart,
        "password": password, "admin": True, "mac": mac.hexdigest()})
    if s == 200:
        old = os.umask(0o077)
        with open(password_file + ".tmp", "w") as f:
            f.write(password)
        os.umask(old)
        os.replace(password_file + ".tmp", password_file)
        print("registered")
    elif b.get("errcode") == "M_USER_IN_USE":
        print("exists")
    else:
        fail(f"registering {localpart} failed: {s} {b}")

def make_room(base, token, invitee, name):
    s, b = call(base, "POST", "/_matrix/client/v3/createRoom", {"preset": "private_chat", "name": name,
        "topic": "Alerts and commands of lifeboat. Send !lifeboat help", "invite": [invitee]}, token)
    if s != 200:
        fail(f"creating the admin room failed: {s} {b}")
    print(b["room_id"])

def membership(base, token, room, user):
    s, b = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(user)}", token=token)
    print(b.get("membership", "none") if s == 200 else "none")

def bot_room(db):
    # The admin room the bot made itself after a wipe (a registry setting).
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        row = con.execute("SELECT value FROM settings WHERE name = ?", ("bot_admin_room",)).fetchone()
        print(row[0] if row and row[0] else "")
    except sqlite3.Error:
        print("")

def say(base, token, me, bot, room, text, wait):
    s, b = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.member/{q(me)}", token=token)
    if s != 200 or b.get("membership") != "join":
        s, b = call(base, "POST", f"/_matrix/client/v3/join/{q(room)}", {}, token)
        if s != 200:
            fail(f"{me} cannot join the admin room {room}: {s} {b}")
        print(f"(joined the admin room {room})")
    filt = q(json.dumps({"room": {"rooms": [room], "timeline": {"limit": 50}},
        "presence": {"types": []}, "account_data": {"types": []}}))
    s, b = call(base, "GET", f"/_matrix/client/v3/sync?timeout=0&filter={filt}", token=token)
    if s != 200:
        fail(f"sync failed: {s} {b}")
    since = b["next_batch"]
    sent_ms = int(time.time() * 1000) - 2000
    seen = set()
    txn = f"sandbox-{time.time_ns()}"
    s, b = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": text}, token)
    if s != 200:
        fail(f"sending failed: {s} {b}")
    deadline = time.time() + wait
    quiet_until = None
    while time.time() < deadline and (quiet_until is None or time.time() < quiet_until):
        s, b = call(base, "GET", f"/_matrix/client/v3/sync?timeout=2000&since={since}&filter={filt}",
            token=token, timeout=30)
        if s != 200:
            time.sleep(1); continue
        since = b["next_batch"]
        events = b.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {}).get("events", [])
        for e in events:
            if e.get("event_id") in seen or e.get("origin_server_ts", 0) < sent_ms:
                continue
            seen.add(e.get("event_id"))
            if e.get("type") == "m.room.message" and e.get("sender") == bot:
                print("--- " + bot)
                print(e["content"].get("body", ""))
                quiet_until = time.time() + 3
    if quiet_until is None:
        print(f"(no reply from {bot} within {wait}s; see serve.log)")

def mail(folder, which=""):
    jdir = os.path.join(folder, "json")
    items = []
    for name in os.listdir(jdir) if os.path.isdir(jdir) else []:
        if name.endswith(".json"):
            with open(os.path.join(jdir, name)) as f:
                items.append(json.load(f))
    items.sort(key=lambda m: m["seq"])
    if not which:
        if not items:
            print("no mail yet")
        for m in items:
            to = ", ".join(m.get("rcpt_tos") or [])
            print("%3s  %-31s  %-24s  %s" % (m["seq"], m.get("date") or "", to, m.get("subject") or ""))
        return
    for m in items:
        if str(m["seq"]) == which:
            for h in ("From", "To", "Date", "Subject"):
                print("%s: %s" % (h, m.get(h.lower()) or m.get("headers", {}).get(h, "")))
            print()
            print(m.get("text") or m.get("html") or "")
            return
    fail(f"no mail {which}; tools/sandbox.sh mail lists them")

def login_admin(base, user, password_file, harness_json):
    # Signs the admin in with the password in password_file and keeps the
    # new access token in harness.json, where `say` and `status` read it.
    password = open(password_file).read().strip()
    s, b = call(base, "POST", "/_matrix/client/v3/login", {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user}, "password": password})
    if s != 200:
        fail(f"signing in as {user} failed: {s} {b}")
    info = json.load(open(harness_json))
    info["admin_user"], info["admin_token"] = b["user_id"], b["access_token"]
    with open(harness_json, "w") as f:
        f.write(json.dumps(info) + "\n")
    print(b["user_id"])

def login(base, user, password):
    s, b = call(base, "POST", "/_matrix/client/v3/login", {"type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user}, "password": password})
    if s != 200:
        fail(f"signing in as {user} at {base} failed: {s} {b}")
    return b["user_id"], b["access_token"]

def make_user(base, admin_token, user_id, password, displayname):
    path = "/_synapse/admin/v2/users/" + q(user_id)
    s, _ = call(base, "GET", path, token=admin_token)
    if s == 200:
        print("exists")
        return
    s, b = call(base, "PUT", path, {"password": password, "displayname": displayname}, admin_token)
    if s not in (200, 201):
        fail(f"creating {user_id} failed: {s} {b}")
    print("made")

def create_room(base, token, body):
    s, b = call(base, "POST", "/_matrix/client/v3/createRoom", body, token, timeout=60)
    if s != 200:
        fail("creating the room " + body["name"] + f" failed: {s} {b}")
    return b["room_id"]

def join(base, token, room, via, who):
    path = f"/_matrix/client/v3/join/{q(room)}"
    if via:
        path += "?" + "&".join("server_name=" + q(v) for v in via)
    # A join over federation may meet a server that just started: retry.
    for _ in range(15):
        s, b = call(base, "POST", path, {}, token, timeout=60)
        if s == 200:
            return
        time.sleep(1)
    fail(f"{who} could not join {room}: {s} {b}")

def send(base, token, room, text):
    txn = f"sandbox-{time.time_ns()}"
    s, b = call(base, "PUT", f"/_matrix/client/v3/rooms/{q(room)}/send/m.room.message/{txn}",
        {"msgtype": "m.text", "body": text}, token)
    if s != 200:
        fail(f"sending in {room} failed: {s} {b}")

def settle(base, admin_token, room, joined):
    # A join over federation shows in the room listing a moment later; the
    # first lifeboat sync should see it.
    deadline = time.time() + 60
    while time.time() < deadline:
        s, b = call(base, "GET", f"/_synapse/admin/v1/rooms/{q(room)}", token=admin_token)
        if s == 200 and b.get("joined_members") == joined:
            return
        time.sleep(0.5)
    fail(f"{room} does not count {joined} joined members on {base} after 60 s")

def demo_rooms(ours, theirs, ours_admin, ours_name, theirs_name, nb_user, out):
    alice_id, alice = login(ours, "alice", "alice-sandbox")
    bob_id, bob = login(ours, "bob", "bob-sandbox")
    nb_id, nb = login(theirs, nb_user, nb_user + "-sandbox")
    made = []
    # On the neighbour: private and encrypted, alice invited and joined.
    across = create_room(theirs, nb, {"preset": "private_chat", "name": "Across the water",
        "topic": f"{nb_id} and friends on the neighbour homeserver", "invite": [alice_id],
        "initial_state": [{"type": "m.room.encryption", "state_key": "",
            "content": {"algorithm": "m.megolm.v1.aes-sha2"}}]})
    join(ours, alice, across, [theirs_name], "alice")
    made.append(("Across the water", across, f"on the neighbour, private, encrypted: {nb_user} and alice"))
    # Ours: public, in the directory, with a local alias; the neighbour joins.
    alias = f"#harbour:{ours_name}"
    harbour = create_room(ours, alice, {"preset": "public_chat", "visibility": "public", "name": "Harbour",
        "topic": "Boats coming and going: everyone welcome", "room_alias_name": "harbour"})
    join(theirs, nb, alias, [], nb_user)
    send(ours, alice, harbour, "Welcome to the harbour!")
    made.append(("Harbour", harbour, f"ours, public, {alias}: alice and {nb_user}"))
    # Only on ours: a room and a space.
    kitchen = create_room(ours, alice, {"preset": "private_chat", "name": "Kitchen",
        "topic": "Tea and gossip", "invite": [bob_id]})
    join(ours, bob, kitchen, [], "bob")
    send(ours, bob, kitchen, "The kettle is on.")
    made.append(("Kitchen", kitchen, "only ours, private: alice and bob"))
    fleet = create_room(ours, alice, {"preset": "private_chat", "name": "Fleet", "topic": "The boats alice looks after",
        "creation_content": {"type": "m.space"}, "invite": [bob_id],
        "initial_state": [{"type": "m.space.child", "state_key": child, "content": {"via": [ours_name]}}
            for child in (harbour, kitchen)]})
    join(ours, bob, fleet, [], "bob")
    made.append(("Fleet", fleet, "only ours, a space holding Harbour and Kitchen: alice and bob"))
    settle(ours, ours_admin, across, 2)
    settle(ours, ours_admin, harbour, 2)
    with open(out + ".tmp", "w") as f:
        json.dump({"alias": alias, "rooms": [{"name": n, "room_id": r, "about": a} for n, r, a in made]}, f, indent=1)
    os.replace(out + ".tmp", out)
    for name, room, about in made:
        print(f"{name:<17} {room}  {about}")

def room_name(base, token, room):
    s, b = call(base, "GET", f"/_matrix/client/v3/rooms/{q(room)}/state/m.room.name", token=token)
    return b.get("name", "") if s == 200 else ""

def rooms_of(base, user, password, alias):
    user_id, token = login(base, user, password)
    s, b = call(base, "GET", "/_matrix/client/v3/joined_rooms", token=token)
    if s != 200:
        fail(f"listing the rooms of {user_id} failed: {s} {b}")
    joined = b["joined_rooms"]
    print(f"{user_id} is in {len(joined)} room(s):")
    for name, room in sorted((room_name(base, token, room), room) for room in joined):
        print(f"  joined   {room}  {name}")
    filt = q(json.dumps({"room": {"timeline": {"limit": 1}, "state": {"types": ["m.room.name"]}},
        "presence": {"types": []}, "account_data": {"types": []}}))
    s, b = call(base, "GET", f"/_matrix/client/v3/sync?timeout=0&filter={filt}", token=token)
    for room, info in (b.get("rooms", {}).get("invite", {}) if s == 200 else {}).items():
        names = [e["content"].get("name", "") for e in info.get("invite_state", {}).get("events", [])
            if e.get("type") == "m.room.name"]
        print(f"  invited  {room}  " + (names[0] if names else ""))
    s, b = call(base, "GET", f"/_matrix/client/v3/directory/room/{q(alias)}", token=token)
    target = b.get("room_id") if s == 200 else "nothing (" + str(b.get("errcode", s)) + ")"
    print(f"{alias} -> {target}")

action, args = sys.argv[1], sys.argv[2:]
if action == "register-bot": register_bot(*args)
elif action == "login-admin": login_admin(*args)
elif action == "make-room": make_room(*args)
elif action == "make-user": make_user(*args)
elif action == "demo-rooms": demo_rooms(*args)
elif action == "rooms-of": rooms_of(*args)
elif action == "membership": membership(*args)
elif action == "bot-room": bot_room(*args)
elif action == "say": say(*args[:6], int(args[6]))
elif action == "mail": mail(*args)
elif action == "free-port":
    import socket
    s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()
elif action == "healthz":
    try:
        with opener.open(args[0], timeout=3) as r:
            sys.exit(0 if r.status == 200 else 1)
    except Exception:
        sys.exit(1)
else: fail(f"unknown action {action}")
'
mx() { python3 -c "$MATRIX_PY" "$@"; }

venv_python() {
    local py
    py="$("$ROOT/tools/synapse-venv.sh" | tail -n 1)"
    [ -x "$py" ] || die "tools/synapse-venv.sh did not produce a python"
    printf '%s\n' "$py"
}

# Which lifeboat to run: LIFEBOAT_BIN, else (after start) the one start
# used, else the cargo output for the profile.
lifeboat_bin() {
    if [ -n "${LIFEBOAT_BIN:-}" ]; then
        printf '%s\n' "$LIFEBOAT_BIN"
        return
    fi
    if [ "${1:-}" = --used ] && [ -z "${LIFEBOAT_SANDBOX_PROFILE:-}" ] && [ -f "$BIN_RECORD" ]; then
        cat "$BIN_RECORD"
        return
    fi
    local target="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$target" in /*) ;; *) target="$ROOT/$target" ;; esac
    printf '%s\n' "$target/$PROFILE/lifeboat"
}

build_lifeboat() {
    if [ -n "${LIFEBOAT_BIN:-}" ]; then
        say "using LIFEBOAT_BIN=$LIFEBOAT_BIN (not building)"
        return
    fi
    local flags=()
    [ "$PROFILE" = release ] && flags=(--release)
    if [ ! -x "$(lifeboat_bin)" ]; then
        say "building lifeboat ($PROFILE) for the first time: this compiles matrix-sdk and takes about 6 to 16 minutes on 2 cores (later builds take a minute or two)"
    else
        say "building lifeboat ($PROFILE)"
    fi
    (cd "$ROOT" && cargo build ${flags[@]+"${flags[@]}"} --bin lifeboat) ||
        die "cargo build failed"
}

# The pid in FILE if that process is alive and its command line contains
# PATTERN (so a stale pid file whose pid was reused is not mistaken for it).
live_pid() {
    local file="$1" pattern="$2" pid
    [ -f "$file" ] || return 1
    pid="$(tr -dc 0-9 <"$file")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern" || return 1
    printf '%s\n' "$pid"
}

daemon_pid() { live_pid "$PIDFILE" synapse_harness.py; }
neighbour_pid() { live_pid "$NB_PIDFILE" synapse_harness.py; }
sink_pid() { live_pid "$SINK_PIDFILE" smtp_sink.py; }
serve_pid() { live_pid "$SERVE_PIDFILE" " serve"; }

# SIGTERM, then wait up to $3 seconds for the process to exit.
stop_pid() {
    local pid="$1" what="$2" seconds="$3" _
    say "stopping $what (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for _ in $(seq $((seconds * 10))); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    die "$what (pid $pid) did not exit after $seconds s"
}

stop_daemon() {
    local pid
    if ! pid="$(daemon_pid)"; then
        rm -f "$PIDFILE"
        return 1
    fi
    # The harness gives Synapse 10 s before SIGKILL; allow for that.
    stop_pid "$pid" "Synapse (harness)" 30
}

stop_neighbour() {
    local pid
    if ! pid="$(neighbour_pid)"; then
        rm -f "$NB_PIDFILE"
        return 1
    fi
    stop_pid "$pid" "the neighbour Synapse (harness)" 30
}

stop_serve() {
    local pid
    if ! pid="$(serve_pid)"; then
        rm -f "$SERVE_PIDFILE"
        return 1
    fi
    # serve's own grace for sends in flight is 20 s.
    stop_pid "$pid" "lifeboat serve" 30
    rm -f "$SERVE_PIDFILE"
}

stop_sink() {
    local pid keeper stopped=1
    # Looked up first: once its stdin closes the sink exits on its own, and
    # may be gone before a later look.
    pid="$(sink_pid)" || pid=""
    if keeper="$(live_pid "$KEEPER_PIDFILE" sleep)"; then
        kill -TERM "$keeper" 2>/dev/null || true
    fi
    if [ -n "$pid" ]; then
        # Its stdin just closed, which stops it; SIGTERM too, to be sure.
        stop_pid "$pid" "the SMTP sink" 15
        stopped=0
    fi
    rm -f "$SINK_PIDFILE" "$KEEPER_PIDFILE" "$MAIL_DIR/.stdin"
    return "$stopped"
}

# harness.json field, read with the stdlib json module.
json_field() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

port_free() {
    python3 -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$1"
}

# A TOML basic string.
toml_str() {
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}

# Secrets go into files only we can read.
write_secret() {
    (umask 077 && printf '%s' "$2" >"$1.tmp" && mv -f "$1.tmp" "$1")
}

start_harness() {
    # The harness prints its JSON line once Synapse is ready and registered,
    # then detaches; it also keeps the line in DIR/harness.json.
    local dir="$1"
    shift
    "$@" >/dev/null || die "Synapse did not start; see $(show "$dir")/harness.log and homeserver.log"
}

# Our server name and the bot's ID, as the harness reported them.
names() {
    [ -f "$SYN_DIR/harness.json" ] || die "no sandbox here; run tools/sandbox.sh start first"
    SERVER_NAME="$(json_field "$SYN_DIR/harness.json" server_name)"
    BOT_USER="@lifeboat:$SERVER_NAME"
}

# Appends "FLAG PORT" to PORT_ARGS when PORT is free (else the harness
# picks a free one).
PORT_ARGS=()
want_port() {
    if port_free "$2"; then
        PORT_ARGS+=("$1" "$2")
    else
        say "port $2 is busy; using a free port instead"
    fi
}

# The neighbour homeserver: another Synapse on loopback that federates
# with ours, and one person on it. It never loses anything.
start_neighbour() {
    local py="$1" url token name
    PORT_ARGS=()
    if [ ! -f "$NB_DIR/homeserver.yaml" ] && [ "${LIFEBOAT_SANDBOX_SYNAPSE_PORT:-}" != 0 ]; then
        want_port --port "$DEFAULT_NB_PORT"
        want_port --federation-port "$DEFAULT_NB_FED_PORT"
    fi
    say "starting the neighbour Synapse in $(show "$NB_DIR")"
    start_harness "$NB_DIR" "$py" "$HARNESS" --dir "$NB_DIR" --federation --daemon --pidfile "$NB_PIDFILE" \
        ${PORT_ARGS[@]+"${PORT_ARGS[@]}"}
    url="$(json_field "$NB_DIR/harness.json" url)"
    token="$(json_field "$NB_DIR/harness.json" admin_token)"
    name="$(json_field "$NB_DIR/harness.json" server_name)"
    mx make-user "$url" "$token" "@$NB_USER:$name" "$NB_USER-sandbox" "Nina Neighbour" >/dev/null
    say "the neighbour homeserver $name runs at $url, with @$NB_USER:$name"
}

run_lifeboat() {
    local bin rc=0
    bin="$(lifeboat_bin --used)"
    say "lifeboat --config $(show "$CONFIG") $*"
    "$bin" --config "$CONFIG" "$@" || rc=$?
    return "$rc"
}

# The SMTP sink, detached, its stdin held open by a `sleep` through a fifo
# (it stops when its stdin closes). Prints the port it listens on.
start_sink() {
    local py="$1" pid keeper port="" _
    mkdir -p "$MAIL_DIR"
    rm -f "$MAIL_DIR/.stdin" "$MAIL_DIR/sink.out"
    mkfifo "$MAIL_DIR/.stdin"
    setsid "$py" "$SINK" --dir "$MAIL_DIR" <"$MAIL_DIR/.stdin" >"$MAIL_DIR/sink.out" 2>>"$MAIL_DIR/sink.log" &
    pid=$!
    setsid sleep infinity >"$MAIL_DIR/.stdin" 2>/dev/null </dev/null &
    keeper=$!
    printf '%s\n' "$pid" >"$SINK_PIDFILE"
    printf '%s\n' "$keeper" >"$KEEPER_PIDFILE"
    for _ in $(seq 150); do
        port="$(head -n 1 "$MAIL_DIR/sink.out" 2>/dev/null |
            python3 -c 'import json, sys; print(json.load(sys.stdin)["port"])' 2>/dev/null)" && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$port" ] || die "the SMTP sink did not start; see $(show "$MAIL_DIR")/sink.log"
    printf '%s\n' "$port"
}

web_port() {
    local port="${LIFEBOAT_SANDBOX_WEB_PORT:-}"
    if [ -z "$port" ] && [ -f "$WEB_PORT_FILE" ]; then
        port="$(tr -dc 0-9 <"$WEB_PORT_FILE")"
    fi
    [ -n "$port" ] || port="$DEFAULT_WEB_PORT"
    if [ "$port" = 0 ] || ! port_free "$port"; then
        [ "$port" = 0 ] || warn "port $port is busy; the web page gets a free port instead"
        port="$(mx free-port)"
    fi
    printf '%s\n' "$port"
}

# The admin room now: the one the bot made after a wipe, else the one start made.
admin_room() {
    local room=""
    [ -f "$SANDBOX/lifeboat.db" ] && room="$(mx bot-room "$SANDBOX/lifeboat.db")"
    [ -n "$room" ] || room="$(cat "$ROOM_FILE" 2>/dev/null || true)"
    printf '%s\n' "$room"
}

wait_healthz() {
    local url="$1" pid="$2" _
    for _ in $(seq 120); do
        mx healthz "$url/healthz" && return 0
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

# Waits up to $1 seconds for the bot to join room $2.
wait_bot_joined() {
    local seconds="$1" room="$2" url token _
    url="$(json_field "$SYN_DIR/harness.json" url)"
    token="$(json_field "$SYN_DIR/harness.json" admin_token)"
    for _ in $(seq "$seconds"); do
        [ "$(mx membership "$url" "$token" "$room" "$BOT_USER")" = join ] && return 0
        sleep 1
    done
    return 1
}

print_help() {
    local url bin web admin_pw room nb_url nb_name rooms
    names
    url="$(json_field "$SYN_DIR/harness.json" url)"
    nb_url="$(json_field "$NB_DIR/harness.json" url)"
    nb_name="$(json_field "$NB_DIR/harness.json" server_name)"
    rooms="$(python3 -c 'import json, sys; print(", ".join(r["name"] for r in json.load(open(sys.argv[1]))["rooms"]))' \
        "$ROOMS_FILE" 2>/dev/null || echo '(none)')"
    bin="$(show "$(lifeboat_bin --used)")"
    web="$(cat "$SANDBOX/web_url" 2>/dev/null || echo '(web page off)')"
    admin_pw="$(cat "$SYN_DIR/admin_password" 2>/dev/null || echo '?')"
    room="$(admin_room)"
    cat <<HELP

The sandbox is running.
  Synapse      $url  (server name $SERVER_NAME, loopback only)
               log: $(show "$SYN_DIR")/homeserver.log
  Neighbour    $nb_url  (server name $nb_name), federating with ours;
               @$NB_USER:$nb_name  password: $NB_USER-sandbox
  Demo users   alice, bob, carol (emails <name>@example.org),
               dave (locked), erin (deactivated); passwords: <name>-sandbox
  Admin        @admin:$SERVER_NAME  password: $admin_pw
               (log in with any Matrix client at $url; lifeboat's bot obeys it)
  Admin room   ${room:-(none)}  (the bot $BOT_USER is in it)
  Rooms        $rooms
               (see alice's: tools/sandbox.sh rooms alice)
  Web page     $web
  Mail         every mail lifeboat sends lands in $(show "$MAIL_DIR")/maildir/new/*.eml
               read them with: tools/sandbox.sh mail   (and: tools/sandbox.sh mail N)
  serve        lifeboat serve, log: $(show "$SERVE_LOG")   (watch.interval $WATCH_INTERVAL)
  Config       $(show "$CONFIG")    registry: $(show "$SANDBOX")/lifeboat.db

Try:
  $bin --config $(show "$CONFIG") users list
  $bin --config $(show "$CONFIG") rooms list
  tools/sandbox.sh say '!lifeboat status'     # the bot, as the admin
  tools/sandbox.sh incident     # the seed incident: our Synapse loses its database
  tools/sandbox.sh status

Stop it with:  tools/sandbox.sh stop      (add --clean to delete $(show "$SANDBOX"))
HELP
}

cmd_start() {
    local pid py rc=0 token secret url smtp_port web_port room bin nb_url nb_name
    if pid="$(daemon_pid)" && neighbour_pid >/dev/null && serve_pid >/dev/null && sink_pid >/dev/null; then
        say "the sandbox is already running (harness pid $pid)"
        print_help
        return 0
    fi
    # Whatever is left of an earlier run goes first; then all three start.
    stop_serve || true
    stop_sink || true
    stop_daemon || true
    stop_neighbour || true
    if [ -f "$SYN_DIR/homeserver.yaml" ] && ! grep -q '^tls_certificate_path:' "$SYN_DIR/homeserver.yaml"; then
        die "$(show "$SANDBOX") was made before the sandbox had a neighbour homeserver (its Synapse does not federate); start afresh: tools/sandbox.sh stop --clean; tools/sandbox.sh start"
    fi
    mkdir -p "$SANDBOX"
    py="$(venv_python)"
    build_lifeboat
    bin="$(lifeboat_bin)"
    [ -x "$bin" ] || die "no lifeboat binary at $bin"
    printf '%s\n' "$bin" >"$BIN_RECORD"

    smtp_port="$(start_sink "$py")"
    say "the SMTP sink listens on 127.0.0.1:$smtp_port; mail goes to $(show "$MAIL_DIR")"

    # The ports are chosen once; later starts reuse the existing
    # homeserver.yaml. Ours is named after its federation port.
    # The demo users are made on the first start only: after an incident
    # their IDs are held or claimed, and "admin" is no server admin any more.
    PORT_ARGS=()
    local demo=()
    if [ ! -f "$SYN_DIR/homeserver.yaml" ]; then
        demo=(--demo)
        local want="${LIFEBOAT_SANDBOX_SYNAPSE_PORT:-$DEFAULT_PORT}"
        if [ "$want" != 0 ]; then
            want_port --port "$want"
            want_port --federation-port "$DEFAULT_FED_PORT"
        fi
    fi
    say "starting our Synapse${demo[0]:+ with demo users} in $(show "$SYN_DIR")"
    start_harness "$SYN_DIR" "$py" "$HARNESS" --dir "$SYN_DIR" --federation --daemon --pidfile "$PIDFILE" \
        ${demo[@]+"${demo[@]}"} ${PORT_ARGS[@]+"${PORT_ARGS[@]}"}
    names
    start_neighbour "$py"
    nb_url="$(json_field "$NB_DIR/harness.json" url)"
    nb_name="$(json_field "$NB_DIR/harness.json" server_name)"

    url="$(json_field "$SYN_DIR/harness.json" url)"
    token="$(json_field "$SYN_DIR/harness.json" admin_token)"
    secret="$(json_field "$SYN_DIR/harness.json" shared_secret)"
    write_secret "$SANDBOX/admin_token" "$token"
    write_secret "$SANDBOX/shared_secret" "$secret"

    # The bot's account, a Synapse admin with a password kept in
    # sandbox/bot_password (after a wipe lifeboat re-creates it by itself).
    case "$(mx register-bot "$url" "$SANDBOX/shared_secret" lifeboat "$SANDBOX/bot_password")" in
        registered) say "registered the bot account $BOT_USER" ;;
        *) say "the bot account $BOT_USER exists" ;;
    esac
    # The admin room: the one the bot made after an incident (it goes back
    # there), else the one an earlier start made, else a new one made by
    # @admin, who invites the bot; the bot joins it when serve starts.
    room="$(admin_room)"
    if [ -n "$room" ] && [ "$room" != "$(cat "$ROOM_FILE" 2>/dev/null || true)" ]; then
        say "the admin room is the one the bot made after the incident: $room"
    elif [ -z "$room" ] || [ "$(mx membership "$url" "$token" "$room" "@admin:$SERVER_NAME")" != join ]; then
        room="$(mx make-room "$url" "$token" "$BOT_USER" "lifeboat admin (sandbox)")"
        printf '%s\n' "$room" >"$ROOM_FILE"
        say "@admin:$SERVER_NAME made the admin room $room and invited $BOT_USER"
    fi
    # The demo rooms, made once (after an incident, what is left of them is
    # lifeboat's to bring back). The sync below records them.
    if [ ! -f "$ROOMS_FILE" ]; then
        say "making the demo rooms: alice and bob on $SERVER_NAME, $NB_USER on $nb_name"
        mx demo-rooms "$url" "$nb_url" "$token" "$SERVER_NAME" "$nb_name" "$NB_USER" "$ROOMS_FILE" |
            sed 's/^/    /' || die "making the demo rooms failed"
    fi

    web_port="$(web_port)"
    printf '%s\n' "$web_port" >"$WEB_PORT_FILE"
    printf 'http://127.0.0.1:%s/\n' "$web_port" >"$SANDBOX/web_url"
    cat >"$CONFIG" <<TOML
# Written by tools/sandbox.sh for the local sandbox (rewritten on every start).
[homeserver]
url = $(toml_str "$url")
server_name = "$SERVER_NAME"
admin_token_file = $(toml_str "$SANDBOX/admin_token")
registration_shared_secret_file = $(toml_str "$SANDBOX/shared_secret")

[registry]
url = $(toml_str "sqlite://$SANDBOX/lifeboat.db")

[watch]
interval = "$WATCH_INTERVAL"

[email]
smtp_url = "smtp://127.0.0.1:$smtp_port"
from = "Lifeboat <lifeboat@example.org>"

[alerts]
email = ["$ALERT_EMAIL"]

[bot]
user_id = "$BOT_USER"
password_file = $(toml_str "$SANDBOX/bot_password")
admin_room = "$room"
admins = ["@admin:$SERVER_NAME"]
store_path = $(toml_str "$SANDBOX/bot-store")

[web]
bind = "127.0.0.1:$web_port"
public_url = "http://127.0.0.1:$web_port"
admin_contact = "$ALERT_EMAIL"
TOML
    say "wrote $(show "$CONFIG")"

    run_lifeboat sync || rc=$?
    [ "$rc" -eq 0 ] || warn "lifeboat sync exited with $rc"
    rc=0
    run_lifeboat check || rc=$?
    case "$rc" in
        0) say "lifeboat check: no loss (exit 0)" ;;
        3) warn "lifeboat check reports a loss (exit 3) on a fresh sandbox" ;;
        *) warn "lifeboat check could not tell (exit $rc)" ;;
    esac
    # The admin gets notices too (the demo users' emails came from Synapse).
    run_lifeboat contacts add "@admin:$SERVER_NAME" "$ALERT_EMAIL" >/dev/null ||
        warn "could not add the admin's contact"
    # The seed incident's lessons: a backup of the registry, and a rehearsal
    # (drill also mails a test message to alerts.email: see `mail`).
    run_lifeboat backup --out "$SANDBOX/registry-backup.jsonl" || warn "lifeboat backup failed"
    rc=0
    run_lifeboat drill || rc=$?
    [ "$rc" -eq 0 ] || warn "lifeboat drill exited $rc"

    say "starting lifeboat serve (web, bot, watcher); log: $(show "$SERVE_LOG")"
    NO_COLOR=1 setsid "$bin" -v --config "$CONFIG" serve >>"$SERVE_LOG" 2>&1 </dev/null &
    pid=$!
    printf '%s\n' "$pid" >"$SERVE_PIDFILE"
    wait_healthz "http://127.0.0.1:$web_port" "$pid" ||
        die "lifeboat serve did not answer /healthz; see $(show "$SERVE_LOG")"
    say "lifeboat serve answers on http://127.0.0.1:$web_port/healthz"
    if wait_bot_joined 60 "$room"; then
        say "the bot joined the admin room"
    else
        warn "the bot has not joined the admin room $room yet; see $(show "$SERVE_LOG")"
    fi
    print_help
}

cmd_stop() {
    local clean=false
    case "${1:-}" in
        "") ;;
        --clean) clean=true ;;
        *) die "usage: tools/sandbox.sh stop [--clean]" ;;
    esac
    stop_serve || say "lifeboat serve was not running"
    stop_sink || say "the SMTP sink was not running"
    stop_daemon || say "Synapse was not running"
    stop_neighbour || say "the neighbour Synapse was not running"
    say "stopped"
    if $clean; then
        rm -rf "$SANDBOX"
        say "removed $(show "$SANDBOX")"
    fi
}

# Waits up to $1 seconds for a mail whose subject contains $2; prints its number.
wait_mail() {
    local seconds="$1" pattern="$2" _ n
    for _ in $(seq "$seconds"); do
        n="$(mx mail "$MAIL_DIR" | grep -F -- "$pattern" | tail -n 1 | awk '{print $1}')" || true
        [ -n "$n" ] && { printf '%s\n' "$n"; return 0; }
        sleep 1
    done
    return 1
}

cmd_incident() {
    local py rc=0 bin n room old_room url admin_pw
    [ -f "$SYN_DIR/homeserver.yaml" ] && [ -f "$CONFIG" ] ||
        die "no sandbox here; run tools/sandbox.sh start first"
    bin="$(lifeboat_bin --used)"
    [ -x "$bin" ] || die "no lifeboat binary at $bin; run tools/sandbox.sh start first"
    py="$(venv_python)"
    names
    old_room="$(admin_room)"

    say "the seed incident: our Synapse ($SERVER_NAME) loses its database; the neighbour keeps running"
    stop_daemon || true
    rm -f "$SYN_DIR"/homeserver.db "$SYN_DIR"/homeserver.db-wal \
        "$SYN_DIR"/homeserver.db-shm "$SYN_DIR"/homeserver.db-journal
    say "deleted $(show "$SYN_DIR")/homeserver.db; starting Synapse again on the same config"
    # Same config (port, shared secret), empty database, no demo users, and
    # no "admin" either: lifeboat holds that ID for its owner, who takes it
    # back below. sandbox/admin_token keeps the OLD token on purpose, the
    # way lifeboat would hold it after a real wipe.
    start_harness "$SYN_DIR" "$py" "$HARNESS" --dir "$SYN_DIR" --no-admin --daemon --pidfile "$PIDFILE"
    url="$(json_field "$SYN_DIR/harness.json" url)"
    say "Synapse is back at $url with an empty database: every account is gone"

    run_lifeboat check || rc=$?
    case "$rc" in
        3) say "lifeboat check exited 3: loss detected, as it should be" ;;
        0) warn "lifeboat check exited 0 (no loss) after a wipe: that is a bug"; return 1 ;;
        *) warn "lifeboat check exited $rc (could not tell); expected 3" ;;
    esac

    if ! serve_pid >/dev/null; then
        warn "lifeboat serve is not running, so nobody is alerted; run tools/sandbox.sh start"
        return 0
    fi
    say "waiting for lifeboat serve to notice (it looks every $WATCH_INTERVAL) ..."
    if n="$(wait_mail 120 "suspected database reset")"; then
        say "the alert mail arrived: tools/sandbox.sh mail $n"
    else
        warn "no alert mail within 2 minutes; see $(show "$SERVE_LOG")"
    fi
    room=""
    for _ in $(seq 60); do
        room="$(admin_room)"
        [ -n "$room" ] && [ "$room" != "$old_room" ] && break
        room=""
        sleep 1
    done
    if [ -n "$room" ]; then
        say "the bot re-created $BOT_USER through the shared secret and made a new admin room $room"
    else
        warn "the bot has not made a new admin room yet; see $(show "$SERVE_LOG")"
    fi
    # Every lost ID is held for its owner now; the admin takes theirs back
    # on the lifeboat host (everyone else follows the claim link in their
    # notice), and the bot invites them as soon as it is theirs again.
    for _ in $(seq 60); do
        "$bin" --config "$CONFIG" users show "@admin:$SERVER_NAME" --json 2>/dev/null | grep -q '"state": "held"' && break
        sleep 1
    done
    say "lifeboat holds every lost ID for its owner: $(show "$bin") --config $(show "$CONFIG") holds list"
    admin_pw="$("$py" -c 'import secrets; print(secrets.token_urlsafe(18))')"
    if printf '%s\n' "$admin_pw" | run_lifeboat holds claim "@admin:$SERVER_NAME" >/dev/null; then
        write_secret "$SYN_DIR/admin_password" "$admin_pw"
        mx login-admin "$url" admin "$SYN_DIR/admin_password" "$SYN_DIR/harness.json" >/dev/null ||
            warn "could not sign in as @admin:$SERVER_NAME"
        say "the admin took @admin:$SERVER_NAME back (holds claim); new password $admin_pw"
        say "the bot invites @admin:$SERVER_NAME to its new room (accept it in your Matrix client; tools/sandbox.sh say joins it)"
    else
        warn "could not hand @admin:$SERVER_NAME back; see \`lifeboat holds list\`"
    fi
    cat <<NEXT

What happened: Synapse lost its database (the seed incident). lifeboat serve
saw the admin token rejected by a Synapse that still answers, called it a
suspected database reset, got back in through the shared secret, synced,
held every lost ID for its owner (re-created and locked, so no registration
token can take it), and raised the alert. The admin took their ID back with
\`lifeboat holds claim\`:
  tools/sandbox.sh mail                 the alert mail to $ALERT_EMAIL
  tail $(show "$SERVE_LOG")
  tools/sandbox.sh say '!lifeboat status'

Next, tell everyone, from the CLI:
  printf 'Our homeserver lost its database. Take your Matrix ID back with the link below.\\n' > $(show "$SANDBOX")/postmortem.md
  $(show "$bin") --config $(show "$CONFIG") incident open --title "Database lost" --postmortem $(show "$SANDBOX")/postmortem.md
  $(show "$bin") --config $(show "$CONFIG") notify 1 --yes
or from the bot (as @admin, in your Matrix client or with tools/sandbox.sh say):
  tools/sandbox.sh say '!lifeboat incident open Database lost
  Our homeserver lost its database. Take your Matrix ID back with the link below.'
  tools/sandbox.sh say '!lifeboat notify 1'
  tools/sandbox.sh say '!lifeboat notify 1 confirm'
Then read the notices (tools/sandbox.sh mail N): each has the person's claim
link; open alice's in a browser and choose a new password, then sign in as
@alice:$SERVER_NAME. Lost the link? Ask on $(cat "$SANDBOX/web_url" 2>/dev/null)token
as alice@example.org: a fresh one comes by mail.

The rooms: those shared with the neighbour live on there, those that lived
only here are lost:
  $(show "$bin") --config $(show "$CONFIG") rooms list
Once alice's ID is hers again, serve's watcher joins her back into the
surviving ones (or at once: rooms rejoin); see them with
  tools/sandbox.sh rooms alice 'HER NEW PASSWORD'
and make the lost ones again, inviting their former members:
  $(show "$bin") --config $(show "$CONFIG") rooms recreate --all
NEXT
}

cmd_mail() {
    [ $# -le 1 ] || die "usage: tools/sandbox.sh mail [N]"
    [ -d "$MAIL_DIR" ] || die "no mail folder; run tools/sandbox.sh start first"
    mx mail "$MAIL_DIR" "${1:-}"
}

cmd_say() {
    local url token room
    [ $# -ge 1 ] || die "usage: tools/sandbox.sh say TEXT  (e.g. say '!lifeboat help')"
    daemon_pid >/dev/null || die "Synapse is not running; run tools/sandbox.sh start"
    names
    url="$(json_field "$SYN_DIR/harness.json" url)"
    token="$(json_field "$SYN_DIR/harness.json" admin_token)"
    room="$(admin_room)"
    [ -n "$room" ] || die "no admin room yet"
    printf '@admin> %s\n' "$*"
    mx say "$url" "$token" "@admin:$SERVER_NAME" "$BOT_USER" "$room" "$*" "${LIFEBOAT_SANDBOX_SAY_WAIT:-60}"
}

cmd_rooms() {
    local url alias
    [ $# -ge 1 ] && [ $# -le 2 ] || die "usage: tools/sandbox.sh rooms NAME [PASSWORD]  (e.g. rooms alice)"
    daemon_pid >/dev/null || die "Synapse is not running; run tools/sandbox.sh start"
    names
    url="$(json_field "$SYN_DIR/harness.json" url)"
    alias="$(json_field "$ROOMS_FILE" alias 2>/dev/null || echo "#harbour:$SERVER_NAME")"
    mx rooms-of "$url" "$1" "${2:-$1-sandbox}" "$alias"
}

cmd_status() {
    local pid url running=false
    if pid="$(daemon_pid)"; then
        running=true
        url="$(json_field "$SYN_DIR/harness.json" url)"
        say "Synapse: running, harness pid $pid, Synapse pid $(json_field "$SYN_DIR/harness.json" pid), $url, server name $(json_field "$SYN_DIR/harness.json" server_name)"
        if command -v curl >/dev/null 2>&1; then
            printf '    server_version: %s\n' \
                "$(curl -s --max-time 5 --noproxy '*' "$url/_synapse/admin/v1/server_version" || echo unreachable)"
        fi
    else
        say "Synapse: not running"
    fi
    if pid="$(neighbour_pid)"; then
        running=true
        say "neighbour Synapse: running, harness pid $pid, Synapse pid $(json_field "$NB_DIR/harness.json" pid), $(json_field "$NB_DIR/harness.json" url), server name $(json_field "$NB_DIR/harness.json" server_name)"
    else
        say "neighbour Synapse: not running"
    fi
    if pid="$(sink_pid)"; then
        running=true
        say "SMTP sink: running, pid $pid, $(mx mail "$MAIL_DIR" | grep -c '^ *[0-9]' || true) mail(s) in $(show "$MAIL_DIR")"
    else
        say "SMTP sink: not running"
    fi
    if pid="$(serve_pid)"; then
        running=true
        if mx healthz "$(cat "$SANDBOX/web_url")healthz"; then
            say "lifeboat serve: running, pid $pid, $(cat "$SANDBOX/web_url") (healthz ok), log $(show "$SERVE_LOG")"
        else
            say "lifeboat serve: running, pid $pid, but /healthz does not answer; see $(show "$SERVE_LOG")"
        fi
    else
        say "lifeboat serve: not running"
    fi
    if ! $running && [ -d "$SANDBOX" ]; then
        say "files are in $(show "$SANDBOX"); tools/sandbox.sh start resumes it"
    fi
    return 0
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        start) [ $# -eq 0 ] || die "usage: tools/sandbox.sh start"; cmd_start ;;
        stop) cmd_stop "$@" ;;
        incident | wipe) [ $# -eq 0 ] || die "usage: tools/sandbox.sh incident"; cmd_incident ;;
        mail) cmd_mail "$@" ;;
        say) cmd_say "$@" ;;
        rooms) cmd_rooms "$@" ;;
        status) [ $# -eq 0 ] || die "usage: tools/sandbox.sh status"; cmd_status ;;
        *)
            # The header comment above is the usage text.
            awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' \
                "${BASH_SOURCE[0]}" >&2
            exit 2
            ;;
    esac
}

main "$@"
