// Drift: a hand-made change on the server (the unit or .env edited, `current` moved to another release)
// shows in the next preview - in the plan's drift, and as the steps and files that put it back - and
// `up` puts it back; the preview after that shows no changes.
import * as assert from "assert";
import { Stack } from "@pulumi/pulumi/automation";
import { leaveUnset, projectStack, teardown } from "../helpers/stack";
import { HostInfo, servingVersion, sshOk, up } from "../helpers/testhost";

const APP = "/opt/jupyterhealth-exchange";
const changed = (p: { changeSummary?: Record<string, number> }) =>
    Object.entries(p.changeSummary ?? {}).filter(([op, n]) => !["same", "read"].includes(op) && n).map(([op]) => op);

describe("drift: hand-made changes on the server (real engine, real server)", function () {
    this.timeout(900_000);
    let h: HostInfo;
    let stack: Stack;

    before(async function () {
        h = await up("e2edr", { legacy: "v1.0.0", patients: 5, observations: 50 });
        stack = await projectStack(h, "v1.0.0");
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.up();
        await stack.setConfig("jhe:version", { value: "v1.1.0" });
        await stack.up();
        const clean = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(clean), [], clean.stdout.slice(-2000));
    });
    after(async function () {
        await teardown(stack, h);
    });

    it("drift: an edited unit and .env show in the next preview, and up puts them back", async function () {
        const unit = await sshOk(h, "cat /etc/systemd/system/jhe.service");
        const env = await sshOk(h, `cat ${APP}/current/.env`);
        await sshOk(h, `echo 'Environment=HAND_EDIT=1' >> /etc/systemd/system/jhe.service && echo 'DEBUG=True' >> ${APP}/current/.env`);
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /what\s*:\s*"unit"/, pre.stdout.slice(-3000));
        assert.match(pre.stdout, /what\s*:\s*"\.env"/);
        assert.match(pre.stdout, /up\s*:\s*"the stack's unit is installed again \(and applied\)"/);
        assert.ok(changed(pre).length > 0, "the preview shows what up will run");
        await stack.up();
        assert.strictEqual(await sshOk(h, "cat /etc/systemd/system/jhe.service"), unit);
        assert.strictEqual(await sshOk(h, `cat ${APP}/current/.env`), env);
        const after = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(after), [], after.stdout.slice(-3000));
        assert.doesNotMatch(after.stdout, /what\s*:\s*"(unit|\.env)"/);
    });

    it("drift: current moved by hand to the previous release shows, and up serves the stack's version again", async function () {
        await sshOk(h, `ln -sfn ${APP}/releases/v1.0.0 ${APP}/current.tmp && mv -T ${APP}/current.tmp ${APP}/current && systemctl restart jhe`);
        assert.strictEqual(await servingVersion(h), "v1.0.0");
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /deployed\s*:\s*"v1\.1\.0"[\s\S]{0,200}found\s*:\s*"v1\.0\.0"|found\s*:\s*"v1\.0\.0"[\s\S]{0,400}deployed\s*:\s*"v1\.1\.0"/,
            pre.stdout.slice(-3000));
        assert.match(pre.stdout, /v1\.1\.0 serves again/);
        await stack.up();
        assert.strictEqual(await servingVersion(h), "v1.1.0");
        const after = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(after), [], after.stdout.slice(-3000));
    });
});
