// JheHost: the server as Pulumi sees it - the SSH connection (pinned host key), the host-side tool
// copied to it, and the adoption of what it runs today into the releases layout.
import * as crypto from "crypto";
import * as pulumi from "@pulumi/pulumi";
import * as command from "@pulumi/command";
import { ensurePackages, installFile, InstallFileArgs, installTool, Step, SYSTEM_PACKAGES, toolStep } from "./commands";
import { DEFAULT_PYTHON, JheConfig } from "./config";
import { bundleTool } from "./toolBundle";

/** The host-side tool as the server gets it: the package host/jhe_upgrade/ bundled into one file
 * (once per program run: the host-tool resource and every read of the plan send the same text). */
let bundled: string | undefined;
export function toolSource(): string {
    return (bundled ??= bundleTool());
}

/** Triggers with the plan's drift repair key appended when there is one (none: the triggers as they were). */
export function withKey(triggers: pulumi.Input<unknown>[], repairKey?: pulumi.Input<string>): pulumi.Input<unknown[]> {
    if (repairKey === undefined) return triggers;
    return pulumi.all([pulumi.all(triggers), repairKey]).apply(([t, k]) => (k ? [...t, k] : t));
}

export function sha256(text: string): string {
    return crypto.createHash("sha256").update(text).digest("hex");
}

/** The stack's identity on the server's lock: who is upgrading. */
export function stackOwner(): string {
    return `${pulumi.getOrganization()}/${pulumi.getProject()}/${pulumi.getStack()}`;
}

/** The target and the layout: no secrets (so not a secret, and readable in a preview's diff). */
export function baseSpec(config: JheConfig, version: string | null = config.version): Record<string, unknown> {
    return {
        version,
        stage: config.stage,
        appRoot: config.layout.appRoot,
        appUser: config.layout.appUser,
        appGroup: config.layout.appGroup,
        serviceName: config.layout.serviceName,
        backupDir: config.layout.backupDir,
        keepReleases: config.layout.keepReleases,
        repoUrl: config.repoUrl,
        siteUrl: config.siteUrl,
        dbName: config.db.name,
        dbUser: config.db.user,
        wheelhouse: config.wheelhouse ?? null,
        healthTimeout: config.healthTimeoutSeconds,
        migrationStrategy: config.migrationStrategy,
        envUnset: config.envUnset,
        owner: stackOwner(),
        // how the release is built beside its tag (only when set: a stack without them sends what it always did)
        ...(Object.keys(config.pins).length ? { pins: config.pins } : {}),
        ...(config.python !== DEFAULT_PYTHON ? { python: config.python } : {}),
        // (only when set: a stack without them sends what it always did)
        ...(config.restoreFrom ? { restoreFrom: config.restoreFrom } : {}),
        // prod going ahead without staging's rehearsal: the reason, for UPGRADE_LOG.md (static config, so
        // it never changes a step's input between runs; what staging's outputs say is in the `staging` output)
        ...(config.staging?.override ? { stagingOverride: { reason: config.staging.override, stack: config.staging.stack ?? null } } : {}),
    };
}

/**
 * What the host tool is told on stdin. The steps that write .env also get its settings and secrets,
 * and where backup copies go with its credentials (then the whole spec is a secret). Deterministic, so an unchanged stack shows no diff.
 */
export function toolSpec(config: JheConfig, withEnv: boolean, bucketName?: pulumi.Input<string>): pulumi.Output<string> {
    if (!withEnv) return pulumi.output(JSON.stringify(baseSpec(config)));
    return pulumi.secret(
        pulumi
            .all([config.secretEnv, config.db.password ?? pulumi.output(""), offsiteSpec(config, bucketName), config.smokeTest?.password ?? ""])
            .apply(([secretEnv, dbPassword, offsite, smokePassword]) =>
                JSON.stringify({
                    ...baseSpec(config), dbPassword, env: config.env, secretEnv, ...(offsite ? { offsite } : {}),
                    ...(config.smokeTest ? {
                        smokeTest: {
                            user: config.smokeTest.user, password: smokePassword, create: config.smokeTest.create,
                            ...(config.smokeTest.observation ? { observation: config.smokeTest.observation } : {}),
                            ...(config.smokeTest.invitation ? { invitation: config.smokeTest.invitation } : {}),
                        },
                    } : {}),
                })),
    );
}

/**
 * Where and how backups are copied off the server (null without jhe:backupBucket): the endpoint, the
 * bucket, the credentials, the public key; the private key only when the stack gives one for a
 * restore. Part of the secret spec only.
 */
export function offsiteSpec(config: JheConfig, bucketName?: pulumi.Input<string>): pulumi.Output<Record<string, unknown> | null> {
    const o = config.offsite;
    if (!o || !bucketName) return pulumi.output(null);
    return pulumi.all([bucketName, o.accessKeyId, o.secretAccessKey, o.privateKey ?? pulumi.output("")]).apply(
        ([bucket, accessKeyId, secretAccessKey, privateKey]) => ({
            endpoint: o.endpoint, region: o.region, bucket, prefix: o.prefix, accessKeyId, secretAccessKey,
            publicKey: o.publicKey, encryption: o.publicKey ? "gpg" : "none", privateKey: privateKey || null, keepLocal: o.keepLocal,
        }));
}

export interface JheHostArgs {
    config: JheConfig;
    /**
     * Known only once the server has shown the pinned host key (the plan's read): every command waits
     * for it, so a changed key stops preview and up before any command, with both fingerprints named.
     */
    checkedHost?: pulumi.Input<string>;
    /** The backup bucket's name (jhe:backupBucket, or the one the stack makes), when copies go off the server. */
    bucketName?: pulumi.Input<string>;
}

export class JheHost extends pulumi.ComponentResource {
    public readonly connection: command.types.input.remote.ConnectionArgs;
    /** The tool's spec without and with the .env settings and secrets. */
    public readonly spec: pulumi.Output<string>;
    public readonly specWithEnv: pulumi.Output<string>;
    public readonly packages: command.remote.Command;
    public readonly tool: command.remote.Command;
    public readonly adopt: command.remote.Command;
    /** Everything that must exist before the server's files are managed. */
    public readonly ready: pulumi.Resource[];
    private readonly config: JheConfig;

    constructor(name: string, args: JheHostArgs, opts?: pulumi.ComponentResourceOptions) {
        super("jhe:upgrade:JheHost", name, {}, opts);
        const c = (this.config = args.config);
        this.connection = {
            host: args.checkedHost ?? c.ssh.host,
            port: c.ssh.port,
            user: c.ssh.user,
            privateKey: c.ssh.privateKey,
            hostKey: c.ssh.hostKey,
            dialErrorLimit: 5,
            perDialTimeout: 10,
        };
        this.spec = toolSpec(c, false);
        this.specWithEnv = toolSpec(c, true, args.bucketName);
        // Debian packages JHE needs: installs only what is missing (nothing, with no network, when all are there).
        // (gpg encrypts backup copies, with a bucket and a key: the runbook's own tool.)
        const packages = c.offsite?.publicKey ? [...SYSTEM_PACKAGES, "gnupg"] : SYSTEM_PACKAGES;
        this.packages = this.command("system-packages", { create: ensurePackages(c.ssh.user, packages), triggers: packages }, { parent: this });
        const source = toolSource();
        this.tool = this.command("host-tool", { create: installTool(c.ssh.user), stdin: source, triggers: [sha256(source)] },
            { parent: this, dependsOn: [this.packages] });
        // Adoption runs once per server layout (it aims at no version): nothing on a server already in releases/.
        this.adopt = this.command("adopt",
            { create: toolStep(c.ssh.user, "adopt"), stdin: JSON.stringify(baseSpec(c, null)), triggers: [c.layout.appRoot] },
            { parent: this, dependsOn: [this.tool] });
        this.ready = [this.packages, this.tool, this.adopt];
        this.registerOutputs({ host: c.ssh.host });
    }

    /**
     * A command on the server over the pinned connection. Its output streams as stderr only (stdout is
     * one JSON line kept in the state), and it is not given the previous run's output in its environment
     * (a stock sshd refuses PULUMI_COMMAND_* and the official provider then warns; nothing here reads them).
     */
    public command(name: string, args: Omit<command.remote.CommandArgs, "connection">, opts: pulumi.CustomResourceOptions): command.remote.Command {
        return new command.remote.Command(name, { logging: "stderr", addPreviousOutputInEnv: false, ...args, connection: this.connection }, opts);
    }

    /** A file on the server with this content: installed when it differs, validated, applied (commands.installFile). */
    public file(name: string, content: string, args: InstallFileArgs, opts: pulumi.CustomResourceOptions,
                repairKey?: pulumi.Input<string>): command.remote.Command {
        return this.command(name, { create: installFile(this.config.ssh.user, args), stdin: content, triggers: withKey([content], repairKey) }, opts);
    }

    /** A step of the host tool as a command resource: replaced whenever `triggers` change. */
    public step(name: string, step: Step, triggers: pulumi.Input<unknown>[] | pulumi.Output<unknown[]>, dependsOn: pulumi.Resource[],
                parent: pulumi.Resource = this, withEnv = false, extra?: pulumi.Output<Record<string, unknown>>): command.remote.Command {
        const spec = withEnv ? this.specWithEnv : this.spec;
        const stdin = extra ? pulumi.all([spec, extra]).apply(([s, e]) => (Object.keys(e).length ? JSON.stringify({ ...JSON.parse(s), ...e }) : s)) : spec;
        return this.command(name, { create: toolStep(this.config.ssh.user, step), stdin: withEnv && extra ? pulumi.secret(stdin) : stdin, triggers },
            { parent, dependsOn });
    }
}
