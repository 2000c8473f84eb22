# Sourced by the project's scripts: the project-local Pulumi environment (no Pulumi Cloud).
# PULUMI_HOME, the file state backend and the engine binaries all live inside the project folder.
JHE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH="$JHE_ROOT/.tools/bin:$PATH"
# Always the project's own PULUMI_HOME: the engine install never writes into a user's (whose official
# command plugin would otherwise be replaced for all their projects).
export PULUMI_HOME="$JHE_ROOT/.pulumi-home"
export PULUMI_BACKEND_URL="${PULUMI_BACKEND_URL:-file://$JHE_ROOT/.state}"
export PULUMI_SKIP_UPDATE_CHECK=true
export PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION=true
export PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK="${PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK:-false}"
mkdir -p "$PULUMI_HOME"
case "$PULUMI_BACKEND_URL" in file://*) mkdir -p "${PULUMI_BACKEND_URL#file://}" ;; esac
