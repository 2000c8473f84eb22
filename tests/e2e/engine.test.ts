// The real engine end to end: the CLI, the Node.js language host and the command provider built by
// scripts/install-engine.sh run a small TypeScript-free program through the Automation API.
import * as assert from "assert";
import { spawnSync } from "child_process";
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { EngineEvent, Stack } from "@pulumi/pulumi/automation";
import { engineEnv, namesWithOp, programStack, ROOT, scratchDir, stepOps, TOOLS } from "../helpers/engine";

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

describe("the pulumi CLI called directly in the project (not through npm run pulumi)", function () {
    this.timeout(300_000);
    let dir: string;
    let env: NodeJS.ProcessEnv;
    const cli = (...args: string[]) => {
        const t0 = Date.now();
        const r = spawnSync(path.join(TOOLS, "bin", "pulumi"), [...args, "--non-interactive"], { cwd: dir, env, encoding: "utf8" });
        assert.strictEqual(r.status, 0, `pulumi ${args.join(" ")}: ${r.stdout}\n${r.stderr}`);
        return { out: r.stdout, seconds: (Date.now() - t0) / 1000 };
    };

    before(function () {
        // A copy of the project's program (sources only, no bin/), inside the project so node_modules resolves.
        dir = scratchDir("direct-cli");
        for (const f of ["Pulumi.yaml", "package.json", "pulumi-main.js", "tsconfig.json", "tsconfig.program.json", "index.ts"]) {
            fs.copyFileSync(path.join(ROOT, f), path.join(dir, f));
        }
        fs.cpSync(path.join(ROOT, "components"), path.join(dir, "components"), { recursive: true });
        fs.cpSync(path.join(ROOT, "host", "jhe_upgrade"), path.join(dir, "host", "jhe_upgrade"), { recursive: true });
        env = { ...process.env, ...engineEnv(path.join(dir, "state")), JHE_UPGRADE_OFFLINE_PLAN: "1" };
        cli("stack", "init", "direct");
        const key = crypto.generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
        for (const [k, v] of [["jhe:version", "v1.0.0"], ["jhe:host", "127.0.0.1"], ["jhe:siteUrl", "https://direct.jhe.test"],
            ["jhe:sshHostKey", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 h"], ["jhe:tlsSelfSigned", "true"]]) cli("config", "set", k, v);
        const r = spawnSync(path.join(TOOLS, "bin", "pulumi"), ["config", "set", "--secret", "jhe:sshPrivateKey"], { cwd: dir, env, input: key, encoding: "utf8" });
        assert.strictEqual(r.status, 0, r.stderr);
    });
    after(function () {
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
    });

    it("config set compiles nothing and returns at once", function () {
        const { seconds } = cli("config", "set", "jhe:healthTimeoutSeconds", "30");
        assert.ok(!fs.existsSync(path.join(dir, "bin")), "config set built the program");
        assert.ok(seconds < 5, `config set took ${seconds} s`);
    });

    it("preview runs the current sources: an edit of index.ts shows in the next preview", function () {
        const first = cli("preview", "--diff");
        assert.ok(fs.existsSync(path.join(dir, "bin", "index.js")), "the program was compiled by pulumi-main.js");
        assert.doesNotMatch(first.out, /probe/);
        const mark = `edited-${crypto.randomBytes(4).toString("hex")}`;
        fs.appendFileSync(path.join(dir, "index.ts"), `export const probe = "${mark}";\n`);
        const second = cli("preview", "--diff");
        assert.match(second.out, new RegExp(`probe\\s*:\\s*"${mark}"`), second.out);
    });
});
