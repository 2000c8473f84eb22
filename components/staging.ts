// Prod follows staging (the runbook's first best practice, enforced): a prod stack reads its staging
// stack's outputs (a StackReference) and refuses, at preview already, an upgrade to a version that
// staging has not run and passed, or has rolled back from since - unless jhe:stagingOverride says why.
// Every command on the server waits for this check, so a refused upgrade changes nothing.
import * as pulumi from "@pulumi/pulumi";
import { JheConfig } from "./config";
import { Plan } from "./plan";

/** One version as a stack ran it: passed its health gate (and stayed), or was rolled back from. */
export interface Rehearsal {
    status: "passed" | "rolled back" | "failed";
    at?: string;
    from?: string | null;
    to?: string;
    /** What a passed move cost on that server (its finish measured it). */
    report?: RehearsalReport;
}

/** What staging measured for a move: what prod will see (host tool: rehearsal.move_report). */
export interface RehearsalReport {
    downtimeSeconds?: number | null;
    estimatedDowntimeSeconds?: number | null;
    path?: string | null;
    strategy?: string | null;
    migrateSeconds?: number | null;
    /** Each migration's own time (`migrate -v 2`). */
    migrationSeconds?: Record<string, number>;
    plan?: { pending?: string[]; undo?: string[]; classes?: Record<string, string> };
    /** The data it ran on: its size, and whether it was a de-identified copy of prod's backup (and which). */
    data?: { databaseBytes?: number | null; rows?: number | null; clonedFrom?: Record<string, unknown> | null };
}

/** What prod's move relates to on staging (recorded in UPGRADE_LOG.md and the outputs). */
export interface StagingCheck {
    stack: string | null;
    status: string;
    override?: string;
    /** Staging's rehearsal of this version: one line, then what it measured. */
    rehearsal?: { summary: string; from: string | null; at?: string; notRehearsed: string[] } & RehearsalReport;
}

const mib = (n: number | null | undefined) => (n === null || n === undefined ? "?" : `${(n / 2 ** 20).toFixed(0)} MiB`);

/** Staging's rehearsal as prod reads it at preview: what staging measured, on what data, and which of
 * prod's pending migrations it did not run (it came from another version). */
export function rehearsalFor(entry: Rehearsal, plan: Plan): StagingCheck["rehearsal"] | undefined {
    const r = entry.report;
    if (!r) return undefined;
    const from = entry.from ?? null;
    const ran = new Set(Object.keys(r.migrationSeconds ?? {}).concat(r.plan?.pending ?? []));
    const notRehearsed = (plan.pendingMigrations ?? []).filter((m) => !ran.has(m));
    const cloned = r.data?.clonedFrom as { backup?: string; taken?: string } | null | undefined;
    const data = cloned?.backup ? `a de-identified copy of prod's backup ${cloned.backup}${cloned.taken ? ` (taken ${cloned.taken})` : ""}`
        : "staging's own data";
    const slowest = Object.entries(r.migrationSeconds ?? {}).sort((a, b) => b[1] - a[1])[0];
    const summary = `staging ran ${from ?? "a new install"} -> ${plan.to}${entry.at ? ` at ${entry.at}` : ""}: ` +
        `${r.downtimeSeconds ?? "?"} s of downtime (${r.path ?? r.strategy ?? "?"}; estimated ${r.estimatedDowntimeSeconds ?? "?"} s), ` +
        `migrations ${r.migrateSeconds ?? 0} s${slowest ? ` (slowest ${slowest[0]} ${slowest[1]} s)` : ""}, ` +
        `on ${mib(r.data?.databaseBytes)} and ${r.data?.rows ?? "?"} rows of ${data}` +
        (from !== (plan.from ?? null) ? `; prod moves from ${plan.from ?? "nothing"}, not ${from ?? "a new install"}` : "") +
        (notRehearsed.length ? `; not rehearsed there: ${notRehearsed.join(", ")}` : "");
    return { summary, from, at: entry.at, notRehearsed, ...r };
}

/**
 * The check itself, pure: `rehearsals` and `deployed` are the staging stack's outputs, `plan` what
 * prod's move is. Throws a RunError naming staging's version when prod may not go ahead.
 */
export function judgeStaging(version: string, staging: NonNullable<JheConfig["staging"]>, rehearsals: unknown, deployed: unknown,
                             plan: Plan): StagingCheck {
    const stack = staging.stack ?? null;
    if (plan.action === "none") return { stack, status: "no change" };
    // With an override the staging stack is not read at all (stagingGate): whatever the move, it goes ahead.
    if (staging.override) return { stack, status: "override (staging not checked)", override: staging.override };
    // A rollback goes back to what prod ran before: never held back by staging.
    if (plan.action === "rollback") return { stack, status: "rollback (not checked)" };
    if (!plan.action) {
        // The plan could not be read: whether this is an upgrade or a rollback cannot be told here.
        throw new pulumi.RunError(
            `the plan could not be read from the server (${plan.error ?? plan.note ?? "no answer"}), so whether jhe:version ${version} ` +
            `is an upgrade (held to the staging stack ${stack}'s rehearsals) or a rollback cannot be told. Fix the connection and ` +
            `preview again; for an emergency rollback, set jhe:stagingOverride "<why>". Nothing was changed.`);
    }
    if (rehearsals === undefined || rehearsals === null) {
        throw new pulumi.RunError(
            `the staging stack ${stack} has no rehearsals output: it has not finished a move with this version of jhe-upgrade ` +
            `(or it is not a jhe-upgrade stack). Move staging to ${version} with it (its health gate must pass), then preview prod ` +
            `again; or set jhe:stagingOverride "<why>". Nothing was changed.`);
    }
    const entry = (rehearsals as Record<string, Rehearsal>)[version];
    if (entry?.status === "passed") {
        const rehearsal = rehearsalFor(entry, plan);
        return rehearsal ? { stack, status: "passed", rehearsal } : { stack, status: "passed" };
    }
    const runs = (deployed as { version?: string } | undefined)?.version;
    const why = entry?.status === "rolled back"
        ? `it ran ${version} and rolled back from it${entry.to ? ` to ${entry.to}` : ""}${entry.at ? ` (${entry.at})` : ""}`
        : entry?.status === "failed" ? `its move to ${version} failed the health gate and was reverted${entry.at ? ` (${entry.at})` : ""}`
        : `it has not run ${version}`;
    throw new pulumi.RunError(
        `jhe:version ${version} has not passed on the staging stack ${stack}: ${why}; staging runs ${runs ?? "nothing yet"}. ` +
        `Upgrade staging to ${version} first (its health gate must pass), then preview prod again; or, to go ahead without it, ` +
        `set the reason: pulumi config set jhe:stagingOverride "<why>" (recorded in UPGRADE_LOG.md and the outputs). Nothing was changed.`);
}

/** The check for a prod stack (undefined on staging stacks), from its staging stack's outputs. */
export function stagingGate(config: JheConfig, plan: pulumi.Output<Plan>): pulumi.Output<StagingCheck> | undefined {
    const s = config.staging;
    if (!s?.stack) return undefined;
    if (s.override) {
        // Not read at all: a staging stack that is gone or unreadable must not hold back an override.
        pulumi.log.warn(`jhe:stagingOverride is set ("${s.override}"): prod does not follow the staging stack ${s.stack} ` +
            "while it is; remove it after this move (pulumi config rm jhe:stagingOverride)");
        return plan.apply((p) => judgeStaging(config.version, s, undefined, undefined, p));
    }
    const ref = new pulumi.StackReference(`staging-${s.stack.replace(/\//g, "-")}`, { name: s.stack });
    return pulumi.all([ref.getOutput("rehearsals"), ref.getOutput("deployed"), plan])
        .apply(([rehearsals, deployed, p]) => {
            const check = judgeStaging(config.version, s, rehearsals, deployed, p);
            // What staging measured for this move, in the preview's diagnostics (and the staging output).
            if (check.rehearsal) pulumi.log.info(check.rehearsal.summary);
            return check;
        });
}
