#!/usr/bin/env bash
# Benchmarks lifeboat's web page against matrix-registration (the Flask
# token-registration app from PyPI) on loopback with wrk, in one run:
#   lifeboat GET /            (status page with one open incident)
#   lifeboat POST /token      (token request for an address not in the
#                              registry, with a valid CSRF cookie + token;
#                              rate limits raised so every request is served)
#   matrix-registration GET /register  (its registration page)
# Prints requests/s and p50/p99 latency per target.
#
# Usage: tools/bench-web.sh [--debug]   (default: target/release/lifeboat)
# Env: DURATION (default 10s), CONNECTIONS (default 32), THREADS (default 1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
duration=${DURATION:-10s}
connections=${CONNECTIONS:-32}
threads=${THREADS:-1}
profile=release
[[ "${1:-}" == "--debug" ]] && profile=debug
bin="$root/target/$profile/lifeboat"
[[ -x "$bin" ]] || { echo "no $bin: run cargo build --$profile --bin lifeboat first" >&2; exit 1; }
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install -y wrk" >&2; exit 1; }
mr_venv=$("$root/tools/matrix-registration-venv.sh")

work=$(mktemp -d)
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 200); do curl -fs -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "nothing answered at $1" >&2; exit 1
}

# --- lifeboat --------------------------------------------------------------
lb_port=$(free_port)
cat > "$work/lifeboat.toml" <<TOML
[homeserver]
url = "http://127.0.0.1:9"
server_name = "example.org"
retries = 0
timeout = "1s"

[registry]
url = "sqlite://$work/registry.db"

[watch]
interval = "1h"

[web]
bind = "127.0.0.1:$lb_port"
public_url = "http://127.0.0.1:$lb_port"
admin_contact = "admin@example.org"
rate_limit_per_ip = 1000000000
rate_limit_per_target = 1000000000
TOML
"$bin" --config "$work/lifeboat.toml" users list >/dev/null   # creates and migrates the registry
python3 - "$work/registry.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
postmortem = ("# What happened\n\nDuring routine maintenance the database volume was mounted at the wrong path; "
              "when the container was recreated, **every account was lost**.\n\n## What to do now\n\n"
              "1. Ask for a registration token on this page.\n2. Register again with your old username.\n\n"
              "We are sorry. Backups are now taken nightly to another host.\n")
db.execute("INSERT INTO incidents (title, postmortem, scope, opened_at) VALUES (?, ?, 'missing', 1767225600000)",
           ("Database lost during maintenance", postmortem))
db.execute("INSERT INTO incidents (title, postmortem, scope, opened_at, resolved_at) "
           "VALUES ('Federation outage', 'Fixed.', 'all', 1735689600000, 1735776000000)")
db.commit()
PY
RUST_LOG=error "$bin" --config "$work/lifeboat.toml" serve >"$work/lifeboat.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$lb_port/"
curl -s -c "$work/cookies" "http://127.0.0.1:$lb_port/token" > "$work/form.html"
csrf=$(sed -n 's/.*name="csrf" value="\([0-9a-f]*\)".*/\1/p' "$work/form.html")
cookie=$(awk '$6 == "lifeboat_csrf" { print $6 "=" $7 }' "$work/cookies")
cat > "$work/post.lua" <<LUA
wrk.method = "POST"
wrk.body = "who=nobody%40example.org&csrf=$csrf"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Cookie"] = "$cookie"
LUA
code=$(curl -s -o /dev/null -w '%{http_code}' -X POST -H "Cookie: $cookie" \
    --data "who=nobody%40example.org&csrf=$csrf" "http://127.0.0.1:$lb_port/token")
[[ "$code" == 200 ]] || { echo "the token POST answers $code, not 200" >&2; exit 1; }

# --- matrix-registration ----------------------------------------------------
mr_port=$(free_port)
mkdir -p "$work/mr"
cat > "$work/mr/config.yaml" <<YAML
server_location: 'http://127.0.0.1:9'
server_name: 'example.org'
registration_shared_secret: 'bench'
admin_api_shared_secret: 'bench'
base_url: ''
client_redirect: 'https://app.element.io/#/login'
client_logo: 'static/images/element-logo.png'
db: 'sqlite:///{cwd}db.sqlite3'
host: '127.0.0.1'
port: $mr_port
rate_limit: ["1000000000 per minute"]
allow_cors: false
ip_logging: false
logging:
  version: 1
  disable_existing_loggers: false
  root: {level: ERROR, handlers: [console]}
  handlers:
    console: {class: logging.StreamHandler, level: ERROR, stream: 'ext://sys.stderr'}
password: {min_length: 8}
username: {validation_regex: [], invalidation_regex: []}
YAML
(cd "$work/mr" && exec "$mr_venv/bin/matrix-registration" --config-path config.yaml serve >"$work/mr.log" 2>&1) &
pids+=($!)
wait_http "http://127.0.0.1:$mr_port/register"

# --- runs ---------------------------------------------------------------------
run() { # name url [script]
    local out
    out=$(wrk -t"$threads" -c"$connections" -d"$duration" --latency ${3:+-s "$3"} "$2")
    local rps p50 p99 non2xx
    rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
    p50=$(awk '$1 == "50%" { print $2 }' <<<"$out")
    p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    printf '| %-42s | %12s | %9s | %9s | %s |\n' "$1" "$rps" "$p50" "$p99" "${non2xx:-0}"
}
echo "wrk -t$threads -c$connections -d$duration, lifeboat $profile build, $(nproc) cores: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
printf '| %-42s | %12s | %9s | %9s | %s |\n' "target" "requests/s" "p50" "p99" "non-2xx"
printf '|%s|%s|%s|%s|%s|\n' "--------------------------------------------" "--------------" "-----------" "-----------" "---------"
run "lifeboat GET / (status)" "http://127.0.0.1:$lb_port/"
run "lifeboat POST /token (unknown address)" "http://127.0.0.1:$lb_port/token" "$work/post.lua"
run "matrix-registration GET /register" "http://127.0.0.1:$mr_port/register"
