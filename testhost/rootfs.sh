#!/usr/bin/env bash
# Builds (once) the test server's Debian root filesystem with debootstrap and prints its path.
# Cached outside the repository in $JHE_TESTHOST_CACHE (default /var/cache/jhe-upgrade), keyed by
# the package list and this script. The mirror is the one this machine's apt already uses.
#
#   rootfs.sh          Debian 12 (bookworm): PostgreSQL 15, Python 3.11
#   rootfs.sh next     the same server half-way through its upgrade to Debian 13 (trixie): Debian 13's
#                      PostgreSQL 17 and Python 3.13 installed beside them (packages-next.txt), as
#                      `apt full-upgrade` leaves them - no 17 cluster yet, python3 still 3.11 - for the
#                      runbook's Python and PostgreSQL major upgrades. Built from the first, once.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suite=${JHE_TESTHOST_SUITE:-bookworm}
cache=${JHE_TESTHOST_CACHE:-/var/cache/jhe-upgrade}
key=$(cat "$here/packages.txt" "$here/rootfs.sh" | sha256sum | cut -c1-12)
rootfs="$cache/rootfs-$suite-$key"
if [[ ${1:-} == next ]]; then
  base=$("$0")
  nkey=$(cat "$base/.jhe-rootfs-ready" "$here/packages-next.txt" | sha256sum | cut -c1-12)
  next="$cache/rootfs-$suite-next-$nkey"
  if [[ -f "$next/.jhe-rootfs-ready" ]]; then echo "$next"; exit 0; fi
  mirror=$(cat "$base/.jhe-mirror")
  tmp=$(mktemp -d "$cache/.build-XXXXXX")
  trap 'umount "$tmp/fs/proc" 2>/dev/null || true; rm -rf "$tmp"' EXIT
  t0=$(date +%s)
  cp -a "$base" "$tmp/fs"
  fs="$tmp/fs"
  rm -f "$fs/.jhe-rootfs-ready"
  printf 'Types: deb\nURIs: %s\nSuites: bookworm trixie\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$mirror" > "$fs/etc/apt/sources.list.d/debian.sources"
  rm -f "$fs/etc/apt/sources.list"
  # Only what is asked for comes from trixie (with the libraries it needs); the rest stays bookworm's.
  printf 'Package: *\nPin: release n=trixie\nPin-Priority: 100\n' > "$fs/etc/apt/preferences.d/trixie"
  pkgs=$(sed 's/#.*//' "$here/packages-next.txt" | xargs)
  mount -t proc proc "$fs/proc"
  echo "rootfs: adding Debian 13's $pkgs ..." >&2
  { chroot "$fs" apt-get update -q && chroot "$fs" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      -o Dpkg::Options::=--force-confold -t trixie $pkgs; } >"$tmp/apt.log" 2>&1 || { tail -n 30 "$tmp/apt.log" >&2; exit 1; }
  umount "$fs/proc"
  # As after Debian's own upgrade: the old cluster serves, the new major has none yet.
  [[ $(ls "$fs/etc/postgresql") == 15 ]] || { echo "rootfs: expected only the 15 cluster, found $(ls "$fs/etc/postgresql")" >&2; exit 1; }
  rm -rf "$fs"/var/cache/apt/archives/*.deb "$fs"/var/lib/apt/lists/*
  touch "$fs/.jhe-rootfs-ready"
  rm -rf "$next"; mv "$fs" "$next"
  echo "rootfs: built $next in $(( $(date +%s) - t0 )) s" >&2
  echo "$next"; exit 0
fi
if [[ -f "$rootfs/.jhe-rootfs-ready" ]]; then echo "$rootfs"; exit 0; fi

for tool in debootstrap systemd-nspawn; do
  command -v "$tool" >/dev/null || { echo "rootfs: $tool is missing: apt-get install --no-install-recommends debootstrap systemd-container" >&2; exit 1; }
done
mirror=$(grep -hoE '^URIs:\s*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)
[[ -n $mirror ]] || mirror=$(grep -hoE '^deb\s+(\[[^]]*\]\s+)?\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $NF}' | grep -v security | head -n1 || true)
[[ -n $mirror ]] || { echo "rootfs: no Debian mirror found in this machine's apt sources" >&2; exit 1; }

mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.build-XXXXXX")
trap 'rm -rf "$tmp"' EXIT
t0=$(date +%s)
pkgs=$(sed 's/#.*//' "$here/packages.txt" | xargs | tr ' ' ',')
echo "rootfs: debootstrap $suite into $tmp ..." >&2
debootstrap --variant=minbase --include="$pkgs" "$suite" "$tmp/fs" "$mirror" >"$tmp/debootstrap.log" 2>&1 \
  || { tail -n 30 "$tmp/debootstrap.log" >&2; exit 1; }
fs="$tmp/fs"

# --- make it a server that boots under systemd-nspawn and is configured per instance -------------
# Host keys (RSA, ECDSA and Ed25519, as a stock Debian server has), authorized keys and the network
# address are bound in per instance at boot. sshd_config stays Debian's (AcceptEnv LANG LC_*).
rm -f "$fs"/etc/ssh/ssh_host_*
cat > "$fs/etc/ssh/sshd_config.d/jhe-testhost.conf" <<'CONF'
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
CONF
: > "$fs/etc/machine-id"
echo "jhe-testhost" > "$fs/etc/hostname"
mkdir -p "$fs/root/.ssh" && chmod 700 "$fs/root/.ssh"
# PostgreSQL: the cluster was made during install; pin the port (it picks 5433 when the build
# machine runs its own server) and let tests connect over the namespace link with a password.
conf=$(ls "$fs"/etc/postgresql/*/main/postgresql.conf)
sed -i -E "s/^#?port = [0-9]+/port = 5432/; s/^#?listen_addresses = .*/listen_addresses = '*'/" "$conf"
echo "host all all 10.231.0.0/16 scram-sha-256" >> "$(dirname "$conf")/pg_hba.conf"
# nginx: no default site; the JHE site is what gets installed.
rm -f "$fs/etc/nginx/sites-enabled/default"
# Services that make no sense in a container.
chroot "$fs" systemctl enable systemd-networkd ssh postgresql nginx >/dev/null 2>&1
chroot "$fs" systemctl mask systemd-resolved.service getty@.service console-getty.service \
  systemd-timesyncd.service apt-daily.timer apt-daily-upgrade.timer e2scrub_reap.service >/dev/null 2>&1 || true
echo "LANG=C.UTF-8" > "$fs/etc/default/locale"
rm -rf "$fs"/var/cache/apt/archives/*.deb "$fs"/var/lib/apt/lists/*
echo "$mirror" > "$fs/.jhe-mirror"
echo "$key" > "$fs/.jhe-rootfs-ready"
rm -rf "$rootfs"
mv "$fs" "$rootfs"
echo "rootfs: built $rootfs in $(( $(date +%s) - t0 )) s, $(du -sh "$rootfs" | cut -f1)" >&2
echo "$rootfs"
