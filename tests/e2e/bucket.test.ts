// Backups that survive the server: copied to a bucket (a real S3 server, S3Proxy, in the test
// server's own network namespace) encrypted to a public key, read back and checked; a rollback after
// the server lost its backups (and the database it kept) restores from the bucket; no credential or
// key material in any output, log or state file.
import * as assert from "assert";
import { execFileSync } from "child_process";
import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { namesWithOp, ROOT } from "../helpers/engine";
import { makeKeys, KeyPair } from "../helpers/gpgkeys";
import { bucketConfig, S3Server, startS3 } from "../helpers/s3server";
import { filesUnder, leaveUnset, projectStack, STATE_DIR, teardown } from "../helpers/stack";
import { HostInfo, query, request, sampleProcesses, servingVersion, sshOk, tableFingerprint, up } from "../helpers/testhost";

const BUCKET = "jhe-backups-e2e";
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
const PREFIX = "jhe/jhe/";

/** Decrypts a file with `key` in a throwaway keyring here (as an operator would, on their own machine). */
function decrypt(file: string, key?: string): Buffer {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-test-gpg."));
    const env = { ...process.env, GNUPGHOME: home };
    try {
        if (key) execFileSync("gpg", ["--batch", "--import"], { env, input: key, stdio: ["pipe", "ignore", "ignore"] });
        return execFileSync("gpg", ["--batch", "--pinentry-mode", "loopback", "--passphrase", "", "--decrypt", file],
            { env, stdio: ["ignore", "pipe", "pipe"], maxBuffer: 1 << 30 });
    } finally {
        try {
            execFileSync("gpgconf", ["--homedir", home, "--kill", "all"], { stdio: "ignore" });
        } catch {
            /* no agent */
        }
        fs.rmSync(home, { recursive: true, force: true });
    }
}

describe("backups to a bucket (real engine, real server, S3Proxy in the server's namespace)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let s3: S3Server;
    let stack: Stack;
    let keys: KeyPair;
    /** Everything the engine printed in this file's runs (and the server's process list while it ran), searched for secrets at the end. */
    const printed: string[] = [];
    let backupId = "";
    /** Every table of the database as the upgrade's backup holds it (nothing is written between). */
    let atBackup: Record<string, { rows: number; checksum: string }> = {};
    let h2: HostInfo | undefined;
    let s3b: S3Server | undefined;
    let stack2: Stack | undefined;

    before(async function () {
        keys = makeKeys("jhe-e2e-backups");
        h = await up("e2ebk", { legacy: "v1.0.0", patients: 20, observations: 1500 });
        s3 = await startS3(h);
        s3.makeBucket(BUCKET);
        stack = await projectStack(h, "v1.0.0", bucketConfig(s3, BUCKET, keys.publicKey));
        await leaveUnset(stack, "JHE_FEATURE_X");
        const r = await stack.up();
        printed.push(r.stdout, r.stderr);
    });
    after(async function () {
        await s3b?.stop();
        await s3?.stop();
        await teardown(stack2, h2);
        await teardown(stack, h);
    });

    async function allTables(host: HostInfo): Promise<Record<string, { rows: number; checksum: string }>> {
        const names = (await query<{ t: string }>(host, "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).map((r) => r.t);
        const out: Record<string, { rows: number; checksum: string }> = {};
        for (const t of names) out[t] = await tableFingerprint(host, t);
        return out;
    }

    it("bucket: the plan says where the backup goes and to which key; up copies it there encrypted, read back and checked", async function () {
        atBackup = await allTables(h);
        await stack.setConfig("jhe:version", { value: "v1.1.0" });
        const events: EngineEvent[] = [];
        const pre = await stack.preview({ onEvent: (e) => events.push(e), diff: true });
        printed.push(pre.stdout, pre.stderr);
        assert.ok(namesWithOp(events, "replace").includes("offsite-backup"), namesWithOp(events, "replace").join(" "));
        assert.match(pre.stdout, new RegExp(`offsite\\s*:\\s*"s3://${BUCKET}/${PREFIX}"`));
        assert.match(pre.stdout, new RegExp(`encryptedTo\\s*:\\s*"${keys.fingerprint}"`));
        const sampler = sampleProcesses(h);
        let text = "";
        const upEvents: string[] = [];
        const res = await stack.up({ onOutput: (o) => (text += o), onEvent: (e) => upEvents.push(JSON.stringify(e)), logVerbosity: 5, logToStdErr: true, debug: true });
        const ps = await sampler.stop();
        assert.ok(ps.length > 3, `process list sampled ${ps.length} times`);
        printed.push(res.stdout, res.stderr, text, upEvents.join("\n"), ps.join("\n"));
        assert.strictEqual(await servingVersion(h), "v1.1.0");
        const backup = res.outputs.backup.value;
        backupId = path.basename(backup.location);
        const off = res.outputs.offsiteBackup.value;
        assert.deepStrictEqual(off.copied, [backupId]);
        assert.strictEqual(off.encryptedTo, keys.fingerprint);
        assert.strictEqual(off.latest, `s3://${BUCKET}/${PREFIX}${backupId}/`);
        assert.deepStrictEqual(s3.objects(BUCKET, PREFIX + backupId), ["db.dump.gpg", "env.gpg", "manifest.json", "nginx-site.gpg", "systemd-unit.gpg"]
            .map((f) => `${PREFIX}${backupId}/${f}`));
        const dir = path.join(s3.basedir, BUCKET, PREFIX, backupId);
        const manifest = JSON.parse(fs.readFileSync(path.join(dir, "manifest.json"), "utf8"));
        assert.strictEqual(manifest.sha256, backup.sha256);
        assert.deepStrictEqual(manifest.rowCounts, backup.rowCounts);
        assert.deepStrictEqual(manifest.encryption, { tool: "gpg", fingerprint: keys.fingerprint });
        assert.deepStrictEqual([manifest.from, manifest.to], ["v1.0.0", "v1.1.0"]);
        const cipher = fs.readFileSync(path.join(dir, "db.dump.gpg"));
        assert.strictEqual(crypto.createHash("sha256").update(cipher).digest("hex"), manifest.objects["db.dump"].sha256);
        // Unreadable without the private key: no dump header, no .env secret in the clear, gpg refuses.
        assert.ok(!cipher.includes("PGDMP"));
        const envCipher = fs.readFileSync(path.join(dir, "env.gpg"));
        assert.ok(!envCipher.includes("SECRET_KEY") && !envCipher.includes("DB_PASSWORD"));
        assert.throws(() => decrypt(path.join(dir, "db.dump.gpg")), /No secret key|decryption failed/);
        // With it, the dump is the very one the server checked (same sha256).
        const plain = decrypt(path.join(dir, "db.dump.gpg"), keys.privateKey);
        assert.strictEqual(crypto.createHash("sha256").update(plain).digest("hex"), backup.sha256);
        assert.match(decrypt(path.join(dir, "env.gpg"), keys.privateKey).toString(), /^SECRET_KEY=/m);
        assert.match(await sshOk(h, "cat /opt/jupyterhealth-exchange/UPGRADE_LOG.md"), /Migrations applied/);
        assert.strictEqual((await sshOk(h, "ls /run | grep -c jhe-upgrade-gpg || true")).trim(), "0", "no keyring left in /run");
    });

    it("bucket: a rollback after the server lost its backups and the kept database restores from the bucket, rows written meanwhile replayed", async function () {
        assert.ok(backupId, "needs the upgrade above");
        const before = Number((await query<{ n: string }>(h, "SELECT count(*) AS n FROM core_observation"))[0].n);
        const written: number[] = [];
        for (let i = 0; i < 8; i++) {
            const r = await request(h, "POST", "/fhir/r5/Observation", {
                subject: { reference: `Patient/${1 + (i % 5)}` }, code: { coding: [{ code: `B-${i}` }] }, valueQuantity: { value: i },
            });
            assert.strictEqual(r.status, 201, r.body);
            written.push(Number(JSON.parse(r.body).id));
        }
        // The disk with /backups is lost, and so is the database kept at the upgrade: only the bucket has v1.0.0's data.
        await sshOk(h, "rm -rf /backups/jhe");
        const kept = await query<{ datname: string }>(h, "SELECT datname FROM pg_database WHERE datname LIKE 'jhe_production_was_v1_0_0_%'");
        assert.strictEqual(kept.length, 1, JSON.stringify(kept));
        await query(h, `DROP DATABASE "${kept[0].datname}"`, [], "postgres");
        await stack.setConfig("jhe:version", { value: "v1.0.0" });
        const pre = await stack.preview({ diff: true });
        printed.push(pre.stdout, pre.stderr);
        // (the preview cuts long strings: the start of the summary says it)
        assert.match(pre.stdout, new RegExp(`summary\\s*:\\s*"rollback v1\\.1\\.0 -> v1\\.0\\.0: fetch backup ${esc(backupId)} from s3://${BUCKET}/${PREFIX}${esc(backupId)}/ \\(its loca`));
        // Without the private key: refused at preflight, naming the setting; v1.1.0 still serves, untouched.
        await assert.rejects(stack.up(), /encrypted to [0-9A-F]{40}: give its private key for this restore \(`pulumi config set --secret jhe:backupDecryptionKey/);
        assert.strictEqual(await servingVersion(h), "v1.1.0");
        await stack.setConfig("jhe:backupDecryptionKey", { value: keys.privateKey, secret: true });
        const res = await stack.up();
        printed.push(res.stdout, res.stderr);
        assert.match(res.stderr + res.stdout, new RegExp(`backup ${esc(backupId)} fetched from s3://${BUCKET}/${PREFIX}${esc(backupId)}/ .*decrypted and checked`));
        assert.strictEqual((await sshOk(h, "ls /run | grep -c jhe-upgrade-gpg || true")).trim(), "0", "no keyring left after the restore");
        assert.strictEqual(await servingVersion(h), "v1.0.0");
        const rb = res.outputs.rollback.value;
        assert.strictEqual(rb.restoredBy, "backup");
        assert.strictEqual(rb.restoredFrom, backupId);
        const rows = await query<{ id: string }>(h, "SELECT id FROM core_observation WHERE id = ANY($1::bigint[])", [written]);
        assert.strictEqual(rows.length, written.length, "every observation written on v1.1.0 was replayed");
        const after = Number((await query<{ n: string }>(h, "SELECT count(*) AS n FROM core_observation"))[0].n);
        assert.strictEqual(after, before + written.length);
        const cols = await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_observation' AND column_name = 'source'");
        assert.strictEqual(cols.length, 0, "the database is v1.0.0's again");
        // The rollback's own backup (of v1.1.0's database) went to the bucket too.
        const off = res.outputs.offsiteBackup.value;
        assert.strictEqual(off.copied.length, 1);
        assert.match(off.copied[0], /-v1\.1\.0-to-v1\.0\.0$/);
        assert.ok(s3.objects(BUCKET, PREFIX + off.copied[0]).some((k) => k.endsWith("/db.dump.gpg")));
    });

    it("bucket: a new bare server restored from the bucket serves the old server's data (row checksums equal)", async function () {
        assert.ok(backupId, "needs the upgrade above");
        h2 = await up("e2ebk2");
        s3b = await startS3(h2, s3); // the same bucket, reached from the new server's namespace
        stack2 = await projectStack(h2, "v1.0.0", {
            ...bucketConfig(s3b, BUCKET, keys.publicKey),
            "jhe:backupDecryptionKey": { value: keys.privateKey, secret: true },
            "jhe:restoreFrom": { value: `s3://${BUCKET}/${PREFIX}${backupId}/` },
            "jhe:dbPassword": { value: `db-${crypto.randomBytes(6).toString("hex")}`, secret: true },
            "jhe:tlsSelfSigned": { value: "true" },
        });
        await stack2.setConfig("jhe:secretEnv.SECRET_KEY", { value: `sk-${crypto.randomBytes(8).toString("hex")}`, secret: true }, true);
        await leaveUnset(stack2, "DEBUG", "OIDC_RSA_PRIVATE_KEY", "JHE_FEATURE_X");
        // A restore onto the wrong version is refused before anything changes, naming the version to set.
        await stack2.setConfig("jhe:version", { value: "v1.1.0" });
        await assert.rejects(stack2.up(), new RegExp(`backup ${esc(backupId)} holds the database of v1\\.0\\.0 .*set jhe:version to v1\\.0\\.0`));
        await stack2.setConfig("jhe:version", { value: "v1.0.0" });
        const t0 = Date.now();
        const res = await stack2.up();
        const rto = (Date.now() - t0) / 1000;
        printed.push(res.stdout, res.stderr);
        assert.strictEqual(await servingVersion(h2), "v1.0.0");
        const restored = res.outputs.migration.value.restored;
        assert.strictEqual(restored.from, backupId);
        assert.strictEqual(restored.fetchedFrom, `s3://${BUCKET}/${PREFIX}${backupId}/`);
        assert.deepStrictEqual(await allTables(h2), atBackup, "every table's rows equal the old server's when the backup was taken");
        assert.strictEqual((await sshOk(h2, "ls /run | grep -c jhe-upgrade-gpg || true")).trim(), "0", "no keyring left on the new server");
        assert.strictEqual((await sshOk(h2, `ls /backups/jhe/${backupId} 2>/dev/null | wc -l`)).trim(), "0", "the decrypted copy is gone once restored");
        assert.match(await sshOk(h2, "cat /opt/jupyterhealth-exchange/UPGRADE_LOG.md"), new RegExp(`## Restored onto this server from ${esc(backupId)}`));
        const r = await request(h2, "GET", "/fhir/r5/Observation?_count=1");
        assert.strictEqual(r.status, 200, r.body);
        console.log(`      disaster recovery onto a bare server: pulumi up ${rto.toFixed(1)} s (the restore itself ${restored.seconds} s)`);
    });

    it("bucket: no credential or private key appears in any output, log, state file or the server's files", async function () {
        const secrets = {
            "the secret access key": s3.secretKey,
            "the access key id": s3.accessKey,
            "the private key": keys.privateKey.split("\n").filter((l) => l.length > 40)[2],
        };
        // Every file of the state backend these stacks have: checkpoint, history, checkpoint backups (read as
        // stored: the Automation API's exportStack would show the secrets decrypted).
        const stateFiles = filesUnder(path.join(STATE_DIR, ".pulumi")).filter((f) => f.includes(stack.name) || (stack2 && f.includes(stack2.name)));
        assert.ok(stateFiles.some((f) => f.includes(`${path.sep}history${path.sep}`)), "the state backend's history is searched too");
        const server = await sshOk(h, "cat /opt/jupyterhealth-exchange/.jhe-upgrade/state.json /opt/jupyterhealth-exchange/UPGRADE_LOG.md; " +
            "journalctl --no-pager -q 2>/dev/null | tail -n 5000; ls -la /run; ps -eo args");
        for (const [what, value] of Object.entries(secrets)) {
            assert.ok(value && value.length > 16, what);
            for (const f of stateFiles) assert.ok(!fs.readFileSync(f, "utf8").includes(value), `${what} in ${f}`);
            printed.forEach((p, i) => assert.ok(!p.includes(value), `${what} in engine output #${i}`));
            assert.ok(!server.includes(value), `${what} on the server`);
            if (h2) assert.ok(!(await sshOk(h2, "cat /opt/jupyterhealth-exchange/.jhe-upgrade/state.json; ls -la /run")).includes(value), `${what} on the new server`);
        }
        // The state holds them only as ciphertext (secrets).
        const cfg = fs.readFileSync(path.join(ROOT, `Pulumi.${stack.name}.yaml`), "utf8");
        assert.match(cfg, /jhe:backupSecretAccessKey:\s*\n\s*secure:/);
    });
});
