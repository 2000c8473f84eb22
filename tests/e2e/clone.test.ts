// Prod's data on staging, de-identified: prod takes a snapshot (jhe:snapshot) into the bucket; one
// `up` of the staging stack (jhe:cloneFrom ... latest, and a new jhe:version) replaces staging's
// database with it, its personal data replaced before the app sees it, and rehearses the upgrade on
// it. Every text column of staging's database is then scanned for prod's values.
import * as assert from "assert";
import { Stack } from "@pulumi/pulumi/automation";
import { makeKeys, KeyPair } from "../helpers/gpgkeys";
import { bucketConfig, S3Server, startS3 } from "../helpers/s3server";
import { leaveUnset, projectStack, teardown } from "../helpers/stack";
import { HostInfo, query, servingVersion, sshOk, up } from "../helpers/testhost";

const BUCKET = "jhe-backups-clone";
const NOTE = "Ada Lovelace-Byron felt dizzy after the 9am dose; call her at 206-555-7788";

/** Text values of every text, varchar and JSON column of every table, with where each was found. */
async function textValues(h: HostInfo, db?: string): Promise<{ where: string; value: string }[]> {
    const cols = await query<{ t: string; c: string }>(h,
        "SELECT table_name AS t, column_name AS c FROM information_schema.columns WHERE table_schema = 'public' " +
        "AND data_type IN ('text', 'character varying', 'character', 'json', 'jsonb') ORDER BY 1, 2", [], db);
    const out: { where: string; value: string }[] = [];
    for (const { t, c } of cols) {
        const rows = await query<{ v: string }>(h, `SELECT "${c}"::text AS v FROM "${t}" WHERE "${c}" IS NOT NULL`, [], db);
        for (const r of rows) out.push({ where: `${db ?? ""}:${t}.${c}`, value: r.v });
    }
    // ... and the planner's statistics (most common values, histograms), which sample the tables' values.
    const stats = await query<{ w: string; v: string }>(h, "SELECT tablename || '.' || attname AS w, " +
        "coalesce(most_common_vals::text, '') || ' ' || coalesce(histogram_bounds::text, '') AS v FROM pg_stats WHERE schemaname = 'public' " +
        // (made-up birth dates fall on real ones of other patients by chance: they are checked row by row)
        "AND attname <> 'birth_date'", [], db);
    for (const r of stats) out.push({ where: `${db ?? ""}:pg_stats ${r.w}`, value: r.v });
    return out;
}

const pairs = async (h: HostInfo, sql: string) => (await query<{ k: string }>(h, sql)).map((r) => r.k).sort();

describe("staging: prod's data on staging, de-identified (two real servers, one bucket)", function () {
    this.timeout(1_200_000);
    let keys: KeyPair;
    let hp: HostInfo;
    let hs: HostInfo;
    let s3: S3Server;
    let s3s: S3Server;
    let prd: Stack;
    let stg: Stack;
    let snapshotId = "";

    before(async function () {
        keys = makeKeys("jhe-e2e-clone");
        hp = await up("e2ecp", { legacy: "v1.0.0", patients: 30, observations: 600 });
        hs = await up("e2ecs", { legacy: "v1.0.0", patients: 5, observations: 40 });
        s3 = await startS3(hp);
        s3.makeBucket(BUCKET);
        s3s = await startS3(hs, s3);
        // Prod's personal data beyond the seed's: free text in a payload, a FHIR Patient resource.
        await query(hp, "UPDATE core_observation SET value_attachment_data = jsonb_set(value_attachment_data, '{body,user_notes}', to_jsonb($1::text)) " +
            "WHERE id = (SELECT min(id) FROM core_observation)", [NOTE]);
        await query(hp, "INSERT INTO core_fhirauxresource (id, patient_id, resource_type, kind, data, created) SELECT gen_random_uuid(), id, " +
            "'Patient', 'record', jsonb_build_object('resourceType', 'Patient', 'name', jsonb_build_array(jsonb_build_object('family', name_family, " +
            "'given', jsonb_build_array(name_given))), 'birthDate', birth_date, 'telecom', jsonb_build_array(jsonb_build_object('system', 'phone', " +
            "'value', telecom_phone))), now() FROM core_patient ORDER BY id LIMIT 5");
        stg = await projectStack(hs, "v1.0.0", { ...bucketConfig(s3s, BUCKET, keys.publicKey), "jhe:backupPrefix": { value: "jhe/staging/" } });
        await leaveUnset(stg, "JHE_FEATURE_X");
        await stg.up();
        // (the source stack: prod's role, without jhe:stage prod, which needs an https bucket endpoint)
        prd = await projectStack(hp, "v1.0.0", bucketConfig(s3, BUCKET, keys.publicKey));
        await leaveUnset(prd, "JHE_FEATURE_X");
        await prd.up();
    });
    after(async function () {
        await s3s?.stop();
        await s3?.stop();
        await teardown(stg, hs);
        await teardown(prd, hp);
    });

    it("staging: prod's snapshot goes to the bucket with no downtime; one staging up clones it de-identified and rehearses v1.1.0 on it", async function () {
        await prd.setConfig("jhe:snapshot", { value: "for-staging-1" });
        const p = await prd.up();
        const snap = p.outputs.snapshot.value;
        snapshotId = snap.id;
        assert.match(snapshotId, /^\d{8}-\d{6}-v1\.0\.0-snapshot$/);
        assert.strictEqual(snap.location, `s3://${BUCKET}/jhe/jhe/${snapshotId}/`);
        assert.ok(s3.objects(BUCKET, `jhe/jhe/${snapshotId}/`).some((k) => k.endsWith("db.dump.gpg")));
        assert.strictEqual(await servingVersion(hp), "v1.0.0");
        const changed = Object.entries(p.summary.resourceChanges ?? {}).filter(([op, n]) => !["same", "read"].includes(op) && n);
        assert.deepStrictEqual(changed, [["create", 1]], "only the snapshot ran on prod");

        // What prod holds that staging must never see.
        const prodPatients = await query<{ id: string; f: string; g: string; b: string; ph: string }>(hp,
            "SELECT id, name_family AS f, name_given AS g, birth_date::text AS b, telecom_phone AS ph FROM core_patient ORDER BY id");
        const prodUsers = await query<{ e: string; i: string; pw: string }>(hp, "SELECT email AS e, identifier AS i, password AS pw FROM core_jheuser");
        const phi = [...prodPatients.flatMap((r) => [r.f, r.g, r.b, r.ph]), ...prodUsers.flatMap((r) => [r.e, r.i]),
            ...prodUsers.filter((u) => u.pw.length > 10).map((u) => u.pw), "Ada Lovelace", "206-555-7788"].filter(Boolean);
        assert.ok(prodUsers.some((u) => u.e.endsWith("@example.net")) && prodPatients.length === 30);
        const counts = async (h: HostInfo) => Object.fromEntries(await Promise.all(["core_patient", "core_observation", "core_jheuser", "core_studypatient"]
            .map(async (t) => [t, Number((await query<{ n: string }>(h, `SELECT count(*) AS n FROM ${t}`))[0].n)])));
        const prodCounts = await counts(hp);
        // (v1.1.0 renames core_fhirauxresource.patient_id to subject_patient_id)
        const relations = async (h: HostInfo, fk: string) => ({
            observations: await pairs(h, "SELECT id || '>' || subject_patient_id AS k FROM core_observation"),
            studies: await pairs(h, "SELECT study_id || '>' || patient_id AS k FROM core_studypatient"),
            resources: await pairs(h, `SELECT id || '>' || coalesce(${fk}::text, '') AS k FROM core_fhirauxresource WHERE kind = 'record'`),
        });
        const prodRelations = await relations(hp, "patient_id");

        // One operation on staging: the clone (latest snapshot) and the upgrade rehearsed on it.
        await stg.setConfig("jhe:backupDecryptionKey", { value: keys.privateKey, secret: true });
        await stg.setConfig("jhe:cloneFrom", { value: `s3://${BUCKET}/jhe/jhe/latest` });
        await stg.setConfig("jhe:version", { value: "v1.1.0" });
        const s = await stg.up();
        assert.strictEqual(await servingVersion(hs), "v1.1.0");
        const clone = s.outputs.clone.value;
        assert.strictEqual(clone.backup, snapshotId);
        assert.strictEqual(clone.location, `s3://${BUCKET}/jhe/jhe/${snapshotId}/`);
        assert.ok(clone.columnsReplaced.includes("core_patient.telecom_phone") && clone.columnsReplaced.includes("core_jheuser.email"));
        const reh = s.outputs.rehearsals.value["v1.1.0"];
        assert.strictEqual(reh.status, "passed");
        assert.strictEqual(reh.report.data.clonedFrom.backup, snapshotId, "the rehearsal says it ran on prod's data");
        assert.strictEqual(reh.report.downtimeSeconds, s.outputs.downtimeSeconds.value);
        console.log(`      clone: ${clone.rows} rows, de-identified in ${clone.deidentifySeconds} s, window ${clone.windowSeconds} s; ` +
            `rehearsed v1.0.0 -> v1.1.0 on it: ${reh.report.downtimeSeconds} s of downtime`);

        // Nothing of prod's personal data in any text column of staging's databases: the live one, and the
        // de-identified clone as it was swapped in (kept by the staged upgrade that followed), its planner
        // statistics included. (Staging's own database before the clone is not prod's.)
        const dbs = (await query<{ d: string }>(hs, "SELECT datname AS d FROM pg_database WHERE datname LIKE 'jhe_production%' " +
            "AND datname NOT LIKE '%beforeclone%'", [], "postgres")).map((r) => r.d);
        assert.ok(dbs.length >= 2, dbs.join(", "));
        const values = (await Promise.all(dbs.map((d) => textValues(hs, d)))).flat();
        assert.ok(values.length > 600, `${values.length} text values scanned`);
        const found = values.flatMap(({ where, value }) => phi.filter((x) => value === x || (x.length >= 6 && value.includes(x))).map((x) => `${where}: ${x}`));
        assert.deepStrictEqual(found.slice(0, 10), [], "prod's personal data in staging's database");
        const stagingPatients = await query<{ id: string; b: string }>(hs, "SELECT id, birth_date::text AS b FROM core_patient ORDER BY id");
        const sameBirth = stagingPatients.filter((r, i) => r.id === prodPatients[i].id && r.b === prodPatients[i].b);
        assert.deepStrictEqual(sameBirth, [], "no patient keeps the real birth date");
        const oldest = new Date().getUTCFullYear() - 90; // (Safe Harbor: older birth years become this one)
        assert.ok(stagingPatients.every((r, i) => Number(r.b.slice(0, 4)) === Math.max(Number(prodPatients[i].b.slice(0, 4)), oldest)),
            "the year is kept");
        assert.ok(values.some((x) => x.where.includes(":pg_stats core_patient.name_family")), "pg_stats was scanned");
        const note = await query<{ v: string }>(hs, "SELECT value_attachment_data->'body'->>'user_notes' AS v FROM core_observation " +
            "WHERE value_attachment_data->'body' ? 'user_notes'");
        assert.deepStrictEqual(note.map((r) => r.v), ["[removed]"]);
        // ... and its shape: counts, keys and relations as prod's.
        assert.deepStrictEqual(await counts(hs), prodCounts);
        assert.deepStrictEqual(await relations(hs, "subject_patient_id"), prodRelations);
        // Staging's own database is kept; prod's decrypted dump is gone; nobody can log in with prod's passwords.
        assert.strictEqual((await query(hs, "SELECT 1 FROM pg_database WHERE datname LIKE 'jhe_production_beforeclone_%'", [], "postgres")).length, 1);
        assert.strictEqual((await sshOk(hs, "ls -d /backups/jhe/*.clone* 2>/dev/null | wc -l")).trim(), "0");
        assert.match(await sshOk(hs, "cat /opt/jupyterhealth-exchange/UPGRADE_LOG.md"), new RegExp(`## Database replaced by a de-identified clone of ${snapshotId}`));
    });

    it("staging: a column the rules do not know that looks personal stops the clone, staging unchanged", async function () {
        await query(hp, "ALTER TABLE core_patient ADD COLUMN nickname text");
        await query(hp, "UPDATE core_patient SET nickname = 'Lovie' WHERE id = (SELECT min(id) FROM core_patient)");
        await prd.setConfig("jhe:snapshot", { value: "for-staging-2" });
        const snap = (await prd.up()).outputs.snapshot.value;
        assert.notStrictEqual(snap.id, snapshotId);
        await stg.setConfig("jhe:version", { value: "v1.0.0" });
        await stg.up(); // (staging back to prod's version first: a clone is of the version staging serves)
        const before = (await query<{ n: string }>(hs, "SELECT count(*) AS n FROM core_patient"))[0].n;
        await stg.setConfig("jhe:cloneFrom", { value: `s3://${BUCKET}/jhe/jhe/${snap.id}/` });
        await assert.rejects(stg.up(), /these columns are not in the de-identification rules and may hold personal data: core_patient\.nickname \(text\)\. .*jhe:cloneKeepColumns/);
        assert.strictEqual(await servingVersion(hs), "v1.0.0");
        assert.strictEqual((await query<{ n: string }>(hs, "SELECT count(*) AS n FROM core_patient"))[0].n, before);
        assert.deepStrictEqual(await query(hs, "SELECT datname FROM pg_database WHERE datname LIKE '%\\_clone\\_%'", [], "postgres"), [],
            "the copy that was not de-identified is dropped");
        assert.strictEqual((await sshOk(hs, "ls -d /backups/jhe/*.clone* 2>/dev/null | wc -l")).trim(), "0");
        assert.deepStrictEqual((await textValues(hs)).filter((x) => x.value.includes("Lovie")), []);
    });
});
