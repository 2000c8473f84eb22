// The forward upgrade on the real engine and a real server: adopt a runbook install, upgrade
// v1.0.0 -> v1.1.0 -> v1.2.0 -> v2.0.0 -> v2.1.0 -> v2.2.0 (no window) -> v2.1.0, refuse v1.2.0 without its env var (changing nothing), keep
// secrets out of every log, re-run as a no-op, and destroy without touching the server.
import * as assert from "assert";
import { execFileSync } from "child_process";
import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { namesWithOp, stepOps } from "../helpers/engine";
import { filesUnder, leaveUnset, projectStack, V110_APPLIED, V110_MIGRATIONS, serverFingerprint, STATE_DIR, teardown } from "../helpers/stack";
import { AckedWrite, lostByContent, Writer } from "../helpers/writer";
import { adminLogin, dotenvValues, HostInfo, oidcKeys, query, request, sampleProcesses, serviceStarts, servingVersion, ssh, sshOk, tableFingerprint, up } from "../helpers/testhost";

const APP = "/opt/jupyterhealth-exchange";
const VERSIONED = ["backup", "finish", "health-gate", "migrate", "preflight", "prepare-release", "switch-restart"];

describe("upgrade (real engine, real server with RSA, ECDSA and Ed25519 host keys, pinned by Ed25519)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let stack: Stack;
    let envAtStart: Record<string, string | null>;
    let seeded: { patients: number; observations: string };
    const onlineWrites: AckedWrite[] = [];

    before(async function () {
        h = await up("e2eup", { legacy: "v1.0.0", patients: 40, observations: 3000 });
        stack = await projectStack(h, "v1.0.0");
        seeded = {
            patients: (await tableFingerprint(h, "core_patient")).rows,
            observations: (await tableFingerprint(h, "core_observation")).checksum,
        };
    });
    after(async function () {
        await teardown(stack, h);
    });

    const health = () => servingVersion(h);

    it("adopts the runbook's in-place install with no data loss and serves the same version from releases/", async function () {
        const obsBefore = await tableFingerprint(h, "core_observation");
        envAtStart = await dotenvValues(h, `${APP}/.env`);
        const since = (await sshOk(h, "date +%s")).trim();
        const res = await stack.up();
        assert.strictEqual(res.summary.result, "succeeded");
        assert.strictEqual(res.outputs.deployed.value.version, "v1.0.0");
        assert.strictEqual((await sshOk(h, `readlink ${APP}/current`)).trim(), "releases/v1.0.0");
        assert.deepStrictEqual(await tableFingerprint(h, "core_observation"), obsBefore);
        assert.strictEqual(await health(), "v1.0.0");
        // The old checkout is left as it was (nothing deleted), the unit now runs `current`.
        await sshOk(h, `test -d ${APP}/.git && test -f ${APP}/.env && grep -q '${APP}/current/venv/bin/gunicorn' /etc/systemd/system/jhe.service`);
        assert.match(await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`), /## Adopted v1\.0\.0/);
        // at most one restart (onto the new unit), and .env the same in meaning: every value python-dotenv
        // reads - the one-line OIDC key with \n escapes, quotes, '#', '$', non-ASCII, empty, export - as before
        assert.ok(await serviceStarts(h, Number(since)) <= 1, "adoption restarts the service at most once");
        assert.deepStrictEqual(await dotenvValues(h, `${APP}/current/.env`), envAtStart);
        assert.match(String(envAtStart.OIDC_RSA_PRIVATE_KEY), /^-----BEGIN PRIVATE KEY-----\n[^]+\n-----END PRIVATE KEY-----$/);
        assert.strictEqual(envAtStart.JHE_SUPPORT_CONTACT, "Ünïcode Clinic <help@example.org> # not a comment, a=b $5");
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 }, "the OIDC key endpoint serves the runbook's key");
    });

    it("a changed host key (Ed25519 pin of another server) is refused before any command, naming both fingerprints", async function () {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-key-"));
        try {
            execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", path.join(dir, "k")]);
            const other = fs.readFileSync(path.join(dir, "k.pub"), "utf8").trim();
            const before = await serverFingerprint(h);
            await stack.setConfig("jhe:sshHostKey", { value: other });
            const fp = (line: string) => execFileSync("ssh-keygen", ["-lf", "-"], { input: line }).toString().split(" ")[1];
            for (const op of [() => stack.preview(), () => stack.up()]) {
                await assert.rejects(op(), (e: Error) => {
                    assert.ok(e.message.includes(`the server offered ssh-ed25519 ${fp(h.hostKeys.ed25519)}, jhe:sshHostKey pins ssh-ed25519 ${fp(other)}`),
                        e.message.slice(-2000));
                    return true;
                });
            }
            assert.deepStrictEqual(await serverFingerprint(h), before, "nothing ran on the server");
        } finally {
            await stack.setConfig("jhe:sshHostKey", { value: h.hostKey });
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });

    it("a version change previews as replacements of exactly the versioned steps, with the plan", async function () {
        await stack.setConfig("jhe:version", { value: "v1.1.0" });
        const events: EngineEvent[] = [];
        const pre = await stack.preview({ onEvent: (e) => events.push(e), diff: true });
        assert.deepStrictEqual(namesWithOp(events, "replace"), VERSIONED);
        for (const untouched of ["unit", "site", "maintenance-page", "host-tool", "adopt"]) {
            const ops = [...stepOps(events)].find(([urn]) => urn.endsWith(`::${untouched}`))?.[1];
            assert.deepStrictEqual(ops, ["same"], `${untouched}: ${ops}`);
        }
        assert.match(pre.stdout, new RegExp("pendingMigrations\\s*:\\s*\\[" + V110_MIGRATIONS.map((m, i) => `\\s*\\+?\\s*\\[${i}\\]: "${m.replace(/\./g, "\\.")}"`).join("")));
        assert.match(pre.stdout, /envAdded\s*:\s*\[\s*\+?\s*\[0\]: "JHE_FEATURE_X"/);
        // new in v1.1.0's example, set nowhere: the plan lists it (preflight would refuse until decided)
        assert.match(pre.stdout, /envMissing\s*:\s*\[\s*\+?\s*\[0\]: "JHE_FEATURE_X"/);
        assert.match(pre.stdout, /action\s*:\s*"none" => "upgrade"/);
        // each pending migration classed from its file (an added nullable column; data; a rename; data)
        assert.match(pre.stdout, /migrationClass\s*:\s*"destructive"/);
        for (const [m, c] of [["core.0002_observation_source", "additive"], ["core.0003_backfill_source", "data"],
            ["core.0004_study_title_patientidentifier", "destructive"]]) {
            assert.match(pre.stdout, new RegExp(`${m.replace(/\./g, "\\.")}\\W[\\s\\S]{0,80}?class\\s*:\\s*"${c}"`), m);
        }
        assert.match(pre.stdout, /summary\s*:.*"upgrade v1\.0\.0 -> v1\.1\.0: backup and migrations on a copy while v1\.0\.0 serves, then a rename swap in the window/);
        // the downtime estimate: nobody writes now, so the staged copy is swapped in and the window holds the switch
        assert.match(pre.stdout, /estimatedDowntimeSeconds\s*:\s*\d+(\.\d+)?\n/);
        assert.match(pre.stdout, /path\s*:\s*"staged: migrated on a copy before the window, swapped in by rename"/);
    });

    it("up v1.1.0: backs up, migrates, restarts, passes the health gate, and reports it", async function () {
        const counts = { patients: (await tableFingerprint(h, "core_patient")).rows, observations: (await tableFingerprint(h, "core_observation")).rows };
        // What an operator may have set on the database itself (a dump does not carry it).
        await query(h, "CREATE ROLE jhe_reporting");
        await query(h, "GRANT CONNECT ON DATABASE jhe_production TO jhe_reporting");
        await query(h, "ALTER DATABASE jhe_production SET work_mem = '12MB'");
        const dbProps = "SELECT d.datacl::text AS acl, s.setconfig::text AS config FROM pg_database d " +
            "LEFT JOIN pg_db_role_setting s ON s.setdatabase = d.oid AND s.setrole = 0 WHERE d.datname = 'jhe_production'";
        const propsBefore = await query(h, dbProps);
        await leaveUnset(stack, "JHE_FEATURE_X"); // the operator's answer: v1.1.0 runs without it
        const res = await stack.up();
        const o = Object.fromEntries(Object.entries(res.outputs).map(([k, v]) => [k, v.value]));
        assert.deepStrictEqual(o.deployed, { version: "v1.1.0", previous: "v1.0.0" });
        assert.deepStrictEqual(o.migrationsApplied, V110_APPLIED);
        assert.deepStrictEqual(o.plan, { from: "v1.1.0", to: "v1.1.0", action: "none" }, "the plan after up describes the server as it now is");
        const lockCount = Object.keys(JSON.parse(await sshOk(h, `git -C ${APP}/repo.git show v1.1.0:Pipfile.lock`)).default).length;
        const { python, pins, ...deps } = o.dependencies;
        assert.deepStrictEqual(deps, { installer: "pipenv", requirements: lockCount, exact: true, hashesChecked: false, pipCheck: [] });
        assert.match(python, /^3\.11\.\d+$/, "the release's Python (python3: Debian 12's)");
        assert.deepStrictEqual(pins, {}, "no jhe:pins over the lock");
        assert.strictEqual((await sshOk(h, `ls -a ${APP}/releases`)).split("\n").filter((f) => f.includes("incomplete") || f.includes("set-aside")).length, 0);
        // every table of every app is counted (the kept pre-upgrade database still has v1.0.0's rows)
        const tables = (await query<{ t: string }>(h, "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", [], o.migration.keptDatabase)).map((r) => r.t);
        assert.deepStrictEqual(Object.keys(o.backup.rowCounts).sort(), tables);
        assert.ok(tables.includes("django_session") && tables.includes("auth_permission"), tables.join());
        assert.deepStrictEqual([o.backup.rowCounts.core_patient, o.backup.rowCounts.core_observation], [counts.patients, counts.observations]);
        assert.strictEqual(o.backup.rowCounts.django_migrations, (await query(h, "SELECT 1 FROM django_migrations", [], o.migration.keptDatabase)).length);
        const onServer = await sshOk(h, `sha256sum ${o.backup.location}/db.dump; stat -c '%a' ${o.backup.location} ${o.backup.location}/db.dump`);
        assert.match(onServer, new RegExp(`^${o.backup.sha256}  `));
        assert.match(onServer, /\n700\n600\n$/);
        assert.ok(o.downtimeSeconds > 0 && o.downtimeSeconds < 60, `downtime ${o.downtimeSeconds}`);
        // what the window held, beside preflight's estimate of it (recorded for the next estimate)
        assert.strictEqual(o.window.path, "staged", JSON.stringify(o.window));
        assert.strictEqual(o.window.windowSeconds, o.downtimeSeconds);
        assert.strictEqual(typeof o.window.estimatedSeconds, "number");
        assert.ok(o.window.migrateSeconds > 0 && o.window.rewriteBytes > 0, JSON.stringify(o.window)); // 0003 runs over core_*
        // Nothing was written meanwhile, so the copy migrated while v1.0.0 served was swapped in, and
        // the database as v1.0.0 had it is kept as it was: the seeded rows, no v1.1.0 column.
        assert.strictEqual(o.migration.strategy, "staged");
        assert.strictEqual(o.migration.writtenSinceBackup, null);
        assert.match(o.migration.keptDatabase, /^jhe_production_was_v1_0_0_\d{14}$/);
        assert.strictEqual((await tableFingerprint(h, "core_observation", o.migration.keptDatabase)).checksum, seeded.observations);
        assert.deepStrictEqual(await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_observation' AND column_name = 'source'", [], o.migration.keptDatabase), []);
        assert.deepStrictEqual(await query(h, "SELECT datname FROM pg_database WHERE datname LIKE '%staged%'"), [], "no staged copy left");
        // v1.1.0 booted before the window in the hand-over unit; after it, jhe serves it and the unit is gone.
        assert.strictEqual(o.migration.bootedBeforeWindow?.unit, "jhe-next@v1.1.0.service", JSON.stringify(o.migration));
        assert.strictEqual((await ssh(h, "systemctl is-active -q jhe-next@v1.1.0 || test -e /var/lib/jhe-upgrade/jhe/next-on")).code, 1,
            "the hand-over unit stopped and nginx back to jhe");
        assert.strictEqual((await sshOk(h, "systemctl is-active jhe")).trim(), "active");
        assert.deepStrictEqual(await query(h, dbProps), propsBefore, "the database's privileges and settings came along");
        assert.match(JSON.stringify(propsBefore), /jhe_reporting=c.*work_mem=12MB/);
        for (const s of VERSIONED) assert.strictEqual(typeof o.stepSeconds[s], "number", `stepSeconds.${s}`);
        assert.strictEqual(await health(), "v1.1.0");
        assert.deepStrictEqual(await dotenvValues(h, `${APP}/current/.env`), envAtStart, "the upgraded release's .env means what the runbook's did");
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 });
        const [{ n }] = await query<{ n: string }>(h, "SELECT count(*) AS n FROM core_observation WHERE source = 'device'");
        assert.strictEqual(Number(n), counts.observations);
        const log = await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`);
        assert.match(log, /## Upgrade to v1\.1\.0 - .*\n\n\*\*Performed by:\*\* root from [0-9.]+ \(stack organization\/jhe\//);
        assert.match(log, /\*\*From:\*\* v1\.0\.0 {2}\*\*To:\*\* v1\.1\.0/);
        assert.match(log, new RegExp(`Migrations applied: ${V110_APPLIED.join(", ").replace(/\./g, "\\.")}`));
        assert.match(log, /\*\*Migration:\*\* on a staged copy while the old version served; swapped in by rename/);
        assert.match(log, /\*\*Downtime:\*\* [0-9.]+ s \(maintenance page shown\); estimated [0-9.]+ s at preflight/);
        assert.match(log, /Environment variables added by v1\.1\.0: JHE_FEATURE_X/);
        assert.match(log, new RegExp(`Backup: ${o.backup.location} \\(sha256 ${o.backup.sha256}`));
        assert.match(log, /- \/health: 200\n- \/admin\/: 302\n- \/o\/\.well-known\/jwks\.json: 200/);
    });

    it("v1.2.0 with a variable new in its env example and set nowhere is refused in preflight, naming it and both fixes; nothing on the server changes", async function () {
        const before = await serverFingerprint(h);
        await stack.setConfig("jhe:version", { value: "v1.2.0" });
        await assert.rejects(stack.up(), (e: Error) => {
            assert.match(e.message, /v1\.2\.0's dot_env_example\.txt adds JHE_INSTANCE_NAME, which neither the server's \.env nor the stack sets/);
            assert.match(e.message, /pulumi config set --path 'jhe:env\.JHE_INSTANCE_NAME'/);
            assert.match(e.message, /pulumi config set --path 'jhe:envUnset\[1\]' JHE_INSTANCE_NAME/);
            assert.doesNotMatch(e.message, /JHE_FEATURE_X/, "listed in jhe:envUnset: decided");
            return true;
        });
        assert.deepStrictEqual(await serverFingerprint(h), before);
        assert.strictEqual(await health(), "v1.1.0");
    });

    it("with the variable (and secrets) set, v1.2.0 upgrades; no secret appears in any output, event, state file, journal, log, host state file or process list", async function () {
        const token = `tok-${Math.random().toString(36).slice(2)}-Zq9`;
        const dbPassword = `db-${crypto.randomBytes(9).toString("base64url")}-Pw4`;
        const adminPassword = `adm-${crypto.randomBytes(9).toString("base64url")}-Kx2`;
        await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Test Hospital" }, true);
        await stack.setConfig("jhe:secretEnv.JHE_API_TOKEN", { value: token, secret: true }, true);
        await stack.setConfig("jhe:dbPassword", { value: dbPassword, secret: true });
        await stack.setConfig("jhe:adminEmail", { value: "ops@example.org" });
        await stack.setConfig("jhe:adminPassword", { value: adminPassword, secret: true });
        // A multi-line PEM key as JHE's OIDC_RSA_PRIVATE_KEY (made now, never committed), set as from a file.
        const oidc = crypto.generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString().trim();
        await stack.setConfig("jhe:secretEnv.OIDC_RSA_PRIVATE_KEY", { value: oidc, secret: true }, true);
        const key = fs.readFileSync(h.privateKeyPath, "utf8").split("\n").filter((l) => l && !l.startsWith("-----"));
        // Sample the server's process list while the upgrade runs.
        const sampler = sampleProcesses(h);
        const events: string[] = [];
        let text = "";
        const pre = await stack.preview({ diff: true });
        const res = await stack.up({ onOutput: (o) => (text += o), onEvent: (e) => events.push(JSON.stringify(e)), logVerbosity: 5, logToStdErr: true, debug: true });
        const ps = await sampler.stop();
        assert.strictEqual(res.outputs.deployed.value.version, "v1.2.0");
        assert.strictEqual(await health(), "v1.2.0");
        assert.match(await sshOk(h, `cat ${APP}/current/.env`), new RegExp(`JHE_API_TOKEN=${token}`), "the secret reached the server's .env");
        const read = JSON.parse(await sshOk(h, `cd ${APP}/current && venv/bin/python -c 'import json, dotenv; print(json.dumps(dotenv.dotenv_values(".env")))'`));
        assert.strictEqual(read.OIDC_RSA_PRIVATE_KEY, oidc, "python-dotenv reads the multi-line key back as it was set");
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 }, "JHE signs with the key set from the stack");
        // v1.2.0's lock is inconsistent as JHE v0.0.13's is: installed as pinned (no resolution), pip check's finding reported
        const deps = res.outputs.dependencies.value;
        assert.strictEqual(deps.exact, true);
        assert.ok(deps.pipCheck.some((p: string) => /pyopenssl 24\.2\.1 has requirement cryptography<44.*48\.0\.1/i.test(p)), JSON.stringify(deps.pipCheck));
        // The new database password is in use (the app serves with it) and the superuser logs in.
        assert.strictEqual((await dotenvValues(h, `${APP}/current/.env`)).DB_PASSWORD, dbPassword);
        assert.strictEqual((await adminLogin(h, "ops@example.org", adminPassword)).status, 302, "the superuser logs in with the stack's password");
        const secrets: Record<string, string[]> = {
            "jhe:secretEnv.JHE_API_TOKEN": [token], "jhe:dbPassword": [dbPassword], "jhe:adminPassword": [adminPassword],
            "jhe:sshPrivateKey (a line of it)": key, "jhe:secretEnv.OIDC_RSA_PRIVATE_KEY (a line of it)": oidc.split("\n").slice(1, -1),
        };
        // Every file of the state backend this stack has: its checkpoint, history, checkpoint backups, lock.
        const stateFiles = filesUnder(path.join(STATE_DIR, ".pulumi")).filter((f) => f.includes(stack.name) || !/[\\/](stacks|history|backups|locks)[\\/]/.test(f));
        assert.ok(stateFiles.some((f) => f.includes(`${path.sep}history${path.sep}`)) && stateFiles.some((f) => f.includes(`${path.sep}backups${path.sep}`)),
            "the state backend's history and backups are searched too");
        const places: Record<string, string> = {
            preview: pre.stdout + pre.stderr, up: text + res.stdout + res.stderr, events: events.join("\n"),
            "the state backend": stateFiles.map((f) => fs.readFileSync(f, "utf8")).join("\n"), "the server's process list": ps.join("\n"),
        };
        assert.ok(ps.length > 3, `process list sampled ${ps.length} times`);
        for (const [where, content] of Object.entries(places)) {
            for (const [name, values] of Object.entries(secrets)) {
                for (const v of values) assert.ok(!content.includes(v), `${name} appears in ${where}`);
            }
        }
        // On the server, searched there (the values go over stdin into a private file, never onto a command line):
        // the journal, UPGRADE_LOG.md, the host tool's state and run files.
        const patterns = Object.values(secrets).flat().join("\n") + "\n";
        const found = await sshOk(h, `umask 077; f=$(mktemp); cat > "$f"
            [ "$(journalctl --no-pager -o cat | wc -l)" -gt 100 ] || echo "(the journal could not be read)"
            { journalctl --no-pager -o cat | grep -qF -f "$f" && echo "the server's journal"
              grep -rlF -f "$f" ${APP}/UPGRADE_LOG.md ${APP}/.jhe-upgrade /var/lib/jhe-upgrade /usr/local/lib/jhe-upgrade /run/jhe-upgrade* 2>/dev/null; } || true
            grep -qF -f "$f" ${APP}/current/.env && echo "(control: found in the release's .env, where they belong)"
            rm -f "$f"`, patterns);
        assert.strictEqual(found.trim(), "(control: found in the release's .env, where they belong)", `a secret appears on the server in: ${found.trim()}`);
        // ... and the places where they must be: the release's .env (0600 to the app user) and the backups' copies of it.
        assert.match(await sshOk(h, `stat -c '%a %U' ${APP}/current/.env`), /^600 /);
    });

    it("v2.0.0: Pipfile -> pyproject + uv.lock and the renamed env example are handled", async function () {
        await stack.setConfig("jhe:version", { value: "v2.0.0" });
        const res = await stack.up();
        assert.strictEqual(res.outputs.deployed.value.version, "v2.0.0");
        assert.strictEqual(await health(), "v2.0.0");
        assert.match(await sshOk(h, `${APP}/current/venv/bin/python -c 'import django; print(django.get_version())'`), /^5\.2\.19/);
        const obs = { subject: { reference: "Patient/1" }, code: { coding: [{ code: "8867-4" }] }, valueQuantity: { value: 70 } };
        assert.strictEqual((await request(h, "POST", "/FHIR/R5/Observation", obs)).status, 201);
        assert.strictEqual((await tableFingerprint(h, "core_patient")).rows, seeded.patients);
    });

    it("v3.0.0 needs Python 3.13, which the server lacks: refused in preflight before any change", async function () {
        const before = await serverFingerprint(h);
        await stack.setConfig("jhe:version", { value: "v3.0.0" });
        await assert.rejects(stack.up(), /preflight refused the upgrade v2\.0\.0 -> v3\.0\.0 before any change:\s+- v3\.0\.0 needs Python >=3\.13; python3 on the server is 3\.11 \(set jhe:python/);
        assert.deepStrictEqual(await serverFingerprint(h), before);
        await stack.setConfig("jhe:version", { value: "v2.0.0" });
    });

    it("v2.1.0 (additive migrations only), then v2.2.0 (a migration with no SQL): no window - a writer posting throughout sees no failure and no 503", async function () {
        for (const [v, cls, mig] of [["v2.1.0", "additive", "core.0006_observation_device_site"], ["v2.2.0", "no-sql", "core.0007_alter_observation_source"]]) {
            await stack.setConfig("jhe:version", { value: v });
            const pre = await stack.preview({ diff: true });
            assert.match(pre.stdout, new RegExp(`migrationClass\\s*:\\s*"${cls}"`));
            assert.match(pre.stdout, /migrationStrategy\s*:\s*"online"/);
            assert.match(pre.stdout, /estimatedDowntimeSeconds\s*:\s*0\n/);
            assert.match(pre.stdout, /summary\s*:.*every pending migration is no-SQL or additive: applied while v2\.\d\.0 serves, then v2\.\d\.0 takes over/);
            const w = new Writer(h).start();
            const res = await stack.up();
            await new Promise((r) => setTimeout(r, 300));
            const report = await w.stop();
            onlineWrites.push(...report.ackedRows);
            const o = Object.fromEntries(Object.entries(res.outputs).map(([k, x]) => [k, x.value]));
            assert.deepStrictEqual([o.deployed.version, o.migration.strategy, o.downtimeSeconds, o.migrationsApplied], [v, "online", 0, [mig]]);
            assert.deepStrictEqual([report.errors, report.maintenance503], [0, 0], `${v}: ${JSON.stringify(report.statuses)}`);
            assert.ok(report.acked.length > 20, `${v}: ${report.acked.length} writes acknowledged`);
            assert.strictEqual(await health(), v);
            assert.strictEqual((await ssh(h, "systemctl is-active -q jhe-next@" + v + " || test -e /var/lib/jhe-upgrade/jhe/next-on")).code, 1);
        }
        assert.deepStrictEqual(await query(h, "SELECT indisvalid AS valid FROM pg_index WHERE indexrelid = 'core_obs_code_created_idx'::regclass"), [{ valid: true }],
            "the index built concurrently is valid");
        assert.deepStrictEqual(await lostByContent(h, onlineWrites), []);
    });

    it("rolling back v2.2.0 -> v2.1.0 after an online upgrade: every write since survives (those made while its migration ran too)", async function () {
        await stack.setConfig("jhe:version", { value: "v2.1.0" });
        const w = new Writer(h).start();
        const res = await stack.up();
        await new Promise((r) => setTimeout(r, 300));
        const report = await w.stop();
        onlineWrites.push(...report.ackedRows);
        assert.strictEqual(res.outputs.deployed.value.version, "v2.1.0");
        assert.deepStrictEqual(await query(h, "SELECT name FROM django_migrations WHERE app = 'core' AND name LIKE '0007%'"), []);
        assert.deepStrictEqual(await lostByContent(h, onlineWrites), [], "every write acknowledged since the online upgrades began");
        assert.strictEqual(await health(), "v2.1.0");
    });

    it("a config-only change: an unreadable OIDC key fails the health gate and the old .env comes back; a good setting is applied, every other value kept", async function () {
        const before = await dotenvValues(h, `${APP}/current/.env`);
        await stack.setConfig("jhe:secretEnv.OIDC_RSA_PRIVATE_KEY", { value: "-----BEGIN PRIVATE KEY-----\\nnot a key\\n-----END PRIVATE KEY-----", secret: true }, true);
        await assert.rejects(stack.up(), /v2\.1\.0 failed its health check with the new settings \(\/o\/\.well-known\/jwks\.json answered 500/);
        assert.deepStrictEqual(await dotenvValues(h, `${APP}/current/.env`), before, "the previous .env is back");
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 });
        await stack.setConfig("jhe:secretEnv.OIDC_RSA_PRIVATE_KEY", { value: String(before.OIDC_RSA_PRIVATE_KEY), secret: true }, true);
        await stack.setConfig("jhe:env.JHE_SUPPORT_CONTACT", { value: "Desk 2 <desk@example.org> #2" }, true);
        // Applied through the hand-over unit: a writer posting throughout sees no failure and no 503.
        const w = new Writer(h).start();
        await stack.up();
        await new Promise((r) => setTimeout(r, 300));
        const report = await w.stop();
        assert.deepStrictEqual([report.errors, report.maintenance503], [0, 0], JSON.stringify(report.statuses));
        assert.ok(report.acked.length > 10, `${report.acked.length} writes acknowledged`);
        assert.deepStrictEqual(await dotenvValues(h, `${APP}/current/.env`), { ...before, JHE_SUPPORT_CONTACT: "Desk 2 <desk@example.org> #2" });
        assert.deepStrictEqual(await oidcKeys(h), { status: 200, keys: 1 });
        assert.strictEqual(await health(), "v2.1.0");
    });

    it("running up again with no change does nothing: the preview shows no changes", async function () {
        const events: EngineEvent[] = [];
        await stack.preview({ onEvent: (e) => events.push(e) });
        const changed = [...stepOps(events)].filter(([, ops]) => ops.some((op) => op !== "same"));
        assert.deepStrictEqual(changed, []);
    });

    it("destroy leaves the server, its database and its backups untouched", async function () {
        const before = await serverFingerprint(h);
        await stack.destroy();
        assert.deepStrictEqual(await serverFingerprint(h), before);
        assert.strictEqual(await health(), "v2.1.0");
    });
});

/** Every file under `dir`. */
