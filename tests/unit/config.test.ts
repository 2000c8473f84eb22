import * as assert from "assert";
import * as pulumi from "@pulumi/pulumi";
import { problems as configProblems } from "../helpers/config";
import { ConfigError, releaseId, validateConfig, RawConfig, SecretInputs } from "../../components/config";

const good: RawConfig = {
    version: "v1.1.0",
    host: "10.77.0.2",
    sshHostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 host",
    siteUrl: "https://jhe.example.org",
};
const secrets: SecretInputs = { sshPrivateKey: pulumi.output("KEY") };

const problems = (raw: RawConfig, s: SecretInputs = secrets) => configProblems(raw, s);

describe("config validation", function () {
    it("accepts a minimal stack and fills the runbook's defaults", function () {
        const c = validateConfig(good, secrets);
        assert.strictEqual(c.layout.appRoot, "/opt/jupyterhealth-exchange");
        assert.strictEqual(c.layout.appUser, "jheapp");
        assert.strictEqual(c.layout.appGroup, "www-data");
        assert.strictEqual(c.layout.serviceName, "jhe");
        assert.strictEqual(c.db.name, "jhe_production");
        assert.strictEqual(c.db.user, "jheuser");
        assert.strictEqual(c.layout.backupDir, "/backups/jhe");
        assert.strictEqual(c.repoUrl, "/opt/jupyterhealth-exchange/repo.git");
        assert.strictEqual(c.ssh.port, 22);
        assert.deepStrictEqual(c.backupBucket, { mode: "off" });
    });

    it("the smoke-test account: a login and a secret password, an account of its own; the upload and invitation only with what they need", function () {
        const pw = { ...secrets, smokeTestPassword: pulumi.secret("pw") };
        assert.match(problems({ ...good, smokeTestUser: "smoke@example.org" }).join("\n"), /jhe:smokeTestPassword is required with jhe:smokeTestUser: `pulumi config set --secret jhe:smokeTestPassword`/);
        assert.match(problems({ ...good, smokeTestCreate: "true" }, pw).join("\n"), /need jhe:smokeTestUser/);
        assert.match(problems({ ...good, smokeTestUser: "a@example.org", adminEmail: "a@example.org" }, { ...pw, adminPassword: pulumi.secret("x") }).join("\n"),
            /jhe:smokeTestUser must be an account of its own, not the superuser's/);
        assert.match(problems({ ...good, smokeTestUser: "s@example.org", smokeTestObservation: { code: "x" } }, pw).join("\n"),
            /jhe:smokeTestObservation must be a FHIR Observation/);
        assert.match(problems({ ...good, smokeTestUser: "s@example.org", smokeTestInvitation: [1] }, pw).join("\n"), /jhe:smokeTestInvitation must be an object/);
        const c = validateConfig({ ...good, smokeTestUser: "s@example.org", smokeTestCreate: "true",
            smokeTestObservation: { resourceType: "Observation" }, smokeTestInvitation: { client_id: 3 } }, pw);
        assert.deepStrictEqual({ ...c.smokeTest, password: undefined },
            { user: "s@example.org", password: undefined, create: true, observation: { resourceType: "Observation" }, invitation: { client_id: 3 } });
        assert.strictEqual(validateConfig(good, secrets).smokeTest, undefined);
    });

    it("jhe:pins and jhe:python: exact versions and an interpreter's name, the release named after them", function () {
        const c = validateConfig({ ...good, version: "v1.2.0", pins: { Django: "5.2.19", "psycopg2-binary": "2.9.13" }, python: "python3.13" }, secrets);
        assert.deepStrictEqual([c.tag, c.version, c.python], ["v1.2.0", "v1.2.0+django-5.2.19.psycopg2-binary-2.9.13.py3.13", "python3.13"]);
        assert.strictEqual(releaseId("v1.2.0", {}, "python3"), "v1.2.0");
        assert.strictEqual(validateConfig(good, secrets).version, "v1.1.0");
        const p = problems({ ...good, pins: { django: "5.2.x", "bad name!": "1.0", "Django-Allauth": "65.18.0", django_allauth: "65.18.0" }, python: "/usr/bin/python3.13" });
        assert.match(p.join("\n"), /jhe:pins\.django must be an exact version such as 5\.2\.19 \(got "5\.2\.x"\)/);
        assert.match(p.join("\n"), /jhe:pins\.bad name!: a package name is letters/);
        assert.match(p.join("\n"), /jhe:pins\.django_allauth and jhe:pins\.Django-Allauth name the same package; keep one/);
        assert.match(p.join("\n"), /jhe:python must be the name of a Python 3 interpreter on the server's PATH, e\.g\. python3\.13/);
        assert.match(problems({ ...good, pins: ["django==5.2.19"] }).join("\n"), /jhe:pins must be an object of package: exact version/);
    });

    it("jhe:migrationStrategy: staged by default, in-window on request, anything else refused with the fix", function () {
        assert.strictEqual(validateConfig(good, secrets).migrationStrategy, "staged");
        assert.strictEqual(validateConfig({ ...good, migrationStrategy: "in-window" }, secrets).migrationStrategy, "in-window");
        const p = problems({ ...good, migrationStrategy: "online" });
        assert.strictEqual(p.length, 1, p.join("\n"));
        assert.match(p[0], /jhe:migrationStrategy must be "staged" or "in-window" \(got "online"\): pulumi config set jhe:migrationStrategy staged/);
    });

    it("names every missing required key with the command that sets it", function () {
        const p = problems({}, {});
        for (const k of ["version", "host", "sshHostKey", "sshPrivateKey", "siteUrl"]) {
            assert.ok(p.some((m) => m.startsWith(`jhe:${k} is required`)), `${k} in ${p.join("\n")}`);
        }
    });

    it("reports all problems at once and says nothing changed", function () {
        try {
            validateConfig({ ...good, version: "v1;rm -rf /", appRoot: "relative/path" }, secrets);
            assert.fail("expected a ConfigError");
        } catch (e) {
            assert.ok(e instanceof ConfigError);
            assert.strictEqual(e.problems.length, 2, e.message);
            assert.match(e.message, /nothing was changed on the server/);
            assert.match(e.message, /jhe:version must be a git tag/);
            assert.match(e.message, /jhe:appRoot must be an absolute path/);
        }
    });

    const bad: Array<[string, RawConfig, RegExp]> = [
        ["shell in a tag", { version: "$(touch /tmp/x)" }, /jhe:version must be a git tag/],
        ["option-like tag", { version: "-v1" }, /jhe:version must be a git tag/],
        ["path traversal", { appRoot: "/opt/../etc" }, /jhe:appRoot must be an absolute path/],
        ["quote in a path", { backupDir: "/backups/'x" }, /jhe:backupDir must be an absolute path/],
        ["backups inside the app", { backupDir: "/opt/jupyterhealth-exchange/backups" }, /jhe:backupDir must lie outside/],
        ["host with a space", { host: "a b" }, /jhe:host must be a host name/],
        ["host key not a key line", { sshHostKey: "AAAA" }, /jhe:sshHostKey must be the server's public host key/],
        ["RSA host key", { sshHostKey: "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABgQC7 root@jhe" },
            /jhe:sshHostKey is the server's RSA key: .*only the ssh-rsa \(SHA-1\).*Pin its Ed25519 or ECDSA key instead/],
        ["port out of range", { sshPort: 70000 }, /jhe:sshPort must be a whole number from 1 to 65535/],
        ["user with capitals", { appUser: "Root" }, /jhe:appUser must be a Unix name/],
        ["db name with a dash", { dbName: "jhe-prod" }, /jhe:dbName must be a PostgreSQL name/],
        ["site url not a url", { siteUrl: "jhe.example.org" }, /jhe:siteUrl must be a URL/],
        ["http on prod", { stage: "prod", stagingStack: "organization/jhe/staging", siteUrl: "http://jhe.example.org" }, /jhe:siteUrl must use https on a prod stack/],
        ["unknown stage", { stage: "production" }, /jhe:stage must be "staging" or "prod"/],
        ["typo key", { verison: "v1" }, /jhe:verison is not a setting of this program/],
        ["DEBUG=False on prod", { stage: "prod", stagingStack: "organization/jhe/staging", env: { DEBUG: "False" } }, /jhe:env.DEBUG: JHE turns DEBUG on for any non-empty value/],
        ["empty SMTP_PORT", { env: { SMTP_PORT: "" } }, /jhe:env.SMTP_PORT: an empty SMTP_PORT crashes every manage.py command/],
        ["secret in plain env", { env: { SECRET_KEY: "abc" } }, /jhe:env.SECRET_KEY: a secret; set it with/],
        ["NUL in env", { env: { SITE_NAME: "a\0b" } }, /jhe:env.SITE_NAME must not contain a NUL character/],
        ["bad env name", { env: { "lower-case": "x" } }, /jhe:env.lower-case: names must be upper-case/],
        ["bad bucket", { backupBucket: "Not_A_Bucket" }, /jhe:backupBucket must be/],
        ["envUnset not a list", { envUnset: "DEBUG" }, /jhe:envUnset must be a list of variable names \(pulumi config set --path 'jhe:envUnset\[0\]' DEBUG\)/],
        ["envUnset bad name", { envUnset: ["DEBUG", "ow-url"] }, /jhe:envUnset\[1\]: must be a variable name/],
        ["envUnset and env both", { env: { OW_API_URL: "x" }, envUnset: ["OW_API_URL"] }, /jhe:envUnset\[0\]: OW_API_URL is also set in jhe:env; keep one/],
        ["envUnset of a setting the tool writes", { envUnset: ["DB_NAME"] }, /jhe:envUnset\[0\]: jhe-upgrade writes DB_NAME into every release's .env itself \(from jhe:dbName\)/],
        ["envUnset of SECRET_KEY", { envUnset: ["SECRET_KEY"] }, /jhe:envUnset\[0\]: SECRET_KEY cannot be left unset/],
    ];
    for (const [what, patch, re] of bad) {
        it(`rejects ${what}`, function () {
            const p = problems({ ...good, ...patch });
            assert.ok(p.some((m) => re.test(m)), `expected ${re} in:\n${p.join("\n")}`);
        });
    }

    it("takes a list of variables left unset, also on prod (DEBUG unset is debug off)", function () {
        assert.deepStrictEqual(problems({ ...good, stage: "prod", stagingStack: "organization/jhe/staging", envUnset: ["DEBUG", "OW_API_URL"] }), []);
        const p = problems(good, { ...secrets, secretEnvNames: ["OW_API_KEY"], secretEnvValues: { OW_API_KEY: "k" } });
        assert.deepStrictEqual(p, []);
        assert.match(problems({ ...good, envUnset: ["OW_API_KEY"] }, { ...secrets, secretEnvNames: ["OW_API_KEY"], secretEnvValues: { OW_API_KEY: "k" } }).join("\n"),
            /jhe:envUnset\[0\]: OW_API_KEY is also set in jhe:secretEnv; keep one/);
    });

    it("allows DEBUG on a staging stack", function () {
        assert.deepStrictEqual(problems({ ...good, env: { DEBUG: "1" } }), []);
    });

    it("checks secret .env values without ever printing them", function () {
        const p = problems(good, { ...secrets, secretEnvNames: ["SECRET_KEY"], secretEnvValues: { SECRET_KEY: "s3cr3t\0value" } });
        assert.strictEqual(p.length, 1);
        assert.match(p[0], /jhe:secretEnv.SECRET_KEY must not contain a NUL/);
        assert.ok(!p[0].includes("s3cr3t"));
    });
});
