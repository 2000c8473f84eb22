// Faults and bad input on the real engine and a real server, with a user writing observations through
// nginx throughout: after every scenario each acknowledged write is in the database (0 lost) and a
// known version serves. Prints a table (scenario, outcome, acknowledged, lost, time) at the end.
import * as assert from "assert";
import { spawn } from "child_process";
import * as fs from "fs";
import * as path from "path";
import { Stack } from "@pulumi/pulumi/automation";
import { engineEnv, ROOT } from "../helpers/engine";
import { leaveUnset, projectStack, V110_APPLIED, removeStack, serverFingerprint, STATE_DIR, teardown } from "../helpers/stack";
import { HostInfo, query, request, servingVersion, ssh, sshOk, tableFingerprint, up } from "../helpers/testhost";
import { AckedWrite, lostByContent, Writer } from "../helpers/writer";

const APP = "/opt/jupyterhealth-exchange";
interface Row {
    scenario: string; outcome: string; acked: number; lost: number; seconds: number;
    maintenance503?: number; errors?: number; statuses?: Record<number, number>; gap?: number;
}
const table: Row[] = [];
const allAcked: AckedWrite[] = [];

describe("faults (real engine, real server with RSA, ECDSA and Ed25519 host keys pinned by Ed25519, a writer running throughout)", function () {
    this.timeout(1_800_000);
    let h: HostInfo;
    let stack: Stack;

    before(async function () {
        h = await up("faults", { legacy: "v1.0.0", patients: 20, observations: 2000 });
        stack = await projectStack(h, "v1.0.0");
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.up();
    });
    after(async function () {
        printTable();
        await teardown(stack, h);
    });

    const serving = () => servingVersion(h);
    const setVersion = (v: string) => stack.setConfig("jhe:version", { value: v });

    /** Runs `body` with a writer going, then checks 0 lost writes and the version that must serve. */
    async function scenario(name: string, expectServing: string, body: () => Promise<string>) {
        const t0 = Date.now();
        const w = new Writer(h).start();
        let outcome: string;
        try {
            outcome = await body();
        } finally {
            await new Promise((r) => setTimeout(r, 500));
            var report = await w.stop(); // eslint-disable-line no-var
        }
        // By content (code and value), and cumulative: every write acknowledged in any scenario so far.
        allAcked.push(...report.ackedRows);
        const lost = await lostByContent(h, allAcked);
        table.push({ scenario: name, outcome, acked: report.acked.length, lost: lost.length, seconds: (Date.now() - t0) / 1000,
            maintenance503: report.maintenance503, errors: report.errors, statuses: report.statuses, gap: report.longestGapSeconds });
        assert.deepStrictEqual(lost, [], `acknowledged writes lost in "${name}"`);
        assert.ok(report.acked.length > 0, "the writer got writes through");
        assert.strictEqual(await serving(), expectServing);
    }

    /** `pulumi up` as an operator runs it, killed with SIGKILL (with its plugins) once `trigger` shows in its output. */
    async function upKilledAt(trigger: RegExp): Promise<string> {
        const env = { ...process.env, ...engineEnv(STATE_DIR), PATH: `${path.join(ROOT, ".tools", "bin")}:${process.env.PATH}` };
        const child = spawn("pulumi", ["up", "--yes", "--non-interactive", "--skip-preview", "--stack", stack.name], { cwd: ROOT, env, detached: true });
        let out = "";
        return new Promise((resolve, reject) => {
            const timer = setTimeout(() => { try { process.kill(-child.pid!, "SIGKILL"); } catch { /* gone */ } reject(new Error(`never saw ${trigger}:\n${out}`)); }, 300_000);
            const onData = (d: Buffer) => {
                out += d;
                if (trigger.test(out)) {
                    try { process.kill(-child.pid!, "SIGKILL"); } catch { /* gone */ }
                }
            };
            child.stdout.on("data", onData);
            child.stderr.on("data", onData);
            child.on("close", (_code, signal) => {
                clearTimeout(timer);
                if (signal === "SIGKILL") resolve(out);
                else reject(new Error(`pulumi up ended by itself (${signal ?? _code}) before ${trigger}:\n${out.slice(-2000)}`));
            });
        });
    }
    /** What an operator does after a killed `pulumi up`: release the stack's lock, run it again. */
    async function rerun() {
        await stack.cancel().catch(() => undefined);
        return stack.up();
    }
    /** Runs `script` on the server in the background (bounded by `seconds`), as `user`. */
    async function background(host: HostInfo, file: string, script: string, seconds: number, user = "root") {
        // (only the last command in the background: an asynchronous list would read its stdin from /dev/null)
        await sshOk(host, `cat > ${file} && chmod 0755 ${file} && cd /tmp && { setsid timeout ${seconds} sudo -u ${user} bash ${file} ` +
            ">/dev/null 2>&1 < /dev/null & }", script);
    }
    /** `pulumi up` with a watcher on the server that does `action` (once) as soon as `condition` holds
     * inside the window; returns whether it fired and how the up ended. */
    async function upWithFault(condition: string, action: string): Promise<{ fired: boolean; upFailed: boolean; error: string }> {
        await ssh(h, "rm -f /tmp/fault.fired");
        await background(h, "/tmp/fault-watch.sh",
            `for i in $(seq 1 12000); do if ${condition}; then ${action}; touch /tmp/fault.fired; exit 0; fi; sleep 0.01; done\n`, 180);
        let upFailed = false;
        let error = "";
        await stack.up().catch((e: Error) => { upFailed = true; error = e.message; });
        await ssh(h, "pkill -f '[f]ault-watch.sh'; true");
        return { fired: (await ssh(h, "test -e /tmp/fault.fired")).code === 0, upFailed, error };
    }

    it("required env var missing: refused in preflight, nothing changes", async function () {
        await scenario("required env var missing (v1.2.0)", "v1.0.0", async () => {
            const before = await serverFingerprintStable();
            await setVersion("v1.2.0");
            await assert.rejects(stack.up(), /v1\.2\.0's dot_env_example\.txt adds JHE_INSTANCE_NAME, which neither the server's \.env nor the stack sets/);
            assert.deepStrictEqual(await serverFingerprintStable(), before);
            await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Fault Hospital" }, true);
            await setVersion("v1.0.0");
            return "refused in preflight; server unchanged";
        });
    });

    it("tag does not exist: refused in preflight, naming the tags there are", async function () {
        await scenario("tag does not exist", "v1.0.0", async () => {
            await setVersion("v9.9.9");
            await assert.rejects(stack.up(), /jhe:version v9\.9\.9 is not a tag of \/srv\/jhe-upstream\.git \(newest tags: v3\.0\.0, v2\.3\.0, v2\.2\.0, v2\.1\.0, v2\.0\.0/);
            await setVersion("v1.0.0");
            return "refused in preflight";
        });
    });

    it("disk too small for the backup: refused in preflight", async function () {
        await sshOk(h, "mkdir -p /srv/small && mount -t tmpfs -o size=2m tmpfs /srv/small");
        await scenario("disk too small for the backup", "v1.0.0", async () => {
            await stack.setConfig("jhe:backupDir", { value: "/srv/small/jhe" });
            await setVersion("v1.1.0");
            await assert.rejects(stack.up(), /not enough free disk: the backup and the release need about \d+ MiB, \/srv\/small\/jhe has \d+ MiB/);
            await stack.removeConfig("jhe:backupDir");
            await setVersion("v1.0.0");
            await stack.up(); // back to the default layout in the stack (nothing to do on the server)
            return "refused in preflight";
        });
        await sshOk(h, "umount /srv/small");
    });

    /** Fills the filesystem of `dir` (a small one the test mounted) to all but about `leaveKiB`, in files
     * `filler.N`: while something else writes there, a request for what was free a moment ago can fail,
     * so it asks again for what is free now (bounded). */
    const fill = (dir: string, leaveKiB: number) =>
        `for i in $(seq 1 50); do a=$(( $(df --output=avail -k ${dir} | tail -1) - ${leaveKiB} )); ` +
        `[ $a -gt 64 ] || break; fallocate -l $(( a * 1024 )) ${dir}/filler.$i || rm -f ${dir}/filler.$i; done`;

    it("backup filesystem fills up during the dump: refused with the filesystem named, the partial dump removed, the old version never stops", async function () {
        // A filesystem with room for the preflight's estimate (database + 300 MiB) that something else
        // then fills while pg_dump writes (another backup, a log, a copy an operator makes).
        const dbMiB = Number(await sshOk(h, "sudo -u postgres psql -tAc \"SELECT pg_database_size('jhe_production') / 1048576\"")) + 1;
        await sshOk(h, `mkdir -p /srv/bfull && mount -t tmpfs -o size=${dbMiB + 330}m tmpfs /srv/bfull`);
        try {
            await scenario("backup filesystem fills up during the dump", "v1.0.0", async () => {
                await stack.setConfig("jhe:backupDir", { value: "/srv/bfull/jhe" });
                await setVersion("v1.1.0");
                const { fired, upFailed, error: err } = await upWithFault("pgrep -x pg_dump >/dev/null", fill("/srv/bfull", 64));
                assert.ok(fired && upFailed, `the disk filled during the dump (fired ${fired}) and the up failed (${upFailed})`);
                assert.match(err, /the backup could not be written: \/srv\/bfull\/jhe filled up during the dump \([\d.]+ MiB of it written; [\d.]+ MiB of \d+ MiB free now that the partial dump is removed\)\. Free space there, or set jhe:backupDir/);
                assert.match(err, /Nothing on the server changed: v1\.0\.0 kept serving throughout/);
                assert.deepStrictEqual((await sshOk(h, "ls -A /srv/bfull/jhe")).trim(), "", "no partial dump left");
                assert.match(await sshOk(h, "tail -n 12 /opt/jupyterhealth-exchange/UPGRADE_LOG.md"), /## Refused: upgrade v1\.0\.0 -> v1\.1\.0[\s\S]*filled up during the dump/);
                await sshOk(h, "rm -f /srv/bfull/filler.*");
                await stack.removeConfig("jhe:backupDir");
                await setVersion("v1.0.0");
                await stack.up(); // the stack back to the default layout (nothing to do on the server)
                return "refused before the window; partial dump removed; v1.0.0 served throughout";
            });
        } finally {
            await ssh(h, "umount /srv/bfull");
        }
    });

    it("PostgreSQL stopped: refused in preflight with a clear message; serving resumes when it is back", async function () {
        await scenario("PostgreSQL stopped", "v1.0.0", async () => {
            await sshOk(h, "systemctl stop postgresql");
            await setVersion("v1.1.0");
            try {
                await assert.rejects(stack.up(), /PostgreSQL is not running on the server/);
            } finally {
                await sshOk(h, "systemctl start postgresql && for i in $(seq 50); do pg_isready -q && break; sleep 0.1; done");
            }
            await setVersion("v1.0.0");
            return "refused in preflight";
        });
    });

    it("writes during a staged upgrade: the copy is dropped, the window snapshots and migrates in place; rollback after", async function () {
        await scenario("writes while the copy migrates (staged -> in-window)", "v1.0.0", async () => {
            await setVersion("v1.1.0");
            const res = await stack.up();
            const m = res.outputs.migration.value;
            assert.strictEqual(m.strategy, "staged");
            assert.ok((m.writtenSinceBackup ?? []).includes("core_observation"), JSON.stringify(m));
            // The window's backup is then a snapshot copy (file speed), dumped after the window.
            assert.match(m.keptDatabase, /^jhe_production_was_v1_0_0_\d{14}$/);
            assert.match(res.outputs.backup.value.location, /-v1\.0\.0-to-v1\.1\.0$/);
            assert.deepStrictEqual(res.outputs.migrationsApplied.value, V110_APPLIED);
            assert.deepStrictEqual(await query(h, "SELECT datname FROM pg_database WHERE datname LIKE '%staged%'"), [], "no staged copy left");
            await setVersion("v1.0.0");
            await stack.up();
            return `fell back (written: ${m.writtenSinceBackup.join(", ")}); ${res.outputs.downtimeSeconds.value} s downtime`;
        });
    });

    it("window: a client that reconnects in a loop (a cron job, a worker, an admin's psql) cannot break the snapshot or the swaps", async function () {
        await scenario("window: a client reconnecting in a loop", "v1.0.0", async () => {
            // On the server, bounded (150 s): connect to the live database every 50 ms, counting
            // the sessions that got in and those refused.
            const loop = "ok=0; no=0; while true; do if psql -X -q -d jhe_production -c 'SELECT pg_sleep(0.2)' >/dev/null 2>&1; " +
                "then ok=$((ok+1)); else no=$((no+1)); fi; echo \"$ok $no\" > /tmp/reconnect.count; sleep 0.05; done\n";
            await background(h, "/tmp/reconnect-loop.sh", loop, 150, "postgres");
            await new Promise((r) => setTimeout(r, 1000));
            try {
                await setVersion("v1.1.0");
                const res = await stack.up();
                assert.strictEqual(await serving(), "v1.1.0");
                assert.ok(res.outputs.migration.value.keptDatabase, "the window's snapshot (CREATE DATABASE ... TEMPLATE) was taken");
                await setVersion("v1.0.0");
                await stack.up(); // the rollback: two renames
            } finally {
                await ssh(h, "pkill -f '[r]econnect-loop.sh'; sleep 0.5");
            }
            const [ok, refused] = (await sshOk(h, "cat /tmp/reconnect.count")).trim().split(" ").map(Number);
            assert.ok(ok > 0 && refused > 0, `sessions in ${ok}, refused ${refused}`);
            assert.deepStrictEqual(await query(h, "SELECT datname FROM pg_database WHERE NOT datallowconn AND datname <> 'template0'"), [],
                "every database open to sessions again");
            return `upgraded and rolled back; ${refused} connection attempts refused while databases moved, ${ok} got in`;
        });
    });

    // SIGKILL at six step boundaries, alternating upgrade v1.0.0 -> v1.1.0 and rollback back (both move the database).
    const boundaries: Array<[string, string]> = [
        ["preflight", "v1.1.0"], ["prepare-release", "v1.0.0"], ["backup", "v1.1.0"],
        ["migrate", "v1.0.0"], ["switch-restart", "v1.1.0"], ["health-gate", "v1.0.0"],
    ];
    for (const [step, target] of boundaries) {
        it(`pulumi up killed (SIGKILL) right after ${step}, then a re-run converges to ${target}`, async function () {
            await scenario(`SIGKILL after ${step} (to ${target})`, target, async () => {
                await setVersion(target);
                await upKilledAt(new RegExp(`command:remote:Command ${step} created`));
                const res = await rerun();
                assert.strictEqual(res.outputs.deployed.value.version, target);
                return `converged on re-run (${res.outputs.downtimeSeconds.value} s downtime)`;
            });
        });
    }

    // Inside the window: the host tool killed (SIGKILL), gunicorn's master killed, PostgreSQL restarted -
    // at the moment a watcher on the server sees the window reach each point. Alternating upgrade
    // v1.0.0 -> v1.1.0 and rollback back (with the writer going, an upgrade migrates in the window).
    const PAGE = "test -e /var/lib/jhe-upgrade/jhe/maintenance-on";
    const TOOL = "pkill -9 -xf 'python3 /usr/local/lib/jhe-upgrade/jhe_upgrade.py [a-z]+'";
    const current = (v: string) => `[ "$(readlink /opt/jupyterhealth-exchange/current)" = releases/${v} ]`;
    // Inside the database moves. The snapshot: while PostgreSQL runs the tool's CREATE DATABASE ... TEMPLATE.
    // The swap: the tool frozen (SIGSTOP) once it closes the databases, the first of its two renames done
    // for it (the live database to the name the swap recorded), then killed - a kill between the renames.
    const PG = "runuser -u postgres -- psql -qtAX";
    const STATE = `${APP}/.jhe-upgrade/state.json`;
    const FREEZE = "pkill -STOP -xf 'python3 /usr/local/lib/jhe-upgrade/jhe_upgrade.py [a-z]+'";
    // The snapshot: the tool frozen once it has named the copy and closed the database, the copy made for
    // it (its next statement, which a kill would leave running or done), then killed.
    const CUT_SNAPSHOT = [
        FREEZE,
        `name=$(python3 -c 'import json; print(json.load(open("${STATE}"))["snapshotPending"]["name"])')`,
        `${PG} -c "CREATE DATABASE \\"$name\\" TEMPLATE jhe_production"`,
    ].join("; ");
    const LIVE_COUNT = `${PG} -c "SELECT count(*) FROM pg_database WHERE datname = 'jhe_production'" > /tmp/fault.live`;
    const CUT_SWAP = [
        FREEZE,
        `prev=$(python3 -c 'import json; print(json.load(open("${STATE}"))["swap"]["previous"])')`,
        `${PG} -c "ALTER DATABASE jhe_production RENAME TO \\"$prev\\""`,
        `${TOOL}; ${LIVE_COUNT}`,
    ].join("; ");
    const inWindow: Array<[string, string, string, string]> = [
        ["the host tool killed right after the maintenance page went on", "v1.1.0", PAGE, TOOL],
        ["the host tool killed right after jhe stopped", "v1.0.0", `${PAGE} && ! systemctl is-active -q jhe`, TOOL],
        // With the writer going, an upgrade's staged copy is dropped and the window takes a snapshot;
        // a rollback swaps the kept database back in by two renames.
        ["the host tool killed during the snapshot", "v1.1.0", `${PAGE} && test -e /var/lib/jhe-upgrade/closed-databases.json && grep -q snapshotPending ${STATE}`,
            `${CUT_SNAPSHOT}; ${TOOL}; ${LIVE_COUNT}`],
        ["the host tool killed between the swap's two renames", "v1.0.0", `${PAGE} && test -e /var/lib/jhe-upgrade/closed-databases.json`, CUT_SWAP],
        ["the host tool killed during the migration", "v1.1.0", `${PAGE} && pgrep -f '[m]anage.py migrate' >/dev/null`, TOOL],
        ["the host tool killed right after the switch", "v1.0.0", `${PAGE} && ${current("v1.0.0")}`, TOOL],
        // The release booted before the window (in the hand-over unit) loses its gunicorn master inside the
        // window, before the health gate that sends users to it.
        ["gunicorn's master (the release booted for the switch) killed before its health gate", "v1.1.0",
            `${PAGE} && systemctl is-active -q jhe-next@v1.1.0`, "systemctl kill -s KILL --kill-whom=main jhe-next@v1.1.0"],
        ["PostgreSQL restarted inside the window", "v1.0.0", `${PAGE} && ! systemctl is-active -q jhe`, "systemctl restart postgresql"],
    ];
    for (const [what, target, condition, action] of inWindow) {
        it(`window: ${what} (to ${target}): a known version serves, with its data, on its own or after a re-run`, async function () {
            await scenario(`window: ${what} (to ${target})`, target, async () => {
                const before = await serving();
                await setVersion(target);
                await ssh(h, "rm -f /tmp/fault.live");
                const copies = async () => (await query<{ d: string }>(h, "SELECT datname AS d FROM pg_database WHERE datname LIKE 'jhe\\_production\\_was\\_%'")).map((r) => r.d);
                const copiesBefore = await copies();
                const { fired, upFailed } = await upWithFault(condition, action);
                assert.ok(fired, "the fault happened inside the window");
                const inMove = action.includes("/tmp/fault.live");
                if (inMove) {
                    // the snapshot: the live database still there; the swap: cut, no database under the live name
                    assert.strictEqual((await sshOk(h, "cat /tmp/fault.live")).trim(), action === CUT_SWAP ? "0" : "1", "where the kill landed");
                }
                const after = await serving().catch(() => "nothing");
                if (after === "HTTP 503") {
                    // the maintenance page answers every method with 503 and Retry-After (a POST too: clients retry)
                    const post = await request(h, "POST", "/fhir/r5/Observation", { subject: { reference: "Patient/1" } });
                    assert.deepStrictEqual([post.status, post.headers["retry-after"]], [503, "30"]);
                }
                const res = await rerun();
                assert.strictEqual(res.outputs.deployed.value.version, target);
                assert.deepStrictEqual(await query(h, "SELECT datname FROM pg_database WHERE NOT datallowconn AND datname <> 'template0'"), [],
                    "every database open to sessions again");
                if (inMove) {
                    // no stray copy: every database kept since is one the server's records name
                    const st = JSON.parse(await sshOk(h, `cat ${APP}/.jhe-upgrade/state.json`));
                    const recorded = Object.values(st.backups ?? {}).map((b) => (b as { keptDatabase?: string }).keptDatabase);
                    const stray = (await copies()).filter((d) => !copiesBefore.includes(d) && !recorded.includes(d));
                    assert.deepStrictEqual(stray, [], "copies kept but recorded nowhere");
                }
                const meanwhile = after === target ? `${target} (new)` : after === before ? `${before} (old)` : `${after} (the maintenance page)`;
                return `${action === CUT_SWAP ? "killed with no database under the live name; " : inMove ? "killed with the copy made, not recorded; " : ""}${upFailed ? "up failed" : "up succeeded"}; ` +
                    `meanwhile ${meanwhile}; re-run converged${inMove ? ", every database open again, no stray copy" : ""} (${res.outputs.downtimeSeconds.value} s downtime)`;
            });
        });
    }

    it("SSH connection dropped mid-step (pulumi killed while prepare-release runs): the step finishes on the server, the re-run converges", async function () {
        await scenario("connection dropped mid-step", "v1.1.0", async () => {
            await setVersion("v1.1.0");
            await upKilledAt(/prepare-release creating/);
            const res = await rerun();
            assert.strictEqual(res.outputs.deployed.value.version, "v1.1.0");
            return "step completed detached; converged on re-run";
        });
    });

    it("backup corrupted after writing: verification catches it before the staged copy is made from it; the old version never stops", async function () {
        await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Fault Hospital" }, true);
        await scenario("backup corrupted after writing", "v1.1.0", async () => {
            await setVersion("v1.2.0");
            await upKilledAt(/command:remote:Command backup created/);
            const dump = (await sshOk(h, "ls -1d /backups/jhe/*-v1.1.0-to-v1.2.0 | tail -n1")).trim() + "/db.dump";
            await sshOk(h, `printf 'garbage' | dd of=${dump} bs=1 seek=2000 conv=notrunc status=none`);
            const obs = await tableFingerprint(h, "core_observation");
            await stack.cancel().catch(() => undefined);
            // Caught before the staged copy is made from it: the window never opens.
            await assert.rejects(stack.up(), /fails its sha256 check: it changed after it was written.*Nothing on the server changed: v1\.1\.0 kept serving throughout/s);
            assert.strictEqual((await sshOk(h, `readlink ${APP}/current`)).trim(), "releases/v1.1.0");
            const after = await tableFingerprint(h, "core_observation");
            assert.ok(after.rows >= obs.rows, "no rows lost");
            await setVersion("v1.1.0");
            return "caught before the staged copy; refused, nothing changed";
        });
    });

    it("failing migration (v1.3.0): refused on the staged copy, v1.2.0 never stops", async function () {
        await setVersion("v1.2.0");
        await stack.up();
        await scenario("failing migration (v1.3.0)", "v1.2.0", async () => {
            await setVersion("v1.3.0");
            await assert.rejects(stack.up(), /`manage\.py migrate` of v1\.3\.0 failed on a staged copy of the database: .*IntegrityError.*Nothing on the server changed/s);
            await setVersion("v1.2.0");
            await stack.up();
            return "refused on the staged copy; nothing changed";
        });
    });

    it("release fails the health gate (v1.4.0): reverted", async function () {
        await scenario("release fails the health gate (v1.4.0)", "v1.2.0", async () => {
            // Its one migration is additive: applied while v1.2.0 serves, then v1.4.0 fails its check in the
            // hand-over unit - refused with the migration reversed, before any window.
            await setVersion("v1.4.0");
            await assert.rejects(stack.up(), /v1\.4\.0 failed its health check in the hand-over unit .*the migrations it applied were reversed \(core back to 0005_drop_aux_cache\)\. Nothing on the server changed: v1\.2\.0 kept serving throughout/s);
            assert.deepStrictEqual(await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_patient' AND column_name = 'email'"), []);
            await setVersion("v1.2.0");
            await stack.up();
            return "refused in the hand-over unit; its additive migration reversed; v1.2.0 never stopped";
        });
    });

    it("app fails to start (v1.5.0): reverted", async function () {
        await scenario("app fails to start (v1.5.0)", "v1.2.0", async () => {
            // Code only: booted in the hand-over unit, where it crashes - refused at once, v1.2.0 never stopped.
            await setVersion("v1.5.0");
            await assert.rejects(stack.up(), /v1\.5\.0 failed its health check in the hand-over unit \(jhe-next@v1\.5\.0\.service exited while starting.*Nothing on the server changed: v1\.2\.0 kept serving throughout/s);
            assert.match(await sshOk(h, "journalctl -u jhe-next@v1.5.0 --no-pager -o cat | grep -c jhe_native_accel || true"), /[1-9]/);
            await setVersion("v1.2.0");
            await stack.up();
            return "refused in the hand-over unit (it crashed starting); v1.2.0 never stopped";
        });
    });

    it("two pulumi up on one server at once: the second is refused by the host lock, naming the holder", async function () {
        const other = await projectStack(h, "v2.0.0");
        await leaveUnset(other, "JHE_FEATURE_X");
        await other.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Fault Hospital" }, true);
        try {
            await scenario("two pulumi up at once", "v2.0.0", async () => {
                await setVersion("v2.0.0");
                const first = stack.up();
                try {
                    for (let i = 0; i < 300; i++) {
                        if ((await ssh(h, `test -f ${APP}/.jhe-upgrade/lock.json`)).code === 0) break;
                        await new Promise((r) => setTimeout(r, 100));
                    }
                    await assert.rejects(other.up(), new RegExp(`the server is locked by another upgrade: stack organization/jhe/${stack.name}`));
                } finally {
                    await first;
                }
                return "second refused; first completed";
            });
        } finally {
            await removeStack(other);
        }
    });

    it("online move (v2.0.0 -> v2.1.0): the host tool killed during the migration while v2.0.0 serves; the re-run converges, no maintenance page at any point", async function () {
        await scenario("online: the host tool killed during the migration (to v2.1.0)", "v2.1.0", async () => {
            await setVersion("v2.1.0");
            // the maintenance page watched throughout: the killed up, the time between, the re-run (bounded)
            await ssh(h, "rm -f /tmp/fault.page");
            await background(h, "/tmp/page-watch.sh", `for i in $(seq 1 30000); do ${PAGE} && touch /tmp/fault.page; sleep 0.01; done\n`, 300);
            const { fired, upFailed } = await upWithFault(`! ${PAGE} && pgrep -f '[m]anage.py migrate' >/dev/null`, TOOL);
            assert.ok(fired && upFailed, `killed during the online migration (fired ${fired}), the up failed (${upFailed})`);
            assert.strictEqual(await serving(), "v2.0.0", "v2.0.0 kept serving after the kill");
            const res = await rerun().finally(() => ssh(h, "pkill -f '[p]age-watch.sh'; true"));
            const o = [res.outputs.deployed.value.version, res.outputs.migration.value.strategy, res.outputs.downtimeSeconds.value];
            assert.deepStrictEqual(o, ["v2.1.0", "online", 0]);
            assert.strictEqual((await ssh(h, "test -e /tmp/fault.page")).code, 1, "the maintenance page never went on");
            assert.deepStrictEqual(await query(h, "SELECT name FROM django_migrations WHERE app = 'core' AND name = '0006_observation_device_site'"),
                [{ name: "0006_observation_device_site" }]);
            return "killed with v2.0.0 serving, no page; re-run converged online (0 s downtime)";
        });
        // Back to v2.0.0 for what follows: an online move rolled back (its backup restored, rows written since replayed).
        await scenario("online move rolled back (to v2.0.0)", "v2.0.0", async () => {
            await setVersion("v2.0.0");
            const res = await stack.up();
            assert.deepStrictEqual(await query(h, "SELECT 1 FROM information_schema.columns WHERE table_name = 'core_observation' AND column_name = 'device'"), [],
                "v2.1.0's column gone with the backup taken before it");
            return `rolled back, ${JSON.stringify(res.outputs.rollback.value.rowsReplayed)} replayed`;
        });
    });

    it("rollback after writes (v2.0.0 -> v1.0.0): every row written since survives", async function () {
        await scenario("rollback after writes (v2.0.0 -> v1.0.0)", "v1.0.0", async () => {
            await new Promise((r) => setTimeout(r, 2000)); // writes on v2.0.0 first
            await setVersion("v1.0.0");
            const res = await stack.up();
            return `rolled back, ${JSON.stringify(res.outputs.rollback.value.rowsReplayed)} replayed`;
        });
    });

    it("config fuzz: shell metacharacters, quotes, newlines, long and non-ASCII values are rejected clearly or passed literally; nothing executes", async function () {
        const canary = "/tmp/jhe-fuzz-canary";
        const nasty = [`$(touch ${canary})`, `\`touch ${canary}\``, `a;touch ${canary}`, `'; touch ${canary}; '`, `"$(touch ${canary})"`, "émoji ✓ 日本", "x".repeat(3000)];
        for (const [i, v] of nasty.entries()) await stack.setConfig(`jhe:env.JHE_FUZZ_${i}`, { value: v }, true);
        await stack.setConfig("jhe:secretEnv.JHE_FUZZ_SECRET", { value: `$(touch ${canary})'"\`;|&`, secret: true }, true);
        await scenario("config fuzz (values passed literally)", "v1.0.0", async () => {
            await stack.up();
            return "accepted values written literally";
        });
        const env = await sshOk(h, `cat ${APP}/current/.env`);
        const parsed = await sshOk(h, `cd ${APP}/current && venv/bin/python -c 'import json, dotenv; print(json.dumps(dotenv.dotenv_values(".env")))'`);
        const values = JSON.parse(parsed);
        for (const [i, v] of nasty.entries()) assert.strictEqual(values[`JHE_FUZZ_${i}`], v, `JHE_FUZZ_${i} as JHE reads it`);
        assert.ok(env.length > 0);
        assert.strictEqual((await ssh(h, `test -e ${canary}`)).code, 1, "the canary was never created on the server");
        // Values that cannot be passed safely are refused before anything runs, naming the key.
        for (const [key, value] of [["jhe:appRoot", `/opt/x;touch ${canary}`], ["jhe:version", `v1.0.0$(touch ${canary})`], ["jhe:siteUrl", "https://a b"], ["jhe:dbName", "jhe'; DROP"], ["jhe:serviceName", "jhe\nx"]] as const) {
            const s = await projectStack(h, "v1.0.0", { [key]: { value } });
            try {
                await assert.rejects(s.preview(), new RegExp(`invalid stack configuration[\\s\\S]*${key.replace(":", ":")}`));
            } finally {
                await removeStack(s);
            }
        }
        assert.strictEqual((await ssh(h, `test -e ${canary}`)).code, 1);
        table.push({ scenario: "config fuzz (unsafe values refused)", outcome: "refused before any step, key named", acked: 0, lost: 0, seconds: 0 });
    });

    // Last: it moves PostgreSQL's data onto a small filesystem for the rest of the server's life.
    it("data directory fills up during the staged restore: refused with the directory named, the copy dropped, the old version never stops; converges once there is room", async function () {
        // The cluster on a filesystem with room for the staged copy as the plan estimates it (twice the
        // database + 300 MiB), which something else then fills while the backup is restored into the copy.
        const dbMiB = Number(await sshOk(h, "sudo -u postgres psql -tAc \"SELECT pg_database_size('jhe_production') / 1048576\"")) + 1;
        await sshOk(h, `set -e; systemctl stop postgresql
            for i in $(seq 100); do ls /var/lib/postgresql/*/main/postmaster.pid >/dev/null 2>&1 || break; sleep 0.1; done
            used=$(du -sm /var/lib/postgresql | cut -f1)
            mkdir /srv/pg-move; cp -a /var/lib/postgresql/. /srv/pg-move/
            mount -t tmpfs -o size=$((used + ${2 * dbMiB + 360}))m,mode=0755 tmpfs /var/lib/postgresql
            cp -a /srv/pg-move/. /var/lib/postgresql/; rm -rf /srv/pg-move
            systemctl start postgresql; for i in $(seq 100); do pg_isready -q && break; sleep 0.1; done`);
        await scenario("data directory fills up during the staged restore", "v1.1.0", async () => {
            await setVersion("v1.1.0");
            // Filled as pg_restore starts writing into the staged copy, leaving 1 MiB.
            const { fired, upFailed, error } = await upWithFault(
                `grep -q '"phase": "restoring"' ${APP}/.jhe-upgrade/state.json`,
                `for i in $(seq 400); do pgrep -x pg_restore >/dev/null && break; sleep 0.005; done; ${fill("/var/lib/postgresql", 1024)}`);
            assert.ok(fired && upFailed, `the disk filled during the restore (fired ${fired}) and the up failed (${upFailed})`);
            // (filled while pg_restore writes, or - a small dump restores in a blink - while the copy migrates)
            assert.match(error, /the PostgreSQL data directory \/var\/lib\/postgresql\/\d+\/main filled up while the staged copy was (restored|migrated) \(\d+ MiB free[^)]*\)\. Free space there, or set jhe:migrationStrategy to in-window/);
            // PostgreSQL may crash when it cannot write its log, and then cannot start again on a full disk:
            // the message says so and what to do, which the test then does.
            const down = /PostgreSQL crashed and has not accepted connections since \(60 s\): free space in \/var\/lib\/postgresql\/\d+\/main and start it/.test(error);
            if (!down) {
                assert.match(error, /Nothing on the server changed: v1\.0\.0 kept serving throughout/);
                assert.strictEqual(await serving(), "v1.0.0");
                assert.deepStrictEqual(await query(h, "SELECT datname FROM pg_database WHERE datname LIKE '%staged%'"), [], "the copy is dropped");
            }
            await sshOk(h, "rm -f /var/lib/postgresql/filler.*; systemctl start postgresql; for i in $(seq 100); do pg_isready -q && break; sleep 0.1; done");
            const res = await stack.up();
            assert.strictEqual(res.outputs.deployed.value.version, "v1.1.0");
            const when = /staged copy was (\w+)/.exec(error)![1];
            const crashed = down ? " (PostgreSQL crashed and stayed down until space was freed)"
                : /PostgreSQL restarted itself meanwhile/.test(error) ? " (PostgreSQL crashed and restarted itself)" : "";
            return `refused (filled while the copy was ${when}${crashed})${down ? "" : " while v1.0.0 served; copy dropped"}; with room again, up converged (${res.outputs.downtimeSeconds.value} s downtime)`;
        });
    });

    /** The server's fingerprint without core_observation, which the writer keeps changing meanwhile. */
    async function serverFingerprintStable() {
        const f = await serverFingerprint(h);
        delete (f.tables as Record<string, unknown>).core_observation;
        return f;
    }
});

function printTable() {
    if (!table.length) return;
    const lines = [
        "| scenario | outcome | acknowledged writes | lost writes (by content, every scenario so far) | writer: 503 (maintenance) / other errors | downtime the writer saw (s) | time (s) |",
        "|---|---|---|---|---|---|---|",
        ...table.map((r) => `| ${r.scenario} | ${r.outcome} | ${r.acked} | ${r.lost} | ${r.maintenance503 ?? "-"} / ${r.errors ?? "-"}${r.errors ? ` (${Object.entries(r.statuses ?? {}).map(([s, n]) => `${s === "0" ? "no answer" : s}: ${n}`).join(", ")})` : ""} | ${r.gap === undefined ? "-" : r.gap.toFixed(1)} | ${r.seconds.toFixed(1)} |`),
    ];
    const text = lines.join("\n");
    fs.mkdirSync(path.join(ROOT, ".cache"), { recursive: true });
    fs.writeFileSync(path.join(ROOT, ".cache", "faults-table.md"), text + "\n");
    console.log("\n" + text + "\n");
}
