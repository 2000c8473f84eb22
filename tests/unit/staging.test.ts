// Prod follows staging: the check against the staging stack's outputs (pure), and its settings.
import * as assert from "assert";
import * as pulumi from "@pulumi/pulumi";
import { RawConfig, SecretInputs } from "../../components/config";
import { judgeStaging } from "../../components/staging";
import { problems } from "../helpers/config";

const raw: RawConfig = { version: "v1.1.0", host: "10.77.0.2", sshHostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 host", siteUrl: "https://jhe.example.org" };
const secrets: SecretInputs = { sshPrivateKey: pulumi.output("KEY") };
const stack = "organization/jhe/staging";

describe("prod follows staging", function () {
    const upgrade = { to: "v1.1.0", action: "upgrade" as const };

    it("lets prod upgrade to a version staging ran and passed", function () {
        const r = judgeStaging("v1.1.0", { stack }, { "v1.1.0": { status: "passed", at: "2026-11-30T08:00:00Z" } }, { version: "v1.1.0" }, upgrade);
        assert.deepStrictEqual(r, { stack, status: "passed" });
    });

    it("shows prod what staging measured for the move, and which of prod's migrations staging did not run", function () {
        const report = {
            downtimeSeconds: 1.52, estimatedDowntimeSeconds: 2.1, path: "in-window", strategy: "in-window", migrateSeconds: 0.91,
            migrationSeconds: { "core.0002_observation_source": 0.04, "core.0003_backfill_source": 0.8 },
            plan: { pending: ["core.0002_observation_source", "core.0003_backfill_source"] },
            data: { databaseBytes: 1155 * 2 ** 20, rows: 1000123, clonedFrom: { backup: "20261130-101500-v1.0.0-to-v1.0.0", taken: "2026-11-30T10:15:00Z" } },
        };
        const reh = { "v1.1.0": { status: "passed", at: "2026-11-30T11:00:00Z", from: "v1.0.0", report } };
        const plan = { from: "v1.0.0", to: "v1.1.0", action: "upgrade" as const,
            pendingMigrations: ["core.0002_observation_source", "core.0003_backfill_source"] };
        const r = judgeStaging("v1.1.0", { stack }, reh, { version: "v1.1.0" }, plan);
        assert.strictEqual(r.status, "passed");
        assert.strictEqual(r.rehearsal?.summary,
            "staging ran v1.0.0 -> v1.1.0 at 2026-11-30T11:00:00Z: 1.52 s of downtime (in-window; estimated 2.1 s), migrations 0.91 s " +
            "(slowest core.0003_backfill_source 0.8 s), on 1155 MiB and 1000123 rows of a de-identified copy of prod's backup " +
            "20261130-101500-v1.0.0-to-v1.0.0 (taken 2026-11-30T10:15:00Z)");
        assert.deepStrictEqual(r.rehearsal?.notRehearsed, []);
        assert.strictEqual(r.rehearsal?.downtimeSeconds, 1.52);
        // Prod comes from an older version: a migration staging never ran is named.
        const older = judgeStaging("v1.1.0", { stack }, reh, {}, { ...plan, from: "v0.9.0", pendingMigrations: ["core.0001_initial", ...plan.pendingMigrations] });
        assert.deepStrictEqual(older.rehearsal?.notRehearsed, ["core.0001_initial"]);
        assert.match(older.rehearsal?.summary ?? "", /; prod moves from v0\.9\.0, not v1\.0\.0; not rehearsed there: core\.0001_initial$/);
    });

    it("refuses a version staging never ran, naming the version staging runs", function () {
        assert.throws(() => judgeStaging("v1.1.0", { stack }, { "v1.0.0": { status: "passed" } }, { version: "v1.0.0" }, upgrade),
            (e: Error) => e instanceof pulumi.RunError &&
                /jhe:version v1\.1\.0 has not passed on the staging stack organization\/jhe\/staging: it has not run v1\.1\.0; staging runs v1\.0\.0\. Upgrade staging to v1\.1\.0 first/.test(e.message) &&
                /jhe:stagingOverride/.test(e.message));
        assert.throws(() => judgeStaging("v1.1.0", { stack }, {}, undefined, upgrade), /staging runs nothing yet/);
        assert.throws(() => judgeStaging("v1.1.0", { stack }, null, { version: "v1.1.0" }, upgrade),
            /the staging stack organization\/jhe\/staging has no rehearsals output: it has not finished a move with this version of jhe-upgrade/);
    });

    it("refuses a version staging rolled back from", function () {
        const reh = { "v1.1.0": { status: "rolled back", at: "2026-11-30T09:00:00Z", to: "v1.0.0" }, "v1.0.0": { status: "passed" } };
        assert.throws(() => judgeStaging("v1.1.0", { stack }, reh, { version: "v1.0.0" }, upgrade),
            /it ran v1\.1\.0 and rolled back from it to v1\.0\.0 \(2026-11-30T09:00:00Z\); staging runs v1\.0\.0/);
    });

    it("refuses a version whose move failed on staging, saying so", function () {
        assert.throws(() => judgeStaging("v1.1.0", { stack }, { "v1.1.0": { status: "failed", at: "2026-11-30T09:30:00Z" } }, { version: "v1.0.0" }, upgrade),
            /its move to v1\.1\.0 failed the health gate and was reverted \(2026-11-30T09:30:00Z\); staging runs v1\.0\.0/);
    });

    it("goes ahead with an override, saying what it overrides; never holds back a rollback", function () {
        const reason = "security fix CVE-2026-0001, staging server down";
        assert.deepStrictEqual(judgeStaging("v1.1.0", { stack, override: reason }, undefined, undefined, upgrade),
            { stack, status: "override (staging not checked)", override: reason });
        assert.deepStrictEqual(judgeStaging("v1.0.0", { stack, override: reason }, undefined, undefined, { to: "v1.0.0", error: "no answer" }),
            { stack, status: "override (staging not checked)", override: reason }, "an emergency rollback with the plan unreadable");
        assert.deepStrictEqual(judgeStaging("v1.0.0", { stack }, {}, {}, { to: "v1.0.0", action: "rollback" }), { stack, status: "rollback (not checked)" });
        assert.deepStrictEqual(judgeStaging("v1.0.0", { stack }, {}, {}, { to: "v1.0.0", action: "none" }), { stack, status: "no change" });
        // The plan could not be read: neither an upgrade nor a rollback can be told; refused, naming the way out.
        assert.throws(() => judgeStaging("v1.0.0", { stack }, {}, {}, { to: "v1.0.0", error: "no answer from 10.1.2.3 within 30000 ms" }),
            /the plan could not be read from the server \(no answer from 10\.1\.2\.3 within 30000 ms\).*emergency rollback, set jhe:stagingOverride/);
    });

    it("clones prod's data only onto a staging stack with bucket settings, from a well-formed location", function () {
        const bucket = { backupBucket: "jhe-backups", backupEncryptionKey: "none" };
        const creds: SecretInputs = { ...secrets, backupAccessKeyId: pulumi.secret("AK"), backupSecretAccessKey: pulumi.secret("SK") };
        assert.deepStrictEqual(problems({ ...raw, ...bucket, cloneFrom: "s3://jhe-backups/jhe/jhe/latest" }, creds), []);
        assert.deepStrictEqual(problems({ ...raw, ...bucket, cloneFrom: "s3://jhe-backups/jhe/jhe/20261130-101500-v1.0.0-snapshot/",
            cloneKeepColumns: ["core_study.tagline"] }, creds), []);
        assert.match(problems({ ...raw, ...bucket, stage: "prod", stagingStack: stack, cloneFrom: "s3://jhe-backups/jhe/jhe/latest" }, creds).join("\n"),
            /jhe:cloneFrom replaces this server's database .* it is for staging stacks, never prod/);
        assert.match(problems({ ...raw, cloneFrom: "s3://jhe-backups/jhe/jhe/latest" }, secrets).join("\n"),
            /jhe:cloneFrom fetches prod's backup with this stack's bucket settings: set jhe:backupBucket/);
        assert.match(problems({ ...raw, ...bucket, cloneFrom: "jhe/jhe/latest" }, creds).join("\n"), /jhe:cloneFrom must be s3:\/\/<bucket>\/<prefix>latest/);
        assert.match(problems({ ...raw, ...bucket, cloneFrom: "s3://jhe-backups/jhe/latest", cloneKeepColumns: ["Core Study"] }, creds).join("\n"),
            /jhe:cloneKeepColumns must be a list of "table\.column"/);
        assert.match(problems({ ...raw, cloneKeepColumns: ["core_study.tagline"] }, secrets).join("\n"), /jhe:cloneKeepColumns is set but jhe:cloneFrom is not/);
        assert.match(problems({ ...raw, snapshot: "for staging!" }, secrets).join("\n"), /jhe:snapshot must be a label/);
    });

    it("requires a staging stack on prod, only there, and a reason for an override", function () {
        assert.match(problems({ ...raw, stage: "prod" }, secrets).join("\n"), /jhe:stagingStack is required on a prod stack/);
        assert.deepStrictEqual(problems({ ...raw, stage: "prod", stagingStack: stack }, secrets), []);
        assert.match(problems({ ...raw, stagingStack: stack }, secrets).join("\n"), /are for prod stacks/);
        assert.match(problems({ ...raw, stage: "prod", stagingStack: stack, stagingOverride: "because" }, secrets).join("\n"),
            /jhe:stagingOverride must say why/);
        assert.match(problems({ ...raw, stage: "prod", stagingStack: "a b" }, secrets).join("\n"), /jhe:stagingStack must be a stack name/);
    });
});
