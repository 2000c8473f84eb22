#!/usr/bin/env bash
# `npm run demo`: the project's main job. For now (the test server and the upgrade steps come next)
# it shows the real engine running the real program: a preview of a staging-like stack, and the
# refusal of a bad configuration before anything could reach a server.
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$JHE_ROOT"
[[ -d node_modules ]] || npm ci
scripts/install-engine.sh
npx --no-install tsc -p .
export PULUMI_CONFIG_PASSPHRASE=demo-only
export PULUMI_BACKEND_URL="file://$JHE_ROOT/.cache/demo-state"
rm -rf "$JHE_ROOT/.cache/demo-state"; mkdir -p "$JHE_ROOT/.cache/demo-state"
stack=demo
trap 'pulumi stack rm "$stack" --yes --force >/dev/null 2>&1 || true; rm -f "Pulumi.$stack.yaml"' EXIT
pulumi stack init "$stack" >/dev/null
pulumi config set jhe:version v1.1.0 -s "$stack"
pulumi config set jhe:host 192.0.2.10 -s "$stack"
pulumi config set jhe:siteUrl https://jhe.example.org -s "$stack"
pulumi config set jhe:sshHostKey "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGRlbW8ta2V5LW5vdC1hLXNlcnZlcg demo" -s "$stack"
echo "not-a-real-key" | pulumi config set --secret jhe:sshPrivateKey -s "$stack"
echo "== preview of a valid stack"
pulumi preview -s "$stack" --non-interactive
echo "== a prod stack with DEBUG=False and an unsafe tag is refused before anything runs"
pulumi config set jhe:stage prod -s "$stack"
pulumi config set --path 'jhe:env.DEBUG' False -s "$stack"
pulumi config set jhe:version 'v1.1.0;reboot' -s "$stack"
if pulumi preview -s "$stack" --non-interactive; then echo "demo: the bad config was accepted" >&2; exit 1; fi
echo "demo: engine $(pulumi version), valid stack previewed, invalid stack refused before any step"
