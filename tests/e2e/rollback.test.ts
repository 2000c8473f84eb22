// Rollback by reverting jhe:version, and automatic recovery from failed upgrades, on the real engine
// and a real server, with observations written between the upgrade and the rollback.
import * as assert from "assert";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { namesWithOp } from "../helpers/engine";
import { Prober } from "../helpers/prober";
import { leaveUnset, projectStack, serverFingerprint, teardown } from "../helpers/stack";
import { dotenvValues, HostInfo, oidcKeys, query, request, servingVersion, sshOk, tableFingerprint, up } from "../helpers/testhost";

const APP = "/opt/jupyterhealth-exchange";

describe("rollback and recovery (real engine, real server with RSA, ECDSA and Ed25519 host keys, pinned by ECDSA)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let stack: Stack;
    let envAtStart: Record<string, string | null>;

    before(async function () {
        h = await up("e2erb", { legacy: "v1.0.0", patients: 30, observations: 2000 });
        stack = await projectStack(h, "v1.0.0", { "jhe:sshHostKey": { value: h.hostKeys.ecdsa } });
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.up();
        envAtStart = await dotenvValues(h, `${APP}/current/.env`);
    });
    after(async function () {
        await teardown(stack, h);
    });

    const health = () => servingVersion(h);
    /** Posts observations through nginx (as users do) and returns the acknowledged ids. */
    async function post(n: number, fhirPath = "/fhir/r5/Observation"): Promise<number[]> {
        const ids: number[] = [];
        for (let i = 0; i < n; i++) {
            const r = await request(h, "POST", fhirPath, {
                subject: { reference: `Patient/${1 + (i % 5)}` }, code: { coding: [{ code: `W-${Date.now()}-${i}` }] }, valueQuantity: { value: i },
            });
            assert.strictEqual(r.status, 201, r.body);
            ids.push(Number(JSON.parse(r.body).id));
        }
        return ids;
    }
    async function missing(ids: number[]): Promise<number[]> {
        const rows = await query<{ id: string }>(h, "SELECT id FROM core_observation WHERE id = ANY($1::bigint[])", [ids]);
        const have = new Set(rows.map((r) => Number(r.id)));
        return ids.filter((i) => !have.has(i));
    }
    const setVersion = (v: string) => stack.setConfig("jhe:version", { value: v });

    it("reverting the version rolls back: database to its pre-upgrade state plus the rows written since, code and config restored", async function () {
        await query(h, "DELETE FROM core_observation WHERE id = 7"); // a gap in v1.0.0's ids
        await setVersion("v1.1.0");
        await stack.up();
        assert.strictEqual(await health(), "v1.1.0");
        const written = await post(12);
        // What else users and admins do on v1.1.0: fill the gap (explicit id), change a row, delete one.
        await query(h, "INSERT INTO core_observation (id, subject_patient_id, code, value, created) " +
            "SELECT 7, min(id), 'gap-fill', 1, now() FROM core_patient");
        await query(h, "UPDATE core_observation SET value = value + 1000 WHERE id = 8");
        await query(h, "DELETE FROM core_observation WHERE id = 9");
        // ... and rows in every other kind of table: a UUID key (one users' record deleted too; v1.1.0's
        // own migration deleted the 3 "cache" rows), a composite key, a column v1.1.0 renamed, a text key
        // (a session, made by the app itself), a user of the custom model, a table only v1.1.0 has.
        // (v1.1.0 renamed the foreign key patient -> subject_patient: its column is subject_patient_id)
        await query(h, "INSERT INTO core_fhirauxresource (id, subject_patient_id, resource_type, kind, data, created) " +
            "SELECT gen_random_uuid(), p.id, 'Device', 'record', '{}', now() FROM (SELECT min(id) AS id FROM core_patient) p, generate_series(1, 2)");
        await query(h, "DELETE FROM core_fhirauxresource WHERE id = (SELECT id FROM core_fhirauxresource WHERE kind = 'record' ORDER BY created LIMIT 1)");
        await query(h, "INSERT INTO core_studypatient (study_id, patient_id, joined) SELECT s.id, p.id, now() FROM core_study s, " +
            "(SELECT id FROM core_patient ORDER BY id DESC LIMIT 2) p");
        await query(h, "INSERT INTO core_study (title, created) VALUES ('Sleep study', now())");
        await query(h, "INSERT INTO core_jheuser (password, is_superuser, email, identifier, user_type, is_staff, is_active, date_joined) " +
            "VALUES ('!', false, 'new.practitioner@example.org', 'P9', 'practitioner', false, true, now())");
        await query(h, "INSERT INTO core_patientidentifier (patient_id, system, value) SELECT min(id), 'urn:mrn', 'MRN-' || g FROM core_patient, generate_series(1, 2) g GROUP BY g");
        const session = (await sshOk(h, `cd ${APP}/current && sudo -u jheapp venv/bin/python manage.py shell -c ` +
            `"from django.contrib.sessions.backends.db import SessionStore; s = SessionStore(); s['who'] = 'nurse'; s.create(); print(s.session_key)"`))
            .trim().split("\n").pop(); // (Django 5.2's shell first says what it imported)
        await setVersion("v1.0.0");
        const events: EngineEvent[] = [];
        const pre = await stack.preview({ onEvent: (e) => events.push(e) });
        assert.deepStrictEqual(namesWithOp(events, "replace"), ["backup", "finish", "health-gate", "migrate", "preflight", "prepare-release", "switch-restart"]);
        assert.match(pre.stdout, /summary\s*:.*"rollback v1\.1\.0 -> v1\.0\.0: bring back the database kept when v1\.0\.0 was left \(jhe_production_was_v1_0_0_\d+\) by rename and replay the rows/);
        const t0 = Date.now();
        const res = await stack.up();
        const rto = (Date.now() - t0) / 1000;
        assert.strictEqual(await health(), "v1.0.0");
        assert.deepStrictEqual(await missing(written), [], "every observation written after the upgrade survived");
        const rb = res.outputs.rollback.value;
        assert.deepStrictEqual(rb.rowsReplayed, {
            core_observation: 13, core_fhirauxresource: 2, core_studypatient: 2, core_study: 1, core_jheuser: 1, django_session: 1,
        });
        // every table written since the cutover is listed with what was done
        assert.deepStrictEqual(Object.keys(rb.tables).sort(), [
            "core_fhirauxresource", "core_jheuser", "core_observation", "core_patientidentifier", "core_study", "core_studypatient", "django_session",
        ]);
        assert.deepStrictEqual(rb.tables.core_fhirauxresource, {
            key: "uuid", new: 2, replayed: 2, deletedByUsers: 1, deletedByMigrations: 3,
            done: "2 new rows inserted; 1 rows deleted by users exported for review (they are back); 3 rows the newer migrations deleted are back",
        });
        assert.deepStrictEqual([rb.tables.core_studypatient.key, rb.tables.django_session.key], ["composite", "text"]);
        assert.deepStrictEqual(rb.tables.core_patientidentifier, {
            onlyInNewer: true, new: 2, exported: "core_patientidentifier.only-in-newer.csv", done: "exported: the older version has no such table",
        });
        assert.match(await sshOk(h, `cat ${rb.exportDir}/core_patientidentifier.only-in-newer.csv`), /^id,system,value,patient_id\n1,urn:mrn,MRN-1,/);
        assert.deepStrictEqual(await query(h, "SELECT count(*)::int AS n FROM core_fhirauxresource WHERE kind = 'cache'"), [{ n: 3 }]);
        assert.deepStrictEqual(await query(h, "SELECT count(*)::int AS n FROM core_fhirauxresource WHERE kind = 'record' AND patient_id IS NOT NULL AND created > now() - interval '1 hour' AND data = '{}'"),
            [{ n: 2 }], "the replayed rows keep their patient through the renamed foreign key");
        assert.deepStrictEqual(await query(h, "SELECT name FROM core_study WHERE name = 'Sleep study'"), [{ name: "Sleep study" }], "the renamed column's value");
        assert.deepStrictEqual(await query(h, "SELECT session_key FROM django_session WHERE session_key = $1", [session]), [{ session_key: session }]);
        assert.strictEqual(rb.restoredBy, "rename");
        assert.strictEqual(rb.comparedSince, "marker");
        // The changed and the deleted row cannot be replayed blindly: exported for a person to judge.
        assert.deepStrictEqual(rb.rowsExported, {
            "core_observation.changed-rows": 1, "core_observation.deleted-since": 1, "core_fhirauxresource.deleted-since": 1,
            "core_patientidentifier.only-in-newer": 2,
        });
        assert.match(await sshOk(h, `cat ${rb.exportDir}/core_observation.changed-rows.csv`), /^id,.*\n8,/);
        assert.match(await sshOk(h, `cat ${rb.exportDir}/core_observation.deleted-since.csv`), /^id,.*\n9,/);
        assert.deepStrictEqual(await query(h, "SELECT code FROM core_observation WHERE id = 7"), [{ code: "gap-fill" }]);
        const applied = (await query<{ name: string }>(h, "SELECT name FROM django_migrations WHERE app = 'core' ORDER BY name")).map((r) => r.name);
        assert.deepStrictEqual(applied, ["0001_initial"]);
        const cols = await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_observation' AND column_name = 'source'");
        assert.strictEqual(cols.length, 0, "v1.1.0's column is gone with the restore");
        assert.strictEqual((await sshOk(h, `readlink ${APP}/current`)).trim(), "releases/v1.0.0");
        await sshOk(h, `! grep -q JHE_FEATURE_X ${APP}/current/.env`);
        assert.deepStrictEqual(await dotenvValues(h, `${APP}/current/.env`), envAtStart, ".env after the rollback means what it did at the start");
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 });
        // v1.1.0's database is kept, never dropped.
        const dbs = await query<{ datname: string }>(h, "SELECT datname FROM pg_database WHERE datname = $1", [rb.keptDatabase]);
        assert.strictEqual(dbs.length, 1);
        // ... and dumped after the window (it was only renamed inside it): the rollback's backup.
        const bk = res.outputs.backup.value;
        assert.match(bk.location, /-v1\.1\.0-to-v1\.0\.0$/);
        assert.match(await sshOk(h, `sha256sum ${bk.location}/db.dump`), new RegExp(`^${bk.sha256}  `));
        assert.strictEqual(bk.rowCounts.core_observation, (await tableFingerprint(h, "core_observation", rb.keptDatabase)).rows);
        const log = await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`);
        assert.match(log, /## Rollback to v1\.0\.0 .*\n\n\*\*Performed by:.*\n\*\*From:\*\* v1\.1\.0 {2}\*\*To:\*\* v1\.0\.0/);
        assert.match(log, /Rows written since, replayed: \{[^}]*"core_observation": 13/);
        assert.match(log, /\n {2}- core_fhirauxresource: 2 new rows inserted; 1 rows deleted by users exported for review \(they are back\); 3 rows the newer migrations deleted are back\n/);
        assert.match(log, /\n {2}- core_patientidentifier: exported: the older version has no such table\n/);
        console.log(`      rollback v1.1.0 -> v1.0.0: pulumi up ${rto.toFixed(1)} s, downtime ${res.outputs.downtimeSeconds.value} s`);
    });

    it("a rollback across an upgrade that ran no migrations keeps the database as it is", async function () {
        await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Test Hospital" }, true);
        for (const v of ["v1.1.0", "v1.2.0", "v2.0.0"]) {
            await setVersion(v);
            await stack.up();
        }
        const written = await post(5, "/FHIR/R5/Observation");
        const before = await tableFingerprint(h, "core_observation");
        await setVersion("v1.2.0");
        const res = await stack.up();
        assert.strictEqual(await health(), "v1.2.0");
        assert.strictEqual(res.outputs.rollback.value, null, "no database rollback");
        assert.deepStrictEqual(await tableFingerprint(h, "core_observation"), before);
        assert.deepStrictEqual(await missing(written), []);
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /## Rollback to v1\.2\.0/);
    });

    it("v1.3.0's migration fails part-way on the staged copy: refused before any window, v1.2.0 never stops", async function () {
        const before = { obs: await tableFingerprint(h, "core_observation"), pat: await tableFingerprint(h, "core_patient") };
        const mig = await tableFingerprint(h, "django_migrations");
        const dbsBefore = await query<{ datname: string }>(h, "SELECT datname FROM pg_database ORDER BY 1");
        await setVersion("v1.3.0");
        const probe = new Prober(h).start();
        await assert.rejects(stack.up(), (e: Error) => {
            assert.match(e.message, /`manage\.py migrate` of v1\.3\.0 failed on a staged copy of the database: .*(IntegrityError|unique)/);
            assert.match(e.message, /Nothing on the server changed: v1\.2\.0 kept serving throughout \(no window was opened/);
            return true;
        });
        const seen = await probe.stop();
        assert.ok(seen.length > 10, `${seen.length} probes`);
        assert.deepStrictEqual(seen.filter((p) => p.status !== 200 || p.version !== "v1.2.0"), [], "v1.2.0 answered every probe during the failed upgrade");
        assert.strictEqual(await health(), "v1.2.0");
        assert.deepStrictEqual({ obs: await tableFingerprint(h, "core_observation"), pat: await tableFingerprint(h, "core_patient") }, before);
        assert.deepStrictEqual(await tableFingerprint(h, "django_migrations"), mig);
        assert.deepStrictEqual(await query<{ datname: string }>(h, "SELECT datname FROM pg_database ORDER BY 1"), dbsBefore, "the staged copy is gone");
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /## Refused: upgrade v1\.2\.0 -> v1\.3\.0 .*\n(.*\n)*\*\*Downtime:\*\* none/);
    });

    it("the same failure in the window (jhe:migrationStrategy in-window): the window's snapshot is back by rename, tables as before", async function () {
        const before = { obs: await tableFingerprint(h, "core_observation"), pat: await tableFingerprint(h, "core_patient") };
        const mig = await tableFingerprint(h, "django_migrations");
        await stack.setConfig("jhe:migrationStrategy", { value: "in-window" });
        try {
            await assert.rejects(stack.up(), (e: Error) => {
                assert.match(e.message, /the migration of v1\.3\.0 failed \(.*(IntegrityError|unique).*\); nothing was lost: database jhe_production as it was before the window, by rename \(the replaced one kept as jhe_production_failed_\d+\)/);
                assert.match(e.message, /v1\.2\.0 serving again/);
                return true;
            });
        } finally {
            await stack.removeConfig("jhe:migrationStrategy");
        }
        assert.strictEqual(await health(), "v1.2.0");
        assert.deepStrictEqual({ obs: await tableFingerprint(h, "core_observation"), pat: await tableFingerprint(h, "core_patient") }, before);
        assert.deepStrictEqual(await tableFingerprint(h, "django_migrations"), mig);
        const cols = await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_observation' AND column_name = 'unit'");
        assert.strictEqual(cols.length, 0, "the half-applied column is gone");
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /## Recovery: upgrade v1\.2\.0 -> v1\.3\.0 failed/);
    });

    it("after the recovery, setting the old version back is a no-op on the server", async function () {
        const before = await serverFingerprint(h);
        await setVersion("v1.2.0");
        await stack.up();
        assert.deepStrictEqual(await serverFingerprint(h), before);
    });

    it("v1.4.0 fails its health check in the window (jhe:migrationStrategy in-window): code, config and database reverted automatically", async function () {
        // (By default its one additive migration would run while v1.2.0 serves and v1.4.0 be refused in the
        // hand-over unit, before any window: the faults suite has that case.)
        const before = { obs: await tableFingerprint(h, "core_observation"), mig: await tableFingerprint(h, "django_migrations") };
        await setVersion("v1.4.0");
        await stack.setConfig("jhe:migrationStrategy", { value: "in-window" });
        try {
            await assert.rejects(stack.up(), (e: Error) => {
                assert.match(e.message, /v1\.4\.0 failed its health check \(\/health answered 500\); reverted automatically: database jhe_production as it was before the window, by rename \(the replaced one kept as jhe_production_failed_\d+\)/);
                return true;
            });
        } finally {
            await stack.removeConfig("jhe:migrationStrategy");
        }
        assert.strictEqual(await health(), "v1.2.0");
        assert.strictEqual((await sshOk(h, `readlink ${APP}/current`)).trim(), "releases/v1.2.0");
        assert.deepStrictEqual({ obs: await tableFingerprint(h, "core_observation"), mig: await tableFingerprint(h, "django_migrations") }, before);
        const email = await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_patient' AND column_name = 'email'");
        assert.strictEqual(email.length, 0);
    });

    it("then a good version upgrades normally, and rolling back two steps (to v1.0.0) works", async function () {
        await setVersion("v2.0.0");
        await stack.up();
        assert.strictEqual(await health(), "v2.0.0");
        const written = await post(4, "/FHIR/R5/Observation");
        await setVersion("v1.0.0");
        const res = await stack.up();
        assert.strictEqual(await health(), "v1.0.0");
        assert.deepStrictEqual(await missing(written), []);
        assert.match(res.outputs.rollback.value.restoredFrom, /-v1\.0\.0-to-v1\.1\.0$/);
    });

    it("rows written to a table the migration leaves alone while the staged copy is made are caught up in it: still swapped in, none lost", async function () {
        // Another client (not the app) inserts patients and renames one while v1.0.0 serves, until the
        // maintenance page goes on; v1.1.0's migrations change observations, studies and aux resources,
        // not patients.
        await setVersion("v1.1.0");
        const inserted: number[] = [];
        const renamed = `Caught-${Date.now()}`;
        let running = true;
        const loop = (async () => {
            for (let i = 0; running && i < 3000; i++) {
                if ((await request(h, "GET", "/health").catch(() => ({ status: 0 }))).status === 503) break;
                const [r] = await query<{ id: string }>(h, "INSERT INTO core_patient (name_family, name_given, created) " +
                    "VALUES ('Catchup', $1, now()) RETURNING id", [`n${i}`]).catch(() => [] as { id: string }[]);
                if (r) inserted.push(Number(r.id));
                if (i === 5) await query(h, "UPDATE core_patient SET name_given = $1 WHERE id = 1", [renamed]);
                await new Promise((res) => setTimeout(res, 50));
            }
        })();
        let res;
        try {
            res = await stack.up();
        } finally {
            running = false;
            await loop;
        }
        const m = res.outputs.migration.value;
        assert.deepStrictEqual([m.strategy, m.writtenSinceBackup], ["staged", null], JSON.stringify(m));
        assert.ok(m.staged.caughtUp?.core_patient > 0, JSON.stringify(m.staged));
        assert.deepStrictEqual(Object.keys(m.staged.caughtUp), ["core_patient"]);
        const have = new Set((await query<{ id: string }>(h, "SELECT id FROM core_patient WHERE name_family = 'Catchup'")).map((r) => Number(r.id)));
        assert.deepStrictEqual(inserted.filter((id) => !have.has(id)), [], `of ${inserted.length} inserted`);
        assert.deepStrictEqual(await query(h, "SELECT name_given FROM core_patient WHERE id = 1"), [{ name_given: renamed }]);
        // v1.1.0's data migration ran on every observation of the copy; the patients' id sequence is past the rows put in
        assert.deepStrictEqual(await query(h, "SELECT count(*)::int AS n FROM core_observation WHERE source IS NULL"), [{ n: 0 }]);
        await query(h, "INSERT INTO core_patient (name_family, name_given, created) VALUES ('After', 'x', now())");
        const log = await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`);
        assert.match(log, /swapped in by rename; rows written meanwhile caught up in it: core_patient \d+/);
    });
});
