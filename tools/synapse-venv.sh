#!/usr/bin/env bash
# Ensure a Python virtualenv with a pinned Synapse exists, for lifeboat's
# integration tests, benchmark and newcomer sandbox.
#
# Usage: tools/synapse-venv.sh
#   Venv location: ${LIFEBOAT_SYNAPSE_VENV:-$HOME/.cache/lifeboat/synapse-1.163.2}
#   Interpreter used to create it: ${PYTHON:-python3} (Synapse needs >= 3.10)
#
# Prints the absolute path of the venv's python as its only stdout line;
# all progress goes to stderr. Idempotent and safe to run concurrently:
#   - a marker file is written only after a verified install, so a
#     half-finished venv (interrupted pip) is rebuilt on the next run;
#   - a flock(1) lock next to the venv makes concurrent callers wait for the
#     one that installs instead of installing twice;
#   - an existing venv without the marker is adopted if it already has the
#     pinned versions.
set -euo pipefail

SYNAPSE_VERSION=1.163.2
AIOSMTPD_VERSION=1.4.6
# Synapse's PostgreSQL driver, for the harness's --postgres (benchmarks).
PSYCOPG2_VERSION=2.9.13
# The marker records what was installed, so bumping a pin rebuilds the venv.
MARKER_CONTENT="matrix-synapse==${SYNAPSE_VERSION} aiosmtpd==${AIOSMTPD_VERSION} psycopg2-binary==${PSYCOPG2_VERSION}"

say() { printf 'synapse-venv: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

venv="${LIFEBOAT_SYNAPSE_VENV:-$HOME/.cache/lifeboat/synapse-${SYNAPSE_VERSION}}"
case "$venv" in
    /*) ;;
    *) venv="$PWD/$venv" ;;
esac
venv="${venv%/}"
[ -n "$venv" ] || die "refusing to use / as the venv"
python_bin="$venv/bin/python"
marker="$venv/.lifeboat-synapse-ready"
lock="$venv.lock"

marker_ok() {
    [ -f "$marker" ] && [ -x "$python_bin" ] &&
        [ "$(cat "$marker" 2>/dev/null)" = "$MARKER_CONTENT" ]
}

# True when the venv's python imports synapse and both pinned distributions
# are installed at exactly the pinned versions.
versions_ok() {
    [ -x "$python_bin" ] || return 1
    "$python_bin" - "$SYNAPSE_VERSION" "$AIOSMTPD_VERSION" "$PSYCOPG2_VERSION" <<'EOF' >/dev/null 2>&1
import sys
from importlib.metadata import version
import synapse
import aiosmtpd
import psycopg2
want_synapse, want_aiosmtpd, want_psycopg2 = sys.argv[1], sys.argv[2], sys.argv[3]
ok = (synapse.__version__ == want_synapse
      and version("matrix-synapse") == want_synapse
      and version("aiosmtpd") == want_aiosmtpd
      and version("psycopg2-binary") == want_psycopg2)
sys.exit(0 if ok else 1)
EOF
}

write_marker() {
    # Write-then-rename so a crash never leaves a truncated marker.
    printf '%s\n' "$MARKER_CONTENT" >"$marker.tmp.$$"
    mv -f "$marker.tmp.$$" "$marker"
}

# Fast path: no lock needed once the marker is there.
if marker_ok; then
    printf '%s\n' "$python_bin"
    exit 0
fi

command -v flock >/dev/null 2>&1 || die "flock(1) is required (util-linux)"
mkdir -p "$(dirname "$venv")"
exec 9>"$lock"
if ! flock -n 9; then
    say "another process is preparing $venv; waiting for it"
    flock 9
fi

# Re-check under the lock: the process we waited for may have finished it.
if marker_ok; then
    printf '%s\n' "$python_bin"
    exit 0
fi

if versions_ok; then
    say "adopting existing venv $venv (matrix-synapse $SYNAPSE_VERSION, aiosmtpd $AIOSMTPD_VERSION, psycopg2-binary $PSYCOPG2_VERSION)"
    write_marker
    printf '%s\n' "$python_bin"
    exit 0
fi

if [ -e "$venv" ]; then
    # Only delete something that is clearly a (broken) venv or empty, never
    # an arbitrary directory LIFEBOAT_SYNAPSE_VENV happens to point at.
    if [ -f "$venv/pyvenv.cfg" ] || [ -z "$(ls -A "$venv" 2>/dev/null)" ]; then
        say "removing incomplete or outdated venv $venv"
        rm -rf "$venv"
    else
        die "$venv exists but is not a virtualenv; remove it or set LIFEBOAT_SYNAPSE_VENV"
    fi
fi

base_python="${PYTHON:-python3}"
command -v "$base_python" >/dev/null 2>&1 || die "$base_python not found (set PYTHON)"
"$base_python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' ||
    die "$base_python is older than 3.10, which Synapse $SYNAPSE_VERSION requires"

say "creating venv $venv"
"$base_python" -m venv "$venv" >&2
say "installing matrix-synapse==$SYNAPSE_VERSION aiosmtpd==$AIOSMTPD_VERSION psycopg2-binary==$PSYCOPG2_VERSION (this takes a minute)"
"$python_bin" -m pip install --disable-pip-version-check --no-input \
    "matrix-synapse==$SYNAPSE_VERSION" "aiosmtpd==$AIOSMTPD_VERSION" "psycopg2-binary==$PSYCOPG2_VERSION" >&2 ||
    die "pip install failed; the venv at $venv is left unmarked and will be rebuilt next time"

versions_ok || die "install finished but synapse $SYNAPSE_VERSION does not import from $venv"
write_marker
say "ready: $python_bin"
printf '%s\n' "$python_bin"
