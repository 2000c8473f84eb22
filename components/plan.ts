// The upgrade plan, read from the server without changing it, during `pulumi preview` and `up`:
// the current version, the target's pending migrations (its migration files against the server's
// django_migrations), env variables it adds, and whether it is an upgrade or a rollback.
import * as crypto from "crypto";
import * as pulumi from "@pulumi/pulumi";
import { Client, ServerHostKeyAlgorithm } from "ssh2";
import { privileged } from "./commands";
import { JheConfig } from "./config";
import { baseSpec, toolSource } from "./host";

export interface Plan {
    from?: string | null;
    to: string;
    action?: "none" | "install" | "upgrade" | "rollback";
    pendingMigrations?: string[];
    migrationsToUndo?: string[];
    envAdded?: string[];
    /** Each pending migration's class, from its file: no-sql, additive (safe for the old code), data or destructive, and why. */
    migrationClasses?: Record<string, { class: string; operations: string[] }>;
    /** The worst of them. */
    migrationClass?: string;
    /** How long the maintenance page will be up, from the path, the database's size and rates measured on the server. */
    estimatedDowntimeSeconds?: number;
    /** The path the move will take, the estimate's parts (snapshot, migrate, switch) and where each rate comes from. */
    estimate?: { path: string; parts: Record<string, number>; basis: Record<string, string>; writesPerSecond?: number };
    /** Whose migrations pending/undo cover: every app once the target release is built, else the project's own. */
    migrationsOf?: string;
    /** Variables new in the target's env example that neither the .env, the stack nor jhe:envUnset decides. */
    envMissing?: string[];
    /** What JHE does with those of them it treats specially (DEBUG, SECRET_KEY, ...). */
    envHints?: Record<string, string>;
    /** Where this move's backup goes: the server's directory, and the bucket its copy goes to, encrypted or not. */
    backups?: BackupPlan;
    /** What runs on the server that the stack did not deploy (edited by hand), and what `up` does about it. */
    drift?: { what: string; path?: string; deployed: string; found: string; up: string }[];
    /** In the triggers of what repairs drift: changes only when something drifted. */
    repairKey?: string;
    note?: string;
    error?: string;
}

export interface BackupPlan {
    local: string;
    /** s3://bucket/prefix of the copies, null without jhe:backupBucket. */
    offsite: string | null;
    encrypted: boolean;
    /** The OpenPGP key the copies are encrypted to (fingerprint), null when they are not. */
    encryptedTo: string | null;
}

/** Where backups go, from the config alone (shown at preview, before anything runs). */
export function backupPlan(config: JheConfig): BackupPlan {
    const b = config.backupBucket;
    const o = config.offsite;
    const name = b.mode === "off" ? null : (b.name ?? "<the bucket this stack creates>");
    return {
        local: config.layout.backupDir,
        offsite: name && o ? `s3://${name}/${o.prefix}` : null,
        encrypted: Boolean(o?.publicKey),
        encryptedTo: o?.fingerprint ?? null,
    };
}

/** A host key line's type and SHA256 fingerprint, as `ssh-keygen -l` prints it. */
export function fingerprint(keyLine: string): { type: string; sha256: string } {
    return { type: keyLine.trim().split(/\s+/)[0], sha256: fingerprintOf(keyBlob(keyLine)) };
}

/** The key itself (the base64 part of the line), as the server presents it. */
function keyBlob(keyLine: string): Buffer {
    return Buffer.from(keyLine.trim().split(/\s+/)[1] ?? "", "base64");
}

function fingerprintOf(blob: Buffer): string {
    return "SHA256:" + crypto.createHash("sha256").update(blob).digest("base64").replace(/=+$/, "");
}

/** The server presented another host key than the pinned one: nothing may run there. */
export class HostKeyMismatch extends Error {}

/**
 * Runs one command over SSH with a pinned host key; resolves with stdout (rejects on failure). Only
 * the pinned key's algorithm is negotiated (as the command provider does), so a server with several
 * host keys presents the pinned one; any other key is a HostKeyMismatch naming both fingerprints.
 */
export function sshExec(
    conn: { host: string; port: number; user: string; privateKey: string; hostKey: string },
    cmd: string,
    stdin: string,
    timeoutMs = 30_000,
): Promise<string> {
    const pinned = fingerprint(conn.hostKey);
    const expected = keyBlob(conn.hostKey);
    let offered: Buffer | undefined;
    return new Promise((resolve, reject) => {
        const c = new Client();
        const timer = setTimeout(() => {
            c.end();
            reject(new Error(`no answer from ${conn.host} within ${timeoutMs} ms`));
        }, timeoutMs);
        c.on("ready", () => {
            c.exec(cmd, (err, stream) => {
                if (err) {
                    clearTimeout(timer);
                    c.end();
                    return reject(err);
                }
                let out = "";
                let errText = "";
                stream.on("data", (d: Buffer) => (out += d));
                stream.stderr.on("data", (d: Buffer) => (errText += d));
                stream.on("close", (code: number) => {
                    clearTimeout(timer);
                    c.end();
                    if (code === 0) resolve(out);
                    else reject(new Error(`exit ${code}: ${errText.trim().split("\n").slice(-3).join(" ")}`));
                });
                stream.end(stdin);
            });
        });
        c.on("error", (e) => {
            clearTimeout(timer);
            if (!offered && /host key|hostkey/i.test(e.message)) {
                return reject(new HostKeyMismatch(
                    `the SSH server ${conn.host} has no ${pinned.type} host key, which jhe:sshHostKey pins (${pinned.sha256}); ` +
                    `it offers other types only (${e.message}). Nothing was run on it. If the server was rebuilt, check its new key ` +
                    `out of band and set jhe:sshHostKey; otherwise do not go on`));
            }
            if (offered && !offered.equals(expected)) {
                const type = offered.subarray(4, 4 + offered.readUInt32BE(0)).toString();
                return reject(new HostKeyMismatch(
                    `the SSH host key of ${conn.host} is not the pinned one: the server offered ${type} ${fingerprintOf(offered)}, ` +
                    `jhe:sshHostKey pins ${pinned.type} ${pinned.sha256}. Nothing was run on it. If the server was rebuilt, ` +
                    `check its new key out of band (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on its console) and set ` +
                    `jhe:sshHostKey; otherwise someone may be in between: do not go on`));
            }
            reject(e);
        });
        c.connect({
            host: conn.host,
            port: conn.port,
            username: conn.user,
            privateKey: conn.privateKey,
            readyTimeout: 15_000,
            algorithms: { serverHostKey: [pinned.type as ServerHostKeyAlgorithm] },
            hostVerifier: (key: Buffer) => {
                offered = key;
                return key.equals(expected);
            },
        });
    });
}

/** The tool, sent on stdin and run read-only (`plan`), with a spec on its command line holding no secrets. */
export function planCommand(sshUser: string, specB64: string): string {
    if (!/^[A-Za-z0-9+/=]+$/.test(specB64)) throw new Error("spec must be base64");
    return privileged(sshUser, `exec python3 - plan --spec-b64 ${specB64}`);
}

export function readPlan(config: JheConfig): pulumi.Output<Plan> {
    return readPlanAndKey(config).plan;
}

/**
 * The plan (its output rejects on a host key mismatch: the preview and up fail there), and its drift
 * repair key (never rejecting: "" when the plan could not be read), from one read of the server.
 */
export function readPlanAndKey(config: JheConfig): { plan: pulumi.Output<Plan>; repairKey: pulumi.Output<string> } {
    const spec = {
        ...baseSpec(config),
        env: config.env,
        // Names only: the plan says which variables are configured, never their values.
        secretEnv: Object.fromEntries(config.secretEnvNames.map((k) => [k, ""])),
        ...(config.postgresMajor !== undefined ? { postgresMajor: config.postgresMajor } : {}),
    };
    const b64 = Buffer.from(JSON.stringify(spec)).toString("base64");
    const read = pulumi.unsecret(config.ssh.privateKey).apply(async (privateKey): Promise<{ plan: Plan; mismatch?: string }> => {
        if (process.env.JHE_UPGRADE_OFFLINE_PLAN === "1") return { plan: { to: config.version, note: "plan not read (offline)" } };
        try {
            const out = await sshExec(
                { host: config.ssh.host, port: config.ssh.port, user: config.ssh.user, privateKey, hostKey: config.ssh.hostKey },
                planCommand(config.ssh.user, b64),
                toolSource(),
            );
            const r = JSON.parse(out.trim().split("\n").pop() ?? "{}");
            delete r.ok;
            delete r.step;
            delete r.seconds;
            // Where this move's backup goes (a move that changes nothing takes none).
            return { plan: (r.action === "none" ? r : { ...r, backups: backupPlan(config) }) as Plan };
        } catch (e) {
            // refused before any command: the preview and up fail on the plan (below)
            if (e instanceof HostKeyMismatch) return { plan: { to: config.version }, mismatch: e.message };
            return { plan: { to: config.version, error: `could not read the plan from ${config.ssh.host}: ${(e as Error).message}` } };
        }
    });
    return {
        plan: read.apply((r) => {
            if (r.mismatch) throw new HostKeyMismatch(r.mismatch);
            return r.plan;
        }),
        repairKey: read.apply((r) => (r.mismatch ? "" : r.plan.repairKey ?? "")),
    };
}
