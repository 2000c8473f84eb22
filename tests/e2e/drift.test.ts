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
        assert.strictEqual(await sshOk(h, `cat ${APP}/current/.env`), env, "the hand edit is gone, not kept under the stack's settings");
        const after = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(after), [], after.stdout.slice(-3000));
        assert.doesNotMatch(after.stdout, /what\s*:\s*"(unit|\.env)"/);
        // A drop-in over the stack's unit is told, and left to the operator (the preview shows no change for it).
        await sshOk(h, "mkdir -p /etc/systemd/system/jhe.service.d && printf '[Service]\\nEnvironment=X=1\\n' > /etc/systemd/system/jhe.service.d/override.conf");
        const dropin = await stack.preview({ diff: true });
        assert.match(dropin.stdout, /what\s*:\s*"unit drop-in"/, dropin.stdout.slice(-3000));
        assert.match(dropin.stdout, /found\s*:\s*"override\.conf"/);
        assert.deepStrictEqual(changed(dropin), []);
        await sshOk(h, "rm -r /etc/systemd/system/jhe.service.d && systemctl daemon-reload");
    });

    it("drift: current moved by hand to the previous release shows, and up serves the stack's version again", async function () {
        await sshOk(h, `ln -sfn ${APP}/releases/v1.0.0 ${APP}/current.tmp && mv -T ${APP}/current.tmp ${APP}/current && systemctl restart jhe`);
        let serving = "";
        for (let i = 0; i < 100 && serving !== "v1.0.0"; i++) { // (bounded: 20 s for the restarted app to answer)
            serving = await servingVersion(h);
            if (serving !== "v1.0.0") await new Promise((r) => setTimeout(r, 200));
        }
        assert.strictEqual(serving, "v1.0.0");
        const pre = await stack.preview({ diff: true });
        assert.match(pre.stdout, /deployed\s*:\s*"v1\.1\.0"[\s\S]{0,200}found\s*:\s*"v1\.0\.0"|found\s*:\s*"v1\.0\.0"[\s\S]{0,400}deployed\s*:\s*"v1\.1\.0"/,
            pre.stdout.slice(-3000));
        assert.match(pre.stdout, /v1\.1\.0 serves again/);
        const rehearsals = (await stack.outputs()).rehearsals.value;
        const res = await stack.up();
        assert.strictEqual(await servingVersion(h), "v1.1.0");
        // Putting back what the stack deployed is not a move it rehearsed: staging's record stays as it was.
        assert.deepStrictEqual(res.outputs.rehearsals.value, rehearsals);
        const after = await stack.preview({ diff: true });
        assert.deepStrictEqual(changed(after), [], after.stdout.slice(-3000));
    });
});
