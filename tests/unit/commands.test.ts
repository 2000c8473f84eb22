// Command builders and rendered files, checked without a server: quoting (fuzzed with shell
// metacharacters, run for real by /bin/sh here), file installation with validation and rollback,
// and the unit/site as systemd and nginx would read them.
import * as assert from "assert";
import * as crypto from "crypto";
import { spawnSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { quote } from "shell-quote";
import { installFile, installTool, privileged, toolStep } from "../../components/commands";
import { renderSite } from "../../components/nginx";
import { fingerprint, planCommand } from "../../components/plan";
import { renderHandoverUnit, renderUnit, verifyUnit } from "../../components/systemd";

const sh = (cmd: string, stdin = "") => spawnSync("/bin/sh", ["-c", cmd], { input: stdin, encoding: "utf8" });

const NASTY = [
    "plain", "with space", "it's", 'dq"', "$(touch CANARY)", "`touch CANARY`", "a;touch CANARY", "a|touch CANARY",
    "a&&touch CANARY", "new\nline touch CANARY", "back\\slash", "*", "~root", "-n", "--help", "émoji ✓ 日本",
    "x".repeat(5000), "'; touch CANARY; '", "$HOME", "${IFS}touch${IFS}CANARY",
];

describe("command builders", function () {
    let dir: string;
    beforeEach(() => (dir = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-cmd-"))));
    afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

    it("privileged() passes any script text through intact and executes nothing of it (fuzz)", function () {
        for (const v of NASTY) {
            const canary = path.join(dir, "CANARY");
            const r = sh(`cd ${quote([dir])} && ${privileged("root", `printf %s ${quote([v])}`)}`);
            assert.strictEqual(r.status, 0, r.stderr);
            assert.strictEqual(r.stdout, v);
            assert.ok(!fs.existsSync(canary), `canary created by ${JSON.stringify(v.slice(0, 30))}`);
        }
    });

    it("privileged() goes through password-less sudo for other users and fails fast with a clear message", function () {
        const cmd = privileged("deploy", "id -u");
        assert.match(cmd, /sudo -n true/);
        assert.match(cmd, /sudo -n sh -c 'id -u'/);
        assert.doesNotMatch(cmd, /deploy/, "the message is composed on the server, not in the command text");
        // run with a sudo that wants a password: the server-side message names the user and sudo's answer
        fs.writeFileSync(path.join(dir, "sudo"), "#!/bin/sh\necho 'sudo: a password is required' >&2; exit 1\n", { mode: 0o755 });
        const r = sh(`PATH=${quote([dir])}:$PATH; ${cmd}`);
        assert.strictEqual(r.status, 1);
        assert.match(r.stderr, new RegExp(`the SSH user ${os.userInfo().username} needs password-less sudo on this server \\(sudo -n: sudo: a password is required\\)`));
        assert.strictEqual(privileged("root", "id -u"), "sh -c 'id -u'");
    });

    it("toolStep() only knows the tool's steps; installTool() writes the tool atomically", function () {
        assert.match(toolStep("root", "preflight"), /setsid sh -c .*python3 \/usr\/local\/lib\/jhe-upgrade\/jhe_upgrade\.py preflight/);
        assert.throws(() => toolStep("root", "rm -rf /" as never), /unknown step/);
        assert.match(installTool("root"), /\.tmp.*mv -f/s);
        assert.throws(() => planCommand("root", "abc;reboot"), /base64/);
    });

    it("installFile() installs, reports no change on a second run, and keeps the old file when validation fails", function () {
        const target = path.join(dir, "etc", "site.conf");
        const rec = path.join(dir, "installed");
        const ok = (v: string) => installFile("root", { path: target, mode: "0640", validate: v, onChange: `echo changed >> ${quote([dir])}/log`, recordDir: rec });
        let r = sh(ok("grep -q good " + quote([target])), "good v1\n");
        assert.strictEqual(r.status, 0, r.stderr);
        assert.strictEqual(r.stdout.trim(), '{"changed":true}');
        assert.strictEqual(fs.readFileSync(target, "utf8"), "good v1\n");
        assert.strictEqual((fs.statSync(target).mode & 0o777).toString(8), "640");
        r = sh(ok("grep -q good " + quote([target])), "good v1\n");
        assert.strictEqual(r.stdout.trim(), '{"changed":false}');
        r = sh(ok("grep -q good " + quote([target])), "bad v2\n");
        assert.notStrictEqual(r.status, 0);
        assert.match(r.stderr, /does not validate, the previous file was kept/);
        assert.strictEqual(fs.readFileSync(target, "utf8"), "good v1\n");
        assert.strictEqual(fs.readFileSync(path.join(dir, "log"), "utf8"), "changed\n", "onChange ran once");
        // What was installed is recorded (the plan tells a hand edit by it), the kept file's, not the refused one's.
        const sha = crypto.createHash("sha256").update("good v1\n").digest("hex");
        assert.strictEqual(fs.readFileSync(path.join(rec, `${target.replace(/\//g, "_")}.sha256`), "utf8").trim(), sha);
    });

    it("installFile() puts the previous file back when applying the new one fails", function () {
        const target = path.join(dir, "unit");
        fs.writeFileSync(target, "old\n");
        const r = sh(installFile("root", { path: target, mode: "0644", onChange: `grep -q old ${quote([target])}`, recordDir: path.join(dir, "installed") }), "new\n");
        assert.notStrictEqual(r.status, 0);
        assert.match(r.stderr, /the previous file is back in place/);
        assert.strictEqual(fs.readFileSync(target, "utf8"), "old\n");
    });

    it("installFile() refuses unsafe paths and modes", function () {
        for (const p of ["relative", "/etc/../root", "/tmp/a b", "/tmp/$(x)", "/tmp/a;b", "/tmp/'q"]) {
            assert.throws(() => installFile("root", { path: p, mode: "0644" }), /unsafe path/, p);
        }
        assert.throws(() => installFile("root", { path: "/tmp/x", mode: "777; rm" }), /bad mode/);
    });
});

describe("rendered unit and site", function () {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-render-"));
    after(() => fs.rmSync(dir, { recursive: true, force: true }));
    const unitArgs = { appRoot: "/opt/jupyterhealth-exchange", appUser: "jheapp", appGroup: "www-data", serviceName: "jhe" };

    it("the unit runs gunicorn from `current` as the app user, hardened", function () {
        const u = renderUnit(unitArgs);
        assert.match(u, /^User=jheapp$/m);
        assert.match(u, /^WorkingDirectory=\/opt\/jupyterhealth-exchange\/current$/m);
        assert.match(u, /^ExecStart=\/opt\/jupyterhealth-exchange\/current\/venv\/bin\/gunicorn jhe\.wsgi:application --bind 127\.0\.0\.1:8000/m);
        for (const h of ["NoNewPrivileges=yes", "ProtectSystem=strict", "PrivateTmp=yes", "ProtectHome=yes", "CapabilityBoundingSet="]) {
            assert.ok(u.split("\n").includes(h), h);
        }
    });

    it("systemd-analyze verifies the unit and rates its exposure low", function () {
        const file = path.join(dir, "jhe.service");
        fs.writeFileSync(file, renderUnit(unitArgs));
        const v = sh(verifyUnit(file));
        assert.strictEqual(v.status, 0, v.stdout + v.stderr);
        const sec = spawnSync("systemd-analyze", ["security", "--offline=true", file], { encoding: "utf8" });
        const m = /Overall exposure level for jhe\.service: ([\d.]+)/.exec(sec.stdout + sec.stderr);
        assert.ok(m, sec.stdout + sec.stderr);
        assert.ok(Number(m![1]) <= 2.0, `exposure ${m![1]}`);
    });

    it("the hand-over unit runs a given release on its own port, as hardened, and never at boot", function () {
        const u = renderHandoverUnit(unitArgs);
        assert.match(u, /^WorkingDirectory=\/opt\/jupyterhealth-exchange\/releases\/%I$/m);
        assert.match(u, /^ExecStart=\/opt\/jupyterhealth-exchange\/releases\/%I\/venv\/bin\/gunicorn jhe\.wsgi:application --bind 127\.0\.0\.1:8001 /m);
        assert.match(u, /^ReadWritePaths=\/opt\/jupyterhealth-exchange\/releases\/%I\/$/m);
        assert.doesNotMatch(u, /\[Install\]|WantedBy=/);
        // The same service otherwise: every line but the release's path, port, description and [Install].
        const same = (t: string) => t.split("\n").filter((l) => !/current|%I|--bind|^Description=|^\[Install\]|^WantedBy=|^$/.test(l));
        assert.deepStrictEqual(same(u), same(renderUnit(unitArgs)));
        const file = path.join(dir, "jhe-next@.service");
        fs.writeFileSync(file, u);
        const v = sh(verifyUnit(file));
        assert.strictEqual(v.status, 0, v.stdout + v.stderr);
    });

    it("verifyUnit() fails on a broken unit", function () {
        const file = path.join(dir, "broken.service");
        fs.writeFileSync(file, "[Service]\nExecStart=relative/path\nType=nonsense\n");
        assert.notStrictEqual(sh(verifyUnit(file)).status, 0);
    });

    it("the site has TLS >= 1.2, HSTS, static files from `current` and a maintenance switch", function () {
        const s = renderSite({ appRoot: "/opt/jupyterhealth-exchange", serviceName: "jhe", serverName: "jhe.example.org", tlsCertificate: "/etc/ssl/jhe/jhe.crt", tlsKey: "/etc/ssl/jhe/jhe.key" });
        assert.match(s, /ssl_protocols TLSv1\.2 TLSv1\.3;/);
        assert.match(s, /Strict-Transport-Security/);
        assert.match(s, /alias \/opt\/jupyterhealth-exchange\/current\/staticfiles\/;/);
        assert.match(s, /if \(-f \/var\/lib\/jhe-upgrade\/jhe\/maintenance-on\) \{\s*set \$jhe_maintenance "on";/);
        // the smoke tests pass the page only with a header naming a file the upgrade made (32 hex digits: no path)
        assert.match(s, /if \(\$http_x_jhe_smoke_test ~ "\^\(\[0-9a-f\]\{32\}\)\$"\) \{\s*set \$jhe_smoke \$1;/);
        assert.match(s, /if \(-f \/var\/lib\/jhe-upgrade\/jhe\/smoke-\$jhe_smoke\) \{\s*set \$jhe_maintenance "";\s*\}\s*if \(\$jhe_maintenance\) \{\s*return 503;/);
        // the hand-over: a flag file sends requests to the release booted for the switch, per request
        assert.match(s, /set \$jhe_backend 127\.0\.0\.1:8000;\s*if \(-f \/var\/lib\/jhe-upgrade\/jhe\/next-on\) \{\s*set \$jhe_backend 127\.0\.0\.1:8001;\s*\}\s*proxy_pass http:\/\/\$jhe_backend;/);
        assert.match(s, /return 301 https:\/\/\$host\$request_uri;/);
        assert.match(s, /server_name jhe\.example\.org;/);
    });
});

describe("host key fingerprints (components/plan.ts)", function () {
    it("match ssh-keygen -l for each key type a server has", function () {
        const dir = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-fp-"));
        try {
            for (const t of ["ed25519", "ecdsa", "rsa"]) {
                spawnSync("ssh-keygen", ["-q", "-t", t, "-N", "", "-f", path.join(dir, t)]);
                const line = fs.readFileSync(path.join(dir, `${t}.pub`), "utf8");
                const [bits, sha, , type] = spawnSync("ssh-keygen", ["-lf", path.join(dir, `${t}.pub`)], { encoding: "utf8" }).stdout.trim().split(" ");
                assert.ok(Number(bits) > 0);
                assert.deepStrictEqual(fingerprint(line), { type: line.split(" ")[0], sha256: sha }, `${t} ${type}`);
            }
        } finally {
            fs.rmSync(dir, { recursive: true, force: true });
        }
    });
});
