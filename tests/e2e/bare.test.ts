// From a bare Debian 12 server to a running JHE with the same stack that later upgrades and rolls
// it back, connecting as a sudo user (and failing fast for one whose sudo wants a password).
import * as assert from "assert";
import * as crypto from "crypto";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { stepOps } from "../helpers/engine";
import { leaveUnset, projectStack, removeStack, teardown } from "../helpers/stack";
import { adminLogin, HostInfo, oidcKeys, query, request, servingVersion, ssh, sshOk, up } from "../helpers/testhost";

const APP = "/opt/jupyterhealth-exchange";

describe("bare server to running JHE (real engine, real server, sudo user)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let stack: Stack;
    const adminPassword = `pw-${Math.random().toString(36).slice(2)}`;
    const secretConfig = () => ({
        "jhe:dbPassword": { value: `db-${Math.random().toString(36).slice(2)}`, secret: true },
        "jhe:tlsSelfSigned": { value: "true" },
        // the fixture's user model is JHE's: people log in by e-mail, there is no username
        "jhe:adminEmail": { value: "admin@example.org" },
        "jhe:adminPassword": { value: adminPassword, secret: true },
    });

    before(async function () {
        h = await up("e2ebare");
    });
    after(async function () {
        await teardown(stack, h);
    });

    const health = () => servingVersion(h);

    it("fails fast, changing nothing, when the SSH user's sudo wants a password", async function () {
        const s = await projectStack({ ...h, user: "needpw" }, "v1.0.0", { "jhe:sshUser": { value: "needpw" }, ...secretConfig() });
        try {
            const t0 = Date.now();
            await assert.rejects(s.up(), /the SSH user needpw needs password-less sudo on this server \(sudo -n: sudo: a password is required\)/);
            assert.ok(Date.now() - t0 < 60_000, "no hanging on a password prompt");
            assert.strictEqual((await ssh(h, `test -e ${APP} || id jheapp`)).code, 1, "nothing was set up");
        } finally {
            await removeStack(s);
        }
    });

    it("pulumi up installs JHE v1.0.0 on the bare server as a sudo user: packages, user, database, .env, release, unit, TLS site, superuser", async function () {
        stack = await projectStack(h, "v1.0.0", { "jhe:sshUser": { value: "deploy" }, ...secretConfig() });
        await stack.setConfig("jhe:secretEnv.SECRET_KEY", { value: `sk-${Math.random().toString(36).slice(2)}`, secret: true }, true);
        // An install: every variable of v1.0.0's env example is new. The tool writes SITE_URL and DB_*;
        // SECRET_KEY is set; DEBUG stays unset (JHE would turn debug on for any value).
        const plan = (await stack.preview({ diff: true })).stdout;
        assert.match(plan, /envMissing\s*:\s*\[\s*\+?\s*\[0\]: "DEBUG"\s*\+?\s*\[1\]: "OIDC_RSA_PRIVATE_KEY"\s*\]/);
        assert.match(plan, /envHints\s*:\s*\{\s*\+?\s*DEBUG\s*: "JHE turns debug on for any non-empty value/);
        assert.match(plan, /OIDC_RSA_PRIVATE_KEY\s*: "JHE's OIDC signing key: without it/);
        await leaveUnset(stack, "DEBUG", "JHE_FEATURE_X");
        // the OIDC key as an operator sets it from its PEM file (made now, never committed)
        const oidc = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
        await stack.setConfig("jhe:secretEnv.OIDC_RSA_PRIVATE_KEY", { value: oidc, secret: true }, true);
        const t0 = Date.now();
        const res = await stack.up();
        const seconds = (Date.now() - t0) / 1000;
        assert.strictEqual(res.outputs.deployed.value.version, "v1.0.0");
        // the plan after an up describes the server as it now is: nothing left to do
        assert.deepStrictEqual([res.outputs.plan.value.from, res.outputs.plan.value.action], ["v1.0.0", "none"]);
        assert.strictEqual(await health(), "v1.0.0");
        assert.strictEqual((await request(h, "GET", "/admin/")).status, 302);
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 }, "the OIDC key endpoint serves the key");
        const out = await sshOk(h, `stat -c '%U:%G %a' ${APP}/current/.env; readlink ${APP}/current; id -gn jheapp; systemctl is-enabled jhe
            cd /tmp && sudo -u postgres psql -tAc "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'jhe_production'"
            openssl x509 -noout -subject -in /etc/ssl/jhe/jhe.crt`);
        assert.match(out, /^jheapp:www-data 600\nreleases\/v1\.0\.0\nwww-data\nenabled\njheuser\nsubject=CN ?= ?e2ebare\.jhe\.test\n$/);
        const su = await query<{ is_superuser: boolean }>(h, "SELECT is_superuser FROM core_jheuser WHERE email = 'admin@example.org'");
        assert.deepStrictEqual(su, [{ is_superuser: true }]);
        // the superuser logs in (by e-mail) through nginx: a session in use, in django_session (a text key)
        const login = await adminLogin(h, "admin@example.org", adminPassword);
        assert.strictEqual(login.status, 302);
        assert.deepStrictEqual(await query(h, "SELECT session_key FROM django_session"), [{ session_key: login.sessionid }]);
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /## Install of v1\.0\.0/);
        const env = await sshOk(h, `cat ${APP}/current/.env`);
        assert.doesNotMatch(env, /^(DEBUG|JHE_FEATURE_X)=|jhe_dev|jhepassword|change-me/m, "no example value reached the .env");
        console.log(`      bare server to serving v1.0.0: ${seconds.toFixed(1)} s (pulumi up)`);
    });

    it("a second up with no change does nothing (the preview shows no changes)", async function () {
        const events: EngineEvent[] = [];
        await stack.preview({ onEvent: (e) => events.push(e) });
        assert.deepStrictEqual([...stepOps(events)].filter(([, ops]) => ops.some((op) => op !== "same")), []);
    });

    it("the same stack upgrades to v1.1.0 and rolls back to v1.0.0 keeping the rows written in between", async function () {
        await stack.setConfig("jhe:version", { value: "v1.1.0" });
        await stack.up();
        assert.strictEqual(await health(), "v1.1.0");
        const ids: number[] = [];
        for (let i = 0; i < 6; i++) {
            const r = await request(h, "POST", "/fhir/r5/Observation", { subject: { reference: "Patient/1" }, code: { coding: [{ code: `b${i}` }] }, valueQuantity: { value: i } });
            assert.strictEqual(r.status, 404, "no patient yet on a fresh server");
        }
        await query(h, "INSERT INTO core_patient (name_family, name_given, created) VALUES ('Doe', 'Jane', now())");
        const [{ id: pid }] = await query<{ id: string }>(h, "SELECT max(id) AS id FROM core_patient");
        for (let i = 0; i < 6; i++) {
            const r = await request(h, "POST", "/fhir/r5/Observation", { subject: { reference: `Patient/${pid}` }, code: { coding: [{ code: `b${i}` }] }, valueQuantity: { value: i } });
            assert.strictEqual(r.status, 201, r.body);
            ids.push(Number(JSON.parse(r.body).id));
        }
        await stack.setConfig("jhe:version", { value: "v1.0.0" });
        const res = await stack.up();
        assert.strictEqual(await health(), "v1.0.0");
        assert.deepStrictEqual(res.outputs.rollback.value.rowsReplayed, { core_patient: 1, core_observation: 6 });
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 });
        const rows = await query<{ n: string }>(h, "SELECT count(*) AS n FROM core_observation WHERE id = ANY($1::bigint[])", [ids]);
        assert.strictEqual(Number(rows[0].n), ids.length);
    });
});
