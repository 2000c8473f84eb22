// The runbook's special upgrades as config changes, on a server half-way to Debian 13 (testhost
// --image next: Debian 12's PostgreSQL 15 and Python 3.11 serving, Debian 13's PostgreSQL 17 and
// Python 3.13 installed beside them, as `apt full-upgrade` leaves them). One server for the file:
//   Django only      jhe:pins django 5.2.19 over v1.1.0's lock (5.2.18), then the pin removed
//   Python version   jhe:python python3.13 (refused for a tag whose lock says 3.11; built for v2.0.0),
//                    then removed; and python3 moved to 3.13 under a release (what the OS upgrade
//                    does): the broken virtualenv shows in the preview and `up` builds it again
//   PostgreSQL major jhe:postgresMajor 17 on the 15 cluster (pg_upgradecluster, 15 kept), the health
//                    gate and smoke tests on 17; set back to 15: 15 serves again with the rows
//                    written on 17 replayed; 17 again (the cluster the rollback left is replaced)
// Each with a writer posting observations throughout, every acknowledged write kept, and every other
// row of every table the same before and after (checksums).
import * as assert from "assert";
import { Stack } from "@pulumi/pulumi/automation";
import { leaveUnset, projectStack, teardown } from "../helpers/stack";
import { HostInfo, query, servingVersion, ssh, sshOk, up } from "../helpers/testhost";
import { AckedWrite, lostByContent, Writer } from "../helpers/writer";

const APP = "/opt/jupyterhealth-exchange";
const changed = (p: { changeSummary?: Record<string, number> }) =>
    Object.entries(p.changeSummary ?? {}).filter(([op, n]) => !["same", "read"].includes(op) && n).map(([op]) => op);

/** Every public table's rows by count and checksum; observations only up to `maxObservation` (the writer adds the rest). */
async function checksums(h: HostInfo, maxObservation: number): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    const tables = (await query<{ t: string }>(h, "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).map((r) => r.t);
    for (const t of tables) {
        // (a move's own bookkeeping, and the smoke tests' token: made before each gate, deleted after it)
        if (["django_migrations", "django_session", "oauth2_provider_accesstoken"].includes(t)) continue;
        const where = t === "core_observation" ? ` WHERE id <= ${maxObservation}`
            : t === "core_jheuser" ? ` WHERE email NOT LIKE 'smoke-%'` : ""; // (the smoke account's last login changes)
        const [r] = await query<{ n: string; c: string | null }>(
            h, `SELECT count(*) AS n, md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))) AS c FROM "${t}" x${where}`);
        out[t] = `${r.n}:${r.c ?? "empty"}`;
    }
    return out;
}

async function maxObservation(h: HostInfo): Promise<number> {
    return Number((await query<{ m: string | null }>(h, "SELECT max(id) AS m FROM core_observation"))[0].m ?? 0);
}

/** The interpreter and Django version the serving gunicorn runs, read from the process itself. */
async function serving(h: HostInfo): Promise<{ release: string; python: string; django: string }> {
    const out = await sshOk(h, `pid=$(systemctl show -p MainPID --value jhe); readlink -f ${APP}/current; readlink -f /proc/$pid/exe
        ls -d $(readlink -f /proc/$pid/cwd)/venv/lib/python3*/site-packages/django-*.dist-info | sed 's/.*django-//; s/\\.dist-info//'`);
    const [rel, exe, django] = out.trim().split("\n");
    return { release: rel.split("/").pop()!, python: exe.split("/").pop()!, django };
}

describe("special upgrades: Django only, Python version, PostgreSQL major (real engine, a server with Debian 13's packages)", function () {
    this.timeout(1_200_000);
    let h: HostInfo;
    let stack: Stack;
    const writes: AckedWrite[] = [];

    /** `up` with a writer posting throughout; the other rows' checksums must not change. */
    async function upWithWriter(): Promise<{ outputs: Record<string, unknown>; acked: number }> {
        const maxBefore = await maxObservation(h);
        const before = await checksums(h, maxBefore);
        const w = new Writer(h).start();
        const res = await stack.up();
        await new Promise((r) => setTimeout(r, 300));
        const report = await w.stop();
        writes.push(...report.ackedRows);
        assert.deepStrictEqual(await lostByContent(h, writes), [], "every acknowledged write since the file began");
        assert.deepStrictEqual(await checksums(h, maxBefore), before, "every other row of every table");
        assert.ok(report.acked.length > 10, `${report.acked.length} writes acknowledged`);
        return { outputs: Object.fromEntries(Object.entries(res.outputs).map(([k, x]) => [k, x.value])), acked: report.acked.length };
    }

    before(async function () {
        h = await up("e2esp", { legacy: "v1.0.0", patients: 5, observations: 50, image: "next" });
        assert.strictEqual((await sshOk(h, "readlink -f /usr/bin/python3; pg_lsclusters -h | awk '{print $1\"/\"$2}'")).trim(),
            "/usr/bin/python3.11\n15/main");
        stack = await projectStack(h, "v1.1.0");
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.up();
        assert.deepStrictEqual(await serving(h), { release: "v1.1.0", python: "python3.11", django: "5.2.18" });
    });
    after(async function () {
        await teardown(stack, h);
    });

    it("Django only: jhe:pins django 5.2.19 over v1.1.0's lock is previewed as such, upgraded with the same safety, and reverted by removing the pin", async function () {
        await stack.setConfig("jhe:pins.django", { value: "5.2.19" }, true);
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /summary\s*:\s*"upgrade v1\.1\.0 -> v1\.1\.0\+django-5\.2\.19 \(code only, the database stays as it is\)/, pre.stdout.slice(-4000));
        assert.match(pre.stdout, /django: \{\s*\+ from: "5\.2\.18 \(as locked\)"\s*\+ to\s*: "5\.2\.19"/);
        assert.match(pre.stdout, /pendingMigrations\s*:\s*\[\]/);
        for (const step of ["backup", "migrate", "switch-restart", "health-gate"]) assert.match(pre.stdout, new RegExp(`::${step}\\]`), step);
        assert.ok(changed(pre).length > 0);
        const { outputs } = await upWithWriter();
        assert.strictEqual((outputs.deployed as { version: string }).version, "v1.1.0+django-5.2.19");
        assert.deepStrictEqual((outputs.dependencies as { pins: unknown }).pins, { django: { from: "5.2.18", to: "5.2.19" } });
        assert.ok(outputs.backup, "a verified backup first, as for a tag upgrade");
        assert.deepStrictEqual(await serving(h), { release: "v1.1.0+django-5.2.19", python: "python3.11", django: "5.2.19" });
        assert.strictEqual(await servingVersion(h), "v1.1.0");

        // A pin of a package the lock does not have is refused before anything changes.
        await stack.setConfig("jhe:pins.djnago", { value: "5.2.19" }, true);
        await assert.rejects(stack.up(), /jhe:pins names djnago, which the tag's Pipfile\.lock does not install/);
        await stack.removeConfig("jhe:pins.djnago", true);
        assert.deepStrictEqual(await serving(h), { release: "v1.1.0+django-5.2.19", python: "python3.11", django: "5.2.19" });

        await stack.removeConfig("jhe:pins", true);
        const back = await stack.preview({ diff: true });
        assert.match(back.stdout, /v1\.1\.0\+django-5\.2\.19 -> v1\.1\.0 \(code only/, back.stdout.slice(-4000));
        assert.match(back.stdout, /from\s*:\s*"5\.2\.19"[\s\S]{0,80}to\s*:\s*"5\.2\.18 \(as locked\)"/);
        const reverted = await upWithWriter();
        assert.strictEqual((reverted.outputs.deployed as { version: string }).version, "v1.1.0");
        assert.deepStrictEqual(await serving(h), { release: "v1.1.0", python: "python3.11", django: "5.2.18" });
        const again = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(again), [], again.stdout.slice(-3000));
    });

    it("Python version: jhe:python python3.13 is refused for a tag that asks for 3.11, builds v2.0.0 with it, and goes back when removed", async function () {
        await stack.setConfig("jhe:python", { value: "python3.13" });
        await assert.rejects(stack.up(), (e: Error) => {
            assert.match(e.message, /v1\.1\.0 needs Python ==3\.11; python3\.13 on the server is 3\.13 \(set jhe:python to an interpreter it accepts/);
            return true;
        });
        await stack.setConfig("jhe:python", { value: "python3.12" });
        await assert.rejects(stack.up(), /jhe:python python3\.12 is not installed on the server \(apt-get install python3\.12 python3\.12-venv/);
        assert.deepStrictEqual(await serving(h), { release: "v1.1.0", python: "python3.11", django: "5.2.18" });

        await stack.removeConfig("jhe:python");
        await stack.setConfig("jhe:version", { value: "v2.0.0" });
        await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Special Hospital" }, true);
        await upWithWriter();
        assert.deepStrictEqual(await serving(h), { release: "v2.0.0", python: "python3.11", django: "5.2.19" });

        await stack.setConfig("jhe:python", { value: "python3.13" });
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /upgrade v2\.0\.0 -> v2\.0\.0\+py3\.13 \(code only/, pre.stdout.slice(-4000));
        assert.match(pre.stdout, /from\s*:\s*"3\.11"[\s\S]{0,120}interpreter\s*:\s*"python3\.13"[\s\S]{0,80}to\s*:\s*"3\.13"/);
        const { outputs } = await upWithWriter();
        assert.strictEqual((outputs.deployed as { version: string }).version, "v2.0.0+py3.13");
        assert.match(String((outputs.dependencies as { python: string }).python), /^3\.13\./);
        assert.deepStrictEqual(await serving(h), { release: "v2.0.0+py3.13", python: "python3.13", django: "5.2.19" });
        assert.strictEqual(await servingVersion(h), "v2.0.0");

        await stack.removeConfig("jhe:python");
        const reverted = await upWithWriter();
        assert.strictEqual((reverted.outputs.deployed as { version: string }).version, "v2.0.0");
        assert.deepStrictEqual(await serving(h), { release: "v2.0.0", python: "python3.11", django: "5.2.19" });
    });

    it("Python version under a release (the OS upgrade moves python3 to 3.13): the broken virtualenv shows in the preview and up builds it again", async function () {
        const maxBefore = await maxObservation(h);
        const before = await checksums(h, maxBefore);
        // What Debian 12 -> 13 does to python3; the service restarted on it no longer starts.
        await sshOk(h, "ln -sfn python3.13 /usr/bin/python3 && systemctl restart jhe || true");
        let status = "";
        for (let i = 0; i < 50 && !status.startsWith("HTTP 5"); i++) { // (bounded: 10 s)
            status = await servingVersion(h);
            if (!status.startsWith("HTTP 5")) await new Promise((r) => setTimeout(r, 200));
        }
        assert.match(status, /^HTTP 50[23]$/, "the service no longer starts on its virtualenv");
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /what\s*:\s*"virtualenv"/, pre.stdout.slice(-4000));
        assert.match(pre.stdout, /found\s*:\s*"broken: made with Python 3\.11\.\d+, its python is now 3\.13\.\d+/);
        assert.match(pre.stdout, /releases\/v2\.0\.0's virtualenv is built again with python3 \(same lock and pins\)/);
        assert.ok(changed(pre).length > 0, "the preview shows what up will run");
        await stack.up();
        assert.deepStrictEqual(await serving(h), { release: "v2.0.0", python: "python3.13", django: "5.2.19" });
        assert.strictEqual(await servingVersion(h), "v2.0.0");
        assert.deepStrictEqual(await lostByContent(h, writes), []);
        assert.deepStrictEqual(await checksums(h, maxBefore), before);
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /server's Python changed under the release/);
        assert.strictEqual((await ssh(h, `ls -d ${APP}/releases/v2.0.0/venv.broken-*`)).code, 2, "no broken virtualenv left");
        const after = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(after), [], after.stdout.slice(-3000));
    });

    it("PostgreSQL major: jhe:postgresMajor 17 upgrades the 15 cluster (kept) behind the health gate and smoke tests; 15 again brings it back with the rows written on 17", async function () {
        const clusters = async () => (await sshOk(h, "pg_lsclusters -h | awk '{print $1\"/\"$2\":\"$3\":\"$4}'")).trim().split("\n");
        const major = async () => String((await query<{ v: string }>(h, "SELECT current_setting('server_version_num')::int / 10000 AS v"))[0].v);
        assert.deepStrictEqual(await clusters(), ["15/main:5432:online"]);
        // The smoke tests' own account, so the gate on the new cluster logs in and reads data through nginx.
        await stack.setConfig("jhe:smokeTestUser", { value: "smoke-pg@example.org" });
        await stack.setConfig("jhe:smokeTestPassword", { value: "Smoke-pg-2026!", secret: true });
        await stack.setConfig("jhe:smokeTestCreate", { value: "true" });
        await stack.up();
        await stack.setConfig("jhe:postgresMajor", { value: "17" });
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /::postgres-major\]/, pre.stdout.slice(-4000));
        assert.match(pre.stdout, /summary\s*:\s*"PostgreSQL 15 -> 17: a verified backup, then in a window pg_upgradecluster 15 main/);
        const up17 = await upWithWriter();
        const pg = up17.outputs.postgres as { from: number; to: number; port: number; backup: string; kept: unknown; gate: { ok: boolean; smoke: { ok: boolean } } };
        assert.deepStrictEqual([pg.from, pg.to, pg.port, pg.kept], [15, 17, 5432, { major: 15, name: "main", port: 5433 }]);
        assert.ok(pg.gate.ok && pg.gate.smoke.ok, JSON.stringify(pg.gate));
        assert.strictEqual(await major(), "17");
        assert.deepStrictEqual(await clusters(), ["15/main:5433:down", "17/main:5432:online"]);
        assert.strictEqual(await servingVersion(h), "v2.0.0");
        assert.match(await sshOk(h, `grep DB_PORT ${APP}/current/.env`), /DB_PORT=5432/, "the app's settings name the port the new cluster serves on");
        assert.strictEqual((await ssh(h, `test -s ${pg.backup}/db.dump`)).code, 0, "the verified backup taken first is kept");
        const again = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(again), [], again.stdout.slice(-3000));

        // Back to 15: the rows written on 17 (by the writer above and during this up, before its window) are in 15.
        await stack.setConfig("jhe:postgresMajor", { value: "15" });
        const back = await stack.preview({ diff: true });
        assert.match(back.stdout, /the 15 cluster kept by the upgrade serves again, with the rows written on 17 since replayed/, back.stdout.slice(-4000));
        const down = await upWithWriter();
        const pgBack = down.outputs.postgres as { from: number; to: number; replay: { rowsReplayed: Record<string, number>; rowsExported: Record<string, number> } };
        assert.deepStrictEqual([pgBack.from, pgBack.to], [17, 15]);
        assert.ok((pgBack.replay.rowsReplayed.core_observation ?? 0) > 10, JSON.stringify(pgBack.replay));
        // Nothing of the users' is left out; what is exported (beside the backup, as CSV) is the smoke tests' own
        // bookkeeping on 17: their account's last login, and the token they deleted there.
        const exported = Object.keys(pgBack.replay.rowsExported);
        assert.ok(exported.every((k) => ["core_jheuser.changed-rows", "oauth2_provider_accesstoken.deleted-since"].includes(k)), exported.join(", "));
        assert.strictEqual(await major(), "15");
        assert.deepStrictEqual(await clusters(), ["15/main:5432:online", "17/main:5433:down"]);
        assert.strictEqual(await servingVersion(h), "v2.0.0");

        // And forward again: the 17 cluster the rollback left (its rows replayed then) is replaced by a new upgrade.
        await stack.setConfig("jhe:postgresMajor", { value: "17" });
        await upWithWriter();
        assert.strictEqual(await major(), "17");
        assert.deepStrictEqual(await clusters(), ["15/main:5433:down", "17/main:5432:online"]);
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /## PostgreSQL 15 -> 17 [\s\S]*## PostgreSQL 17 -> 15 \(rollback\)[\s\S]*## PostgreSQL 15 -> 17 /);
    });
});
