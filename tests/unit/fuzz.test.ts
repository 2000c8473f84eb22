// Config fuzz without a server: every string setting with shell metacharacters, quotes, newlines,
// very long and non-ASCII values is either refused with an error naming the key, or accepted and
// then never reaches a command line (only the tool's stdin, as JSON).
import * as assert from "assert";
import * as pulumi from "@pulumi/pulumi";
import { ConfigError, validateConfig } from "../../components/config";
import { installFile, privileged, toolStep } from "../../components/commands";
import { renderSite } from "../../components/nginx";
import { renderUnit } from "../../components/systemd";

const BASE = {
    version: "v1.1.0", host: "10.1.2.3", sshHostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 h", siteUrl: "https://jhe.example.org",
};
const STRING_KEYS = ["version", "stage", "host", "sshUser", "sshHostKey", "appRoot", "appUser", "appGroup", "serviceName", "backupDir",
    "repoUrl", "siteUrl", "dbName", "dbUser", "backupBucket", "tlsCertificate", "tlsKey", "wheelhouse", "adminUser", "adminEmail"];
const NASTY = [
    "$(touch /tmp/canary)", "`touch /tmp/canary`", "a;touch /tmp/canary", "a|b", "a&&b", "'quoted'", '"dq"', "new\nline", "cr\rx",
    "nul\0x", "back\\slash", "*", "~", "-rf", "--help", "émoji ✓ 日本", "x".repeat(5000), "${IFS}", "a b", "/opt/../etc", "%s%n",
];

describe("config fuzz", function () {
    for (const key of STRING_KEYS) {
        it(`jhe:${key}: hostile values are refused naming the key, or kept off every command line`, function () {
            for (const v of NASTY) {
                let cfg;
                try {
                    cfg = validateConfig({ ...BASE, [key]: v, ...(key === "adminUser" ? {} : {}) }, { sshPrivateKey: pulumi.output("k"), adminPassword: pulumi.output("p") });
                } catch (e) {
                    assert.ok(e instanceof ConfigError, `${key}=${JSON.stringify(v.slice(0, 20))}: ${e}`);
                    assert.ok(e.problems.some((p) => p.includes(`jhe:${key}`)), `the error names jhe:${key}: ${e.message}`);
                    continue;
                }
                // Accepted: it must not reach any command text the program builds from config.
                const commands = [
                    toolStep(cfg.ssh.user, "preflight"),
                    privileged(cfg.ssh.user, "true"),
                    installFile(cfg.ssh.user, { path: `/etc/systemd/system/${cfg.layout.serviceName}.service`, mode: "0644" }),
                ].join("\n");
                for (const bad of ["touch /tmp/canary", "\n" + "x".repeat(100), "`"]) {
                    if (v.includes(bad)) assert.ok(!commands.includes(bad), `${key}=${JSON.stringify(v.slice(0, 20))} reached a command line`);
                }
                // Rendered files carry only validated values: no newline or quote can break out of a directive.
                const unit = renderUnit({ appRoot: cfg.layout.appRoot, appUser: cfg.layout.appUser, appGroup: cfg.layout.appGroup, serviceName: cfg.layout.serviceName });
                const site = renderSite({ appRoot: cfg.layout.appRoot, serviceName: cfg.layout.serviceName, serverName: new URL(cfg.siteUrl).hostname, tlsCertificate: cfg.tls.certificate, tlsKey: cfg.tls.key });
                for (const text of [unit, site]) assert.ok(!/[`$;]\(|touch \/tmp\/canary/.test(text), `${key} broke into a rendered file`);
            }
        });
    }

    it("jhe:env values: NUL and ${...} are refused; anything else (newlines too) is accepted as data", function () {
        for (const v of NASTY) {
            try {
                const c = validateConfig({ ...BASE, env: { JHE_NOTE: v } }, { sshPrivateKey: pulumi.output("k") });
                assert.strictEqual(c.env.JHE_NOTE, v);
                assert.ok(!v.includes("\0") && !v.includes("${"), `accepted ${JSON.stringify(v)}`);
            } catch (e) {
                assert.ok(e instanceof ConfigError);
                assert.ok(e.problems.some((p) => p.includes("jhe:env.JHE_NOTE")), e.message);
            }
        }
    });
});
