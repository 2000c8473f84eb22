#!/usr/bin/env bash
# `npm test` (everything), `npm run test:unit`, `npm run test:e2e`: installs what is missing, builds,
# then runs mocha on the chosen layers. Extra arguments go to mocha (e.g. --grep).
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$JHE_ROOT"
layer=${1:-all}; shift || true
[[ -x node_modules/.bin/mocha ]] || npm ci --no-audit --no-fund
npx --no-install tsc -p .
case "$layer" in
  unit) files=("bin/tests/unit/**/*.test.js") ;;
  host) files=("bin/tests/host/**/*.test.js") ;;
  e2e)  files=("bin/tests/e2e/**/*.test.js") ;;
  faults) files=("bin/tests/faults/**/*.test.js") ;;
  all)  files=("bin/tests/unit/**/*.test.js" "bin/tests/host/**/*.test.js" "bin/tests/e2e/**/*.test.js" "bin/tests/faults/**/*.test.js") ;;
  *) echo "usage: scripts/test.sh unit|host|e2e|faults|all [mocha args]" >&2; exit 2 ;;
esac
[[ $layer == unit ]] || { scripts/system-deps.sh && scripts/install-engine.sh; }
exec npx --no-install mocha --timeout 900000 "${files[@]}" "$@"
