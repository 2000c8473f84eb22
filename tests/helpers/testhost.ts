// Test servers from testhost/testhost.sh, used by host and e2e tests: boot, SSH, PostgreSQL over
// the namespace link, HTTPS through the server's nginx. Only addresses of hosts these tests made.
import { execFile, spawn } from "child_process";
import * as fs from "fs";
import * as https from "https";
import * as path from "path";
import { promisify } from "util";
import { Client } from "pg";
import { ROOT } from "./engine";

const execFileP = promisify(execFile);
export const TESTHOST = path.join(ROOT, "testhost", "testhost.sh");

export interface HostInfo {
    name: string;
    state: string;
    address: string;
    hostAddress: string;
    sshPort: number;
    user: string;
    privateKeyPath: string;
    /** The server's Ed25519 host key line (what the stacks pin by default). */
    hostKey: string;
    /** Every host key the server has, by type, as a stock Debian server: ed25519, ecdsa, rsa. */
    hostKeys: { ed25519: string; ecdsa: string; rsa: string };
    knownHostsPath: string;
    pgPassword: string;
    netns: string;
    legacy: string | null;
    siteUrl: string | null;
    upstreamRepo: string;
    wheelhouse: string;
    nspawnPid: number;
}

export interface UpOptions {
    legacy?: string;
    patients?: number;
    observations?: number;
    /** PostgreSQL's data and /backups on this machine's disk, not in the in-memory overlay. */
    dataOnDisk?: boolean;
    /** The fixture app boots and stops as slowly as the real JHE: e.g. "boot=6 stop=3.5" (seconds). */
    appTiming?: string;
    /** "next": Debian 13's PostgreSQL 17 and Python 3.13 installed beside Debian 12's (testhost/rootfs.sh next). */
    image?: "next";
}

/** Boots a test server; rejects with the script's own words if it cannot. */
export async function up(name: string, opts: UpOptions = {}): Promise<HostInfo> {
    const args = ["up", "--name", name];
    if (opts.legacy) args.push("--legacy", opts.legacy);
    if (opts.patients !== undefined) args.push("--patients", String(opts.patients));
    if (opts.observations !== undefined) args.push("--observations", String(opts.observations));
    if (opts.dataOnDisk) args.push("--data-on-disk");
    if (opts.appTiming) args.push("--app-timing", opts.appTiming);
    if (opts.image) args.push("--image", opts.image);
    const { stdout } = await execFileP(TESTHOST, args, { maxBuffer: 1 << 20, timeout: 600_000 });
    return JSON.parse(stdout.trim().split("\n").pop()!) as HostInfo;
}

export async function down(name: string): Promise<void> {
    await execFileP(TESTHOST, ["down", "--name", name], { timeout: 60_000 });
}

export interface RunResult {
    code: number;
    stdout: string;
    stderr: string;
}

/** Runs a shell command on the server as root over SSH (pinned host key). Never throws on exit code. */
export function ssh(host: HostInfo, command: string, stdin?: string, timeoutMs = 300_000): Promise<RunResult> {
    return new Promise((resolve, reject) => {
        const child = spawn("ssh", [
            "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", `UserKnownHostsFile=${host.knownHostsPath}`,
            "-o", "LogLevel=ERROR", "-i", host.privateKeyPath, `${host.user}@${host.address}`, command,
        ]);
        let stdout = "";
        let stderr = "";
        const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
        child.stdout.on("data", (d) => (stdout += d));
        child.stderr.on("data", (d) => (stderr += d));
        child.on("error", reject);
        child.on("close", (code) => {
            clearTimeout(timer);
            resolve({ code: code ?? -1, stdout, stderr });
        });
        child.stdin.end(stdin ?? "");
    });
}

/** Like ssh() but fails the test with the server's output when the command fails. */
export async function sshOk(host: HostInfo, command: string, stdin?: string): Promise<string> {
    const r = await ssh(host, command, stdin);
    if (r.code !== 0) throw new Error(`on ${host.name}: \`${command}\` exited ${r.code}\n${r.stdout}\n${r.stderr}`);
    return r.stdout;
}

/** Samples the server's process list (every 100 ms, at most 600 times) until stop(), which returns the samples. */
export function sampleProcesses(host: HostInfo): { stop(): Promise<string[]> } {
    let sampling = true;
    const ps: string[] = [];
    const done = (async () => {
        for (let i = 0; sampling && i < 600; i++) {
            ps.push((await ssh(host, "ps -eo args --no-headers")).stdout);
            await new Promise((res) => setTimeout(res, 100));
        }
    })();
    return {
        stop: async () => {
            sampling = false;
            await done;
            return ps;
        },
    };
}

/** A PostgreSQL client to the server's database, over the namespace link. */
export async function pg(host: HostInfo, database = "jhe_production"): Promise<Client> {
    const c = new Client({ host: host.address, port: 5432, user: "postgres", password: host.pgPassword, database });
    await c.connect();
    return c;
}

export async function query<T = Record<string, unknown>>(host: HostInfo, sql: string, params: unknown[] = [], database?: string): Promise<T[]> {
    const c = await pg(host, database);
    try {
        return (await c.query(sql, params)).rows as T[];
    } finally {
        await c.end();
    }
}

/** Row counts and an order-independent checksum of a table's rows. */
export async function tableFingerprint(host: HostInfo, table: string, database?: string): Promise<{ rows: number; checksum: string }> {
    if (!/^[a-z_][a-z0-9_]*$/.test(table)) throw new Error(`bad table name ${table}`);
    const [r] = await query<{ rows: string; checksum: string | null }>(
        host,
        `SELECT count(*) AS rows, md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))) AS checksum FROM ${table} t`,
        [],
        database,
    );
    return { rows: Number(r.rows), checksum: r.checksum ?? "empty" };
}

export interface HttpResult {
    status: number;
    body: string;
    headers: Record<string, string | string[] | undefined>;
}

/** HTTPS to the server's nginx with the site's Host/SNI, whatever the DNS says (self-signed cert). */
export function request(host: HostInfo, method: string, urlPath: string, body?: unknown, timeoutMs = 10_000,
    headers: Record<string, string> = {}): Promise<HttpResult> {
    const site = new URL(host.siteUrl ?? `https://${host.name}.jhe.test`);
    return new Promise((resolve, reject) => {
        const data = body === undefined ? undefined : typeof body === "string" ? body : JSON.stringify(body);
        const req = https.request(
            {
                host: host.address,
                port: 443,
                method,
                path: urlPath,
                servername: site.hostname,
                rejectUnauthorized: false,
                timeout: timeoutMs,
                headers: {
                    Host: site.hostname,
                    ...(data ? { "Content-Type": "application/json", "Content-Length": Buffer.byteLength(data) } : {}),
                    ...headers,
                },
            },
            (res) => {
                let text = "";
                res.on("data", (d) => (text += d));
                res.on("end", () => resolve({ status: res.statusCode ?? 0, body: text, headers: res.headers }));
            },
        );
        req.on("timeout", () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${method} ${urlPath}`)));
        req.on("error", reject);
        req.end(data);
    });
}

/** A .env on the server as JHE reads it: python-dotenv itself (of the app's venv), no interpolation aside. */
export async function dotenvValues(host: HostInfo, file: string): Promise<Record<string, string | null>> {
    const py = `$(ls -d /opt/jupyterhealth-exchange/current/venv /opt/jupyterhealth-exchange/venv 2>/dev/null | head -n1)/bin/python`;
    return JSON.parse(await sshOk(host, `${py} -c 'import json, sys, dotenv; print(json.dumps(dotenv.dotenv_values(sys.argv[1])))' ${file}`));
}

/** How many times the unit was started since `sinceEpochSeconds` (systemd's own journal lines). */
export async function serviceStarts(host: HostInfo, sinceEpochSeconds: number, unit = "jhe"): Promise<number> {
    const out = await sshOk(host, `journalctl -u ${unit} --since @${Math.floor(sinceEpochSeconds)} -o cat --no-pager | grep -c '^Started ' || true`);
    return Number(out.trim());
}

/** JHE's OIDC signing keys through nginx (django-oauth-toolkit): the status and how many keys it serves. */
export async function oidcKeys(host: HostInfo): Promise<{ status: number; keys: number }> {
    const r = await request(host, "GET", "/o/.well-known/jwks.json");
    let keys = 0;
    try {
        keys = (JSON.parse(r.body).keys ?? []).length;
    } catch {
        /* not JSON: a 500 page */
    }
    return { status: r.status, keys };
}

function cookie(headers: HttpResult["headers"], name: string): string | undefined {
    const all = ([] as string[]).concat(headers["set-cookie"] ?? []);
    return all.map((c) => new RegExp(`^${name}=([^;]*)`).exec(c)?.[1]).find((v) => v !== undefined);
}

/** Logs into Django's admin through nginx as a person does (form, CSRF cookie): the status (302 when
 * the login worked) and the session cookie the app made. */
export async function adminLogin(host: HostInfo, login: string, password: string): Promise<{ status: number; sessionid?: string }> {
    const site = new URL(host.siteUrl ?? `https://${host.name}.jhe.test`);
    const page = await request(host, "GET", "/admin/login/");
    const token = /name="csrfmiddlewaretoken" value="([^"]+)"/.exec(page.body)?.[1];
    const csrf = cookie(page.headers, "csrftoken");
    if (!token || !csrf) throw new Error(`no CSRF token on /admin/login/ (status ${page.status})`);
    const form = new URLSearchParams({ csrfmiddlewaretoken: token, username: login, password, next: "/admin/" }).toString();
    const r = await request(host, "POST", "/admin/login/", form, 10_000, {
        "Content-Type": "application/x-www-form-urlencoded", Cookie: `csrftoken=${csrf}`, Referer: `${site.origin}/admin/login/`,
    });
    return { status: r.status, sessionid: cookie(r.headers, "sessionid") };
}

/** What a finished instance may have left on this machine (all must be empty after `down`). */
export async function leftovers(info: HostInfo): Promise<string[]> {
    const found: string[] = [];
    const { stdout: ns } = await execFileP("ip", ["netns", "list"]);
    if (ns.split("\n").some((l) => l.split(" ")[0] === info.netns)) found.push(`netns ${info.netns}`);
    const { stdout: links } = await execFileP("ip", ["-o", "link"]);
    if (links.includes(`jv-${info.name}@`) || links.includes(`jv-${info.name}:`)) found.push(`veth jv-${info.name}`);
    try {
        process.kill(info.nspawnPid, 0);
        found.push(`process ${info.nspawnPid}`);
    } catch {
        /* gone, as it should be */
    }
    const mounts = fs.readFileSync("/proc/mounts", "utf8");
    for (const l of mounts.split("\n")) {
        if (l.includes(`/jhe-testhost/${info.name}`) || l.includes(`jhe-${info.name}`)) found.push(`mount ${l}`);
    }
    for (const cg of ["/sys/fs/cgroup/unified/jhe-testhost", "/sys/fs/cgroup/systemd/jhe-testhost"]) {
        if (fs.existsSync(path.join(cg, info.name))) found.push(`cgroup ${cg}/${info.name}`);
    }
    if (fs.existsSync(path.dirname(info.privateKeyPath))) found.push(`instance dir ${path.dirname(info.privateKeyPath)}`);
    const disk = path.join(process.env.JHE_TESTHOST_DISK ?? "/var/lib/jhe-testhost", info.name);
    if (fs.existsSync(disk)) found.push(`data dir ${disk}`);
    return found;
}

/** The version /health reports through nginx, or "HTTP <status>". */
export async function servingVersion(host: HostInfo): Promise<string> {
    const r = await request(host, "GET", "/health");
    return r.status === 200 ? JSON.parse(r.body).version : `HTTP ${r.status}`;
}
