// A real S3-compatible server for the backup tests: S3Proxy (SigV4 authentication, filesystem
// backend) inside a test host's own network namespace, on that namespace's loopback - the server
// reaches it at 127.0.0.1, nothing outside the namespace can. Its storage is a directory here, so a
// test can look at exactly what the bucket holds.
import { execFileSync, spawn, ChildProcess } from "child_process";
import * as crypto from "crypto";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";
import { ConfigMap } from "@pulumi/pulumi/automation";
import { ROOT } from "./engine";
import { HostInfo } from "./testhost";

export interface S3Server {
    endpoint: string;
    accessKey: string;
    secretKey: string;
    /** <basedir>/<bucket>/<key>: the bucket's objects as files. */
    basedir: string;
    makeBucket(name: string): void;
    /** Every object under `prefix` of `bucket`, as paths relative to the bucket. */
    objects(bucket: string, prefix?: string): string[];
    stop(): Promise<void>;
}

const PORT = 9000;

/**
 * Starts S3Proxy in `h`'s namespace. With `sharing`, it serves the same storage with the same
 * credentials as that one: one bucket, reached by servers in two namespaces (as two servers reach
 * one S3 service).
 */
export async function startS3(h: HostInfo, sharing?: S3Server): Promise<S3Server> {
    const jar = execFileSync(path.join(ROOT, "scripts", "s3proxy.sh"), { encoding: "utf8" }).trim();
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `jhe-s3-${h.name}.`));
    const basedir = sharing?.basedir ?? path.join(dir, "data");
    fs.mkdirSync(basedir, { recursive: true });
    const accessKey = sharing?.accessKey ?? "AK" + crypto.randomBytes(8).toString("hex").toUpperCase();
    const secretKey = sharing?.secretKey ?? crypto.randomBytes(24).toString("base64url");
    fs.writeFileSync(path.join(dir, "s3proxy.conf"), [
        `s3proxy.endpoint=http://127.0.0.1:${PORT}`, "s3proxy.authorization=aws-v4",
        `s3proxy.identity=${accessKey}`, `s3proxy.credential=${secretKey}`,
        "jclouds.provider=filesystem", `jclouds.filesystem.basedir=${basedir}`, "",
    ].join("\n"), { mode: 0o600 });
    const logFile = path.join(dir, "s3proxy.log");
    const log = fs.openSync(logFile, "w");
    const proc: ChildProcess = spawn("ip", ["netns", "exec", h.netns, "java", "-Xmx768m", "-jar", jar, "--properties", path.join(dir, "s3proxy.conf")],
        { stdio: ["ignore", log, log] });
    fs.closeSync(log);
    const deadline = Date.now() + 90_000;
    while (!/Started Server@/.test(fs.readFileSync(logFile, "utf8"))) {
        if (proc.exitCode !== null || Date.now() > deadline) {
            proc.kill("SIGKILL");
            throw new Error(`S3Proxy did not start in ${h.netns}: ${fs.readFileSync(logFile, "utf8").slice(-800)}`);
        }
        await new Promise((r) => setTimeout(r, 250));
    }
    const objects = (bucket: string, prefix = ""): string[] => {
        const out: string[] = [];
        const walk = (d: string) => {
            for (const e of fs.readdirSync(d, { withFileTypes: true })) {
                const p = path.join(d, e.name);
                if (e.isDirectory()) walk(p);
                else out.push(path.relative(path.join(basedir, bucket), p));
            }
        };
        const start = path.join(basedir, bucket, prefix);
        if (fs.existsSync(start)) walk(start);
        return out.sort();
    };
    return {
        endpoint: `http://127.0.0.1:${PORT}`, accessKey, secretKey, basedir, objects,
        makeBucket: (name) => fs.mkdirSync(path.join(basedir, name), { recursive: true }),
        stop: async () => {
            if (proc.exitCode === null) {
                const gone = new Promise((r) => proc.once("exit", r));
                proc.kill("SIGTERM");
                await Promise.race([gone, new Promise((r) => setTimeout(r, 10_000))]);
                if (proc.exitCode === null) proc.kill("SIGKILL");
            }
            fs.rmSync(dir, { recursive: true, force: true }); // (a sharing server's storage is the first one's)
        },
    };
}

/** The stack settings that copy backups to `bucket` through `server`, encrypted to `publicKey`. */
export function bucketConfig(server: S3Server, bucket: string, publicKey: string): ConfigMap {
    return {
        "jhe:backupBucket": { value: bucket },
        "jhe:backupEndpoint": { value: server.endpoint },
        "jhe:backupAccessKeyId": { value: server.accessKey, secret: true },
        "jhe:backupSecretAccessKey": { value: server.secretKey, secret: true },
        "jhe:backupEncryptionKey": { value: publicKey },
    };
}
