// Staging first, enforced: a prod stack follows its staging stack (a StackReference in the same
// backend), on two real servers. Prod refuses an upgrade staging has not run and passed, or has
// rolled back from; an override with its reason goes ahead and is recorded.
import * as assert from "assert";
import { Stack } from "@pulumi/pulumi/automation";
import { leaveUnset, projectStack, teardown } from "../helpers/stack";
import { HostInfo, servingVersion, sshOk, up } from "../helpers/testhost";

const LOG = "/opt/jupyterhealth-exchange/UPGRADE_LOG.md";

describe("staging first: prod follows staging (two real servers, StackReference)", function () {
    this.timeout(900_000);
    let hs: HostInfo;
    let hp: HostInfo;
    let stg: Stack;
    let prd: Stack;

    before(async function () {
        hs = await up("e2estg", { legacy: "v1.0.0", patients: 10, observations: 200 });
        hp = await up("e2eprd", { legacy: "v1.0.0", patients: 10, observations: 200 });
        stg = await projectStack(hs, "v1.0.0");
        await leaveUnset(stg, "JHE_FEATURE_X");
        await stg.up();
        prd = await projectStack(hp, "v1.0.0", {
            "jhe:stage": { value: "prod" },
            "jhe:stagingStack": { value: `organization/jhe/${stg.name}` },
        });
        await leaveUnset(prd, "JHE_FEATURE_X");
        await prd.up(); // adopting what prod runs is no upgrade: not held back
    });
    after(async function () {
        await teardown(prd, hp);
        await teardown(stg, hs);
    });

    it("staging: prod refuses v1.1.0 until the staging stack has run and passed it", async function () {
        await prd.setConfig("jhe:version", { value: "v1.1.0" });
        const logBefore = await sshOk(hp, `cat ${LOG}`);
        const refused = new RegExp(`jhe:version v1\\.1\\.0 has not passed on the staging stack organization/jhe/${stg.name}: ` +
            "it has not run v1\\.1\\.0; staging runs v1\\.0\\.0\\. Upgrade staging to v1\\.1\\.0 first");
        await assert.rejects(prd.preview(), refused);
        await assert.rejects(prd.up(), refused);
        assert.strictEqual(await servingVersion(hp), "v1.0.0");
        assert.strictEqual(await sshOk(hp, `cat ${LOG}`), logBefore, "nothing ran on prod");
        await stg.setConfig("jhe:version", { value: "v1.1.0" });
        const s = await stg.up();
        const passed = s.outputs.rehearsals.value["v1.1.0"];
        assert.strictEqual(passed.status, "passed");
        // What the rehearsal cost, as measured there: the window, each of v1.1.0's migrations, the data.
        const rep = passed.report;
        assert.strictEqual(rep.downtimeSeconds, s.outputs.downtimeSeconds.value);
        assert.deepStrictEqual(Object.keys(rep.migrationSeconds).sort(), [...s.outputs.migrationsApplied.value].sort());
        assert.ok(Object.values(rep.migrationSeconds).every((x) => typeof x === "number" && x >= 0), JSON.stringify(rep.migrationSeconds));
        assert.ok(rep.data.databaseBytes > 0 && rep.data.rows >= 210, JSON.stringify(rep.data));
        // The runbook's checks after the upgrade, read on the server once v1.1.0 served: the report.
        const after = s.outputs.report.value;
        assert.strictEqual(after.database.rows.core_patient, 10);
        assert.strictEqual(after.database.rows.core_observation, 200);
        assert.ok(after.database.bytes > 0 && typeof after.database.growthBytes === "number", JSON.stringify(after.database));
        assert.ok(Array.isArray(after.database.indexHints) && Array.isArray(after.database.busiestTables));
        assert.ok(after.journal.lines > 0 && Number.isInteger(after.journal.errors) && !("firstErrors" in after.journal),
            JSON.stringify(after.journal)); // (the lines themselves stay in UPGRADE_LOG.md, not in the state)
        assert.ok(after.system.disk.app.freeBytes > 0 && after.system.memory.totalBytes > 0, JSON.stringify(after.system));
        assert.ok(Array.isArray(after.scheduled.timers) && Array.isArray(after.scheduled.failedUnits), JSON.stringify(after.scheduled));
        const log = await sshOk(hs, `cat ${LOG}`);
        assert.match(log, /\*\*After the upgrade:\*\*\n- Database: [\d.]+ MiB \([+-][\d.]+ MiB since preflight\); rows: .*core_patient 10/);
        assert.match(log, new RegExp(`- Journal since the move began: ${after.journal.errors} error line\\(s\\), ${after.journal.warnings} warning`));
        const pre = await prd.preview({ diff: true });
        const at = pre.stdout.search(/\n\s*[+~]?\s*staging\s*:\s*\{/);
        assert.ok(at >= 0, pre.stdout.slice(-3000));
        const block = pre.stdout.slice(at, at + 4000);
        assert.match(block, /\bstatus\s*:\s*(?:"[^"]*" => )?"passed"/, block);
        // Prod's preview says what staging measured for the move it is about to make (its staging output; the
        // summary line is cut short by the preview's display, the figures are whole).
        assert.match(block, new RegExp(`\\bdowntimeSeconds\\s*:\\s*${rep.downtimeSeconds}\\b`), block);
        assert.match(block, /\bsummary\s*:\s*"staging ran v1\.0\.0 -> v1\.1\.0 at \S+: [\d.]+ s of downtime \(/, block);
        assert.match(block, /\bnotRehearsed\s*:\s*\[\]/, block);
        for (const m of Object.keys(rep.migrationSeconds)) assert.ok(block.includes(m), m);
    });

    it("staging: after staging rolled back from v1.1.0, prod refuses it again", async function () {
        await stg.setConfig("jhe:version", { value: "v1.0.0" });
        const s = await stg.up();
        assert.strictEqual(s.outputs.rehearsals.value["v1.1.0"].status, "rolled back");
        await assert.rejects(prd.preview(), /it ran v1\.1\.0 and rolled back from it to v1\.0\.0 \(.*\); staging runs v1\.0\.0/);
        assert.strictEqual(await servingVersion(hp), "v1.0.0");
    });

    it("staging: an override with its reason goes ahead, and is in the outputs and UPGRADE_LOG.md", async function () {
        const reason = "urgent fix for an outage; staging rehearsal follows";
        await prd.setConfig("jhe:stagingOverride", { value: reason });
        const res = await prd.up();
        assert.strictEqual(await servingVersion(hp), "v1.1.0");
        assert.deepStrictEqual(res.outputs.staging.value, { stack: `organization/jhe/${stg.name}`, status: "override (staging not checked)", override: reason });
        assert.match(await sshOk(hp, `cat ${LOG}`), new RegExp(`\\*\\*Staging override:\\*\\* ${reason.replace(/[.;]/g, "\\$&")} ` +
            `\\(staging stack organization/jhe/${stg.name} not followed\\)`));
        // A rollback of prod is never held back by staging.
        await prd.setConfig("jhe:version", { value: "v1.0.0" });
        await prd.removeConfig("jhe:stagingOverride");
        const rb = await prd.up();
        assert.strictEqual(await servingVersion(hp), "v1.0.0");
        assert.strictEqual(rb.outputs.staging.value.status, "rollback (not checked)");
        // ... and a second up with no change changes nothing on prod (the check is not in any step's input).
        const again = await prd.preview({ diff: true });
        const changed = Object.entries(again.changeSummary ?? {}).filter(([op, n]) => !["same", "read"].includes(op) && n);
        assert.deepStrictEqual(changed, [], JSON.stringify(again.changeSummary));
    });
});
