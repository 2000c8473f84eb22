// The resource graph with Pulumi mocks: which resources exist, their triggers, the dependsOn chain
// (captured with a stack transformation, since mocks do not see dependsOn), and what a version change
// replaces. Fast; the real engine and server are tested in tests/e2e.
import * as assert from "assert";
import * as pulumi from "@pulumi/pulumi";
import { SecretInputs, validateConfig } from "../../components/config";
import { jheProgram } from "../../components/program";
import { RELEASE_STEPS } from "../../components/release";
import { problems } from "../helpers/config";

interface Seen {
    type: string;
    name: string;
    inputs: Record<string, unknown>;
    dependsOn: string[];
    parent?: string;
    retainOnDelete?: boolean;
    protect?: boolean;
}

const HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGx0ZXN0a2V5 host";

function resolve<T>(o: pulumi.Input<T> | undefined): Promise<T | undefined> {
    return new Promise((res) => (o === undefined ? res(undefined) : pulumi.output(o).apply((v) => res(v as T))));
}

/** Builds the program under mocks with `raw` config and returns every resource registered. */
async function build(raw: Record<string, unknown>, more: Partial<SecretInputs> = {}): Promise<{ resources: Seen[]; outputs: Record<string, unknown> }> {
    const resources: Seen[] = [];
    const byUrnName = new Map<pulumi.Resource, string>();
    await pulumi.runtime.setMocks(
        {
            newResource: (args) => ({ id: `${args.name}-id`, state: { ...args.inputs, stdout: '{"ok":true,"seconds":1}' } }),
            call: (args) => args.inputs,
        },
        "jhe",
        "unit",
        false,
        "organization",
    );
    const config = validateConfig(
        {
            version: "v1.1.0", host: "10.1.2.3", sshHostKey: HOST_KEY, siteUrl: "https://jhe.example.org", ...raw,
        },
        {
            sshPrivateKey: pulumi.secret("-----BEGIN KEY-----\nabc\n-----END KEY-----"), secretEnv: pulumi.secret({ SECRET_KEY: "s" } as Record<string, string>),
            secretEnvNames: ["SECRET_KEY"], backupAccessKeyId: pulumi.secret("AKIDUNIT"), backupSecretAccessKey: pulumi.secret("BUCKET-SECRET-UNIT"),
            ...more,
        },
    );
    let outputs: Record<string, unknown> = {};
    await pulumi.runtime.runInPulumiStack(async () => {
        pulumi.runtime.registerStackTransformation((args) => {
            byUrnName.set(args.resource, args.name);
            resources.push({
                type: args.type,
                name: args.name,
                inputs: args.props as Record<string, unknown>,
                dependsOn: [],
                parent: args.opts.parent ? byUrnName.get(args.opts.parent) : undefined,
                retainOnDelete: args.opts.retainOnDelete,
                protect: args.opts.protect,
            });
            const deps = args.opts.dependsOn;
            const list = Array.isArray(deps) ? deps : deps ? [deps] : [];
            resources[resources.length - 1].dependsOn = (list as pulumi.Resource[]).map((r) => byUrnName.get(r) ?? "?");
            return undefined;
        });
        outputs = jheProgram(config) as unknown as Record<string, unknown>;
        return outputs;
    });
    return { resources, outputs };
}

const named = (rs: Seen[], n: string) => {
    const r = rs.find((x) => x.name === n);
    assert.ok(r, `resource ${n} exists`);
    return r!;
};

describe("program graph (mocks)", function () {
    // readPlan() would SSH to the (fake) server; the mocks build the graph only.
    before(() => (process.env.JHE_UPGRADE_OFFLINE_PLAN = "1"));
    after(() => delete process.env.JHE_UPGRADE_OFFLINE_PLAN);

    it("has one component per concern, with the command steps parented under them", async function () {
        const { resources } = await build({});
        const types = resources.map((r) => `${r.type}::${r.name}`);
        for (const t of [
            "jhe:upgrade:JheHost::server", "jhe:upgrade:SystemdService::systemd", "jhe:upgrade:NginxSite::nginx", "jhe:upgrade:JheRelease::jhe",
            "command:remote:Command::host-tool", "command:remote:Command::adopt", "command:remote:Command::unit",
            "command:remote:Command::site", "command:remote:Command::maintenance-page",
        ]) assert.ok(types.includes(t), `${t} in ${types.join(", ")}`);
        for (const [step] of RELEASE_STEPS) assert.strictEqual(named(resources, step).parent, "jhe");
        assert.strictEqual(named(resources, "unit").parent, "systemd");
        assert.strictEqual(named(resources, "site").parent, "nginx");
        assert.ok(!resources.some((r) => r.type.startsWith("aws:")), "no AWS resources when jhe:backupBucket is off");
    });

    it("chains the versioned steps in the runbook's order after the unit and the site", async function () {
        const { resources } = await build({});
        const names = RELEASE_STEPS.map(([n]) => n);
        assert.deepStrictEqual(named(resources, names[0]).dependsOn.sort(), ["site", "unit"]);
        for (let i = 1; i < names.length; i++) assert.deepStrictEqual(named(resources, names[i]).dependsOn, [names[i - 1]]);
        assert.deepStrictEqual(named(resources, "adopt").dependsOn, ["host-tool"]);
        assert.deepStrictEqual(named(resources, "host-tool").dependsOn, ["system-packages"]);
        assert.deepStrictEqual(named(resources, "unit").dependsOn, ["system-packages", "host-tool", "adopt", "handover-unit"]);
        assert.deepStrictEqual(named(resources, "handover-unit").dependsOn, ["system-packages", "host-tool", "adopt"]);
    });

    it("puts the target version in every versioned step's triggers, and only there", async function () {
        const a = await build({ version: "v1.1.0" });
        const b = await build({ version: "v1.2.0" });
        for (const r of a.resources.filter((x) => x.type === "command:remote:Command")) {
            const ta = JSON.stringify(await resolve(r.inputs.triggers));
            const tb = JSON.stringify(await resolve(named(b.resources, r.name).inputs.triggers));
            const versioned = RELEASE_STEPS.some(([n]) => n === r.name) || r.name === "watch";
            assert.strictEqual(ta !== tb, versioned, `${r.name}: triggers ${ta} vs ${tb}`);
            if (versioned) assert.ok(ta.includes("v1.1.0"));
        }
    });

    it("jhe:pins and jhe:python are upgrades of their own: the same steps re-run, towards the tag built otherwise", async function () {
        const plain = await build({ version: "v1.2.0" });
        for (const [raw, release] of [[{ pins: { Django: "5.2.19" } }, "v1.2.0+django-5.2.19"], [{ python: "python3.13" }, "v1.2.0+py3.13"]] as const) {
            const b = await build({ version: "v1.2.0", ...raw });
            for (const r of plain.resources.filter((x) => x.type === "command:remote:Command")) {
                const ta = JSON.stringify(await resolve(r.inputs.triggers));
                const tb = JSON.stringify(await resolve(named(b.resources, r.name).inputs.triggers));
                const versioned = RELEASE_STEPS.some(([n]) => n === r.name) || r.name === "watch";
                assert.strictEqual(ta !== tb, versioned, `${r.name}: triggers ${ta} vs ${tb}`);
                if (versioned) assert.ok(tb.includes(release), `${r.name}: ${tb}`);
            }
            const stdin = JSON.parse(String(await resolve(named(b.resources, "backup").inputs.stdin)));
            assert.strictEqual(stdin.version, release);
            assert.deepStrictEqual({ pins: stdin.pins, python: stdin.python }, "pins" in raw ? { pins: raw.pins, python: undefined }
                : { pins: undefined, python: "python3.13" });
        }
        const stdin = JSON.parse(String(await resolve(named(plain.resources, "backup").inputs.stdin)));
        assert.ok(!("pins" in stdin) && !("python" in stdin), "a stack without them sends what it always did");
    });

    it("jhe:postgresMajor: its own step before the upgrade steps, re-run only by the major; none when unset", async function () {
        assert.ok(!(await build({})).resources.some((r) => r.name === "postgres-major"));
        const a = await build({ postgresMajor: "17" });
        const pg = named(a.resources, "postgres-major");
        assert.deepStrictEqual(pg.dependsOn.sort(), ["site", "unit"]);
        assert.deepStrictEqual(named(a.resources, "preflight").dependsOn.sort(), ["postgres-major", "site", "unit"]);
        assert.deepStrictEqual(await resolve(pg.inputs.triggers), [17]);
        assert.match(String(await resolve(pg.inputs.create)), /jhe_upgrade\.py postgres/);
        const stdin = JSON.parse(String(await resolve(pg.inputs.stdin)));
        assert.strictEqual(stdin.postgresMajor, 17);
        assert.strictEqual(stdin.secretEnv.SECRET_KEY, "s", "the smoke tests' account and the .env settings, as the gate needs them");
        const b = await build({ postgresMajor: "15" });
        for (const [n] of RELEASE_STEPS) {
            assert.strictEqual(JSON.stringify(await resolve(named(a.resources, n).inputs.triggers)),
                JSON.stringify(await resolve(named(b.resources, n).inputs.triggers)), `${n}: not re-run by the major`);
        }
        assert.deepStrictEqual(await resolve(named(b.resources, "postgres-major").inputs.triggers), [15]);
        assert.match(problems({ version: "v1.1.0", host: "10.1.2.3", sshHostKey: HOST_KEY, siteUrl: "https://jhe.example.org", postgresMajor: "17.2" }, { sshPrivateKey: pulumi.output("K") }).join("\n"),
            /jhe:postgresMajor must be a PostgreSQL major version such as 17 \(got "17\.2"\)/);
    });

    it("re-runs the steps that write .env when a setting changes, and no other", async function () {
        const a = await build({ env: { JHE_FEATURE_X: "on" } });
        const b = await build({ env: { JHE_FEATURE_X: "off" } });
        const changed: string[] = [];
        for (const [n] of RELEASE_STEPS) {
            const ta = JSON.stringify(await resolve(named(a.resources, n).inputs.triggers));
            const tb = JSON.stringify(await resolve(named(b.resources, n).inputs.triggers));
            if (ta !== tb) changed.push(n);
        }
        assert.deepStrictEqual(changed, ["preflight", "prepare-release"]);
    });

    it("connects with the pinned host key and the secret key, and sends secrets only on stdin", async function () {
        const { resources } = await build({});
        const pre = named(resources, "preflight");
        const conn = (await resolve(pre.inputs.connection)) as Record<string, unknown>;
        assert.strictEqual(conn.hostKey, HOST_KEY);
        assert.strictEqual(conn.host, "10.1.2.3");
        assert.match(String(await resolve(pre.inputs.create)), /python3 \/usr\/local\/lib\/jhe-upgrade\/jhe_upgrade\.py preflight/);
        const stdin = JSON.parse(String(await resolve(pre.inputs.stdin)));
        assert.strictEqual(stdin.secretEnv.SECRET_KEY, "s");
        assert.strictEqual(stdin.version, "v1.1.0");
        // Steps that do not write .env do not get the secrets at all.
        const backup = JSON.parse(String(await resolve(named(resources, "backup").inputs.stdin)));
        assert.strictEqual(backup.secretEnv, undefined);
        assert.strictEqual(named(resources, "preflight").inputs.logging, "stderr");
        for (const r of resources.filter((x) => x.type === "command:remote:Command")) {
            assert.ok(!String(await resolve(r.inputs.create)).includes("BEGIN KEY"), `${r.name}: no key on a command line`);
        }
    });

    it("makes the backup bucket private, encrypted, versioned, TLS-only and kept on destroy", async function () {
        const { resources } = await build({ backupBucket: "create:jhe-backups-test", backupEncryptionKey: "none" });
        const aws = resources.filter((r) => r.type.startsWith("aws:s3"));
        assert.deepStrictEqual(aws.map((r) => r.type).sort(), [
            "aws:s3/bucket:Bucket", "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration",
            "aws:s3/bucketPolicy:BucketPolicy", "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock",
            "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
            "aws:s3/bucketVersioning:BucketVersioning",
        ]);
        for (const r of aws) assert.ok(r.retainOnDelete && r.protect, `${r.type} retained and protected`);
        const bucket = aws.find((r) => r.type === "aws:s3/bucket:Bucket")!;
        assert.strictEqual(bucket.inputs.bucket, "jhe-backups-test");
        assert.strictEqual(bucket.inputs.forceDestroy, false);
        const pab = aws.find((r) => r.type.includes("PublicAccessBlock"))!.inputs;
        for (const k of ["blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets"]) assert.strictEqual(pab[k], true);
        const ver = (await resolve(aws.find((r) => r.type.includes("Versioning"))!.inputs.versioningConfiguration)) as { status: string };
        assert.strictEqual(ver.status, "Enabled");
        const policy = JSON.parse(String(await resolve(aws.find((r) => r.type.includes("BucketPolicy"))!.inputs.policy)));
        assert.deepStrictEqual(policy.Statement[0].Condition, { Bool: { "aws:SecureTransport": "false" } });
        assert.strictEqual(policy.Statement[0].Effect, "Deny");
    });

    it("copies backups off the server after finish, with the bucket's credentials on stdin only", async function () {
        const { resources } = await build({ backupBucket: "jhe-existing-bucket", backupEncryptionKey: "none" });
        const off = named(resources, "offsite-backup");
        assert.deepStrictEqual(off.dependsOn, ["finish"]);
        assert.deepStrictEqual(await resolve(off.inputs.triggers), ["v1.1.0"]);
        assert.match(String(await resolve(off.inputs.create)), /jhe_upgrade\.py offsite/);
        const spec = JSON.parse(String(await resolve(off.inputs.stdin)));
        assert.strictEqual(spec.offsite.bucket, "jhe-existing-bucket");
        assert.strictEqual(spec.offsite.secretAccessKey, "BUCKET-SECRET-UNIT");
        assert.ok(!resources.some((r) => r.type.startsWith("aws:")), "an existing bucket is not managed");
        for (const r of resources.filter((x) => x.type === "command:remote:Command")) {
            assert.ok(!String(await resolve(r.inputs.create)).includes("BUCKET-SECRET-UNIT"), `${r.name}: no credential on a command line`);
            assert.ok(!JSON.stringify(await resolve(r.inputs.triggers) ?? null).includes("BUCKET-SECRET"), `${r.name}: no credential in triggers`);
        }
        const { resources: none } = await build({});
        assert.ok(!none.some((r) => r.name === "offsite-backup"), "no copy step without a bucket");
    });

    it("watch: after finish and the copy step, re-run by the version and its settings, the .env settings on its secret stdin; none at 0 s", async function () {
        const { resources, outputs } = await build({ backupBucket: "jhe-existing-bucket", backupEncryptionKey: "none", watchSeconds: "120", watchMaxErrorRate: "10" });
        const w = named(resources, "watch");
        assert.deepStrictEqual(w.dependsOn, ["offsite-backup"]);
        assert.match(String(await resolve(w.inputs.create)), /jhe_upgrade\.py watch/);
        assert.deepStrictEqual(await resolve(w.inputs.triggers), ["v1.1.0", JSON.stringify({ seconds: 120, maxErrorRate: 10, minRequests: 20 })]);
        const spec = JSON.parse(String(await resolve(w.inputs.stdin)));
        assert.deepStrictEqual(spec.watch, { seconds: 120, maxErrorRate: 10, minRequests: 20 });
        assert.deepStrictEqual(spec.secretEnv, { SECRET_KEY: "s" }, "a rollback by the watch writes .env as reverting the version would");
        assert.ok(outputs.watch !== null);
        const { resources: none, outputs: o0 } = await build({ watchSeconds: "0" });
        assert.ok(!none.some((r) => r.name === "watch") && o0.watch === null);
        assert.match(problems({ version: "v1.1.0", host: "10.1.2.3", sshHostKey: HOST_KEY, siteUrl: "https://jhe.example.org", watchSeconds: "-1", watchMaxErrorRate: "0" },
            { sshPrivateKey: pulumi.output("KEY") }).join("\n"), /jhe:watchSeconds must be a whole number from 0 to 3600 \(got "-1"\)\n.*jhe:watchMaxErrorRate must be a whole number from 1 to 100/);
    });

    it("snapshot: after the copy step, re-run by its label; clone: before every upgrade step, re-run by its location", async function () {
        const bucket = { backupBucket: "jhe-existing-bucket", backupEncryptionKey: "none" };
        const { resources, outputs } = await build({ ...bucket, snapshot: "for-staging-1" });
        const snap = named(resources, "snapshot");
        assert.deepStrictEqual(snap.dependsOn, ["watch"]);
        assert.deepStrictEqual(await resolve(snap.inputs.triggers), ["for-staging-1"]);
        assert.match(String(await resolve(snap.inputs.create)), /jhe_upgrade\.py snapshot/);
        const snapSpec = JSON.parse(String(await resolve(snap.inputs.stdin)));
        assert.strictEqual(snapSpec.offsite.bucket, "jhe-existing-bucket");
        assert.strictEqual(snapSpec.snapshot, "for-staging-1");
        assert.strictEqual(snapSpec.version, null, "a new jhe:version does not take another snapshot");
        assert.ok(outputs.snapshot !== null && outputs.clone === null);
        const from = "s3://jhe-prod-backups/jhe/jhe/latest";
        const { resources: rs } = await build({ ...bucket, cloneFrom: from, cloneKeepColumns: ["core_study.tagline"], adminEmail: "a@example.org" },
            { adminPassword: pulumi.secret("pw-unit") });
        // The superuser is made again after a clone (prod's accounts replaced staging's).
        assert.deepStrictEqual(named(rs, "admin-user").dependsOn.sort(), ["clone-from-prod", "finish"]);
        assert.ok((await resolve(named(rs, "admin-user").inputs.triggers) as unknown[]).includes(from));
        const clone = named(rs, "clone-from-prod");
        assert.deepStrictEqual(clone.dependsOn.sort(), ["site", "unit"]);
        assert.deepStrictEqual(named(rs, RELEASE_STEPS[0][0]).dependsOn.sort(), ["clone-from-prod", "site", "unit"]);
        assert.deepStrictEqual(await resolve(clone.inputs.triggers), [from, "core_study.tagline"]);
        const spec = JSON.parse(String(await resolve(clone.inputs.stdin)));
        assert.deepStrictEqual(spec.clone, { from, keepColumns: ["core_study.tagline"] });
        assert.strictEqual(spec.offsite.secretAccessKey, "BUCKET-SECRET-UNIT");
        assert.strictEqual(spec.version, null, "a new jhe:version does not re-run the clone");
        // Only the clone's own step is told where from: the upgrade steps' input is unchanged by it.
        const plain = named(resources, "backup").inputs.stdin;
        assert.strictEqual(await resolve(named(rs, "backup").inputs.stdin), await resolve(plain));
        const { resources: none } = await build({});
        assert.ok(!none.some((r) => r.name === "snapshot" || r.name === "clone-from-prod"));
    });
});
