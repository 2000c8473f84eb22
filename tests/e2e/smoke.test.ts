// The runbook's smoke tests in the health gate, on the real engine and a real server: admin login as the
// stack's smoke-test account, an invitation link, an observation upload and its read-back, through nginx
// with the site's name, on each version's own paths; a version that breaks uploads while /health passes
// is reverted by them, with users writing throughout.
import * as assert from "assert";
import { Stack } from "@pulumi/pulumi/automation";
import { leaveUnset, projectStack, teardown } from "../helpers/stack";
import { HostInfo, query, servingVersion, sshOk, up } from "../helpers/testhost";
import { lostByContent, Writer } from "../helpers/writer";

const APP = "/opt/jupyterhealth-exchange";
const ACCOUNT = "smoke-test@example.org";
const PASSWORD = `smoke-${Math.random().toString(36).slice(2)}`;

describe("smoke tests in the health gate (real engine, real server)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let stack: Stack;

    before(async function () {
        h = await up("e2esm", { legacy: "v1.0.0", patients: 20, observations: 500 });
        stack = await projectStack(h, "v1.0.0", {
            "jhe:smokeTestUser": { value: ACCOUNT },
            "jhe:smokeTestPassword": { value: PASSWORD, secret: true },
            "jhe:smokeTestCreate": { value: "true" },
        });
        // The runbook's test-observation.json and the invitation's fields, as this JHE (the fixture) wants them.
        for (const [k, v] of Object.entries({
            "smokeTestObservation.resourceType": "Observation", "smokeTestObservation.status": "final",
            "smokeTestObservation.code.coding[0].code": "8867-4", "smokeTestObservation.valueQuantity.value": "72",
            "smokeTestInvitation.client_id": "1",
        })) await stack.setConfig(`jhe:${k}`, { value: v }, true);
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Test Hospital" }, true);
        await stack.up();
    });
    after(async function () {
        await teardown(stack, h);
    });

    /** The account, its patient record, their tokens and observations, as the database has them. */
    async function account(): Promise<{ staff: boolean; superuser: boolean; patient: number | null; tokens: number; observations: number }> {
        const [u] = await query<{ id: string; is_staff: boolean; is_superuser: boolean }>(
            h, "SELECT id, is_staff, is_superuser FROM core_jheuser WHERE email = $1", [ACCOUNT]);
        assert.ok(u, `${ACCOUNT} exists`);
        const [p] = await query<{ id: string }>(h, "SELECT id FROM core_patient WHERE jhe_user_id = $1", [u.id]);
        const [t] = await query<{ n: string }>(h, "SELECT count(*) AS n FROM oauth2_provider_accesstoken WHERE user_id = $1", [u.id]);
        const [o] = await query<{ n: string }>(h, "SELECT count(*) AS n FROM core_observation WHERE subject_patient_id = $1", [p ? p.id : -1]);
        return { staff: u.is_staff, superuser: u.is_superuser, patient: p ? Number(p.id) : null, tokens: Number(t.n), observations: Number(o.n) };
    }
    const smokeFiles = async () => (await sshOk(h, "ls /var/lib/jhe-upgrade/jhe | grep '^smoke-[0-9a-f]' || true")).trim();

    it("smoke: a version whose uploads fail while /health passes is reverted by them; every acknowledged write kept", async function () {
        // The first up made the account with the code that served (staff, no permission) and its patient record.
        const before = await account();
        assert.deepStrictEqual({ ...before, patient: before.patient !== null }, { staff: true, superuser: false, patient: true, tokens: 0, observations: 0 });
        await stack.setConfig("jhe:version", { value: "v1.6.0" });
        const writer = new Writer(h, 1, 5, 300).start();
        let err: Error | undefined;
        try {
            await stack.up();
        } catch (e) {
            err = e as Error;
        }
        const report = await writer.stop();
        assert.ok(err, "the up must fail");
        assert.match(err.message, /v1\.6\.0 failed its health check \(smoke test observationUpload: POST \/fhir\/r5\/Observation answered 500, not 201\)/);
        assert.match(err.message, /reverted automatically/);
        assert.strictEqual(await servingVersion(h), "v1.0.0");
        assert.ok(report.acked.length > 0, "the writer was acknowledged");
        assert.deepStrictEqual(await lostByContent(h, report.ackedRows), []);
        // Nothing of the smoke tests is left: no token, no observation, no file that passes the maintenance page.
        const after = await account();
        assert.strictEqual(after.tokens, 0);
        assert.strictEqual(after.observations, 0);
        assert.strictEqual(await smokeFiles(), "");
        const log = await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`);
        assert.match(log, /\*\*What failed:\*\* v1\.6\.0 failed its health check \(smoke test observationUpload/);
    });

    it("smoke: a good upgrade passes them as the account, on the release's own paths, and removes their rows", async function () {
        await stack.setConfig("jhe:version", { value: "v1.2.0" });
        const res = await stack.up();
        assert.strictEqual(await servingVersion(h), "v1.2.0");
        const smoke = res.outputs.smoke.value as { gate: { ok: boolean; checks: Record<string, Record<string, unknown>>; cleanup: { deleted: number } } } & Record<string, unknown>;
        const c = smoke.gate.checks;
        assert.ok(smoke.gate.ok, JSON.stringify(smoke.gate));
        for (const k of ["health", "adminPage", "adminLogin", "invitationLink", "observationUpload", "observationReadBack"]) {
            assert.strictEqual(c[k]?.ok, true, `${k}: ${JSON.stringify(c[k])}`);
        }
        const { patient } = await account();
        assert.strictEqual(c.invitationLink.path, `/api/v1/patients/${patient}/invitation_link`);
        assert.strictEqual(c.observationUpload.path, "/fhir/r5/Observation");
        assert.strictEqual(c.observationUpload.status, 201);
        assert.ok(smoke.gate.cleanup.deleted >= 2, `the observation and the token removed: ${JSON.stringify(smoke.gate.cleanup)}`);
        assert.deepStrictEqual({ ...(await account()), patient: null }, { staff: true, superuser: false, patient: null, tokens: 0, observations: 0 });
        // ... nor the session its admin login made (it logs out again)
        const [sessions] = await query<{ n: string }>(h, "SELECT count(*) AS n FROM django_session");
        assert.strictEqual(Number(sessions.n), 0);
        // After the window, through nginx, what anyone gets.
        assert.deepStrictEqual([smoke["/health"], smoke["/admin/"], smoke["/static/admin/css/base.css"]], ["200", "302", "200"]);
        const log = await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`);
        assert.match(log, /- smoke test adminLogin: passed, 200\n/);
        assert.match(log, /- smoke test observationUpload: passed, 201\n/);
        assert.match(log, /- smoke tests' own rows removed: \d+\n/);
    });

    it("smoke: v2.0.0's paths are its own (/FHIR/R5/, a POST for the invitation); a wrong password is refused before any window", async function () {
        await stack.setConfig("jhe:version", { value: "v2.0.0" });
        const res = await stack.up();
        const c = (res.outputs.smoke.value as { gate: { checks: Record<string, Record<string, unknown>> } }).gate.checks;
        assert.strictEqual(c.observationUpload.path, "/FHIR/R5/Observation");
        assert.strictEqual(c.observationReadBack.ok, true);
        assert.strictEqual(c.invitationLink.path, "/api/v1/invitation");
        assert.strictEqual(c.invitationLink.ok, true);
        // The program never takes over an account it did not make (here a practitioner's), nor works with a wrong password:
        // said by prepare, before any window, nothing changed.
        await stack.setConfig("jhe:smokeTestUser", { value: "practitioner1@example.org" });
        await assert.rejects(stack.up(), /jhe:smokeTestUser practitioner1@example\.org is an account this program did not make/);
        const [p1] = await query<{ is_staff: boolean; n: string }>(h, "SELECT is_staff, (SELECT count(*) FROM core_patient p WHERE p.jhe_user_id = u.id) AS n " +
            "FROM core_jheuser u WHERE email = 'practitioner1@example.org'");
        assert.deepStrictEqual({ ...p1, n: Number(p1.n) }, { is_staff: false, n: 0 });
        await stack.setConfig("jhe:smokeTestUser", { value: ACCOUNT });
        await stack.setConfig("jhe:smokeTestCreate", { value: "false" });
        await stack.setConfig("jhe:smokeTestPassword", { value: "not-the-password", secret: true });
        const releasesBefore = await sshOk(h, `ls ${APP}/releases; readlink ${APP}/current`);
        await assert.rejects(stack.up(), /the smoke-test account jhe:smokeTestUser smoke-test@example\.org: jhe:smokeTestPassword is not the password of smoke-test@example\.org on this server/);
        assert.strictEqual(await sshOk(h, `ls ${APP}/releases; readlink ${APP}/current`), releasesBefore);
        assert.strictEqual(await servingVersion(h), "v2.0.0");
        await stack.setConfig("jhe:smokeTestPassword", { value: PASSWORD, secret: true });
        await stack.up();
    });
});
