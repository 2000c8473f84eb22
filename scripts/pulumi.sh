#!/usr/bin/env bash
# `npm run pulumi -- <args>`: the project's own Pulumi CLI with project-local state. Builds the engine
# if needed; compiles nothing itself: commands that run the program (preview, up, destroy, refresh)
# go through pulumi-main.js, which compiles the TypeScript program when a source is newer than bin/.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$JHE_ROOT/scripts/install-engine.sh"
cd "$JHE_ROOT"
exec pulumi "$@"
