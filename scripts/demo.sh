#!/usr/bin/env bash
# `npm run demo`: the project's main job, end to end on this machine (as root).
# Boots a local test server with JHE v1.0.0 installed the runbook's way, aims a stack at it, adopts
# it, shows the preview of an upgrade to v1.1.0 (the plan), applies it, prints the outputs, writes
# observations as users would, rolls back by setting the version back, shows that those observations
# survived, and tears everything down. Every command is the one an operator would type (`npm run pulumi -- ...`).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$JHE_ROOT"
[[ -x node_modules/.bin/tsc ]] || npm ci --no-audit --no-fund
scripts/system-deps.sh
scripts/install-engine.sh
npx --no-install tsc -p .

name=demo
stack=demo
export PULUMI_CONFIG_PASSPHRASE=demo-only-passphrase
export PULUMI_BACKEND_URL="file://$JHE_ROOT/.cache/demo-state"
rm -rf "$JHE_ROOT/.cache/demo-state"; mkdir -p "$JHE_ROOT/.cache/demo-state"
t_start=$(date +%s)
cleanup() {
  pulumi stack rm "$stack" --yes --force >/dev/null 2>&1 || true
  rm -f "Pulumi.$stack.yaml"
  testhost/testhost.sh down --name "$name" || true
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
p() { echo "\$ npm run pulumi -- $*"; pulumi "$@"; }

step "1. A server as the runbook's operator has it: JHE v1.0.0 checked out in /opt/jupyterhealth-exchange"
info=$(testhost/testhost.sh up --name "$name" --legacy v1.0.0 --app-timing "boot=6 stop=3.5")
get() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$info" "$1"; }
echo "server $(get address), host key $(get hostKey | cut -c1-40)..., site $(get siteUrl)"

step "2. A stack aimed at it (host key pinned, SSH key as a secret)"
pulumi stack init "$stack" >/dev/null
p config set jhe:version v1.0.0 -s "$stack"
p config set jhe:host "$(get address)" -s "$stack"
p config set jhe:sshHostKey "$(get hostKey)" -s "$stack"
p config set jhe:siteUrl "$(get siteUrl)" -s "$stack"
p config set jhe:repoUrl /srv/jhe-upstream.git -s "$stack"
p config set jhe:wheelhouse /srv/wheelhouse -s "$stack"
echo "\$ npm run pulumi -- config set --secret jhe:sshPrivateKey -s $stack < key"
pulumi config set --secret jhe:sshPrivateKey -s "$stack" < "$(get privateKeyPath)"
# The smoke tests' own account (made by the program: staff without permissions, a patient record of its own).
p config set jhe:smokeTestUser smoke-test@example.org -s "$stack"
p config set jhe:smokeTestCreate true -s "$stack"
# ... and the runbook's test-observation.json, which the gate uploads and reads back (the program sets its subject).
p config set --path 'jhe:smokeTestObservation.resourceType' Observation -s "$stack"
p config set --path 'jhe:smokeTestObservation.code.coding[0].code' 8867-4 -s "$stack"
p config set --path 'jhe:smokeTestObservation.valueQuantity.value' 72 -s "$stack"
# The watch after the upgrade (failed requests against before it; too many rolls back by itself): 15 s here.
p config set jhe:watchSeconds 15 -s "$stack"
echo "\$ npm run pulumi -- config set --secret jhe:smokeTestPassword -s $stack <random>"
pulumi config set --secret jhe:smokeTestPassword "smoke-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')" -s "$stack"

step "3. First up: adopt the in-place install into releases/ (same version, one restart)"
p up -s "$stack" --yes --non-interactive --suppress-progress

step "4. Upgrade plan: set the version, read the preview"
p config set jhe:version v1.1.0 -s "$stack"
p preview -s "$stack" --non-interactive
echo "# The plan's envMissing names JHE_FEATURE_X: new in v1.1.0's env example, set nowhere. Preflight would"
echo "# refuse until it is set or left unset on purpose; this server does without it:"
p config set --path 'jhe:envUnset[0]' JHE_FEATURE_X -s "$stack"

step "5. The upgrade"
p up -s "$stack" --yes --non-interactive --suppress-progress --suppress-outputs
p stack output -s "$stack" --json

step "6. The server after it"
testhost/testhost.sh ssh --name "$name" -- "readlink /opt/jupyterhealth-exchange/current; tail -n 22 /opt/jupyterhealth-exchange/UPGRADE_LOG.md"

out=$(pulumi stack output -s "$stack" --json)
up_summary=$(python3 -c '
import json, sys
o = json.loads(sys.argv[1]); b = o.get("backup") or {}
rc = b.get("rowCounts") or {}
g = (o.get("smoke") or {}).get("gate") or {}
smoke = "smoke tests %s (%s; %s of their rows removed)" % ("passed" if g.get("ok") else "FAILED", ", ".join(
    "%s %s" % (k, v.get("status") or ("ok" if v.get("ok") else "failed")) for k, v in (g.get("checks") or {}).items()),
    (g.get("cleanup") or {}).get("deleted"))
w = o.get("watch") or {}
smoke += "; watch %s (%s s, %s requests after the switch%s)" % (w.get("verdict"), w.get("seconds"), (w.get("after") or {}).get("requests"),
    ": " + w["note"] if w.get("note") else "")
print("upgraded %s -> %s (downtime %.2f s, migrations %s, backup %s sha256 %s, %d rows in %d tables: %s; %s)" % (
    o["deployed"]["previous"], o["deployed"]["version"], o["downtimeSeconds"], ", ".join(o["migrationsApplied"]) or "none",
    b.get("location"), (b.get("sha256") or "")[:12], sum(rc.values()), len(rc),
    ", ".join("%s=%s" % kv for kv in rc.items() if kv[0].startswith("core_")), smoke))
' "$out")

step "7. Users keep writing on v1.1.0: 20 observations through nginx"
site=$(get siteUrl); host=${site#https://}
ids=()
for i in $(seq 1 20); do
  body='{"subject":{"reference":"Patient/'$(( 1 + i % 5 ))'"},"code":{"coding":[{"code":"demo-'$i'"}]},"valueQuantity":{"value":'$i'}}'
  id=$(curl -sk --max-time 10 --resolve "$host:443:$(get address)" -X POST -H 'Content-Type: application/json' -d "$body" \
       "$site/fhir/r5/Observation" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  ids+=("$id")
done
echo "acknowledged observation ids: ${ids[*]}"

step "8. Roll back: set the version back, read the plan, apply"
p config set jhe:version v1.0.0 -s "$stack"
p preview -s "$stack" --non-interactive --suppress-outputs
pulumi stack output -s "$stack" --json >/dev/null
p up -s "$stack" --yes --non-interactive --suppress-progress --suppress-outputs
p stack output rollback -s "$stack" --json
survived=$(testhost/testhost.sh ssh --name "$name" -- "cd /tmp && sudo -u postgres psql -tAc \"SELECT count(*) FROM core_observation WHERE id IN ($(IFS=,; echo "${ids[*]}"))\" jhe_production" | tr -d '[:space:]')
version=$(curl -sk --max-time 10 --resolve "$host:443:$(get address)" "$site/health" | python3 -c 'import json,sys; print(json.load(sys.stdin)["version"])')
rb_downtime=$(pulumi stack output downtimeSeconds -s "$stack")
echo "serving $version; $survived of ${#ids[@]} observations written on v1.1.0 are in the database"
[[ $version == v1.0.0 && $survived == "${#ids[@]}" ]] || { echo "demo: the rollback lost data or did not serve v1.0.0" >&2; exit 1; }
summary="demo: $up_summary; rolled back to v1.0.0 (downtime $rb_downtime s); $survived/${#ids[@]} observations written in between survived"

step "9. Tear down"
cleanup; trap - EXIT
echo "(demo took $(( $(date +%s) - t_start )) s)"
echo "$summary"
