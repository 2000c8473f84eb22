#!/usr/bin/env bash
# `npm run pulumi -- <args>`: the project's own Pulumi CLI with project-local state.
# Builds the engine if needed and compiles the TypeScript program before commands that run it.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$JHE_ROOT/scripts/install-engine.sh"
case "${1:-}" in
  preview|up|update|destroy|refresh|import|stack|config) (cd "$JHE_ROOT" && npx --no-install tsc -p .) ;;
esac
cd "$JHE_ROOT"
exec pulumi "$@"
