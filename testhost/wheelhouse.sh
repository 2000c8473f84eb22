#!/usr/bin/env bash
# Prepares (once) the wheelhouse the offline test server installs Python packages from, and prints
# its path. Cached beside the root filesystem, keyed by wheelhouse.txt and this script: wheels for
# each Python a test server has (Debian 12's 3.11, and Debian 13's 3.13 on the "next" image), in one
# directory - pip takes the ones that fit the interpreter it runs under.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cache=${JHE_TESTHOST_CACHE:-/var/cache/jhe-upgrade}
pyvers=${JHE_TESTHOST_PYTHONS:-3.11 3.13}
key=$(cat "$here/wheelhouse.txt" "$here/wheelhouse.sh" | sha256sum | cut -c1-12)
dir="$cache/wheelhouse-py${pyvers// /-py}-$key"
if [[ -f "$dir/.ready" ]]; then echo "$dir"; exit 0; fi
if command -v pip3 >/dev/null; then pip=(pip3); elif command -v pip >/dev/null; then pip=(pip); else pip=(python3 -m pip); fi
"${pip[@]}" --version >/dev/null 2>&1 || { echo "wheelhouse: pip is needed on this machine to prepare the server's wheels (apt-get install python3-pip)" >&2; exit 1; }
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.wheels-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
for pyver in $pyvers; do
  abi="cp${pyver/./}"
  sed 's/#.*//' "$here/wheelhouse.txt" | grep -v '^\s*$' | while read -r req; do
    "${pip[@]}" download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp --abi "$abi" \
      --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
      -d "$tmp" "$req" >&2
  done
done
touch "$tmp/.ready"; chmod -R a+rX "$tmp"
rm -rf "$dir"; mv "$tmp" "$dir"
echo "$dir"
