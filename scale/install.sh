#!/usr/bin/env bash
# Installs the pinned Ray (scale/requirements.txt) into a virtual environment, by default
# .venv-ray at the repository root, and prints its python. A no-op when it is already there.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
venv="${TRIO_RAY_VENV:-$root/.venv-ray}"
req="$root/scale/requirements.txt"
stamp="$venv/.requirements.sha256"
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req" >&2
    echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
