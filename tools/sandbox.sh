#!/usr/bin/env bash
# lifeboat newcomer sandbox: a throwaway Synapse on 127.0.0.1 with demo
# accounts, and a lifeboat config pointing at it. Everything lives in
# ./sandbox (git-ignored).
#
# Usage (from the repository root):
#   tools/sandbox.sh start          build lifeboat, start Synapse, sync, check
#   tools/sandbox.sh stop [--clean] stop Synapse (--clean: also delete ./sandbox)
#   tools/sandbox.sh wipe           lose Synapse's database, then `lifeboat check`
#   tools/sandbox.sh status         is it running, where, with what
#
# Environment:
#   LIFEBOAT_SANDBOX_PROFILE=release  build and use target/release (default
#                                   debug: quicker to build on a fresh machine)
#   LIFEBOAT_BIN=/path/to/lifeboat  use this binary and skip cargo build
#   LIFEBOAT_SYNAPSE_VENV           where the Synapse venv lives (synapse-venv.sh)
#   LIFEBOAT_SANDBOX_DIR            use this folder instead of ./sandbox (the
#                                   test suite runs the sandbox this way)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SANDBOX="${LIFEBOAT_SANDBOX_DIR:-$ROOT/sandbox}"
SYN_DIR="$SANDBOX/synapse"
PIDFILE="$SYN_DIR/harness.pid"
CONFIG="$SANDBOX/lifeboat.toml"
BIN_RECORD="$SANDBOX/lifeboat-bin"   # the binary start used, for wipe
HARNESS="$ROOT/tools/synapse_harness.py"
PROFILE="${LIFEBOAT_SANDBOX_PROFILE:-debug}"
DEFAULT_PORT=8008

say() { printf '==> %s\n' "$*"; }
warn() { printf 'sandbox: %s\n' "$*" >&2; }
die() { warn "error: $*"; exit 1; }

case "$PROFILE" in
    release | debug) ;;
    *) die "LIFEBOAT_SANDBOX_PROFILE must be release or debug, not '$PROFILE'" ;;
esac

venv_python() {
    local py
    py="$("$ROOT/tools/synapse-venv.sh" | tail -n 1)"
    [ -x "$py" ] || die "tools/synapse-venv.sh did not produce a python"
    printf '%s\n' "$py"
}

# Which lifeboat to run: LIFEBOAT_BIN, else (for wipe) the one start used,
# else the cargo output for the profile.
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
    say "building lifeboat ($PROFILE)"
    (cd "$ROOT" && cargo build ${flags[@]+"${flags[@]}"} --bin lifeboat) ||
        die "cargo build failed"
}

# The harness daemon's pid, if it is running (checked against its command
# line, so a stale pidfile whose pid was reused is not mistaken for it).
daemon_pid() {
    local pid
    [ -f "$PIDFILE" ] || return 1
    pid="$(tr -dc 0-9 <"$PIDFILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q synapse_harness.py || return 1
    printf '%s\n' "$pid"
}

stop_daemon() {
    local pid _
    if ! pid="$(daemon_pid)"; then
        rm -f "$PIDFILE"
        return 1
    fi
    say "stopping Synapse (harness pid $pid)"
    kill -TERM "$pid"
    # The harness gives Synapse 10 s before SIGKILL; allow for that.
    for _ in $(seq 300); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    die "harness pid $pid did not exit after 30 s"
}

# harness.json field, read with the stdlib json module.
json_field() {
    python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"
}

port_free() {
    "$1" -c '
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError:
    sys.exit(1)' "$2"
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
    # then detaches; it also keeps the line in $SYN_DIR/harness.json.
    "$@" >/dev/null || die "Synapse did not start; see $SYN_DIR/harness.log and $SYN_DIR/homeserver.log"
}

run_lifeboat() {
    local bin rc=0
    bin="$(lifeboat_bin --used)"
    say "lifeboat --config sandbox/lifeboat.toml $*"
    "$bin" --config "$CONFIG" "$@" || rc=$?
    return "$rc"
}

print_help() {
    local url bin
    url="$(json_field "$SYN_DIR/harness.json" url)"
    bin="$(lifeboat_bin --used)"
    bin="${bin#"$ROOT"/}"
    cat <<EOF

The sandbox is running.
  Synapse      $url  (server name lifeboat.test, loopback only)
               logs: sandbox/synapse/homeserver.log
  Demo users   alice, bob, carol (emails <name>@example.org),
               dave (locked), erin (deactivated); passwords: <name>-sandbox
  Admin token  sandbox/admin_token      shared secret: sandbox/shared_secret
  Config       sandbox/lifeboat.toml    registry: sandbox/lifeboat.db

Try:
  $bin --config sandbox/lifeboat.toml sync
  $bin --config sandbox/lifeboat.toml check
  curl -s -H "Authorization: Bearer \$(cat sandbox/admin_token)" \\
    '$url/_synapse/admin/v2/users?deactivated=true&locked=true&limit=100'
  tools/sandbox.sh wipe      # simulate losing Synapse's database, then check
  tools/sandbox.sh status

Stop it with:  tools/sandbox.sh stop      (add --clean to delete ./sandbox)
EOF
}

cmd_start() {
    local pid py port_args=() rc=0 token secret url
    if pid="$(daemon_pid)"; then
        say "the sandbox is already running (harness pid $pid)"
        print_help
        return 0
    fi
    mkdir -p "$SANDBOX"
    py="$(venv_python)"
    build_lifeboat
    [ -x "$(lifeboat_bin)" ] || die "no lifeboat binary at $(lifeboat_bin)"
    lifeboat_bin >"$BIN_RECORD"

    # The port is chosen once; later starts reuse the existing homeserver.yaml.
    if [ ! -f "$SYN_DIR/homeserver.yaml" ]; then
        if port_free "$py" "$DEFAULT_PORT"; then
            port_args=(--port "$DEFAULT_PORT")
        else
            say "port $DEFAULT_PORT is busy; using a free port instead"
        fi
    fi
    say "starting Synapse with demo users in sandbox/synapse"
    start_harness "$py" "$HARNESS" --dir "$SYN_DIR" --daemon --pidfile "$PIDFILE" --demo \
        ${port_args[@]+"${port_args[@]}"}

    url="$(json_field "$SYN_DIR/harness.json" url)"
    token="$(json_field "$SYN_DIR/harness.json" admin_token)"
    secret="$(json_field "$SYN_DIR/harness.json" shared_secret)"
    write_secret "$SANDBOX/admin_token" "$token"
    write_secret "$SANDBOX/shared_secret" "$secret"
    cat >"$CONFIG" <<EOF
# Written by tools/sandbox.sh for the local sandbox Synapse.
[homeserver]
url = $(toml_str "$url")
server_name = "lifeboat.test"
admin_token_file = $(toml_str "$SANDBOX/admin_token")
registration_shared_secret_file = $(toml_str "$SANDBOX/shared_secret")

[registry]
url = $(toml_str "sqlite://$SANDBOX/lifeboat.db")
EOF
    say "Synapse is up at $url; wrote sandbox/lifeboat.toml"

    run_lifeboat sync || rc=$?
    [ "$rc" -eq 0 ] || warn "lifeboat sync exited with $rc"
    rc=0
    run_lifeboat check || rc=$?
    case "$rc" in
        0) say "lifeboat check: no loss (exit 0)" ;;
        3) warn "lifeboat check reports a loss (exit 3) on a fresh sandbox" ;;
        *) warn "lifeboat check could not tell (exit $rc)" ;;
    esac
    print_help
}

cmd_stop() {
    local clean=false
    case "${1:-}" in
        "") ;;
        --clean) clean=true ;;
        *) die "usage: tools/sandbox.sh stop [--clean]" ;;
    esac
    if stop_daemon; then
        say "stopped"
    else
        say "Synapse was not running"
    fi
    if $clean; then
        rm -rf "$SANDBOX"
        say "removed ./sandbox"
    fi
}

cmd_wipe() {
    local py rc=0 bin
    [ -f "$SYN_DIR/homeserver.yaml" ] && [ -f "$CONFIG" ] ||
        die "no sandbox here; run tools/sandbox.sh start first"
    bin="$(lifeboat_bin --used)"
    [ -x "$bin" ] || die "no lifeboat binary at $bin; run tools/sandbox.sh start first"
    py="$(venv_python)"

    say "simulating the incident: Synapse loses its database"
    stop_daemon || true
    rm -f "$SYN_DIR"/homeserver.db "$SYN_DIR"/homeserver.db-wal \
        "$SYN_DIR"/homeserver.db-shm "$SYN_DIR"/homeserver.db-journal
    # Same config (port, shared secret), empty database, no demo users. The
    # harness registers a new "admin"; sandbox/admin_token keeps the OLD token
    # on purpose, the way lifeboat would hold it after a real wipe.
    start_harness "$py" "$HARNESS" --dir "$SYN_DIR" --daemon --pidfile "$PIDFILE"
    say "Synapse is back with an empty database; its new admin token is in sandbox/synapse/harness.json"

    run_lifeboat check || rc=$?
    case "$rc" in
        3) say "lifeboat check exited 3: loss detected, as it should be" ;;
        0) warn "lifeboat check exited 0 (no loss) after a wipe: that is a bug"; return 1 ;;
        *) warn "lifeboat check exited $rc (could not tell); expected 3"; return 1 ;;
    esac
}

cmd_status() {
    local pid url
    if ! pid="$(daemon_pid)"; then
        say "the sandbox is not running"
        [ -d "$SANDBOX" ] && say "files are in ./sandbox; tools/sandbox.sh start resumes it"
        return 0
    fi
    url="$(json_field "$SYN_DIR/harness.json" url)"
    say "running: harness pid $pid, Synapse pid $(json_field "$SYN_DIR/harness.json" pid), $url"
    if command -v curl >/dev/null 2>&1; then
        printf '    server_version: %s\n' \
            "$(curl -s --max-time 5 --noproxy '*' "$url/_synapse/admin/v1/server_version" || echo unreachable)"
    fi
    printf '    config: sandbox/lifeboat.toml; logs: sandbox/synapse/homeserver.log\n'
}

main() {
    local cmd="${1:-}"
    [ $# -gt 0 ] && shift
    case "$cmd" in
        start) [ $# -eq 0 ] || die "usage: tools/sandbox.sh start"; cmd_start ;;
        stop) cmd_stop "$@" ;;
        wipe) [ $# -eq 0 ] || die "usage: tools/sandbox.sh wipe"; cmd_wipe ;;
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
