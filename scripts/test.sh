#!/usr/bin/env bash
# `npm test` (everything), `npm run test:unit|test:py|test:host|test:conformance|test:e2e|test:faults`: installs what is
# missing, checks types and lint (tsc; ruff + mypy for the host tool), then runs the chosen layers:
# pytest for the host tool (py, and in all), mocha for the rest. Extra arguments go to mocha (e.g. --grep).
# `all` closes with one line counting every test that ran (pytest and mocha): "total: N passed, N failed".
set -euo pipefail
source "$(dirname "$0")/env.sh"
cd "$JHE_ROOT"
layer=${1:-all}; shift || true
case "$layer" in
  unit) files=("bin/tests/unit/**/*.test.js") ;;
  host) files=("bin/tests/host/**/*.test.js") ;;
  e2e)  files=("bin/tests/e2e/**/*.test.js") ;;
  faults) files=("bin/tests/faults/**/*.test.js") ;;
  conformance) files=("bin/tests/conformance/**/*.test.js") ;;
  py) files=() ;;
  all)  files=("bin/tests/unit/**/*.test.js" "bin/tests/host/**/*.test.js" "bin/tests/conformance/**/*.test.js"
              "bin/tests/e2e/**/*.test.js" "bin/tests/faults/**/*.test.js") ;;
  *) echo "usage: scripts/test.sh unit|py|host|conformance|e2e|faults|all [mocha args]" >&2; exit 2 ;;
esac
passed=0 failed=0 rc=0
summary=$(mktemp); trap 'rm -f "$summary"' EXIT
add_counts() { # file with "passed failed" from a runner
  local p f; read -r p f < "$1" || return 0
  passed=$((passed + p)); failed=$((failed + f))
}

if [[ $layer == py || $layer == all ]]; then
  pybin=$(scripts/py-env.sh)
  (cd host && "$pybin/ruff" check --output-format concise . && "$pybin/mypy" --no-error-summary) \
    || { echo "test: the host tool's lint or types failed (ruff, mypy in host/)" >&2; exit 1; }
  (cd host && "$pybin/pytest" -p no:cacheprovider --junitxml="$summary.xml") || rc=$?
  [[ -f $summary.xml ]] && python3 -c '
import sys, xml.etree.ElementTree as E
s = E.parse(sys.argv[1]).getroot()
s = s if s.tag == "testsuite" else s.find("testsuite")
t, f, e, k = (int(s.get(a, 0)) for a in ("tests", "failures", "errors", "skipped"))
print(t - f - e - k, f + e)' "$summary.xml" > "$summary" && add_counts "$summary"
  rm -f "$summary.xml"
  [[ $rc -eq 0 || $rc -eq 1 ]] || { echo "test: pytest could not run (exit $rc)" >&2; exit "$rc"; }
fi

if [[ ${#files[@]} -gt 0 ]]; then
  [[ -x node_modules/.bin/mocha ]] || npm ci --no-audit --no-fund
  npx --no-install tsc -p .
  touch bin/index.js  # the program is built too: pulumi-main.js need not compile it again
  [[ $layer == unit ]] || { scripts/system-deps.sh && scripts/install-engine.sh; }
  : > "$summary"
  mocha_rc=0
  JHE_TEST_SUMMARY=$summary npx --no-install mocha --timeout 900000 "${files[@]}" "$@" || mocha_rc=$?
  if [[ -s $summary ]]; then
    add_counts "$summary"
  elif [[ $mocha_rc -ne 0 ]]; then
    echo "test: mocha exited $mocha_rc without a result; counted as one failure" >&2
    failed=$((failed + 1))
  fi
  [[ $mocha_rc -eq 0 ]] || rc=$mocha_rc
fi
[[ $layer == all ]] && echo && echo "total: $passed passed, $failed failed"
[[ $layer == all || $layer == py ]] || exit "$rc"
[[ $failed -eq 0 && $rc -eq 0 ]] || exit 1
