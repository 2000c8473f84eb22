#!/usr/bin/env bash
# Builds the Pulumi engine this project runs on, from Go modules, into .tools/ (git-ignored):
#   bin/pulumi                      CLI            github.com/pulumi/pulumi/pkg/v3   v3.274.1
#   bin/pulumi-language-nodejs      Node.js host   github.com/pulumi/pulumi/sdk/v3   v3.68.0  (README: Engine)
#   plugins/pulumi-resource-command command plugin engine/command in this repository (README: Engine)
# and installs the command plugin into PULUMI_HOME. Idempotent: when the binaries match the
# recorded build inputs it returns at once.
set -euo pipefail
source "$(dirname "$0")/env.sh"
bin="$JHE_ROOT/.tools/bin"
plugins="$JHE_ROOT/.tools/plugins"
CLI_VERSION=v3.274.1
LANG_VERSION=v3.68.0
COMMAND_VERSION=1.2.1

install_plugin() {
  [[ -x "$PULUMI_HOME/plugins/resource-command-v$COMMAND_VERSION/pulumi-resource-command" \
     && "$PULUMI_HOME/plugins/resource-command-v$COMMAND_VERSION/pulumi-resource-command" -nt "$plugins/pulumi-resource-command" ]] && return 0
  pulumi plugin install resource command "$COMMAND_VERSION" --reinstall --file "$plugins/pulumi-resource-command" >/dev/null 2>&1
}

# What the binaries were built from: the wrapper modules, the provider's source and this script.
stamp_now=$(cd "$JHE_ROOT/engine" && cat cli/go.mod cli/go.sum language-nodejs/go.mod language-nodejs/go.sum \
  command/go.mod command/go.sum command/*.go "$JHE_ROOT/scripts/install-engine.sh" | sha256sum | cut -c1-16)
stamp_file="$JHE_ROOT/.tools/.stamp"
if [[ -x "$bin/pulumi" && -x "$bin/pulumi-language-nodejs" && -x "$plugins/pulumi-resource-command" \
      && -f "$stamp_file" && "$(cat "$stamp_file")" == "$stamp_now" ]]; then
  install_plugin
  exit 0
fi

command -v go >/dev/null || { echo "install-engine: Go is needed to build the Pulumi engine (apt-get install golang-go, or see go.dev)" >&2; exit 1; }
mkdir -p "$bin" "$plugins"
export CGO_ENABLED=0 GOFLAGS=-mod=mod
start=$(date +%s)
build() { # dir output package ldflags
  local dir=$1 out=$2 pkg=$3 ldflags=$4 t0; t0=$(date +%s)
  echo "install-engine: building $(basename "$out") ..." >&2
  (cd "$JHE_ROOT/engine/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$out.tmp" "$pkg")
  mv -f "$out.tmp" "$out"
  echo "install-engine: $(basename "$out") built in $(( $(date +%s) - t0 )) s" >&2
}
build cli "$bin/pulumi" github.com/pulumi/pulumi/pkg/v3/cmd/pulumi \
  "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$CLI_VERSION"
build language-nodejs "$bin/pulumi-language-nodejs" github.com/pulumi/pulumi/sdk/v3/nodejs/cmd/pulumi-language-nodejs \
  "-X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=$LANG_VERSION"
build command "$plugins/pulumi-resource-command" . "-X main.Version=$COMMAND_VERSION"
install_plugin
echo "$stamp_now" > "$stamp_file"
echo "install-engine: engine ready in $(( $(date +%s) - start )) s ($(du -sh "$JHE_ROOT/.tools" | cut -f1) in .tools)" >&2
