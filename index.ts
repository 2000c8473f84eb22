// jhe-upgrade: the JupyterHealth Exchange upgrade runbook as a Pulumi program.
// This file is the table of contents; each part lives in components/.
import * as pulumi from "@pulumi/pulumi";
import { BackupBucket } from "./components/backupBucket";
import { ConfigError, JheConfig, loadConfig } from "./components/config";
import { JheHost } from "./components/host";
import { NginxSite } from "./components/nginx";
import { readPlan } from "./components/plan";
import { JheRelease } from "./components/release";
import { SystemdService } from "./components/systemd";

export function jheProgram(config: JheConfig) {
    // 1. The server: SSH with a pinned host key, the host-side tool, the releases layout (adopting
    //    an in-place install without downtime beyond one restart).
    const host = new JheHost("server", { config });

    // 2. What serves it: a hardened systemd unit and the nginx site with its maintenance switch.
    const service = new SystemdService("systemd", { host, config });
    const site = new NginxSite("nginx", { host, config });

    // 3. Off-host backup copies, when configured.
    const bucket = config.backupBucket.mode === "create" ? new BackupBucket("backups", { name: config.backupBucket.name }) : undefined;

    // 4. The upgrade itself, replaced whenever jhe:version changes: preflight, prepare the release,
    //    back up, migrate, switch and restart, health gate (reverting on failure), finish.
    const release = new JheRelease("jhe", { host, config, dependsOn: [service.install, site.install] });

    // 5. The plan (read-only, also at preview) and what happened.
    const r = release.results;
    return {
        plan: readPlan(config),
        deployed: r.finish.apply((f) => ({ version: config.version, previous: (f.from as string | null) ?? null })),
        backup: r.backup.apply((b) => (b.backup ? { location: b.backup, sha256: b.sha256, rowCounts: b.rowCounts } : null)),
        migrationsApplied: r.migrate.apply((m) => (m.applied as string[]) ?? []),
        downtimeSeconds: r.finish.apply((f) => (f.downtimeSeconds as number) ?? 0),
        stepSeconds: pulumi.all(r).apply((all) => Object.fromEntries(Object.entries(all).map(([k, v]) => [k, v.seconds ?? null]))),
        upgradeLog: `${config.layout.appRoot}/UPGRADE_LOG.md`,
        backupBucket: bucket?.bucketName ?? (config.backupBucket.mode === "existing" ? config.backupBucket.name : null),
    };
}

function readConfig(): JheConfig {
    try {
        return loadConfig();
    } catch (e) {
        if (e instanceof ConfigError) throw new pulumi.RunError(e.message);
        throw e;
    }
}

const outputs = jheProgram(readConfig());
export const plan = outputs.plan;
export const deployed = outputs.deployed;
export const backup = outputs.backup;
export const migrationsApplied = outputs.migrationsApplied;
export const downtimeSeconds = outputs.downtimeSeconds;
export const stepSeconds = outputs.stepSeconds;
export const upgradeLog = outputs.upgradeLog;
export const backupBucket = outputs.backupBucket;
