// jhe-upgrade: the JupyterHealth Exchange upgrade runbook as a Pulumi program. Table of contents:
//
//   0. config            components/config.ts     read and validate the stack's config; nothing reaches
//                                                  the server if any value is wrong
//   1. the server        components/host.ts       SSH with a pinned host key, the host-side tool,
//                                                  adoption of an in-place install into releases/
//   2. what serves it    components/systemd.ts    hardened gunicorn unit
//                        components/nginx.ts      TLS site with a maintenance switch
//   3. off-host backups  components/backupBucket.ts  S3 bucket, when jhe:backupBucket says "create"; with
//                                                  any bucket, the offsite-backup step (after finish) copies
//                                                  each backup there encrypted to jhe:backupEncryptionKey,
//                                                  reads it back, and prunes old local dumps
//   4. the upgrade       components/release.ts    preflight, prepare-release, backup, migrate,
//                                                  switch-restart, health-gate, finish - replaced on
//                                                  every jhe:version change; the host tool (host/jhe_upgrade/) runs them.
//                                                  Migrations that are all no-SQL or additive run while
//                                                  the old version serves, and the new release takes over
//                                                  through a hand-over unit: no window. Otherwise the
//                                                  backup and the migration run on a copy while the old
//                                                  version serves; the window is a rename swap and the
//                                                  switch to the release booted before it (jhe:migrationStrategy)
//                                                  The health gate ends with the runbook's smoke tests through
//                                                  nginx (admin login, invitation link, observation upload and
//                                                  read-back as jhe:smokeTestUser): a failure reverts
//                                                  watch: after an upgrade, failed requests against before
//                                                  it (jhe:watchSeconds); too many rolls back by itself
//   5. the plan          components/plan.ts       read-only look at the server during preview, with
//                                                  the migrations' classes and the downtime estimate
//
//   3c. PostgreSQL      components/release.ts    jhe:postgresMajor: pg_upgradecluster in a window, the old
//       major                                     cluster kept; set back, it serves again (rows replayed)
//                                                  (jhe:pins and jhe:python: a release of the same tag built
//                                                  otherwise - the runbook's Django-only and Python upgrades)
//   0b. prod follows    components/staging.ts    on a prod stack, an upgrade only to a version the
//       staging                                    staging stack (jhe:stagingStack) ran and passed
//
// components/program.ts wires 1-5 together; this file reads the config and exports the outputs.
import * as pulumi from "@pulumi/pulumi";
import { ConfigError, JheConfig, loadConfig } from "./components/config";
import { jheProgram } from "./components/program";

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
export const migration = outputs.migration;
export const rollback = outputs.rollback;
export const dependencies = outputs.dependencies;
export const downtimeSeconds = outputs.downtimeSeconds;
export const window = outputs.window;
export const report = outputs.report;
export const smoke = outputs.smoke;
export const watch = outputs.watch;
export const stepSeconds = outputs.stepSeconds;
export const upgradeLog = outputs.upgradeLog;
export const backupBucket = outputs.backupBucket;
export const offsiteBackup = outputs.offsiteBackup;
export const snapshot = outputs.snapshot;
export const clone = outputs.clone;
export const postgres = outputs.postgres;
export const rehearsals = outputs.rehearsals;
export const staging = outputs.staging;
