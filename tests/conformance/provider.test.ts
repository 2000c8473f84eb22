// What the program relies on from the command provider, stated as tests, each citing the file of the
// official pulumi-command v1.2.1 (github.com/pulumi/pulumi-command, provider/pkg/provider/...) or of
// pulumi-go-provider v1.3.0 / x/crypto it mirrors. Run here against our engine/command; run against
// the official plugin by pointing JHE_CONFORMANCE_PULUMI_HOME at a PULUMI_HOME that has it installed
// (README, "Conformance"). Inline Automation API programs against one test server with the host keys
// a stock Debian server has (RSA, ECDSA, Ed25519) and a stock sshd_config (AcceptEnv LANG LC_*).
import * as assert from "assert";
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import * as command from "@pulumi/command";
import { EngineEvent, LocalWorkspace, Stack } from "@pulumi/pulumi/automation";
import { engineEnv, pulumiCommand, scratchDir, stepOps } from "../helpers/engine";
import { down, HostInfo, leftovers, sshOk, up } from "../helpers/testhost";

type Inputs = Omit<command.remote.CommandArgs, "connection">;
interface Case { name: string; args: Inputs; hostKey?: string; opts?: pulumi.CustomResourceOptions; dialErrorLimit?: number }

describe("command provider conformance (official pulumi-command 1.2.1 behaviour)", function () {
    let h: HostInfo;
    let dir: string;
    let stack: Stack;
    let current: Case[] = [];
    const seen: Record<string, { stdoutKnown?: boolean }> = {};

    const program = async () => {
        const key = fs.readFileSync(h.privateKeyPath, "utf8");
        const out: Record<string, pulumi.Output<string>> = {};
        for (const c of current) {
            const cmd = new command.remote.Command(c.name, {
                ...c.args,
                connection: { host: h.address, user: "root", privateKey: pulumi.secret(key), hostKey: c.hostKey ?? h.hostKeys.ed25519,
                              dialErrorLimit: c.dialErrorLimit ?? 2, perDialTimeout: 5 },
            }, c.opts);
            seen[c.name] = {};
            cmd.stdout.apply(() => (seen[c.name].stdoutKnown = true)); // not run while stdout is unknown
            out[c.name] = cmd.stdout;
        }
        return out;
    };
    /** Runs `cases` as the whole program: up (or preview), with the engine's events. */
    async function run(cases: Case[], op: "up" | "preview" = "up"): Promise<{ events: EngineEvent[]; outputs?: Record<string, { value: unknown; secret: boolean }> }> {
        current = cases;
        const events: EngineEvent[] = [];
        if (op === "preview") {
            await stack.preview({ onEvent: (e) => events.push(e) });
            return { events };
        }
        const res = await stack.up({ onEvent: (e) => events.push(e) });
        return { events, outputs: res.outputs };
    }
    const markers = async () => (await sshOk(h, "cat /tmp/conformance-runs 2>/dev/null || true")).split("\n").filter(Boolean);
    /** What the engine reports about the resources (the inline program's own debug lines left out). */
    const diagnostics = (events: EngineEvent[]) =>
        events.flatMap((e) => (e.diagnosticEvent && (e.diagnosticEvent.severity as string) !== "debug" ? [e.diagnosticEvent] : []));

    before(async function () {
        h = await up(`conf${process.pid % 1000}`);
        dir = scratchDir("conformance");
        const home = process.env.JHE_CONFORMANCE_PULUMI_HOME;
        stack = await LocalWorkspace.createOrSelectStack(
            { stackName: "conformance", projectName: "conformance", program },
            { workDir: dir, envVars: { ...engineEnv(path.join(dir, "state")), ...(home ? { PULUMI_HOME: home } : {}) }, pulumiCommand: await pulumiCommand() },
        );
    });

    after(async function () {
        if (stack) await stack.destroy().catch(() => undefined);
        if (dir) fs.rmSync(dir, { recursive: true, force: true });
        if (h) {
            await down(h.name);
            const left = await leftovers(h);
            if (left.length) throw new Error(`test server ${h.name} left behind: ${left.join(", ")}`);
        }
    });

    // connection.go (SSHConfig): HostKeyAlgorithms = [pinned key's Type()], HostKeyCallback = FixedHostKey.
    for (const type of ["ed25519", "ecdsa"] as const) {
        it(`pinned by the server's ${type === "ed25519" ? "Ed25519" : "ECDSA"} key: connects to a server with RSA, ECDSA and Ed25519 host keys`, async function () {
            const { outputs } = await run([{ name: `pin-${type}`, hostKey: h.hostKeys[type], args: { create: "echo connected as $(id -un)" } }]);
            assert.strictEqual(outputs![`pin-${type}`].value, "connected as root");
        });
    }

    // x/crypto ssh/client.go: "ssh: host key mismatch"; connection.go (dialWithRetry): every dial error is retried,
    // then "after <limit> failed attempts: ..."; nothing runs on the server.
    it("a wrong pin (another Ed25519 key) fails with ssh's host key mismatch after the dial retries; nothing runs", async function () {
        const keyFile = path.join(dir, "other_host_key");
        execFileSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", keyFile]);
        const other = fs.readFileSync(`${keyFile}.pub`, "utf8").trim();
        await assert.rejects(run([{ name: "wrong-pin", hostKey: other, dialErrorLimit: 1, args: { create: "echo ran >> /tmp/conformance-runs" } }]),
            /after 1 failed attempts: ssh: handshake failed: ssh: host key mismatch/);
        assert.deepStrictEqual(await markers(), []);
    });

    // connection.go: an RSA key's Type() is "ssh-rsa", the only algorithm offered; OpenSSH >= 8.8 no longer accepts it.
    it("an RSA pin offers only ssh-rsa (SHA-1), which the server's OpenSSH refuses (why jhe:sshHostKey refuses RSA keys)", async function () {
        await assert.rejects(run([{ name: "rsa-pin", hostKey: h.hostKeys.rsa, dialErrorLimit: 0, args: { create: "true" } }]),
            /no common algorithm for host key/);
    });

    // commandOutputs.go (run): `fmt.Errorf("%w: running %q:\n%s", err, cmd, stdout+stderr as they came)`.
    it("a failing command's error: `Process exited with status N: running \"<command>\":` and all its output", async function () {
        const create = "echo out-$((20+1)); echo err-$((40+2)) >&2; exit 3";
        await assert.rejects(run([{ name: "fails", args: { create, logging: "none" } }]), (e: Error) => {
            assert.ok(e.message.includes(`Process exited with status 3: running ${JSON.stringify(create)}:`), e.message);
            assert.match(e.message, /out-21/); // printed by the server only: the command text holds "$((20+1))"
            assert.match(e.message, /err-42/);
            return true;
        });
    });

    // common/inputs.go: `triggers` is the only replaceOnChanges input; commandController.go (Update) runs `update`,
    // else `create`, for any other change; (Delete) runs only a `delete` command; create-before-delete.
    it("triggers replace, stdin updates in place (re-running create), and destroy runs nothing without a delete", async function () {
        const c = (trigger: string, stdin: string): Case => ({ name: "life", args: { create: "cat >/dev/null; echo run >> /tmp/conformance-runs", stdin, triggers: [trigger] } });
        await run([c("1", "a")]);
        assert.strictEqual((await markers()).length, 1);
        const pre = await run([c("1", "b")], "preview");
        assert.deepStrictEqual([...stepOps(pre.events)].find(([u]) => u.endsWith("::life"))?.[1], ["update"]);
        await run([c("1", "b")]);
        assert.strictEqual((await markers()).length, 2, "an update re-runs create");
        const rep = await run([c("2", "b")], "preview");
        assert.ok([...stepOps(rep.events)].find(([u]) => u.endsWith("::life"))?.[1].includes("replace"));
        await run([c("2", "b")]);
        assert.strictEqual((await markers()).length, 3);
        await run([]); // the resource leaves the program: deleted, and it has no delete command
        assert.strictEqual((await markers()).length, 3, "nothing ran on delete");
    });

    // infer (markComputed): on a create, outputs that do not mirror an input are unknown at preview.
    it("stdout is unknown at the preview of a create", async function () {
        await run([{ name: "unknown", args: { create: "echo hi" } }], "preview");
        assert.strictEqual(seen.unknown.stdoutKnown, undefined);
        await run([{ name: "unknown", args: { create: "echo hi" } }]);
        assert.strictEqual(seen.unknown.stdoutKnown, true);
    });

    // infer (ensureDefaultSecrets): secretness passes only to the output of the same name, so stdout is not secret
    // although stdin is; additionalSecretOutputs makes it secret.
    it("stdout is not secret because stdin is; additionalSecretOutputs makes it so", async function () {
        const { outputs } = await run([
            { name: "plain", args: { create: "cat", stdin: pulumi.secret("s3cret-in") } },
            { name: "hidden", args: { create: "cat", stdin: pulumi.secret("s3cret-in") }, opts: { additionalSecretOutputs: ["stdout"] } },
        ]);
        assert.strictEqual(outputs!.plain.secret, false);
        assert.strictEqual(outputs!.hidden.secret, true);
    });

    // commandOutputs.go (logAndWrapSetenvErr): a user variable sshd refuses is an error (after an error diagnostic);
    // stock sshd_config accepts LANG and LC_*.
    it("environment: LANG passes (AcceptEnv LANG LC_*); any other variable is refused as an error naming it", async function () {
        const { outputs } = await run([{ name: "lang", args: { create: "echo $LANG", environment: { LANG: "C.UTF-8" } } }]);
        assert.strictEqual(outputs!.lang.value, "C.UTF-8");
        await assert.rejects(run([{ name: "env", args: { create: "echo $JHE_X", environment: { JHE_X: "1" } } }]),
            /could not set environment variable "JHE_X": ssh: setenv failed/);
    });

    // commandOutputs.go: on update PULUMI_COMMAND_STDOUT/STDERR are set when not empty; a refusal is a warning only.
    it("on update, the previous output offered as PULUMI_COMMAND_STDOUT is refused by a stock sshd: a warning, the update runs", async function () {
        const c = (stdin: string, add?: boolean): Case => ({ name: "prev", args: { create: "cat", stdin, addPreviousOutputInEnv: add } });
        await run([c("one")]);
        const { events, outputs } = await run([c("two")]);
        assert.strictEqual(outputs!.prev.value, "two");
        const warn = diagnostics(events).filter((d) => d.severity === "warning" && d.message.includes("Unable to set 'PULUMI_COMMAND_STDOUT'"));
        assert.strictEqual(warn.length, 1, JSON.stringify(diagnostics(events)));
        const quiet = await run([c("three", false)]);
        assert.ok(!diagnostics(quiet.events).some((d) => d.message.includes("PULUMI_COMMAND_")), "addPreviousOutputInEnv: false sets none");
    });

    // util/util.go (LogOutput) -> InfoStatus -> host.LogStatus: each selected line is an ephemeral status message.
    it("logging: the selected streams' lines are ephemeral status messages, never permanent diagnostics", async function () {
        const create = "echo out-$((1+1)); echo err-$((2+1)) >&2";
        const both = diagnostics((await run([{ name: "logs", args: { create } }])).events);
        const has = (ds: typeof both, text: string) => ds.filter((d) => d.message.includes(text));
        assert.ok(has(both, "out-2").length >= 1 && has(both, "out-2").every((d) => d.ephemeral), JSON.stringify(both));
        assert.ok(has(both, "err-3").length >= 1 && has(both, "err-3").every((d) => d.ephemeral));
        const errOnly = diagnostics((await run([{ name: "logs", args: { create: create + "; true", logging: "stderr" } }])).events);
        assert.strictEqual(has(errOnly, "out-2").length, 0, "stdout is not streamed with logging: stderr");
        assert.ok(has(errOnly, "err-3").length >= 1);
    });
});
