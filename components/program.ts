// The program as a function of its validated config, so tests can build it many times (mocks).
// index.ts reads the config and exports what this returns.
import * as pulumi from "@pulumi/pulumi";
import { BackupBucket } from "./backupBucket";
import { JheConfig } from "./config";
import { JheHost } from "./host";
import { NginxSite } from "./nginx";
import { readPlan, readPlanAndKey } from "./plan";
import { cloneStep, JheRelease, postgresStep, stepResult } from "./release";
import { stagingGate } from "./staging";
import { SystemdService } from "./systemd";

export function jheProgram(config: JheConfig) {
    // 0. The plan, read from the server first (read-only): it also checks the server's host key, and
    //    every command waits for that check.
    const { plan: planBefore, repairKey } = readPlanAndKey(config);

    // 1. The server: SSH with a pinned host key, the host-side tool, the releases layout (adopting
    //    an in-place install without downtime beyond one restart).
    // 3. Off-host backup copies, when configured: the bucket the stack makes, or an existing one.
    const bucket = config.backupBucket.mode === "create" ? new BackupBucket("backups", { name: config.backupBucket.name }) : undefined;
    const bucketName = bucket?.bucketName ?? (config.backupBucket.mode === "existing" ? config.backupBucket.name : undefined);
    for (const w of config.warnings) pulumi.log.warn(w);

    // 0b. Prod follows staging: an upgrade only to a version the staging stack ran and passed (or an
    //     override with its reason). Every command waits for this check, as for the host key's.
    const staging = stagingGate(config, planBefore);

    const host = new JheHost("server", {
        config, checkedHost: pulumi.all([planBefore, staging ?? null]).apply(() => config.ssh.host), bucketName,
    });

    // 2. What serves it: a hardened systemd unit and the nginx site with its maintenance switch.
    //    What runs there that the stack did not deploy (the plan's drift) is put back: these resources
    //    carry the plan's repair key in their triggers.
    //    (repairKey: never failing, so a refused host key fails the preview on the plan alone, with its message)
    const service = new SystemdService("systemd", { host, config, repairKey });
    const site = new NginxSite("nginx", { host, config, repairKey });

    // 4. The upgrade itself, replaced whenever jhe:version changes: preflight, prepare the release,
    //    back up, migrate, switch and restart, health gate (reverting on failure), finish.
    //    Then, with a bucket, every verified backup is copied off the server (encrypted, read back).
    // 3b. Staging only: prod's data, de-identified, in place of staging's before the steps below run.
    const clone = cloneStep(host, config, [service.install, site.install], bucketName);
    // 3c. jhe:postgresMajor: PostgreSQL's major upgrade (or the way back), before the upgrade steps.
    const postgres = postgresStep(host, config, [service.install, site.install, ...(clone ? [clone] : [])]);
    const release = new JheRelease("jhe", {
        host, config, dependsOn: [service.install, site.install, ...(clone ? [clone] : []), ...(postgres ? [postgres] : [])],
        offsite: bucketName !== undefined, bucketName, clone, repairKey,
    });

    // 5. The plan and what happened. At preview the plan is the move to come; after an up it is read
    //    again once finish is done, so it describes the server as it now is.
    const r = release.results;
    return {
        plan: pulumi.runtime.isDryRun() ? planBefore : pulumi.all([planBefore, r.finish]).apply(() => readPlan(config)),
        deployed: r.finish.apply((f) => ({ version: config.version, previous: (f.from as string | null) ?? null })),
        // A rollback's backup of the newer database is written by finish, after the window.
        backup: pulumi.all([r.backup, r.finish]).apply(([b, f]) => {
            const fb = f.backup as { path?: string; sha256?: string; rowCounts?: unknown } | null | undefined;
            if (b.backup) return { location: b.backup, sha256: b.sha256, rowCounts: b.rowCounts };
            return fb?.path ? { location: fb.path, sha256: fb.sha256, rowCounts: fb.rowCounts } : null;
        }),
        migrationsApplied: r.migrate.apply((m) => (m.applied as string[]) ?? []),
        migration: pulumi.all([r.migrate, r.finish]).apply(([m, f]) => ({
            strategy: (f.strategy as string | undefined) ?? (m.strategy as string | undefined) ?? null,
            staged: (m.staged as Record<string, number> | undefined) ?? null,
            writtenSinceBackup: ((f.stagedFallback as { written?: string[] } | null | undefined)?.written) ?? null,
            // Why those rows could not be caught up in the staged copy instead (see catchup), when it fell back.
            notCaughtUp: ((f.stagedFallback as { notCaughtUp?: string } | null | undefined)?.notCaughtUp) ?? null,
            keptDatabase: (m.keptDatabase as string | undefined) ?? null,
            // A new server's database restored from the bucket (jhe:restoreFrom): which backup, how long.
            restored: (m.restored as Record<string, unknown> | undefined) ?? null,
            // The release booted before the window in the hand-over unit (null: booted in the window).
            bootedBeforeWindow: (m.bootedBeforeWindow as { unit: string; seconds: number } | undefined) ?? null,
        })),
        rollback: r.finish.apply((f) => (f.rollback as Record<string, unknown> | undefined) ?? null),
        // How the release's dependencies were installed (as the lock pins them) and what `pip check` found.
        dependencies: r.finish.apply((f) => (f.dependencies as Record<string, unknown> | undefined) ?? null),
        downtimeSeconds: r.finish.apply((f) => (f.downtimeSeconds as number) ?? 0),
        // The runbook's checks once the new version serves: database size, growth and rows, index hints, the
        // journal's errors and warnings since the cutover, free disk, memory and load, scheduled tasks.
        report: r.finish.apply((f) => (f.report as Record<string, unknown> | undefined) ?? null),
        // The watch after the switch: the share of failed requests before and after, and its verdict.
        watch: release.watch ? release.watch.apply((o) => (o.watch as Record<string, unknown> | null) ?? null) : null,
        // The runbook's smoke tests: the gate's (through nginx, as jhe:smokeTestUser: admin login, invitation link,
        // observation upload and read-back, their rows removed), and what anyone gets through nginx after the window.
        smoke: r.finish.apply((f) => (f.smoke as Record<string, unknown> | undefined) ?? null),
        // What the window held (path, snapshot, migration, switch seconds) beside preflight's estimate of it.
        window: r.finish.apply((f) => (f.window as Record<string, unknown> | undefined) ?? null),
        stepSeconds: pulumi.all(r).apply((all) => Object.fromEntries(Object.entries(all).map(([k, v]) => [k, v.seconds ?? null]))),
        upgradeLog: `${config.layout.appRoot}/UPGRADE_LOG.md`,
        // What this server ran and passed, and rolled back from: a prod stack reads this from its staging stack.
        rehearsals: r.finish.apply((f) => (f.rehearsals as Record<string, unknown> | undefined) ?? null),
        // On prod: how this move relates to staging's rehearsal (passed there, or the override and its reason).
        staging: staging ?? null,
        backupBucket: bucketName ?? null,
        // Where this move's backups went off the server (each read back and checked), null without a bucket.
        offsiteBackup: release.offsite ? release.offsite.apply((o) => (o.offsite as Record<string, unknown> | null) ?? null) : null,
        // jhe:snapshot: the backup of what serves now and where its copy went (for a staging stack's jhe:cloneFrom).
        snapshot: release.snapshot ? release.snapshot.apply((o) => (o.snapshot as Record<string, unknown> | null) ?? null) : null,
        // jhe:cloneFrom: which backup of prod this staging server's database is a de-identified clone of.
        clone: clone ? clone.stdout.apply((s) => (stepResult(s).clone as Record<string, unknown> | null) ?? null) : null,
        // jhe:postgresMajor: the cluster's move (from, to, backup, downtime, the cluster kept; a rollback's replay).
        postgres: postgres ? postgres.stdout.apply((s) => (stepResult(s).postgres as Record<string, unknown> | null) ?? null) : null,
    };
}
