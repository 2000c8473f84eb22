// JheRelease: the versioned upgrade steps (DESIGN.md §3), each a command resource whose triggers carry
// the target version, chained in the runbook's order. Changing jhe:version replaces exactly these
// steps - `pulumi preview` lists them, and that list is the upgrade plan.
import * as pulumi from "@pulumi/pulumi";
import * as command from "@pulumi/command";
import { JheConfig } from "./config";
import { toolStep } from "./commands";
import { baseSpec, JheHost, offsiteSpec, sha256, withKey } from "./host";

export interface JheReleaseArgs {
    host: JheHost;
    config: JheConfig;
    /** Resources that must be in place first (unit, nginx site). */
    dependsOn: pulumi.Resource[];
    /** Copy backups off the server after finish (jhe:backupBucket set). */
    offsite?: boolean;
    /** The bucket's name (snapshot's copy), when there is one. */
    bucketName?: pulumi.Input<string>;
    /** The clone step (jhe:cloneFrom), which the superuser is made again after. */
    clone?: command.remote.Command;
    /** Drift repair (the plan's repairKey): the steps run once more when what serves is not what the stack deployed. */
    repairKey?: pulumi.Input<string>;
}

/**
 * Staging only (jhe:cloneFrom): prod's backup, de-identified, becomes this server's database before any
 * upgrade step runs - so one `up` that also changes jhe:version rehearses that upgrade on it. Re-run
 * when the location changes (a "latest" location is resolved on the server when it runs).
 */
export function cloneStep(host: JheHost, config: JheConfig, dependsOn: pulumi.Resource[], bucketName?: pulumi.Input<string>):
    command.remote.Command | undefined {
    const c = config.clone;
    if (!c) return undefined;
    return host.command("clone-from-prod", {
        create: toolStep(config.ssh.user, "clone"), stdin: versionlessSpec(config, bucketName, { clone: c }), triggers: [c.from, ...c.keepColumns],
    }, { parent: host, dependsOn });
}

/**
 * jhe:postgresMajor: the runbook's PostgreSQL major upgrade, before the upgrade steps (so one `up` that also
 * changes jhe:version moves the database first). Re-run when the major changes: nothing when the server runs
 * it; a higher one upgrades the cluster (backup, pg_upgradecluster in a window, health gate and smoke tests,
 * the old cluster kept); setting it back brings the kept cluster back with the rows written since.
 */
export function postgresStep(host: JheHost, config: JheConfig, dependsOn: pulumi.Resource[]): command.remote.Command | undefined {
    const major = config.postgresMajor;
    if (major === undefined) return undefined;
    return host.step("postgres-major", "postgres", [major], dependsOn, host, true, pulumi.output(major).apply((m): Record<string, unknown> => ({ postgresMajor: m })));
}

/**
 * The spec of a step that aims at no version (snapshot, clone): the layout and the bucket's settings,
 * no version and no .env settings - so a change of jhe:version (or of .env) re-runs the upgrade steps,
 * not these (a changed input re-runs a command's create).
 */
function versionlessSpec(config: JheConfig, bucketName: pulumi.Input<string> | undefined, extra: Record<string, unknown>): pulumi.Output<string> {
    return pulumi.secret(offsiteSpec(config, bucketName).apply((offsite) =>
        JSON.stringify({ ...baseSpec(config, null), ...(offsite ? { offsite } : {}), ...extra })));
}

/** The steps in order: [resource name, host tool step, needs the .env settings]. */
export const RELEASE_STEPS = [
    ["preflight", "preflight", true],
    ["prepare-release", "prepare", true],
    ["backup", "backup", false],
    ["migrate", "migrate", false],
    ["switch-restart", "switch", false],
    ["health-gate", "health", false],
    ["finish", "finish", false],
] as const;

export type StepName = (typeof RELEASE_STEPS)[number][0];

/** Parses a step's one-line JSON result (its last stdout line). */
export function stepResult(stdout: string): Record<string, unknown> {
    const line = stdout.trim().split("\n").pop() ?? "";
    try {
        return JSON.parse(line) as Record<string, unknown>;
    } catch {
        return { unparsed: line.slice(0, 200) };
    }
}

export class JheRelease extends pulumi.ComponentResource {
    public readonly steps: Record<StepName, command.remote.Command>;
    /** Each step's parsed result. */
    public readonly results: Record<StepName, pulumi.Output<Record<string, unknown>>>;
    /** The off-host copy's result ({offsite: {bucket, copied, ...}}), with a bucket. */
    public readonly offsite?: pulumi.Output<Record<string, unknown>>;
    /** The watch's result ({watch: {verdict, before, after, ...}}), when jhe:watchSeconds > 0. */
    public readonly watch?: pulumi.Output<Record<string, unknown>>;
    /** jhe:snapshot's result ({snapshot: {id, location, ...}}), when the stack asks for one. */
    public readonly snapshot?: pulumi.Output<Record<string, unknown>>;

    constructor(name: string, args: JheReleaseArgs, opts?: pulumi.ComponentResourceOptions) {
        super("jhe:upgrade:JheRelease", name, {}, opts);
        const { host, config } = args;
        // What re-runs the steps: the target version, and for the steps that write .env, its settings.
        // (and the smoke-test account, which prepare makes or checks: only when set, so other stacks keep their hash)
        const envHash = pulumi
            .all([config.secretEnv, config.db.password ?? "", config.smokeTest?.password ?? ""])
            .apply(([s, pw, smokePw]) => sha256(JSON.stringify([config.env, s, pw, config.siteUrl,
                ...(config.smokeTest ? [[config.smokeTest.user, config.smokeTest.create, sha256(smokePw),
                    config.smokeTest.observation ?? null, config.smokeTest.invitation ?? null]] : [])])).slice(0, 16));
        const steps = {} as Record<StepName, command.remote.Command>;
        const results = {} as Record<StepName, pulumi.Output<Record<string, unknown>>>;
        let previous: pulumi.Resource[] = args.dependsOn;
        for (const [resName, toolStep, withEnv] of RELEASE_STEPS) {
            const triggers: pulumi.Input<unknown>[] = [config.version];
            if (withEnv) triggers.push(envHash);
            // finish records the repair it made (so the next plan's key is the same: no more changes)
            // (and prepare, which puts a hand-edited .env back only when repairing)
            const extra = (resName === "finish" || resName === "prepare-release") && args.repairKey !== undefined
                ? pulumi.output(args.repairKey).apply((k): Record<string, unknown> => (k ? { repairKey: k } : {})) : undefined;
            const cmd = host.step(resName, toolStep, withKey(triggers, args.repairKey) as pulumi.Output<unknown[]>, previous, this, withEnv, extra);
            steps[resName] = cmd;
            results[resName] = cmd.stdout.apply(stepResult);
            previous = [cmd];
        }
        this.steps = steps;
        this.results = results;
        // 7b. After the window: the backups copied off the server, each read back and checked; local
        //     ones pruned only once copied. Its own resource, so a failed upload leaves the upgrade done
        //     and the next `up` copies what is missing.
        let last: pulumi.Resource = steps.finish;
        if (args.offsite) {
            const cmd = host.step("offsite-backup", "offsite", [config.version], [steps.finish], this, true);
            this.offsite = cmd.stdout.apply(stepResult);
            last = cmd;
        }
        // 7b'. The watch (jhe:watchSeconds): the share of failed requests after the switch against before it;
        //     too many and the server goes back to the previous version by itself, as reverting jhe:version
        //     would (so it needs the .env settings too), and the up fails saying so - again on each up until
        //     the stack's version agrees. Only upgrades are watched (not rollbacks, not a run that moved nothing).
        if (config.watch.seconds > 0) {
            const cmd = host.command("watch", {
                create: toolStep(config.ssh.user, "watch"),
                stdin: pulumi.secret(host.specWithEnv.apply((s) => JSON.stringify({ ...JSON.parse(s), watch: config.watch }))),
                triggers: [config.version, JSON.stringify(config.watch)],
            }, { parent: this, dependsOn: [last] });
            this.watch = cmd.stdout.apply(stepResult);
            last = cmd;
        }
        // 7c. jhe:snapshot: a backup of what now serves (no downtime), copied off like the others - prod's
        //     current data for a staging stack to clone. Taken again whenever the label changes.
        if (config.snapshot) {
            const cmd = host.command("snapshot", {
                create: toolStep(config.ssh.user, "snapshot"), stdin: versionlessSpec(config, args.bucketName, { snapshot: config.snapshot }),
                triggers: [config.snapshot],
            }, { parent: this, dependsOn: [last] });
            this.snapshot = cmd.stdout.apply(stepResult);
        }
        // 8. The optional Django superuser, once the release serves (re-run when its settings change).
        if (config.admin) {
            const a = config.admin;
            host.command("admin-user", {
                create: toolStep(config.ssh.user, "superuser"),
                stdin: pulumi.secret(a.password.apply((pw) => JSON.stringify({ ...baseSpec(config), adminUser: a.user, adminEmail: a.email, adminPassword: pw }))),
                // (made again after a clone: prod's accounts replaced staging's, with unusable passwords)
                triggers: [a.user, a.email, a.password.apply((pw) => sha256(pw).slice(0, 16)), ...(config.clone ? [config.clone.from] : [])],
            }, { parent: this, dependsOn: [steps.finish, ...(args.clone ? [args.clone] : [])] });
        }
        this.registerOutputs({});
    }
}
