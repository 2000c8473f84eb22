#!/usr/bin/env bash
# Installs the Debian packages the test server and the tests need on this machine (.ci/apt-packages)
# when any is missing; does nothing (and needs no network) when all are there. Needs root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mapfile -t pkgs < <(sed 's/#.*//' "$root/.ci/apt-packages" | xargs -n1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0
if [[ $(id -u) -ne 0 ]]; then
  echo "system-deps: missing Debian packages: ${missing[*]} (run as root, or apt-get install them)" >&2
  exit 1
fi
echo "system-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
