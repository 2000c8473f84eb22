#!/usr/bin/env bash
# The Python tools the host tool's tests and lint need (host/requirements-dev.txt), in a virtualenv of
# the project's own (.tools/pyvenv, git-ignored). Idempotent: returns at once when the installed set
# matches the file. Prints the venv's bin directory.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
venv="$root/.tools/pyvenv"
req="$root/host/requirements-dev.txt"
stamp=$(sha256sum "$req" | cut -c1-16)
if [[ ! -x "$venv/bin/python" || "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]]; then
  command -v python3 >/dev/null || { echo "py-env: python3 is needed for the host tool's tests (apt-get install python3 python3-venv)" >&2; exit 1; }
  echo "py-env: installing $(grep -cv '^\s*#' "$req") Python tools into .tools/pyvenv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >&2
  echo "$stamp" > "$venv/.stamp"
fi
echo "$venv/bin"
