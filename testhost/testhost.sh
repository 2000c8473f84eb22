#!/usr/bin/env bash
# A real JHE test server: a Debian container (systemd-nspawn, booted with systemd) in a network
# namespace of its own, reachable over SSH at a private address on a veth link.
#
#   testhost.sh up     [--name N] [--legacy TAG] [--patients N] [--observations M] [--data-on-disk]
#                      [--app-timing "boot=S stop=S"] [--image next]                prints JSON
#   testhost.sh down   [--name N] | --all
#   testhost.sh status [--name N]                                                    prints JSON
#   testhost.sh ssh    [--name N] [-- command ...]
#
# Every boot starts from a pristine overlay of the cached root filesystem (--volatile=overlay), with
# per-instance SSH host key (pinned), client key, address and PostgreSQL password. The client key logs
# in as root, as `deploy` (password-less sudo) and as `needpw` (sudo asks for a password). `down` leaves no
# process, mount, cgroup, network namespace or veth behind. The overlay lives in memory (a few GB); with
# --data-on-disk, /var/lib/postgresql and /backups are on this machine's disk instead
# ($JHE_TESTHOST_DISK/<name>, removed by `down`), for databases of a gigabyte and more. With
# --app-timing the fixture app boots and stops as slowly as the real JHE (/etc/jhe-fixture/timing,
# read by the fixture's jhe/wsgi.py), e.g. "boot=6 stop=3.5". With --image next the server also has
# Debian 13's PostgreSQL 17 and Python 3.13 (rootfs.sh next), for the runbook's special upgrades.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
RUN=${JHE_TESTHOST_RUN:-/run/jhe-testhost}
NET_PREFIX=10.231          # instance i: host side 10.231.i.1, server 10.231.i.2 (/30 would do; /24 reads better)
DISK=${JHE_TESTHOST_DISK:-/var/lib/jhe-testhost}
CG_UNIFIED=/sys/fs/cgroup/unified/jhe-testhost
CG_SYSTEMD=/sys/fs/cgroup/systemd/jhe-testhost

die() { echo "testhost: $*" >&2; exit 1; }
log() { echo "testhost: $*" >&2; }
now_ms() { date +%s%3N; }

cmd=${1:-}; shift || true
name=default legacy="" patients=100 observations=10000 all=false on_disk=false app_timing="" image="" passthru=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) name=$2; shift 2 ;;
    --legacy) legacy=$2; shift 2 ;;
    --patients) patients=$2; shift 2 ;;
    --observations) observations=$2; shift 2 ;;
    --all) all=true; shift ;;
    --data-on-disk) on_disk=true; shift ;;
    --app-timing) app_timing=$2; shift 2 ;;
    --image) image=$2; shift 2 ;;
    --) shift; passthru=("$@"); break ;;
    *) die "unknown argument $1 (see the header of $0)" ;;
  esac
done
[[ $name =~ ^[a-z0-9][a-z0-9-]{0,10}$ ]] || die "--name must be 1-11 of a-z, 0-9, '-' (got '$name')"
[[ $patients =~ ^[0-9]+$ && $patients -ge 1 ]] || die "--patients must be a positive number"
[[ $observations =~ ^[0-9]+$ ]] || die "--observations must be a number"
[[ -z $app_timing || $app_timing =~ ^(boot|stop)=[0-9]+(\.[0-9]+)?(\ (boot|stop)=[0-9]+(\.[0-9]+)?)?$ ]] \
  || die "--app-timing must be like \"boot=6 stop=3.5\" (seconds; got '$app_timing')"
[[ -z $image || $image == next ]] || die "--image must be next (or absent: Debian 12 as it is; got '$image')"
[[ -z $legacy || $legacy =~ ^v[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--legacy must be a fixture tag such as v1.0.0"

inst="$RUN/$name"
netns="jhe-$name"
veth="jv-$name"

ssh_opts() {
  echo -o BatchMode=yes -o StrictHostKeyChecking=yes -o "UserKnownHostsFile=$inst/known_hosts" \
    -o ConnectTimeout=2 -o LogLevel=ERROR -i "$inst/id_ed25519"
}
addr_of() { echo "$NET_PREFIX.$(cat "$inst/index").2"; }
remote() { # run a command on the instance as root
  # shellcheck disable=SC2046
  ssh $(ssh_opts) "root@$(addr_of)" "$@"
}
alive() { [[ -f $inst/nspawn.pid ]] && kill -0 "$(cat "$inst/nspawn.pid")" 2>/dev/null; }

info_json() {
  local state=$1
  python3 - "$inst" "$name" "$state" "$(addr_of)" "$NET_PREFIX.$(cat "$inst/index").1" <<'PY'
import json, sys, os
inst, name, state, addr, hostside = sys.argv[1:6]
read = lambda f: open(os.path.join(inst, f)).read().strip() if os.path.exists(os.path.join(inst, f)) else None
print(json.dumps({
    "name": name, "state": state, "address": addr, "hostAddress": hostside, "sshPort": 22, "user": "root",
    "privateKeyPath": os.path.join(inst, "id_ed25519"), "hostKey": read("ssh_host_ed25519_key.pub"),
    "hostKeys": {t: read(f"ssh_host_{t}_key.pub") for t in ("ed25519", "ecdsa", "rsa")},
    "knownHostsPath": os.path.join(inst, "known_hosts"), "pgPassword": read("pg_password"),
    "netns": "jhe-" + name, "legacy": read("legacy"), "siteUrl": read("site_url"),
    "upstreamRepo": "/srv/jhe-upstream.git", "wheelhouse": "/srv/wheelhouse",
    "nspawnPid": int(read("nspawn.pid")) if read("nspawn.pid") else None,
}))
PY
}

do_down() {
  local n=$1 d="$RUN/$1"
  [[ -d $d ]] || return 0
  if [[ -f $d/nspawn.pid ]]; then
    local pid; pid=$(cat "$d/nspawn.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  # Anything still in the instance's cgroups (nspawn's payload) goes too.
  local cg
  for cg in "$CG_UNIFIED/$n" "$CG_SYSTEMD/$n"; do
    [[ -d $cg ]] || continue
    for _ in $(seq 1 50); do
      local procs; procs=$(find "$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | xargs)
      [[ -z $procs ]] && break
      kill -KILL $procs 2>/dev/null || true
      sleep 0.1
    done
    find "$cg" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  done
  ip netns del "jhe-$n" 2>/dev/null || true
  ip link del "jv-$n" 2>/dev/null || true
  rm -rf "$d" "${DISK:?}/$n"
}

case "$cmd" in
up)
  t0=$(now_ms)
  [[ $(id -u) -eq 0 ]] || die "needs root (network namespaces, systemd-nspawn)"
  for tool in ip ssh ssh-keygen systemd-nspawn python3 git; do command -v $tool >/dev/null || die "$tool is missing (see .ci/apt-packages)"; done
  if [[ -d $inst ]]; then
    alive && die "instance '$name' is already up (testhost.sh down --name $name)"
    do_down "$name"
  fi
  rootfs=$("$here/rootfs.sh" $image)
  wheels=$("$here/wheelhouse.sh")
  mkdir -p "$RUN"
  # Allocate an address index under a lock.
  exec 9>"$RUN/.lock"; flock 9
  idx=""
  for i in $(seq 2 250); do
    grep -qx "$i" "$RUN"/*/index 2>/dev/null || { idx=$i; break; }
  done
  [[ -n $idx ]] || die "no free address (250 instances up?)"
  mkdir -p "$inst"; echo "$idx" > "$inst/index"
  flock -u 9
  addr="$NET_PREFIX.$idx.2"; hostaddr="$NET_PREFIX.$idx.1"

  # Keys: the server's host keys, one of each type a stock Debian server has (a client pins one), and
  # the client's key, all per instance.
  host_key_binds=()
  : > "$inst/known_hosts"
  for t in rsa ecdsa ed25519; do
    ssh-keygen -q -t $t -N '' -C "jhe-testhost-$name" -f "$inst/ssh_host_${t}_key"
    echo "$addr $(cut -d' ' -f1-2 "$inst/ssh_host_${t}_key.pub")" >> "$inst/known_hosts"
    host_key_binds+=(--bind-ro="$inst/ssh_host_${t}_key:/etc/ssh/ssh_host_${t}_key"
                     --bind-ro="$inst/ssh_host_${t}_key.pub:/etc/ssh/ssh_host_${t}_key.pub")
  done
  ssh-keygen -q -t ed25519 -N '' -C "jhe-upgrade@$name" -f "$inst/id_ed25519"
  cp "$inst/id_ed25519.pub" "$inst/authorized_keys"
  head -c 18 /dev/urandom | base64 | tr -d '/+=' > "$inst/pg_password"
  echo "jhe-$name" > "$inst/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 jhe-%s\n::1 localhost ip6-localhost ip6-loopback\n' "$name" > "$inst/hosts"
  printf '[Match]\nName=host0\n\n[Network]\nAddress=%s/24\nLinkLocalAddressing=no\nIPv6AcceptRA=no\n' "$addr" > "$inst/host0.network"
  "$here/../tests/fixtures/make-repo.sh" "$inst/upstream.git" 2>/dev/null

  # Data on disk: the cluster as the root filesystem has it, copied (owners kept) to bind over the overlay.
  disk_binds=()
  if $on_disk; then
    rm -rf "${DISK:?}/$name"; mkdir -p "$DISK/$name/backups"
    cp -a "$rootfs/var/lib/postgresql" "$DISK/$name/postgresql"
    disk_binds=(--bind="$DISK/$name/postgresql:/var/lib/postgresql" --bind="$DISK/$name/backups:/backups")
  fi

  # Network: a namespace with the server end of a veth pair; the host end stays here.
  ip netns add "$netns"
  ip link add "$veth" type veth peer name host0 netns "$netns"
  ip addr add "$hostaddr/24" dev "$veth"
  ip link set "$veth" up
  ip -n "$netns" link set lo up

  # Boot. The launcher moves itself into cgroups of its own (both hierarchies) before exec'ing
  # nspawn, so instances never share a cgroup tree.
  mkdir -p "$CG_UNIFIED/$name" "$CG_SYSTEMD/$name"
  setsid bash -c '
    echo $$ > "$1/cgroup.procs"; echo $$ > "$2/cgroup.procs"; shift 2
    exec env SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1 "$@"
  ' launcher "$CG_UNIFIED/$name" "$CG_SYSTEMD/$name" \
    systemd-nspawn -b -D "$rootfs" --register=no --keep-unit --volatile=overlay -M "jhe-$name" \
      --resolv-conf=off --console=read-only --network-namespace-path="/run/netns/$netns" \
      --capability=CAP_NET_ADMIN \
      "${host_key_binds[@]}" \
      --bind-ro="$inst/authorized_keys:/root/.ssh/authorized_keys" \
      --bind-ro="$inst/host0.network:/etc/systemd/network/10-host0.network" \
      --bind-ro="$inst/hostname:/etc/hostname" --bind-ro="$inst/hosts:/etc/hosts" \
      --bind-ro="$wheels:/srv/wheelhouse" --bind-ro="$here:/srv/testhost" \
      --bind-ro="$inst/upstream.git:/srv/jhe-upstream.git" "${disk_binds[@]}" \
      </dev/null >"$inst/nspawn.log" 2>&1 &
  echo $! > "$inst/nspawn.pid"

  # SSH ready (bounded: 30 s).
  deadline=$(( $(date +%s) + 30 ))
  until remote true 2>/dev/null; do
    alive || { tail -n 20 "$inst/nspawn.log" >&2; do_down "$name"; die "the container exited during boot"; }
    [[ $(date +%s) -lt $deadline ]] || { tail -n 20 "$inst/nspawn.log" >&2; do_down "$name"; die "no SSH on $addr after 30 s"; }
    sleep 0.2
  done
  t_ssh=$(( $(now_ms) - t0 ))
  # PostgreSQL up, and a password for tests that read tables over the link.
  remote "for i in \$(seq 1 150); do pg_isready -q -h /var/run/postgresql && exit 0; sleep 0.1; done; exit 1" \
    || { do_down "$name"; die "PostgreSQL did not start"; }
  { printf 'pw=%q\n' "$(cat "$inst/pg_password")"
    echo 'echo "ALTER ROLE postgres PASSWORD '"'"'$pw'"'"';" | sudo -u postgres psql -q -v ON_ERROR_STOP=1 >/dev/null'
  } | remote "cd / && bash -s" || { do_down "$name"; die "could not set the PostgreSQL password"; }
  # Two more SSH users with the same key, for tests of non-root operation: `deploy` has password-less
  # sudo, `needpw`'s sudo asks for a password (the program must fail fast, not hang).
  remote "cd / && bash -s" >/dev/null 2>&1 <<'USERS' || { do_down "$name"; die "could not create the test users"; }
set -e
for u in deploy needpw; do
  useradd -m -s /bin/bash "$u"
  install -d -m 0700 -o "$u" -g "$u" "/home/$u/.ssh"
  install -m 0600 -o "$u" -g "$u" /root/.ssh/authorized_keys "/home/$u/.ssh/authorized_keys"
done
echo 'deploy ALL=(ALL) NOPASSWD:ALL' > /etc/sudoers.d/deploy
echo "needpw:$(head -c 12 /dev/urandom | base64)" | chpasswd
echo 'needpw ALL=(ALL) ALL' > /etc/sudoers.d/needpw
chmod 0440 /etc/sudoers.d/deploy /etc/sudoers.d/needpw
USERS
  if [[ -n $app_timing ]]; then
    remote "install -d -m 0755 /etc/jhe-fixture && echo '$app_timing' > /etc/jhe-fixture/timing" \
      || { do_down "$name"; die "could not write the app timing"; }
  fi
  if [[ -n $legacy ]]; then
    echo "$legacy" > "$inst/legacy"
    echo "https://$name.jhe.test" > "$inst/site_url"
    remote "JHE_TAG=$legacy JHE_SITE_URL=https://$name.jhe.test JHE_PATIENTS=$patients JHE_OBSERVATIONS=$observations bash /srv/testhost/legacy-install.sh" \
      </dev/null >"$inst/legacy-install.log" 2>&1 \
      || { tail -n 30 "$inst/legacy-install.log" >&2; do_down "$name"; die "legacy install of $legacy failed (log above)"; }
  fi
  log "up: $name at $addr, SSH ready in ${t_ssh} ms, ready in $(( $(now_ms) - t0 )) ms"
  info_json up
  ;;
down)
  if $all; then
    for d in "$RUN"/*/; do [[ -d $d ]] && do_down "$(basename "$d")"; done
  else
    do_down "$name"
  fi
  ;;
status)
  [[ -d $inst ]] || { echo '{"name":"'"$name"'","state":"down"}'; exit 0; }
  if alive; then info_json up; else info_json dead; fi
  ;;
ssh)
  alive || die "instance '$name' is not up"
  # shellcheck disable=SC2046
  exec ssh $(ssh_opts) "root@$(addr_of)" "${passthru[@]}"
  ;;
*)
  sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
