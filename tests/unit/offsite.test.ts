// Backups off the server, as config and resource graph: what jhe:backup* must hold, the OpenPGP
// fingerprint read from the public key (checked against gpg's), where the plan says copies go, and
// the offsite-backup step after finish getting its credentials on stdin only (Pulumi mocks).
import * as assert from "assert";
import * as fs from "fs";
import * as path from "path";
import * as pulumi from "@pulumi/pulumi";
import { problems as configProblems } from "../helpers/config";
import { openpgpFingerprint, RawConfig, SecretInputs, validateConfig, ConfigError } from "../../components/config";
import { backupPlan } from "../../components/plan";
import { offsiteSpec, toolSpec } from "../../components/host";
import { makeKeys, KeyPair } from "../helpers/gpgkeys";

const base: RawConfig = {
    version: "v1.1.0", host: "10.77.0.2", sshHostKey: "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 host",
    siteUrl: "https://jhe.example.org", backupBucket: "jhe-backups-test",
};
const creds: SecretInputs = {
    sshPrivateKey: pulumi.output("KEY"), backupAccessKeyId: pulumi.secret("AKIDTEST"), backupSecretAccessKey: pulumi.secret("SECRETVALUE123"),
};

const problems = (raw: RawConfig, s: SecretInputs = creds) => configProblems(raw, s);

/** The defaults Pulumi.yaml declares, as the engine hands them to the program (every stack gets them). */
function yamlDefaults(): Record<string, unknown> {
    const text = fs.readFileSync(path.join(__dirname, "..", "..", "..", "Pulumi.yaml"), "utf8");
    const out: Record<string, unknown> = {};
    let key = "";
    for (const line of text.split("\n")) {
        const k = /^ {2}([A-Za-z]+):\s*$/.exec(line);
        if (k) key = k[1];
        const d = /^ {4}default:\s*(.*)$/.exec(line);
        if (d && key) out[key] = d[1].replace(/^"(.*)"$/, "$1");
    }
    return out;
}

const value = <T>(o: pulumi.Output<T>) => new Promise<T>((res) => o.apply((v) => res(v)));

describe("off-host backups: config and graph", function () {
    let keys: KeyPair;
    before(async function () {
        this.timeout(60_000);
        await pulumi.runtime.setMocks({ newResource: (a) => ({ id: `${a.name}-id`, state: a.inputs }), call: (a) => a.inputs }, "jhe", "unit", false, "organization");
        keys = makeKeys("jhe-unit");
        process.env.JHE_UPGRADE_OFFLINE_PLAN = "1";
    });
    after(() => delete process.env.JHE_UPGRADE_OFFLINE_PLAN);

    it("reads the fingerprint of an armored public key as gpg does, and refuses a private key or junk", function () {
        assert.strictEqual(openpgpFingerprint(keys.publicKey), keys.fingerprint);
        assert.match((openpgpFingerprint(keys.privateKey) as { error: string }).error, /holds a private key/);
        assert.match((openpgpFingerprint("hello") as { error: string }).error, /ASCII-armored OpenPGP public key/);
    });

    it("requires credentials and a public key (or an explicit \"none\") with a bucket, naming each setting", function () {
        const p = problems(base, { sshPrivateKey: pulumi.output("KEY") });
        assert.ok(p.some((m) => /jhe:backupAccessKeyId and jhe:backupSecretAccessKey are required/.test(m)), p.join("\n"));
        assert.ok(p.some((m) => /jhe:backupEncryptionKey is required with jhe:backupBucket/.test(m)), p.join("\n"));
        assert.deepStrictEqual(problems({ ...base, backupEncryptionKey: keys.publicKey }), []);
        assert.match(problems({ ...base, backupEncryptionKey: keys.privateKey }).join("\n"), /jhe:backupEncryptionKey holds a private key/);
    });

    it("warns on prod when copies go unencrypted, and refuses plain http there", function () {
        const staging = validateConfig({ ...base, backupEncryptionKey: "none" }, creds);
        assert.deepStrictEqual(staging.warnings, []);
        const prod = validateConfig({ ...base, stage: "prod", stagingStack: "organization/jhe/staging", backupEncryptionKey: "none" }, creds);
        assert.match(prod.warnings.join("\n"), /go to the bucket unencrypted; on a prod stack, set an OpenPGP public key/);
        assert.match(problems({ ...base, stage: "prod", stagingStack: "organization/jhe/staging", backupEncryptionKey: "none", backupEndpoint: "http://10.1.1.1:8080" }).join("\n"),
            /jhe:backupEndpoint must use https on a prod stack/);
    });

    it("refuses a bad endpoint, region or prefix, and bucket settings without a bucket", function () {
        const k = { ...base, backupEncryptionKey: keys.publicKey };
        assert.match(problems({ ...k, backupEndpoint: "ftp://x" }).join("\n"), /jhe:backupEndpoint must be the URL of an S3-compatible endpoint/);
        assert.match(problems({ ...k, backupEndpoint: "https://a:b@s3.example.org" }).join("\n"), /must hold no credentials/);
        assert.match(problems({ ...k, backupPrefix: "a/../b" }).join("\n"), /jhe:backupPrefix must be path segments/);
        assert.match(problems({ ...k, backupRegion: "Europe West" }).join("\n"), /jhe:backupRegion must be a region name/);
        assert.match(problems({ ...base, backupBucket: "off", backupPrefix: "x/" }).join("\n"), /jhe:backupPrefix is set but jhe:backupBucket is "off"/);
        // What Pulumi.yaml's defaults put in every stack's config is not "set": a stack without a bucket is valid.
        const defaults = Object.fromEntries(Object.entries(yamlDefaults()).filter(([k]) => !["version", "host", "sshHostKey", "siteUrl"].includes(k)));
        assert.deepStrictEqual(problems({ ...base, ...defaults, backupBucket: "off" }), []);
    });

    it("defaults to AWS's regional endpoint and a per-service prefix; the plan says where copies go, encrypted to whom", function () {
        const c = validateConfig({ ...base, backupRegion: "eu-central-1", backupEncryptionKey: keys.publicKey }, creds);
        assert.strictEqual(c.offsite!.endpoint, "https://s3.eu-central-1.amazonaws.com");
        assert.strictEqual(c.offsite!.prefix, "jhe/jhe/");
        assert.deepStrictEqual(backupPlan(c), { local: "/backups/jhe", offsite: "s3://jhe-backups-test/jhe/jhe/", encrypted: true, encryptedTo: keys.fingerprint });
        const off = validateConfig({ ...base, backupBucket: "off" }, creds);
        assert.deepStrictEqual(backupPlan(off), { local: "/backups/jhe", offsite: null, encrypted: false, encryptedTo: null });
    });

    it("puts the credentials and keys only in the secret spec, never the plain one", async function () {
        const c = validateConfig({ ...base, backupEncryptionKey: keys.publicKey }, { ...creds, backupDecryptionKey: pulumi.secret(keys.privateKey) });
        const plain = await value(toolSpec(c, false, "jhe-backups-test"));
        assert.ok(!plain.includes("SECRETVALUE123") && !plain.includes("PRIVATE KEY"), plain);
        const secret = toolSpec(c, true, "jhe-backups-test");
        assert.ok(await pulumi.isSecret(secret), "the spec with credentials is a secret");
        const o = JSON.parse(await value(secret)).offsite;
        assert.strictEqual(o.secretAccessKey, "SECRETVALUE123");
        assert.strictEqual(o.bucket, "jhe-backups-test");
        assert.match(o.privateKey, /PRIVATE KEY BLOCK/);
        assert.strictEqual(await value(offsiteSpec(validateConfig({ ...base, backupBucket: "off" }, creds), "x")), null);
    });
});
