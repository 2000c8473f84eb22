// The project's own Pulumi engine (built by scripts/install-engine.sh) for tests driven through the
// Automation API: project-local PULUMI_HOME, a file:// state backend, a test passphrase.
import * as fs from "fs";
import * as path from "path";
import { LocalWorkspace, PulumiCommand, Stack, EngineEvent } from "@pulumi/pulumi/automation";

export const ROOT = path.resolve(__dirname, "../../..");
export const TOOLS = path.join(ROOT, ".tools");
export const PASSPHRASE = "jhe-upgrade-tests-only";

/** Environment for the engine: the same layout `npm run pulumi` uses, state under `stateDir`. */
export function engineEnv(stateDir: string): Record<string, string> {
    fs.mkdirSync(stateDir, { recursive: true });
    return {
        PATH: `${path.join(TOOLS, "bin")}:${process.env.PATH}`,
        PULUMI_HOME: path.join(ROOT, ".pulumi-home"),
        PULUMI_BACKEND_URL: `file://${stateDir}`,
        PULUMI_CONFIG_PASSPHRASE: PASSPHRASE,
        PULUMI_SKIP_UPDATE_CHECK: "true",
        PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION: "true",
        JHE_UPGRADE_OFFLINE_PLAN: "0",
    };
}

export async function pulumiCommand(): Promise<PulumiCommand> {
    return PulumiCommand.get({ root: TOOLS });
}

/** A scratch folder inside the project (so programs there resolve the project's node_modules). */
export function scratchDir(name: string): string {
    const dir = path.join(ROOT, ".cache", "scratch", `${name}-${process.pid}-${Date.now()}`);
    fs.mkdirSync(dir, { recursive: true });
    return dir;
}

/** Opens (or creates) a stack of the program in `workDir` with the project's engine. */
export async function programStack(workDir: string, stackName: string, stateDir: string): Promise<Stack> {
    return LocalWorkspace.createOrSelectStack(
        { stackName, workDir },
        { envVars: engineEnv(stateDir), pulumiCommand: await pulumiCommand() },
    );
}

/**
 * Steps of a preview/up as the engine reports them: urn → ops, in order. A replacement shows as
 * ["create-replacement", "replace", "delete-replaced"]; an untouched resource as ["same"].
 */
export function stepOps(events: EngineEvent[]): Map<string, string[]> {
    const ops = new Map<string, string[]>();
    for (const e of events) {
        const m = e.resourcePreEvent?.metadata;
        if (m) ops.set(m.urn, [...(ops.get(m.urn) ?? []), m.op]);
    }
    return ops;
}

/** Names (last URN part) of the resources whose steps include `op`. */
export function namesWithOp(events: EngineEvent[], op: string): string[] {
    return [...stepOps(events)]
        .filter(([, ops]) => ops.includes(op))
        .map(([urn]) => urn.split("::").pop()!)
        .sort();
}
