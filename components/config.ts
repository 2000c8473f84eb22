// Typed stack configuration for jhe-upgrade, validated before any resource is made.
//
// Every key is declared (type, description, default) in Pulumi.yaml; this module is the one place
// that reads them, checks each value and the relations between them, and reports *all* problems
// at once, each naming the key and what is allowed.
import * as crypto from "crypto";
import * as pulumi from "@pulumi/pulumi";

export type MigrationStrategy = "staged" | "in-window";
export type Stage = "staging" | "prod";

export interface JheConfig {
    /**
     * The release to deploy (the upgrade/rollback target): the git tag jhe:version, and when jhe:pins or
     * jhe:python build it otherwise than its lock says, what differs as build metadata
     * (v1.2.0+django-5.2.19, v2.0.0+py3.13). It is what the steps' triggers carry: changing a pin or the
     * interpreter is an upgrade of its own; removing it goes back.
     */
    version: string;
    /** jhe:version, the git tag the release is built from. */
    tag: string;
    /** jhe:pins: packages installed over the tag's lock at these exact versions ({django: "5.2.19"}). */
    pins: Record<string, string>;
    /** jhe:python: the interpreter the release's virtualenv is made with ("python3": the server's default). */
    python: string;
    /**
     * jhe:postgresMajor: the PostgreSQL major the server runs (e.g. 17). A higher one than it runs upgrades
     * its cluster (pg_upgradecluster, the old cluster kept); setting it back brings the kept one back.
     * Unset: PostgreSQL is left as it is.
     */
    postgresMajor?: number;
    stage: Stage;
    ssh: {
        host: string;
        port: number;
        user: string;
        /** Pinned public host key, "ssh-ed25519 AAAA…". */
        hostKey: string;
        privateKey: pulumi.Output<string>;
    };
    layout: {
        appRoot: string;
        appUser: string;
        appGroup: string;
        serviceName: string;
        backupDir: string;
        keepReleases: number;
    };
    /** Where the server fetches tags from: a URL or a path on the server. */
    repoUrl: string;
    siteUrl: string;
    db: {
        name: string;
        user: string;
        password?: pulumi.Output<string>;
    };
    /** Plain .env settings given in config (secrets are in secretEnv). */
    env: Record<string, string>;
    secretEnv: pulumi.Output<Record<string, string>>;
    /** Names of the secret .env settings (the names are not secret, their values are). */
    secretEnvNames: string[];
    /**
     * Variables left unset on purpose: new in a version's env example, but this server does without
     * them (or must not have them, like DEBUG). The release's .env does not set them.
     */
    envUnset: string[];
    tls: { certificate: string; key: string; selfSigned: boolean };
    /** An optional Django superuser made from config (password a secret). */
    admin?: { user: string; email: string; password: pulumi.Output<string> };
    /**
     * The smoke tests' own account (jhe:smokeTestUser, the secret jhe:smokeTestPassword): they log in to
     * the admin with it and act as it on the API. `create`: the program makes it (staff, no permissions)
     * and keeps its password; otherwise it must exist. Without one, the smoke tests that need an account
     * are skipped (and say so).
     */
    smokeTest?: { user: string; password: pulumi.Output<string>; create: boolean; observation?: Record<string, unknown>; invitation?: Record<string, unknown> };
    /** A directory of wheels on the server for offline installs (air-gapped servers), or undefined. */
    wheelhouse?: string;
    healthTimeoutSeconds: number;
    /**
     * The watch after an upgrade: for `seconds`, the share of failed requests (nginx 5xx, Django's request
     * errors) against the quarter hour before; more than `maxErrorRate` points above it (once `minRequests`
     * came) rolls back by itself. 0 seconds: no watch.
     */
    watch: { seconds: number; maxErrorRate: number; minRequests: number };
    /** staged: migrate a copy while the old version serves; in-window: the runbook's way. */
    migrationStrategy: MigrationStrategy;
    /** Name of an existing S3 bucket for off-host backup copies, or a new one made by the stack. */
    backupBucket: { mode: "off" } | { mode: "create"; name?: string } | { mode: "existing"; name: string };
    /** How backups reach the bucket (with jhe:backupBucket): endpoint, credentials, encryption. */
    offsite?: OffsiteConfig;
    /**
     * Disaster recovery: a new server comes up with this backup's data (a backup id under
     * jhe:backupPrefix, or its s3:// location); used only while the server has no JHE yet.
     */
    restoreFrom?: string;
    /**
     * Prod follows staging: the staging stack (a StackReference) whose rehearsals a prod stack's
     * upgrades must have passed, and an explicit override with its reason.
     */
    staging?: { stack?: string; override?: string };
    /**
     * A backup of what the server runs now, taken and copied off the server whenever this label
     * changes (jhe:snapshot): prod's current data, for a staging stack to clone.
     */
    snapshot?: string;
    /**
     * Prod's data on staging, de-identified (jhe:cloneFrom): a backup in a bucket (s3://<bucket>/<prefix>
     * then "latest" or a backup id) restored into a new database, its personal data replaced, then
     * swapped in (staging's own database kept). keepColumns: "table.column" the stack says hold none.
     */
    clone?: { from: string; keepColumns: string[] };
    /** Said once per run (pulumi.log.warn): settings that are allowed but risky, e.g. unencrypted prod backups. */
    warnings: string[];
}

export interface OffsiteConfig {
    /** S3 endpoint URL (AWS's regional one by default; any S3-compatible server). */
    endpoint: string;
    region: string;
    /** Key prefix in the bucket, ending in "/": each backup is <prefix><backup id>/. */
    prefix: string;
    accessKeyId: pulumi.Output<string>;
    secretAccessKey: pulumi.Output<string>;
    /** ASCII-armored OpenPGP public key every copy is encrypted to; null: the stack said "none". */
    publicKey: string | null;
    /** Its fingerprint (shown in the plan). */
    fingerprint: string | null;
    /** The private key, given only for restores from the bucket (a rollback whose local dump is gone). */
    privateKey?: pulumi.Output<string>;
    /** Local backups kept on the server; older ones go once their copy in the bucket is verified. */
    keepLocal: number;
}

export class ConfigError extends Error {
    constructor(public readonly problems: string[]) {
        super(
            `invalid stack configuration (${problems.length} problem${problems.length === 1 ? "" : "s"}), ` +
                `nothing was changed on the server:\n` +
                problems.map((p) => `  - ${p}`).join("\n"),
        );
        this.name = "ConfigError";
    }
}

export const DEFAULTS = {
    sshPort: 22,
    sshUser: "root",
    stage: "staging" as Stage,
    appRoot: "/opt/jupyterhealth-exchange",
    appUser: "jheapp",
    appGroup: "www-data",
    serviceName: "jhe",
    backupDir: "/backups/jhe",
    keepReleases: 5,
    dbName: "jhe_production",
    dbUser: "jheuser",
    backupBucket: "off",
    tlsCertificate: "/etc/ssl/jhe/jhe.crt",
    tlsKey: "/etc/ssl/jhe/jhe.key",
    healthTimeoutSeconds: 60,
    watchSeconds: 60,
    watchMaxErrorRate: 5,
    watchMinRequests: 20,
    migrationStrategy: "staged" as MigrationStrategy,
};

// ---- value rules (each returns an error text or undefined) ----------------------------------

const NAME = /^[a-z_][a-z0-9_-]{0,31}$/;
const DB_NAME = /^[a-z_][a-z0-9_]{0,62}$/;
const PATH = /^\/(?:[A-Za-z0-9._-]+\/?)*$/;
const TAG = /^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/;
const PIN_NAME = /^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$/;
const PIN_VERSION = /^\d+(?:\.\d+){0,3}(?:(?:a|b|rc)\d+)?(?:\.post\d+)?$/;
const PYTHON = /^python3(?:\.\d{1,2})?$/;
export const DEFAULT_PYTHON = "python3";

/** A package's normalized name (PEP 503), as the host tool compares pins with the lock's lines. */
export function pinName(name: string): string {
    return name.replace(/[-_.]+/g, "-").toLowerCase();
}

/**
 * The release a stack asks for: the tag, plus what jhe:pins and jhe:python change, as semver build
 * metadata (host/jhe_upgrade/spec.py release_id computes the same, and refuses a spec where they differ).
 */
export function releaseId(tag: string, pins: Record<string, string>, python: string): string {
    const parts = Object.entries(pins).map(([n, v]) => [pinName(n), v]).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
        .map(([n, v]) => `${n}-${v}`);
    if (python !== DEFAULT_PYTHON) parts.push(python.replace("python", "py"));
    return parts.length ? `${tag}+${parts.join(".")}` : tag;
}

/** The entries of an object-valued key (jhe:env, jhe:pins); none when unset; anything else is a problem: "jhe:<key> must be <what>". */
function objectEntries(raw: RawConfig, key: string, p: string[], what: string): [string, unknown][] {
    const v = raw[key];
    if (v === undefined || v === null) return [];
    if (typeof v !== "object" || Array.isArray(v)) {
        p.push(`jhe:${key} must be ${what}`);
        return [];
    }
    return Object.entries(v as Record<string, unknown>);
}

/** jhe:pins and jhe:python: how the release is built beside its tag's lock (the runbook's Django-only and Python upgrades). */
function buildConfig(raw: RawConfig, p: string[]): { pins: Record<string, string>; python: string } {
    const pins: Record<string, string> = {};
    const seen = new Map<string, string>();
    for (const [k, v] of objectEntries(raw, "pins", p, "an object of package: exact version, e.g. `pulumi config set --path 'jhe:pins.django' 5.2.19`")) {
        if (!PIN_NAME.test(k)) {
            p.push(`jhe:pins.${k}: a package name is letters, digits, '.', '_' and '-' (as on the package index, e.g. django)`);
        } else if (typeof v !== "string" || !PIN_VERSION.test(v)) {
            p.push(`jhe:pins.${k} must be an exact version such as 5.2.19 (got ${JSON.stringify(v)}): a release is built ` +
                "once, so what it installs is fixed in the stack's config (no ranges, no 5.2.x" +
                (typeof v === "number" ? "; a number loses digits, e.g. 3.10 is read as 3.1: quote it" : "") + ")");
        } else if (seen.has(pinName(k))) {
            p.push(`jhe:pins.${k} and jhe:pins.${seen.get(pinName(k))} name the same package; keep one`);
        } else {
            seen.set(pinName(k), k);
            pins[k] = v;
        }
    }
    const python = str(raw, "python", p, false, DEFAULT_PYTHON) || DEFAULT_PYTHON;
    checked(p, "python", python, rx(PYTHON, "must be the name of a Python 3 interpreter on the server's PATH, e.g. python3.13 " +
        "(python3: the server's default)"));
    return { pins, python };
}
const HOST = /^(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$|^[0-9a-fA-F:]+$/;
const HOST_KEY = /^(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)|sk-ssh-ed25519@openssh\.com) [A-Za-z0-9+/]+={0,3}(?: [^\n\r]*)?$/;
const ENV_NAME = /^[A-Z_][A-Z0-9_]*$/;
/** Settings jhe-upgrade writes into every release's .env itself, and the config they come from. */
const TOOL_WRITTEN: Record<string, string> = {
    SITE_URL: "from jhe:siteUrl", DB_NAME: "from jhe:dbName", DB_USER: "from jhe:dbUser", DB_PASSWORD: "from jhe:dbPassword",
    DB_HOST: "localhost unless jhe:env.DB_HOST says otherwise", DB_PORT: "5432 unless jhe:env.DB_PORT says otherwise",
};
const BUCKET = /^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$/;
const REPO = /^(?:(?:https?|ssh|git):\/\/[A-Za-z0-9@:%._\/~+-]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[A-Za-z0-9._\/~-]+|\/(?:[A-Za-z0-9._-]+\/?)*)$/;

export function checkPath(v: string): string | undefined {
    if (!PATH.test(v) || v.split("/").includes("..")) {
        return "must be an absolute path of letters, digits, '.', '_', '-' and '/', without '..'";
    }
    if (v === "/" || v.length > 200) return "must be a directory below / and at most 200 characters";
    return undefined;
}

export function checkTag(v: string): string | undefined {
    if (!TAG.test(v) || v.includes("..") || v.endsWith(".lock")) {
        return "must be a git tag such as v1.2.0 (letters, digits, '.', '_', '-'; starting with a letter or digit)";
    }
    return undefined;
}

export function checkEnvValue(name: string, v: string): string | undefined {
    // Newlines are fine (a PEM key such as OIDC_RSA_PRIVATE_KEY, set from a file): .env gets them as \n
    // escapes in double quotes, which python-dotenv turns back into newlines.
    if (v.includes("\0")) return `the value of ${name} must not contain a NUL character`;
    if (v.length > 16384) return `the value of ${name} must be at most 16384 characters`;
    if (v.includes("${")) return `the value of ${name} must not contain "\${": JHE's .env reader expands \${NAME}, so it cannot be passed literally`;
    return undefined;
}

/** JHE's settings traps (DESIGN.md §8), checked before any window opens. */
export function jheSettingsProblems(env: Record<string, string>, stage: Stage, where: string): string[] {
    const problems: string[] = [];
    if (stage === "prod" && "DEBUG" in env && env.DEBUG !== "") {
        problems.push(
            `${where}.DEBUG: JHE turns DEBUG on for any non-empty value (even "False"); ` +
                `on a prod stack remove it or set it to "" (empty)`,
        );
    }
    if ("SMTP_PORT" in env && env.SMTP_PORT.trim() === "") {
        problems.push(`${where}.SMTP_PORT: an empty SMTP_PORT crashes every manage.py command; remove it or give a port number`);
    } else if ("SMTP_PORT" in env && !/^\d{1,5}$/.test(env.SMTP_PORT)) {
        problems.push(`${where}.SMTP_PORT: must be a port number (got ${JSON.stringify(env.SMTP_PORT)})`);
    }
    for (const k of ["SECRET_KEY", "DB_PASSWORD"]) {
        if (k in env) problems.push(`${where}.${k}: a secret; set it with \`pulumi config set --secret --path 'jhe:secretEnv.${k}' …\``);
    }
    return problems;
}

// ---- reading --------------------------------------------------------------------------------

/** Raw values as they come out of stack config (plain ones only; secrets are handled apart). */
export interface RawConfig {
    [key: string]: unknown;
}

export interface SecretInputs {
    sshPrivateKey?: pulumi.Output<string>;
    dbPassword?: pulumi.Output<string>;
    secretEnv?: pulumi.Output<Record<string, string>>;
    /** Names in secretEnv, read without revealing values (the keys of the config object). */
    secretEnvNames?: string[];
    adminPassword?: pulumi.Output<string>;
    smokeTestPassword?: pulumi.Output<string>;
    backupAccessKeyId?: pulumi.Output<string>;
    backupSecretAccessKey?: pulumi.Output<string>;
    backupDecryptionKey?: pulumi.Output<string>;
    /** The secretEnv values, only to check their shape; no message ever includes one. */
    secretEnvValues?: Record<string, unknown>;
}

function str(raw: RawConfig, key: string, problems: string[], required: boolean, def?: string): string {
    const v = raw[key];
    if (v === undefined || v === null || v === "") {
        if (required) problems.push(`jhe:${key} is required: set it with \`pulumi config set jhe:${key} <value>\``);
        return def ?? "";
    }
    if (typeof v !== "string") {
        problems.push(`jhe:${key} must be a string (got ${typeof v})`);
        return def ?? "";
    }
    return v;
}

function int(raw: RawConfig, key: string, problems: string[], def: number, min: number, max: number): number {
    const v = raw[key];
    if (v === undefined || v === null || v === "") return def;
    const n = typeof v === "number" ? v : typeof v === "string" && /^\d+$/.test(v) ? Number(v) : NaN;
    if (!Number.isInteger(n) || n < min || n > max) {
        problems.push(`jhe:${key} must be a whole number from ${min} to ${max} (got ${JSON.stringify(v)})`);
        return def;
    }
    return n;
}

function checked(problems: string[], key: string, v: string, rule: (v: string) => string | undefined) {
    const why = rule(v);
    if (why) problems.push(`jhe:${key} ${why} (got ${JSON.stringify(v.length > 80 ? v.slice(0, 80) + "…" : v)})`);
}

const rx = (re: RegExp, what: string) => (v: string) => (re.test(v) ? undefined : what);

/** Validates raw config; throws ConfigError listing every problem. Pure: no Pulumi runtime needed. */
export function validateConfig(raw: RawConfig, secrets: SecretInputs): JheConfig {
    const p: string[] = [];
    const known = new Set([
        "version", "stage", "host", "sshPort", "sshUser", "sshHostKey", "sshPrivateKey", "appRoot", "appUser",
        "appGroup", "serviceName", "backupDir", "keepReleases", "repoUrl", "siteUrl", "dbName", "dbUser",
        "dbPassword", "env", "secretEnv", "backupBucket", "tlsCertificate", "tlsKey", "wheelhouse", "healthTimeoutSeconds", "migrationStrategy",
        "watchSeconds", "watchMaxErrorRate", "watchMinRequests",
        "tlsSelfSigned", "adminUser", "adminEmail", "adminPassword", "envUnset",
        "smokeTestUser", "smokeTestPassword", "smokeTestCreate", "smokeTestObservation", "smokeTestInvitation",
        ...OFFSITE_KEYS, "stagingStack", "stagingOverride", "snapshot", "cloneFrom", "cloneKeepColumns",
        "pins", "python", "postgresMajor",
    ]);
    for (const k of Object.keys(raw)) {
        if (!known.has(k)) p.push(`jhe:${k} is not a setting of this program (known: ${[...known].sort().join(", ")})`);
    }

    const tag = str(raw, "version", p, true);
    if (tag) checked(p, "version", tag, checkTag);
    const build = buildConfig(raw, p);
    const pgRaw = str(raw, "postgresMajor", p, false, "");
    const postgresMajor = pgRaw === "" ? undefined : Number(pgRaw);
    if (postgresMajor !== undefined && !(Number.isInteger(postgresMajor) && postgresMajor >= 10 && postgresMajor <= 99)) {
        p.push(`jhe:postgresMajor must be a PostgreSQL major version such as 17 (got ${JSON.stringify(pgRaw)}): ` +
            "`pulumi config set jhe:postgresMajor 17` (or remove it to leave PostgreSQL as it is)");
    }

    const stageRaw = str(raw, "stage", p, false, DEFAULTS.stage);
    if (stageRaw !== "staging" && stageRaw !== "prod") p.push(`jhe:stage must be "staging" or "prod" (got ${JSON.stringify(stageRaw)})`);
    const stage = stageRaw === "prod" ? "prod" : "staging";

    const host = str(raw, "host", p, true);
    if (host) checked(p, "host", host, rx(HOST, "must be a host name or an IP address"));
    const hostKey = str(raw, "sshHostKey", p, true).trim();
    if (hostKey) {
        checked(p, "sshHostKey", hostKey, rx(HOST_KEY,
            'must be the server\'s public host key line, e.g. "ssh-ed25519 AAAA…" (ssh-keyscan -t ed25519 <host>)'));
        // The official command provider offers the server only the pinned key's own algorithm; for an RSA
        // key that is "ssh-rsa" (SHA-1), which OpenSSH 8.8 and later (Debian 12 on) no longer accept.
        if (hostKey.startsWith("ssh-rsa ")) {
            p.push("jhe:sshHostKey is the server's RSA key: the command provider would offer the server only the ssh-rsa (SHA-1) " +
                "host key algorithm, which OpenSSH 8.8 and later refuse. Pin its Ed25519 or ECDSA key instead " +
                "(ssh-keyscan -t ed25519 <host>, or /etc/ssh/ssh_host_ed25519_key.pub on the server)");
        }
    }
    const sshPort = int(raw, "sshPort", p, DEFAULTS.sshPort, 1, 65535);
    const sshUser = str(raw, "sshUser", p, false, DEFAULTS.sshUser);
    checked(p, "sshUser", sshUser, rx(NAME, "must be a Unix user name (lower-case letters, digits, '_', '-')"));
    if (!secrets.sshPrivateKey) {
        p.push("jhe:sshPrivateKey is required: `pulumi config set --secret jhe:sshPrivateKey < ~/.ssh/id_ed25519`");
    }

    const layout = {
        appRoot: str(raw, "appRoot", p, false, DEFAULTS.appRoot),
        appUser: str(raw, "appUser", p, false, DEFAULTS.appUser),
        appGroup: str(raw, "appGroup", p, false, DEFAULTS.appGroup),
        serviceName: str(raw, "serviceName", p, false, DEFAULTS.serviceName),
        backupDir: str(raw, "backupDir", p, false, DEFAULTS.backupDir),
        keepReleases: int(raw, "keepReleases", p, DEFAULTS.keepReleases, 2, 50),
    };
    checked(p, "appRoot", layout.appRoot, checkPath);
    checked(p, "backupDir", layout.backupDir, checkPath);
    for (const k of ["appUser", "appGroup", "serviceName"] as const) {
        checked(p, k, layout[k], rx(NAME, "must be a Unix name (lower-case letters, digits, '_', '-'; at most 32)"));
    }
    if (layout.backupDir === layout.appRoot || layout.backupDir.startsWith(layout.appRoot.replace(/\/$/, "") + "/")) {
        p.push(`jhe:backupDir must lie outside jhe:appRoot (${layout.appRoot}), so a release switch never touches backups`);
    }

    const repoUrl = str(raw, "repoUrl", p, false, `${layout.appRoot.replace(/\/$/, "")}/repo.git`);
    if (raw.repoUrl) checked(p, "repoUrl", repoUrl, rx(REPO, "must be an http(s)/ssh/git URL, user@host:path, or an absolute path on the server"));

    const siteUrl = str(raw, "siteUrl", p, true);
    if (siteUrl) {
        let ok = false;
        try {
            const u = new URL(siteUrl);
            ok = (u.protocol === "https:" || u.protocol === "http:") && HOST.test(u.hostname) && !u.username && !u.password;
            if (ok && stage === "prod" && u.protocol !== "https:") {
                p.push(`jhe:siteUrl must use https on a prod stack (got ${JSON.stringify(siteUrl)})`);
            }
        } catch {
            ok = false;
        }
        if (!ok) p.push(`jhe:siteUrl must be a URL like https://jhe.example.org (got ${JSON.stringify(siteUrl)})`);
    }

    const db = {
        name: str(raw, "dbName", p, false, DEFAULTS.dbName),
        user: str(raw, "dbUser", p, false, DEFAULTS.dbUser),
        password: secrets.dbPassword,
    };
    checked(p, "dbName", db.name, rx(DB_NAME, "must be a PostgreSQL name (lower-case letters, digits, '_')"));
    checked(p, "dbUser", db.user, rx(DB_NAME, "must be a PostgreSQL role name (lower-case letters, digits, '_')"));

    const env: Record<string, string> = {};
    for (const [k, v] of objectEntries(raw, "env", p, "an object of NAME: value pairs (pulumi config set --path 'jhe:env.NAME' value)")) {
        if (!ENV_NAME.test(k)) {
            p.push(`jhe:env.${k}: names must be upper-case letters, digits and '_' (like SITE_URL)`);
            continue;
        }
        const value = typeof v === "string" ? v : typeof v === "number" || typeof v === "boolean" ? String(v) : undefined;
        if (value === undefined) {
            p.push(`jhe:env.${k} must be a string, number or boolean`);
            continue;
        }
        const why = checkEnvValue(`jhe:env.${k}`, value);
        if (why) p.push(why);
        else env[k] = value;
    }
    p.push(...jheSettingsProblems(env, stage, "jhe:env"));
    const secretEnvNames = [...(secrets.secretEnvNames ?? [])];
    for (const k of secretEnvNames) {
        if (!ENV_NAME.test(k)) p.push(`jhe:secretEnv.${k}: names must be upper-case letters, digits and '_'`);
        if (k in env) p.push(`jhe:env.${k} and jhe:secretEnv.${k} are both set; keep one`);
        const v = secrets.secretEnvValues?.[k];
        if (v !== undefined && typeof v !== "string") p.push(`jhe:secretEnv.${k} must be a string`);
        else if (v !== undefined) {
            const why = checkEnvValue(`jhe:secretEnv.${k}`, v);
            if (why) p.push(why);
        }
    }
    const envUnset: string[] = [];
    if (raw.envUnset !== undefined && raw.envUnset !== null) {
        if (!Array.isArray(raw.envUnset)) {
            p.push("jhe:envUnset must be a list of variable names (pulumi config set --path 'jhe:envUnset[0]' DEBUG)");
        } else {
            for (const [i, k] of (raw.envUnset as unknown[]).entries()) {
                if (typeof k !== "string" || !ENV_NAME.test(k)) {
                    p.push(`jhe:envUnset[${i}]: must be a variable name of upper-case letters, digits and '_' (got ${JSON.stringify(k)})`);
                } else if (k in env || secretEnvNames.includes(k)) {
                    p.push(`jhe:envUnset[${i}]: ${k} is also set in jhe:${k in env ? "env" : "secretEnv"}; keep one`);
                } else if (TOOL_WRITTEN[k]) {
                    p.push(`jhe:envUnset[${i}]: jhe-upgrade writes ${k} into every release's .env itself (${TOOL_WRITTEN[k]}); remove it from the list`);
                } else if (k === "SECRET_KEY") {
                    p.push(`jhe:envUnset[${i}]: SECRET_KEY cannot be left unset (every JHE worker would invent its own and sessions break); set it with \`pulumi config set --secret --path 'jhe:secretEnv.SECRET_KEY' …\``);
                } else if (!envUnset.includes(k)) envUnset.push(k);
            }
        }
    }

    const selfSignedRaw = raw.tlsSelfSigned;
    if (selfSignedRaw !== undefined && !["true", "false", true, false].includes(selfSignedRaw as string | boolean)) {
        p.push(`jhe:tlsSelfSigned must be true or false (got ${JSON.stringify(selfSignedRaw)})`);
    }
    const tls = {
        certificate: str(raw, "tlsCertificate", p, false, DEFAULTS.tlsCertificate),
        key: str(raw, "tlsKey", p, false, DEFAULTS.tlsKey),
        selfSigned: selfSignedRaw === true || selfSignedRaw === "true",
    };
    if (tls.selfSigned && stage === "prod") p.push("jhe:tlsSelfSigned is for test stacks; a prod stack needs a real certificate (jhe:tlsCertificate, jhe:tlsKey)");
    const adminUser = str(raw, "adminUser", p, false, "");
    const adminEmail = str(raw, "adminEmail", p, false, "");
    let admin: JheConfig["admin"];
    // The superuser logs in by what the app's user model says: a user name (Django's own model) or the
    // e-mail address (JHE's JheUser: USERNAME_FIELD = "email"); the host tool picks the right one.
    if (adminUser || adminEmail) {
        if (adminUser) checked(p, "adminUser", adminUser, rx(/^[A-Za-z0-9@.+_-]{1,150}$/, "must be a Django user name (letters, digits, @ . + - _)"));
        if (adminEmail) checked(p, "adminEmail", adminEmail, rx(/^[^\s@]+@[^\s@]+\.[^\s@]+$/, "must be an e-mail address"));
        if (!secrets.adminPassword) p.push("jhe:adminPassword is required with jhe:adminUser or jhe:adminEmail: `pulumi config set --secret jhe:adminPassword`");
        else admin = { user: adminUser, email: adminEmail, password: secrets.adminPassword };
    }
    const smokeUser = str(raw, "smokeTestUser", p, false, "");
    const smokeCreateRaw = raw.smokeTestCreate;
    if (smokeCreateRaw !== undefined && !["true", "false", true, false].includes(smokeCreateRaw as string | boolean)) {
        p.push(`jhe:smokeTestCreate must be true or false (got ${JSON.stringify(smokeCreateRaw)})`);
    }
    let smokeTest: JheConfig["smokeTest"];
    if (smokeUser) {
        // JHE's users log in by e-mail; an app on Django's own user model by user name (the tool uses the model's own field).
        checked(p, "smokeTestUser", smokeUser, rx(/^[A-Za-z0-9@.+_-]{1,150}$/, "must be the account's login: an e-mail address for JHE (letters, digits, @ . + - _)"));
        if (adminUser && smokeUser === adminUser || adminEmail && smokeUser === adminEmail) {
            p.push("jhe:smokeTestUser must be an account of its own, not the superuser's: the smoke tests' account is made staff without permissions");
        }
        if (!secrets.smokeTestPassword) p.push("jhe:smokeTestPassword is required with jhe:smokeTestUser: `pulumi config set --secret jhe:smokeTestPassword`");
        else smokeTest = { user: smokeUser, password: secrets.smokeTestPassword, create: smokeCreateRaw === true || smokeCreateRaw === "true" };
        // The runbook's test-observation.json (what this JHE accepts: its device, a code the patient consented to, the
        // value) and the invitation's fields (e.g. the client's id): the upload and the link are tested only with them.
        const obs = raw.smokeTestObservation;
        if (obs !== undefined && (typeof obs !== "object" || obs === null || Array.isArray(obs) || (obs as Record<string, unknown>).resourceType !== "Observation")) {
            p.push('jhe:smokeTestObservation must be a FHIR Observation (an object with "resourceType": "Observation"), as the runbook\'s ' +
                "test-observation.json: set it as an object under jhe:smokeTestObservation in Pulumi.<stack>.yaml");
        }
        const inv = raw.smokeTestInvitation;
        if (inv !== undefined && (typeof inv !== "object" || inv === null || Array.isArray(inv))) {
            p.push('jhe:smokeTestInvitation must be an object of the fields this JHE\'s invitation endpoint wants besides the patient (e.g. {"client_id": 3})');
        }
        if (smokeTest && obs && typeof obs === "object" && !Array.isArray(obs)) smokeTest.observation = obs as Record<string, unknown>;
        if (smokeTest && inv && typeof inv === "object" && !Array.isArray(inv)) smokeTest.invitation = inv as Record<string, unknown>;
    } else if (secrets.smokeTestPassword || smokeCreateRaw === true || smokeCreateRaw === "true") {  // (false is Pulumi.yaml's default)
        p.push("jhe:smokeTestPassword and jhe:smokeTestCreate need jhe:smokeTestUser (the account's login): `pulumi config set jhe:smokeTestUser smoke-test@<your domain>`");
    }
    checked(p, "tlsCertificate", tls.certificate, checkPath);
    checked(p, "tlsKey", tls.key, checkPath);
    const wheelhouse = str(raw, "wheelhouse", p, false, "") || undefined;
    if (wheelhouse) checked(p, "wheelhouse", wheelhouse, checkPath);
    const healthTimeoutSeconds = int(raw, "healthTimeoutSeconds", p, DEFAULTS.healthTimeoutSeconds, 5, 1800);
    const watch = {
        seconds: int(raw, "watchSeconds", p, DEFAULTS.watchSeconds, 0, 3600),
        maxErrorRate: int(raw, "watchMaxErrorRate", p, DEFAULTS.watchMaxErrorRate, 1, 100),
        minRequests: int(raw, "watchMinRequests", p, DEFAULTS.watchMinRequests, 1, 1_000_000),
    };
    const strategyRaw = str(raw, "migrationStrategy", p, false, DEFAULTS.migrationStrategy);
    if (strategyRaw !== "staged" && strategyRaw !== "in-window") {
        p.push(`jhe:migrationStrategy must be "staged" or "in-window" (got ${JSON.stringify(strategyRaw)}): pulumi config set jhe:migrationStrategy staged`);
    }
    const migrationStrategy: MigrationStrategy = strategyRaw === "in-window" ? "in-window" : "staged";

    let backupBucket: JheConfig["backupBucket"] = { mode: "off" };
    const bb = str(raw, "backupBucket", p, false, DEFAULTS.backupBucket);
    if (bb === "create") backupBucket = { mode: "create" };
    else if (bb.startsWith("create:")) backupBucket = { mode: "create", name: bb.slice(7) };
    else if (bb !== "off") backupBucket = { mode: "existing", name: bb };
    if (backupBucket.mode !== "off" && backupBucket.name !== undefined && !BUCKET.test(backupBucket.name)) {
        p.push(`jhe:backupBucket must be "off", "create", "create:<name>" or an existing bucket name (got ${JSON.stringify(bb)})`);
    }

    const warnings: string[] = [];
    const offsite = backupBucket.mode === "off" ? offsiteNotUsed(raw, p) : offsiteConfig(raw, secrets, p, stage, layout.serviceName, warnings);
    const restoreFrom = str(raw, "restoreFrom", p, false, "") || undefined;
    if (restoreFrom) {
        checked(p, "restoreFrom", restoreFrom, rx(RESTORE_FROM, "must be a backup id (like 20260101-120000-v1.0.0-to-v1.1.0) or its location s3://<bucket>/<prefix><id>/"));
        const named = /^s3:\/\/([^/]+)\//.exec(restoreFrom)?.[1];
        if (named && backupBucket.mode !== "off" && backupBucket.name && named !== backupBucket.name) {
            p.push(`jhe:restoreFrom names bucket ${named}, but jhe:backupBucket is ${backupBucket.name}`);
        }
    }

    const staging = stagingConfig(raw, p, stage);
    const snapshot = str(raw, "snapshot", p, false, "").trim() || undefined;
    if (snapshot) checked(p, "snapshot", snapshot, rx(/^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$/, "must be a label (letters, digits, . _ : -), e.g. for-staging-2026-11-30"));
    if (snapshot && backupBucket.mode === "off") warnings.push("jhe:snapshot without jhe:backupBucket: the snapshot stays on the server (a staging stack clones only from a bucket)");
    const clone = cloneConfig(raw, p, stage, backupBucket.mode !== "off");

    if (p.length) throw new ConfigError(p);
    return {
        version: releaseId(tag, build.pins, build.python),
        tag,
        ...build,
        ...(postgresMajor !== undefined ? { postgresMajor } : {}),
        stage,
        ssh: { host, port: sshPort, user: sshUser, hostKey, privateKey: secrets.sshPrivateKey! },
        layout,
        repoUrl,
        siteUrl,
        db,
        env,
        secretEnv: secrets.secretEnv ?? pulumi.output({} as Record<string, string>),
        secretEnvNames,
        envUnset,
        tls,
        admin,
        smokeTest,
        wheelhouse,
        healthTimeoutSeconds,
        watch,
        migrationStrategy,
        backupBucket,
        offsite,
        restoreFrom,
        staging,
        snapshot,
        clone,
        warnings,
    };
}

const CLONE_FROM = /^s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/(?:[A-Za-z0-9!_.*'()-]+\/)*[A-Za-z0-9][A-Za-z0-9._-]{0,200}\/?$/;

/** jhe:cloneFrom (staging only: prod's backup, de-identified) and jhe:cloneKeepColumns. */
function cloneConfig(raw: RawConfig, p: string[], stage: Stage, bucket: boolean): JheConfig["clone"] {
    const from = str(raw, "cloneFrom", p, false, "").trim();
    const keepRaw = raw.cloneKeepColumns;
    let keepColumns: string[] = [];
    if (keepRaw !== undefined && keepRaw !== null && keepRaw !== "") {
        const arr = typeof keepRaw === "string" ? (() => { try { return JSON.parse(keepRaw); } catch { return undefined; } })() : keepRaw;
        if (!Array.isArray(arr) || !arr.every((x) => typeof x === "string" && /^[a-z_][a-z0-9_]*\.[a-z_][a-z0-9_]*$/.test(x))) {
            p.push(`jhe:cloneKeepColumns must be a list of "table.column" (lower case), e.g. ["core_study.tagline"] ` +
                `(pulumi config set --path 'jhe:cloneKeepColumns[0]' core_study.tagline)`);
        } else keepColumns = arr as string[];
    }
    if (!from) {
        if (keepColumns.length) p.push("jhe:cloneKeepColumns is set but jhe:cloneFrom is not: remove it, or set jhe:cloneFrom");
        return undefined;
    }
    if (stage === "prod") {
        p.push("jhe:cloneFrom replaces this server's database with a de-identified copy of another's: it is for staging stacks, " +
            "never prod (remove it here; to restore prod, revert jhe:version or use jhe:restoreFrom on a new server)");
        return undefined;
    }
    checked(p, "cloneFrom", from, rx(CLONE_FROM, "must be s3://<bucket>/<prefix>latest (the newest backup there) or " +
        "s3://<bucket>/<prefix><backup id>/, e.g. s3://jhe-backups/jhe/prod/latest"));
    if (!bucket) {
        p.push("jhe:cloneFrom fetches prod's backup with this stack's bucket settings: set jhe:backupBucket, jhe:backupEndpoint, " +
            "jhe:backupAccessKeyId/jhe:backupSecretAccessKey (allowed to read prod's prefix) and jhe:backupDecryptionKey (prod's backups' key)");
    }
    return { from, keepColumns };
}

const STACK_NAME = /^[A-Za-z0-9_.-]+(?:\/[A-Za-z0-9_.-]+){0,2}$/;

/** jhe:stagingStack (required on prod) and jhe:stagingOverride (a reason, recorded). */
function stagingConfig(raw: RawConfig, p: string[], stage: Stage): JheConfig["staging"] {
    const stack = str(raw, "stagingStack", p, false, "") || undefined;
    const override = str(raw, "stagingOverride", p, false, "").trim() || undefined;
    if (stack) checked(p, "stagingStack", stack, rx(STACK_NAME, "must be a stack name: <stack>, <project>/<stack> or <org>/<project>/<stack>"));
    if (override !== undefined && override.length < 10) {
        p.push("jhe:stagingOverride must say why staging is skipped (at least 10 characters): it is recorded in UPGRADE_LOG.md and the outputs");
    }
    if (stage !== "prod") {
        if (stack || override) p.push("jhe:stagingStack and jhe:stagingOverride are for prod stacks (jhe:stage prod): remove them here");
        return undefined;
    }
    if (!stack) {
        p.push("jhe:stagingStack is required on a prod stack: the staging stack whose rehearsals prod follows " +
            "(`pulumi config set jhe:stagingStack organization/jhe/staging`); an upgrade goes only to a version it has run and passed");
    }
    return { stack, override };
}

const OFFSITE_KEYS = ["backupEndpoint", "backupRegion", "backupPrefix", "backupAccessKeyId", "backupSecretAccessKey",
    "backupEncryptionKey", "backupDecryptionKey", "keepLocalBackups", "restoreFrom"];
const RESTORE_FROM = /^(?:s3:\/\/[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\/(?:[A-Za-z0-9!_.*'()-]+\/)*)?[A-Za-z0-9][A-Za-z0-9._-]{0,200}\/?$/;
const REGION = /^[a-z]{2}(-[a-z]+)+-\d$|^[a-z0-9-]{1,32}$/;
const PREFIX = /^(?:[A-Za-z0-9!_.*'()-]+\/)*$/;

/** With jhe:backupBucket "off", the settings of copies would do nothing: said, not ignored. */
function offsiteNotUsed(raw: RawConfig, p: string[]): undefined {
    // (the secret ones are not in `raw`; keepLocalBackups always is: Pulumi.yaml gives it a default)
    for (const k of OFFSITE_KEYS.filter((x) => x !== "keepLocalBackups")) {
        if (raw[k] !== undefined && raw[k] !== null && raw[k] !== "") p.push(`jhe:${k} is set but jhe:backupBucket is "off": set jhe:backupBucket too, or remove jhe:${k}`);
    }
    return undefined;
}

/** Where copies of backups go and how they are encrypted (jhe:backup*). */
function offsiteConfig(raw: RawConfig, secrets: SecretInputs, p: string[], stage: Stage, service: string, warnings: string[]): OffsiteConfig | undefined {
    const region = str(raw, "backupRegion", p, false, "us-east-1");
    checked(p, "backupRegion", region, rx(REGION, "must be a region name such as eu-central-1"));
    const endpoint = str(raw, "backupEndpoint", p, false, `https://s3.${region}.amazonaws.com`);
    try {
        const u = new URL(endpoint);
        if (u.protocol !== "https:" && u.protocol !== "http:") throw new Error();
        if (u.username || u.password || u.search) {
            p.push("jhe:backupEndpoint must hold no credentials or query (set jhe:backupAccessKeyId and jhe:backupSecretAccessKey)");
        }
        if (stage === "prod" && u.protocol !== "https:") p.push(`jhe:backupEndpoint must use https on a prod stack (got ${JSON.stringify(endpoint)})`);
    } catch {
        p.push(`jhe:backupEndpoint must be the URL of an S3-compatible endpoint, like https://s3.eu-central-1.amazonaws.com (got ${JSON.stringify(endpoint)})`);
    }
    let prefix = str(raw, "backupPrefix", p, false, `jhe/${service}/`);
    if (prefix && !prefix.endsWith("/")) prefix += "/";
    checked(p, "backupPrefix", prefix, (v) => (PREFIX.test(v) && !v.split("/").some((s) => s === "." || s === "..") ? undefined
        : "must be path segments of letters, digits and !_.*'()- each ending in /, like jhe/prod/ (no . or .. segments)"));
    const keepLocal = int(raw, "keepLocalBackups", p, 3, 1, 100);
    if (!secrets.backupAccessKeyId || !secrets.backupSecretAccessKey) {
        p.push("jhe:backupAccessKeyId and jhe:backupSecretAccessKey are required with jhe:backupBucket: the server's credentials for the bucket " +
            "(`pulumi config set --secret jhe:backupAccessKeyId …` and `pulumi config set --secret jhe:backupSecretAccessKey …`); " +
            "give them only put, get and list on the bucket");
    }
    const keyRaw = str(raw, "backupEncryptionKey", p, false, "").trim();
    let publicKey: string | null = null;
    let fingerprint: string | null = null;
    if (keyRaw === "none") {
        const w = "jhe:backupEncryptionKey is \"none\": copies of backups (the database, .env with its secrets) go to the bucket unencrypted";
        if (stage === "prod") warnings.push(`${w}; on a prod stack, set an OpenPGP public key (gpg --export --armor <key id>)`);
    } else if (!keyRaw) {
        p.push("jhe:backupEncryptionKey is required with jhe:backupBucket: the OpenPGP public key copies are encrypted to " +
            "(`gpg --export --armor <key id> | pulumi config set jhe:backupEncryptionKey --`), or \"none\" to upload them unencrypted");
    } else {
        const fp = openpgpFingerprint(keyRaw);
        if (typeof fp === "string") {
            publicKey = keyRaw + "\n";
            fingerprint = fp;
        } else p.push(`jhe:backupEncryptionKey ${fp.error}`);
    }
    if (secrets.backupDecryptionKey) {
        warnings.push("jhe:backupDecryptionKey is set: the private key goes to the server (in the secret spec of preflight, prepare and " +
            "offsite-backup) on every `up`; it is needed only for a restore from the bucket. Remove it once the restore is done " +
            "(pulumi config rm jhe:backupDecryptionKey)");
    }
    if (!secrets.backupAccessKeyId || !secrets.backupSecretAccessKey) return undefined;
    return {
        endpoint, region, prefix, keepLocal, publicKey, fingerprint,
        accessKeyId: secrets.backupAccessKeyId, secretAccessKey: secrets.backupSecretAccessKey, privateKey: secrets.backupDecryptionKey,
    };
}

/**
 * The fingerprint of an ASCII-armored OpenPGP public key (its primary key packet: SHA-1 for v4 keys,
 * SHA-256 for v6), or why it is not one. A private key is refused: the server must never hold it.
 */
export function openpgpFingerprint(armored: string): string | { error: string } {
    if (/BEGIN PGP PRIVATE KEY BLOCK/.test(armored)) {
        return { error: "holds a private key; give the public key (gpg --export --armor <key id>): the server must never hold the private one" };
    }
    const m = /-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n([\s\S]*?)-----END PGP PUBLIC KEY BLOCK-----/.exec(armored);
    if (!m) return { error: "must be an ASCII-armored OpenPGP public key (-----BEGIN PGP PUBLIC KEY BLOCK-----), from gpg --export --armor <key id>" };
    const lines = m[1].split(/\r?\n/);
    const blank = lines.findIndex((l) => l.trim() === "");
    const body = lines.slice(blank + 1).filter((l) => l.trim() && !l.startsWith("=")).join("");
    const data = Buffer.from(body, "base64");
    if (data.length < 8) return { error: "holds no key data" };
    const first = data[0];
    if (!(first & 0x80)) return { error: "is not OpenPGP data (bad packet header)" };
    let tag: number;
    let len: number;
    let off: number;
    if (first & 0x40) {
        tag = first & 0x3f;
        const o1 = data[1];
        if (o1 < 192) [len, off] = [o1, 2];
        else if (o1 < 224) [len, off] = [((o1 - 192) << 8) + data[2] + 192, 3];
        else if (o1 === 255) [len, off] = [data.readUInt32BE(2), 6];
        else return { error: "has a partial-length first packet, which a key never has" };
    } else {
        tag = (first >> 2) & 0x0f;
        const lt = first & 3;
        if (lt === 0) [len, off] = [data[1], 2];
        else if (lt === 1) [len, off] = [data.readUInt16BE(1), 3];
        else if (lt === 2) [len, off] = [data.readUInt32BE(1), 5];
        else return { error: "has an indeterminate-length first packet" };
    }
    if (tag === 5) return { error: "holds a private key; give the public key (gpg --export --armor <key id>)" };
    if (tag !== 6 || off + len > data.length) return { error: "does not start with a public key packet" };
    const pkt = data.subarray(off, off + len);
    if (pkt[0] === 4) {
        const head = Buffer.from([0x99, (len >> 8) & 0xff, len & 0xff]);
        return crypto.createHash("sha1").update(head).update(pkt).digest("hex").toUpperCase();
    }
    if (pkt[0] === 6) {
        const head = Buffer.alloc(5);
        head[0] = 0x9b;
        head.writeUInt32BE(len, 1);
        return crypto.createHash("sha256").update(head).update(pkt).digest("hex").toUpperCase();
    }
    return { error: `is a version ${pkt[0]} key; give a version 4 or 6 key (gpg 2.2 or later makes version 4)` };
}

/** Keys read as secrets (never into the raw, plain config). */
const SECRET_KEYS = ["sshPrivateKey", "dbPassword", "secretEnv", "adminPassword", "smokeTestPassword", "backupAccessKeyId", "backupSecretAccessKey", "backupDecryptionKey"];

/** Reads the `jhe` namespace of the current stack's config and validates it. */
export function loadConfig(): JheConfig {
    const cfg = new pulumi.Config("jhe");
    const raw: RawConfig = {};
    const plainKeys = [
        "version", "stage", "host", "sshUser", "sshHostKey", "appRoot", "appUser", "appGroup", "serviceName",
        "backupDir", "repoUrl", "siteUrl", "dbName", "dbUser", "backupBucket", "tlsCertificate", "tlsKey", "wheelhouse",
        "adminUser", "adminEmail", "smokeTestUser", "migrationStrategy", "backupEndpoint", "backupRegion", "backupPrefix", "backupEncryptionKey",
        "restoreFrom", "stagingStack", "stagingOverride", "snapshot", "cloneFrom", "python",
    ];
    for (const k of plainKeys) raw[k] = cfg.get(k);
    raw.sshPort = cfg.get("sshPort");
    raw.keepReleases = cfg.get("keepReleases");
    raw.healthTimeoutSeconds = cfg.get("healthTimeoutSeconds");
    for (const k of ["watchSeconds", "watchMaxErrorRate", "watchMinRequests"]) raw[k] = cfg.get(k);
    raw.keepLocalBackups = cfg.get("keepLocalBackups");
    raw.postgresMajor = cfg.get("postgresMajor");
    // A bucket the stack creates lives in the AWS provider's region: its copies are signed for that one.
    const awsRegion = new pulumi.Config("aws").get("region");
    if (!raw.backupRegion && awsRegion && String(raw.backupBucket ?? "").startsWith("create")) raw.backupRegion = awsRegion;
    raw.tlsSelfSigned = cfg.get("tlsSelfSigned");
    raw.smokeTestCreate = cfg.get("smokeTestCreate");
    raw.env = cfg.getObject("env");
    raw.envUnset = cfg.getObject("envUnset");
    raw.cloneKeepColumns = cfg.getObject("cloneKeepColumns");
    raw.smokeTestObservation = cfg.getObject("smokeTestObservation");
    raw.smokeTestInvitation = cfg.getObject("smokeTestInvitation");
    raw.pins = cfg.getObject("pins");
    // Names of unknown keys in the namespace are reported too (typos must not pass silently).
    const all = pulumi.runtime.allConfig();
    for (const full of Object.keys(all)) {
        const [ns, key] = full.split(":");
        if (ns === "jhe" && !(key in raw) && !SECRET_KEYS.includes(key)) raw[key] = all[full];
    }
    const secretEnvObj = cfg.getSecretObject<Record<string, string>>("secretEnv");
    const secretEnvValues = JSON.parse(all["jhe:secretEnv"] ?? "{}") as Record<string, unknown>;
    return validateConfig(raw, {
        sshPrivateKey: cfg.getSecret("sshPrivateKey"),
        dbPassword: cfg.getSecret("dbPassword"),
        adminPassword: cfg.get("adminPassword") ? cfg.getSecret("adminPassword") : undefined,
        smokeTestPassword: cfg.get("smokeTestPassword") ? cfg.getSecret("smokeTestPassword") : undefined,
        backupAccessKeyId: cfg.get("backupAccessKeyId") ? cfg.getSecret("backupAccessKeyId") : undefined,
        backupSecretAccessKey: cfg.get("backupSecretAccessKey") ? cfg.getSecret("backupSecretAccessKey") : undefined,
        backupDecryptionKey: cfg.get("backupDecryptionKey") ? cfg.getSecret("backupDecryptionKey") : undefined,
        secretEnv: secretEnvObj ? secretEnvObj.apply((o) => Object.fromEntries(Object.entries(o).map(([k, v]) => [k, String(v)]))) : undefined,
        secretEnvNames: Object.keys(secretEnvValues),
        secretEnvValues,
    });
}
