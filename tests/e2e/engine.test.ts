// The real engine end to end: the CLI, the Node.js language host and the command provider built by
// scripts/install-engine.sh run a small TypeScript-free program through the Automation API.
import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { namesWithOp, programStack, scratchDir, stepOps } from "../helpers/engine";

const PROGRAM = `
const pulumi = require("@pulumi/pulumi");
const command = require("@pulumi/command");
const cfg = new pulumi.Config();
const stamp = new command.local.Command("stamp", {
    create: "printf 'made for %s' \\"$WHO\\"",
    environment: { WHO: cfg.require("who") },
    triggers: [cfg.require("trigger")],
});
const other = new command.local.Command("other", { create: "echo unchanged" });
exports.stamp = stamp.stdout;
exports.other = other.stdout;
`;

describe("engine (real CLI + language host + command provider)", function () {
    let stack: Stack;
    let dir: string;

    before(async function () {
        dir = scratchDir("engine");
        fs.writeFileSync(path.join(dir, "Pulumi.yaml"), "name: engine-smoke\nruntime:\n  name: nodejs\n  options:\n    typescript: false\n");
        fs.writeFileSync(path.join(dir, "package.json"), '{"name": "engine-smoke", "main": "index.js"}\n');
        fs.writeFileSync(path.join(dir, "index.js"), PROGRAM);
        stack = await programStack(dir, "smoke", path.join(dir, "state"));
        await stack.setConfig("who", { value: "jhe" });
        await stack.setConfig("trigger", { value: "1" });
    });

    after(async function () {
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it("reports a v3.27x CLI", async function () {
        const ver = stack.workspace.pulumiVersion;
        assert.match(ver, /^3\.27\d\./, `CLI version ${ver}`);
    });

    it("up runs the command and records its stdout", async function () {
        const res = await stack.up();
        assert.strictEqual(res.summary.result, "succeeded");
        assert.strictEqual(res.outputs.stamp.value, "made for jhe");
        assert.strictEqual(res.outputs.other.value, "unchanged");
    });

    it("preview after a trigger change replaces exactly that resource", async function () {
        await stack.setConfig("trigger", { value: "2" });
        const events: EngineEvent[] = [];
        await stack.preview({ onEvent: (e) => events.push(e) });
        assert.deepStrictEqual(namesWithOp(events, "replace"), ["stamp"]);
        const other = [...stepOps(events)].find(([urn]) => urn.endsWith("::other"));
        assert.deepStrictEqual(other?.[1], ["same"]);
    });

    it("destroy leaves the state empty", async function () {
        await stack.destroy();
        const state = await stack.exportStack();
        const resources = (state.deployment as { resources?: unknown[] }).resources ?? [];
        assert.strictEqual(resources.length, 0);
    });
});
