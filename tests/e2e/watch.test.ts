// The watch after the switch, on the real engine and a real server with users writing throughout: a
// version that starts failing requests a while after it passed every check is rolled back by itself,
// says so on every `up` until the stack agrees, and loses no acknowledged write; a healthy one passes.
import * as assert from "assert";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { namesWithOp, stepOps } from "../helpers/engine";
import { leaveUnset, projectStack, teardown } from "../helpers/stack";
import { HostInfo, servingVersion, sshOk, up } from "../helpers/testhost";
import { lostByContent, Writer } from "../helpers/writer";

const APP = "/opt/jupyterhealth-exchange";

describe("watch after the switch (real engine, real server, users writing)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let stack: Stack;

    before(async function () {
        h = await up("e2ewa", { legacy: "v1.0.0", patients: 20, observations: 500 });
        stack = await projectStack(h, "v1.0.0", { "jhe:watchSeconds": { value: "60" } });
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.setConfig("jhe:env.JHE_INSTANCE_NAME", { value: "Test Hospital" }, true);
        await stack.up();
    });
    after(async function () {
        await teardown(stack, h);
    });

    /** `up` with a writer at 5 writes/s from 10 s before it (the rate before the move) to its end. */
    async function upWhileWriting(): Promise<{ err?: Error; outputs?: Record<string, { value: unknown }>; report: Awaited<ReturnType<Writer["stop"]>> }> {
        const writer = new Writer(h, 1, 5, 400).start();
        await new Promise((r) => setTimeout(r, 10_000));
        try {
            const res = await stack.up();
            return { outputs: res.outputs, report: await writer.stop() };
        } catch (e) {
            return { err: e as Error, report: await writer.stop() };
        }
    }

    it("watch: a version that starts failing uploads after the switch is rolled back by itself; no acknowledged write lost", async function () {
        await stack.setConfig("jhe:version", { value: "v1.7.0" });
        const { err, report } = await upWhileWriting();
        assert.ok(err, "the up must fail");
        assert.match(err.message, /the watch after the switch to v1\.7\.0: \d+ of \d+ requests failed after the switch \([\d.]+ %\), against 0\.0 % \(0 of \d+\) before the upgrade/);
        assert.match(err.message, /Rolled back to v1\.0\.0 automatically \(as reverting jhe:version; downtime [\d.]+ s\)\. Set the version back to agree: pulumi config set jhe:version v1\.0\.0/);
        assert.strictEqual(await servingVersion(h), "v1.0.0");
        assert.ok(report.acked.length > 100, `the writer was acknowledged (${report.acked.length})`);
        assert.ok((report.statuses[500] ?? 0) > 0, `v1.7.0 failed some of the writes: ${JSON.stringify(report.statuses)}`);
        assert.deepStrictEqual(await lostByContent(h, report.ackedRows), [], "every write acknowledged on v1.7.0 was replayed into v1.0.0's database");
        const log = await sshOk(h, `cat ${APP}/UPGRADE_LOG.md`);
        assert.match(log, /## Watch: v1\.7\.0 rolled back to v1\.0\.0 - .*\n\n\*\*Performed by:\*\* .*automatically\n\n\*\*Why:\*\* \d+ of \d+ requests failed/);
    });

    it("watch: until the stack's version agrees, the next preview shows the watch again and the up says why, changing nothing", async function () {
        const events: EngineEvent[] = [];
        await stack.preview({ onEvent: (e) => events.push(e) });
        // (the watch of the first up, at v1.0.0, is still in the state: the failed replacement of it is tried again)
        assert.deepStrictEqual(namesWithOp(events, "replace"), ["watch"], JSON.stringify([...stepOps(events)].filter(([, o]) => !o.includes("same"))));
        await assert.rejects(stack.up(), /the watch rolled v1\.7\.0 back to v1\.0\.0 at .*: \d+ of \d+ requests failed.*pulumi config set jhe:version v1\.0\.0/);
        assert.strictEqual(await servingVersion(h), "v1.0.0");
        await stack.setConfig("jhe:version", { value: "v1.0.0" });
        const res = await stack.up();
        assert.match(JSON.stringify(res.outputs.watch.value), /no upgrade to watch/);
        assert.strictEqual(await servingVersion(h), "v1.0.0");
    });

    it("watch: a healthy upgrade passes it, with the rates before and after in the outputs", async function () {
        await stack.setConfig("jhe:version", { value: "v1.2.0" });
        const { err, outputs, report } = await upWhileWriting();
        assert.ifError(err);
        const w = outputs!.watch.value as { verdict: string; seconds: number; before: { requests: number; rate: number }; after: { requests: number; rate: number } };
        assert.strictEqual(w.verdict, "passed", JSON.stringify(w));
        assert.ok(w.seconds >= 59, JSON.stringify(w));
        assert.ok(w.before.requests >= 20 && w.after.requests >= 200, JSON.stringify(w));
        assert.strictEqual(w.after.rate, 0);
        assert.strictEqual(await servingVersion(h), "v1.2.0");
        assert.deepStrictEqual(await lostByContent(h, report.ackedRows), []);
    });
});
