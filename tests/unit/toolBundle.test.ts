// The host tool's package bundled into the one file the server gets (components/toolBundle.ts): every
// module in it, deterministic, and runnable by python3 from a file and from stdin (the plan's way).
import * as assert from "assert";
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { bundleTool, TOOL_PACKAGE_DIR, toolModules } from "../../components/toolBundle";
import { sha256, toolSource } from "../../components/host";

const py = (args: string[], input = "") => spawnSync("python3", args, { input, encoding: "utf8" });

describe("host tool bundle", function () {
    let dir: string;
    beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-bundle-"))));
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    it("holds every module of host/jhe_upgrade and is the tool the program ships", function () {
        const files = fs.readdirSync(TOOL_PACKAGE_DIR).filter((f) => f.endsWith(".py") && f !== "__main__.py");
        const names = toolModules().map((m) => m.name);
        assert.strictEqual(names.length, files.length);
        for (const m of ["jhe_upgrade", "jhe_upgrade.cli", "jhe_upgrade.steps", "jhe_upgrade.envfile", "jhe_upgrade.replay"]) {
            assert.ok(names.includes(m), m);
        }
        assert.strictEqual(toolSource(), bundleTool());
        assert.strictEqual(sha256(bundleTool()), sha256(bundleTool())); // one content hash, the host-tool trigger
    });

    it("changes (and so re-installs) when any module changes, and only then", function () {
        const copy = path.join(dir, "jhe_upgrade");
        fs.cpSync(TOOL_PACKAGE_DIR, copy, { recursive: true });
        const before = bundleTool(toolModules(copy));
        fs.utimesSync(path.join(copy, "envfile.py"), new Date(0), new Date(0)); // timestamps do not matter
        assert.strictEqual(bundleTool(toolModules(copy)), before);
        fs.appendFileSync(path.join(copy, "envfile.py"), "\n# changed\n");
        assert.notStrictEqual(bundleTool(toolModules(copy)), before);
    });

    it("runs from a file and from stdin, importing every module from itself", function () {
        const file = path.join(dir, "jhe_upgrade.py");
        fs.writeFileSync(file, bundleTool());
        const usage = py([file]);
        assert.strictEqual(usage.status, 2, usage.stderr);
        assert.match(usage.stderr, /usage: .*\{status\|plan\|adopt\|preflight\|prepare\|backup\|migrate\|switch\|health\|finish\|offsite\|unlock\|superuser\|snapshot\|clone\|watch\|postgres\}/);
        // `python3 - plan --spec-b64 ...` as components/plan.ts runs it: a malformed spec is refused by name
        const plan = py(["-", "plan", "--spec-b64", Buffer.from("{}").toString("base64")], bundleTool());
        const out = JSON.parse(plan.stdout.trim().split("\n").pop() ?? "{}");
        assert.strictEqual(out.ok, false, plan.stderr);
        assert.match(out.error, /spec\.appRoot is missing or malformed/);
        // every module imports from the bundle (not from a host/ on the path), and tracebacks name its files
        const check = py(["-c", [
            "import runpy, sys, traceback",
            `runpy.run_path(${JSON.stringify(file)}, run_name="bundle")`,
            "import jhe_upgrade",
            ...toolModules().filter((m) => m.name !== "jhe_upgrade").map((m) => `import ${m.name}`),
            "mods = sorted(m for m in sys.modules if m.startswith('jhe_upgrade'))",
            "assert all(sys.modules[m].__file__.startswith('<jhe-upgrade>/') for m in mods), mods",
            "from jhe_upgrade.envfile import render_env",
            "try:\n    render_env({'K': 'a\\0b'})\nexcept ValueError:\n    tb = traceback.format_exc()",
            "print(len(mods)); print(tb)",
        ].join("\n")]);
        assert.strictEqual(check.status, 0, check.stderr);
        assert.strictEqual(Number(check.stdout.split("\n")[0]), toolModules().length);
        assert.match(check.stdout, /File "<jhe-upgrade>\/jhe_upgrade\/envfile\.py", line \d+, in render_env\n\s+raise ValueError/);
    });
});
