// `npm run bench`: the runbook's upgrade and this program's, side by side on the same seeded server
// (two sizes), with a prober requesting /health through nginx every 100 ms. Every server runs the
// realistic fixture: the app boots and stops as slowly as the real JHE (testhost --app-timing).
// Columns: the runbook; the program; the program with a user posting observations throughout (the
// staged copy cannot be used); an additive-only release (v2.0.0 -> v2.1.0) with the writer (no window).
// Each of the program's runs gives preflight's downtime estimate beside the downtime measured. Last line:
//   downtime_ratio=<program/runbook at the larger size> downtime_s=<program> runbook_s=<runbook> rto_s=<rollback>
//   writer_ratio=<a non-additive release (v2.2.0 -> v2.3.0) with the writer/runbook> additive_downtime_s=<additive
//   release with the writer> rollback_downtime_s=<the program's rollback>
//   writer_touched_ratio=<v1.0.0 -> v1.1.0 with the writer/runbook>
// (the runbook column is v1.0.0 -> v1.1.0 on the same data; v2.3.0's ratio is against that window).
// writer_ratio: the writer posts observations, which v2.3.0's migrations leave alone, so the rows it
// writes while the copy migrates are caught up and the copy is used. writer_touched_ratio: v1.1.0's data
// migration rewrites every observation, the very table being written, so rows written meanwhile would
// miss it: the migration falls back to the window (issue 16, item 4: only touched tables force that).
// Timings are measured in one run on a shared machine: read them as ratios, not absolutes.
import * as fs from "fs";
import * as path from "path";
import { leaveUnset, projectStack, removeStack } from "../tests/helpers/stack";
import { account, Probe, Prober } from "../tests/helpers/prober";
import { lostWrites, Writer } from "../tests/helpers/writer";
import { down, ssh, sshOk, up } from "../tests/helpers/testhost";

const FROM = "v1.0.0";
const TO = "v1.1.0"; // a real migration: a new column and a data migration over every observation
const SIZES = (process.env.BENCH_SIZES ?? "10000,1000000").split(",").map(Number);
const APP_TIMING = process.env.BENCH_APP_TIMING ?? "boot=6 stop=3.5"; // the real JHE's, measured on two cores

/** Seconds from `start` until the prober first saw `version` served (after anything else). */
function timeToServe(samples: Probe[], start: number, version: string) {
    let sawOther = false;
    for (const s of samples) {
        if (s.t < start) continue;
        if (s.version !== version) sawOther = true;
        if (sawOther && s.version === version) return (s.t - start) / 1000;
    }
    return NaN;
}

const secs = (t0: number) => (Date.now() - t0) / 1000;

async function runbook(size: number) {
    const h = await up("bench-rb", { legacy: FROM, patients: 1000, observations: size, dataOnDisk: true, appTiming: APP_TIMING });
    try {
        const script = fs.readFileSync(path.join(__dirname, "..", "..", "bench", "runbook-upgrade.sh"), "utf8");
        const p = new Prober(h).start();
        await new Promise((r) => setTimeout(r, 1000));
        const t0 = Date.now();
        const r = await ssh(h, `bash -s ${TO}`, script, 3_600_000);
        const total = secs(t0);
        await new Promise((r2) => setTimeout(r2, 1000));
        const samples = await p.stop();
        if (r.code !== 0) throw new Error(`runbook failed: ${r.stderr}`);
        const sections = r.stdout.split("\n").filter((l) => l.startsWith("runbook: ") && !l.includes("window"));
        return { total, ...account(samples), sections };
    } finally {
        await down(h.name);
    }
}

/** The program's upgrade and rollback; `withWriter`: a user posts observations throughout (10/s),
 * so the staged copy cannot be used and the program falls back to backing up and migrating in the window. */
async function program(size: number, withWriter = false) {
    const h = await up(withWriter ? "bench-pw" : "bench-pg", { legacy: FROM, patients: 1000, observations: size, dataOnDisk: true, appTiming: APP_TIMING });
    const stack = await projectStack(h, FROM);
    await leaveUnset(stack, "JHE_FEATURE_X"); // new in v1.1.0's env example; the app does without it
    try {
        await stack.up(); // adoption: not part of the measured upgrade
        let t0 = Date.now();
        await stack.preview();
        const previewSame = secs(t0);
        await stack.setConfig("jhe:version", { value: TO });
        t0 = Date.now();
        await stack.preview();
        const previewChange = secs(t0);
        // A plain dump of the same database, for the backup's throughput.
        const plain = await sshOk(h, `cd /tmp && s=$(date +%s.%N); sudo -u postgres pg_dump -Fc jhe_production > /dev/null; e=$(date +%s.%N); ` +
            `awk -v a=$s -v b=$e 'BEGIN{print b-a}'; sudo -u postgres psql -tAc "SELECT pg_database_size('jhe_production')"`);
        const [plainDump, dbBytes] = plain.trim().split("\n").map(Number);

        let p = new Prober(h).start();
        const writer = withWriter ? new Writer(h).start() : undefined;
        await new Promise((r) => setTimeout(r, 1000));
        t0 = Date.now();
        const res = await stack.up();
        const total = secs(t0);
        await new Promise((r) => setTimeout(r, 1000));
        const upSamples = await p.stop();
        const written = writer ? await writer.stop() : undefined;
        const lost = written ? (await lostWrites(h, written.acked)).length : 0;
        if (lost) throw new Error(`${lost} acknowledged writes lost`);
        const migration = res.outputs.migration.value as { strategy: string; staged: Record<string, number> | null; writtenSinceBackup: string[] | null };
        const steps = res.outputs.stepSeconds.value as Record<string, number>;
        const backupSeconds = steps.backup;

        // Rollback: revert the version; RTO = until the old version serves again.
        await stack.setConfig("jhe:version", { value: FROM });
        p = new Prober(h).start();
        await new Promise((r) => setTimeout(r, 1000));
        t0 = Date.now();
        const rb = await stack.up();
        const rbTotal = secs(t0);
        await new Promise((r) => setTimeout(r, 1000));
        const rbSamples = await p.stop();
        const lostInRollback = written ? (await lostWrites(h, written.acked)).length : 0;
        if (lostInRollback) throw new Error(`${lostInRollback} acknowledged writes lost in the rollback`);
        const later = withWriter ? await additive(h, stack) : undefined;
        return {
            total, ...account(upSamples), steps, backupSeconds, plainDump, dbBytes, previewSame, previewChange, migration,
            writes: written ? written.acked.length : 0, writerFailed: written?.errors ?? 0, writer503: written?.maintenance503 ?? 0, window: res.outputs.window.value as Window,
            rollback: { total: rbTotal, rto: timeToServe(rbSamples, t0, FROM), ...account(rbSamples), replayed: rb.outputs.rollback.value?.rowsReplayed,
                window: rb.outputs.window.value as Window },
            additive: later?.additive, otherTables: later?.otherTables,
        };
    } finally {
        await removeStack(stack);
        await down(h.name);
    }
}

interface Window { path: string; windowSeconds: number; estimatedSeconds: number | null; snapshotSeconds?: number; migrateSeconds?: number; switchSeconds?: number }

/** The additive-only release with the writer: v2.0.0 first (not measured), then v2.0.0 -> v2.1.0 (a
 * nullable column, a new table, an index built concurrently) while a user posts 10 observations a second.
 * Then v2.2.0 (not measured) and v2.2.0 -> v2.3.0 with the writer: not additive, on tables other than
 * the observations the writer adds (caught up in the staged copy). */
async function additive(h: Awaited<ReturnType<typeof up>>, stack: Awaited<ReturnType<typeof projectStack>>) {
    await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Bench Hospital" }, true);
    await stack.setConfig("jhe:version", { value: "v2.0.0" });
    await stack.up();
    const additiveRun = await withWriter(h, stack, "v2.1.0");
    await stack.setConfig("jhe:version", { value: "v2.2.0" });
    await stack.up();
    return { additive: additiveRun, otherTables: await withWriter(h, stack, "v2.3.0") };
}

async function withWriter(h: Awaited<ReturnType<typeof up>>, stack: Awaited<ReturnType<typeof projectStack>>, version: string) {
    await stack.setConfig("jhe:version", { value: version });
    const p = new Prober(h).start();
    const writer = new Writer(h).start();
    await new Promise((r) => setTimeout(r, 1000));
    const t0 = Date.now();
    const res = await stack.up();
    const total = secs(t0);
    await new Promise((r) => setTimeout(r, 1000));
    const samples = await p.stop();
    const w = await writer.stop();
    const lost = (await lostWrites(h, w.acked)).length;
    if (lost) throw new Error(`${lost} acknowledged writes lost in ${version}`);
    const m = res.outputs.migration.value;
    return { total, ...account(samples), failed: w.errors, maintenance503: w.maintenance503, writes: w.acked.length,
        strategy: m.strategy === "staged" && m.staged?.caughtUp ? `staged, rows caught up: ${Object.entries(m.staged.caughtUp).map(([t, n]) => `${t} ${n}`).join(", ")}` :
            describe(m), window: res.outputs.window.value as Window };
}

const est = (w: Window | undefined) => w ? `${w.estimatedSeconds ?? "-"} / ${w.windowSeconds.toFixed(2)}` : "-";

async function main() {
    const rows: string[] = [];
    let last: { ratio: number; program: number; runbook: number; rto: number; writerRatio: number; additive: number; rollback: number; otherRatio: number } | undefined;
    for (const size of SIZES) {
        console.error(`bench: ${size} observations: runbook ...`);
        const rb = await runbook(size);
        console.error(`bench: ${size} observations: program ...`);
        const pg = await program(size);
        console.error(`bench: ${size} observations: program with a writer ...`);
        const pw = await program(size, true);
        const ratio = pg.downtime / rb.downtime;
        const writerRatio = pw.downtime / rb.downtime;
        const ad = pw.additive!;
        const ot = pw.otherTables!;
        const otherRatio = ot.downtime / rb.downtime;
        const st = pg.migration.staged;
        rows.push(
            `#### ${size.toLocaleString("en")} observations (database ${(pg.dbBytes / 2 ** 20).toFixed(0)} MiB; app boot/stop as the real JHE's: ${APP_TIMING})`,
            "",
            "| measure | runbook | jhe-upgrade | ratio | jhe-upgrade, writer posting 10/s to the table the migration rewrites (ratio) | additive-only release (v2.0.0 -> v2.1.0), writer posting 10/s | not additive, other tables (v2.2.0 -> v2.3.0), writer posting 10/s (ratio) |",
            "|---|---|---|---|---|---|---|",
            `| user-visible downtime (503 + errors), s | ${rb.downtime.toFixed(2)} | ${pg.downtime.toFixed(2)} | ${ratio.toFixed(3)} | ${pw.downtime.toFixed(2)} (${writerRatio.toFixed(3)}) | ${ad.downtime.toFixed(2)} | ${ot.downtime.toFixed(2)} (${otherRatio.toFixed(3)}) |`,
            `| of which maintenance 503, s | ${rb.maintenance.toFixed(2)} | ${pg.maintenance.toFixed(2)} | | ${pw.maintenance.toFixed(2)} | ${ad.maintenance.toFixed(2)} | ${ot.maintenance.toFixed(2)} |`,
            `| of which errors / refused, s | ${rb.unavailable.toFixed(2)} | ${pg.unavailable.toFixed(2)} | | ${pw.unavailable.toFixed(2)} | ${ad.unavailable.toFixed(2)} | ${ot.unavailable.toFixed(2)} |`,
            `| downtime estimated by preflight / measured window, s | | ${est(pg.window)} | | ${est(pw.window)} | ${est(ad.window)} | ${est(ot.window)} |`,
            `| how the migration ran | in the window | ${describe(pg.migration)} | | ${describe(pw.migration)} | ${ad.strategy} | ${ot.strategy} |`,
            `| the window's parts: snapshot / migration / switch, s | | ${parts(pg.window)} | | ${parts(pw.window)} | ${parts(ad.window)} | ${parts(ot.window)} |`,
            `| writer: failed requests / 503s / acknowledged | | | | ${pw.writerFailed} / ${pw.writer503} / ${pw.writes} | ${ad.failed} / ${ad.maintenance503} / ${ad.writes} | ${ot.failed} / ${ot.maintenance503} / ${ot.writes} |`,
            `| whole upgrade (command / pulumi up), s | ${rb.total.toFixed(1)} | ${pg.total.toFixed(1)} | ${(pg.total / rb.total).toFixed(2)} | ${pw.total.toFixed(1)} | ${ad.total.toFixed(1)} | ${ot.total.toFixed(1)} |`,
            `| rollback to serving ${FROM} (RTO), s | (manual) | ${pg.rollback.rto.toFixed(2)} | | ${pw.rollback.rto.toFixed(2)} | | |`,
            `| rollback downtime, s | | ${pg.rollback.downtime.toFixed(2)} | | ${pw.rollback.downtime.toFixed(2)} | | |`,
            `| rollback: estimated / measured window, s | | ${est(pg.rollback.window)} | | ${est(pw.rollback.window)} | | |`,
            `| backup step (pg_dump -Fc -Z1, sha256, pg_restore --list), s | | ${pg.backupSeconds.toFixed(2)} before the window | vs plain \`pg_dump -Fc > /dev/null\` ${pg.plainDump.toFixed(2)} s: ${(pg.backupSeconds / pg.plainDump).toFixed(2)} | ${pw.backupSeconds.toFixed(2)} + a snapshot copy in the window (dumped by finish: ${pw.steps.finish} s) |`,
            `| backup throughput, MiB/s of database | | ${(pg.dbBytes / 2 ** 20 / pg.backupSeconds).toFixed(0)} | plain dump ${(pg.dbBytes / 2 ** 20 / pg.plainDump).toFixed(0)} | |`,
            `| staged copy: restore / migrate (before the window), s | | ${st ? `${st.restoreSeconds} / ${st.migrateSeconds}` : "-"} | | |`,
            `| pulumi preview, no change / version change, s | | ${pg.previewSame.toFixed(1)} / ${pg.previewChange.toFixed(1)} | | |`,
            "",
            "runbook sections: " + rb.sections.map((l) => l.replace(/^runbook: /, "").replace(/\s+/g, " ").trim()).join("; "),
            "",
            "jhe-upgrade steps (s): " + Object.entries(pg.steps).map(([k, v]) => `${k} ${v}`).join(", "),
            "",
            "jhe-upgrade with a writer, steps (s): " + Object.entries(pw.steps).map(([k, v]) => `${k} ${v}`).join(", "),
            "",
        );
        last = { ratio, program: pg.downtime, runbook: rb.downtime, rto: pg.rollback.rto, writerRatio, additive: ad.downtime, rollback: pg.rollback.downtime, otherRatio };
        console.error(`bench: ${size}: downtime ratio ${ratio.toFixed(3)}`);
    }
    const text = rows.join("\n");
    fs.mkdirSync(path.join(__dirname, "..", "..", ".cache"), { recursive: true });
    fs.writeFileSync(path.join(__dirname, "..", "..", ".cache", "bench-table.md"), text + "\n");
    console.log(text);
    if (last) {
        console.log(`downtime_ratio=${last.ratio.toFixed(3)} downtime_s=${last.program.toFixed(2)} runbook_s=${last.runbook.toFixed(2)} rto_s=${last.rto.toFixed(2)} ` +
            `writer_ratio=${last.otherRatio.toFixed(3)} additive_downtime_s=${last.additive.toFixed(2)} rollback_downtime_s=${last.rollback.toFixed(2)} ` +
            `writer_touched_ratio=${last.writerRatio.toFixed(3)}`);
    }
}

function parts(w: Window | undefined): string {
    if (!w) return "-";
    const f = (x: number | undefined | null) => (x === undefined || x === null ? "-" : x.toFixed(2));
    return `${f(w.snapshotSeconds)} / ${w.path === "in-window" ? f(w.migrateSeconds) : "-"} / ${f(w.switchSeconds)} (${w.path})`;
}

function describe(m: { strategy: string; writtenSinceBackup: string[] | null }): string {
    if (m.strategy !== "staged") return m.strategy;
    return m.writtenSinceBackup ? `staged, fell back to the window (written: ${m.writtenSinceBackup.join(", ")})` : "on a staged copy, swapped in";
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
