#!/usr/bin/env bash
# Installs matrix-registration (the Flask token-registration app from PyPI)
# into its own cached venv, for comparison in tools/bench-web.sh only.
# It installs on Python 3.11 only with old pins. Prints the venv's path.
set -euo pipefail
venv="${HOME}/.cache/lifeboat/matrix-registration-venv"
if [[ ! -x "$venv/bin/matrix-registration" ]]; then
    python=$(command -v python3.11 || command -v python3)
    "$python" -m venv "$venv" >&2
    "$venv/bin/pip" install -q "cython<3" wheel >&2
    "$venv/bin/pip" install -q --no-build-isolation PyYAML==5.4.1 >&2
    "$venv/bin/pip" install -q matrix-registration "jinja2<3.1" "itsdangerous<2.1" "markupsafe<2.1" \
        "werkzeug<2.1" "flask-limiter<1.5" >&2
fi
echo "$venv"
