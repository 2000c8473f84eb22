// `npm run bench:offsite`: backups off the server at the size of a 1 GB database (1M observations,
// PostgreSQL data and /backups on this machine's disk), against a real S3 server (S3Proxy in the test
// server's namespace, its storage on this machine's disk). Side by side in one run:
//   - the upgrade's backup (pg_dump -Fc -Z1 + sha256 + pg_restore --list, before the window) and its
//     copy off the server (gpg-encrypted, uploaded, read back and checked by sha256), and their ratio;
//   - disaster recovery: a bare server brought up from that copy (jhe:restoreFrom): pulumi up from
//     nothing to serving the backup's data (the RTO), of which fetch + decrypt and the restore.
// Last line: upload_MiBps=... copy_vs_backup=... rto_s=... fetch_s=... restore_s=... db_MiB=...
// Timings are from one run on a shared machine: read them as ratios.
import * as crypto from "crypto";
import { leaveUnset, projectStack, removeStack } from "../tests/helpers/stack";
import { makeKeys } from "../tests/helpers/gpgkeys";
import { bucketConfig, startS3 } from "../tests/helpers/s3server";
import { down, query, servingVersion, sshOk, up } from "../tests/helpers/testhost";

const OBSERVATIONS = Number(process.env.BENCH_OBSERVATIONS ?? 1_000_000);
const BUCKET = "jhe-backups-bench";
const secs = (t0: number) => (Date.now() - t0) / 1000;

async function main() {
    const keys = makeKeys("jhe-bench");
    console.error(`bench:offsite: seeding ${OBSERVATIONS} observations ...`);
    const h = await up("bench-off", { legacy: "v1.0.0", patients: 1000, observations: OBSERVATIONS, dataOnDisk: true });
    const s3 = await startS3(h);
    s3.makeBucket(BUCKET);
    const stack = await projectStack(h, "v1.0.0", bucketConfig(s3, BUCKET, keys.publicKey));
    let h2: Awaited<ReturnType<typeof up>> | undefined;
    let s3b: Awaited<ReturnType<typeof startS3>> | undefined;
    let stack2: Awaited<ReturnType<typeof projectStack>> | undefined;
    try {
        await leaveUnset(stack, "JHE_FEATURE_X");
        await stack.up();
        const dbBytes = Number((await query<{ n: string }>(h, "SELECT pg_database_size('jhe_production') AS n"))[0].n);
        await stack.setConfig("jhe:version", { value: "v1.1.0" });
        console.error("bench:offsite: upgrade with the copy off the server ...");
        const res = await stack.up();
        const backupSeconds = res.outputs.stepSeconds.value.backup as number;
        const off = res.outputs.offsiteBackup.value as { copied: string[]; bytesCopied: number; secondsCopying: number; throughputMiBps: number };
        const backup = res.outputs.backup.value as { location: string; sha256: string };
        const dumpBytes = Number(await sshOk(h, `stat -c %s ${backup.location}/db.dump`));
        const id = off.copied.find((c) => backup.location.endsWith(c))!;

        console.error("bench:offsite: disaster recovery onto a bare server ...");
        h2 = await up("bench-off2");
        s3b = await startS3(h2, s3);
        stack2 = await projectStack(h2, "v1.0.0", {
            ...bucketConfig(s3b, BUCKET, keys.publicKey),
            "jhe:backupDecryptionKey": { value: keys.privateKey, secret: true },
            "jhe:restoreFrom": { value: id },
            "jhe:dbPassword": { value: crypto.randomBytes(9).toString("hex"), secret: true },
            "jhe:tlsSelfSigned": { value: "true" },
        });
        await stack2.setConfig("jhe:secretEnv.SECRET_KEY", { value: crypto.randomBytes(12).toString("hex"), secret: true }, true);
        await leaveUnset(stack2, "DEBUG", "OIDC_RSA_PRIVATE_KEY", "JHE_FEATURE_X");
        const t0 = Date.now();
        const dr = await stack2.up();
        const rto = secs(t0);
        if ((await servingVersion(h2)) !== "v1.0.0") throw new Error("the restored server does not serve v1.0.0");
        const restored = dr.outputs.migration.value.restored as { seconds: number; fetchSeconds: number; rowCounts: Record<string, number> };
        if (restored.rowCounts.core_observation !== OBSERVATIONS) throw new Error(`restored ${restored.rowCounts.core_observation} observations`);
        const mib = (b: number) => b / 2 ** 20;
        const rows = [
            `| measure (database ${mib(dbBytes).toFixed(0)} MiB, ${OBSERVATIONS.toLocaleString("en")} observations; dump ${mib(dumpBytes).toFixed(0)} MiB) | seconds | MiB/s |`,
            "|---|---|---|",
            `| backup before the window (pg_dump -Fc -Z1, sha256, pg_restore --list) | ${backupSeconds.toFixed(1)} | ${(mib(dbBytes) / backupSeconds).toFixed(0)} of database |`,
            `| copy off the server (gpg encrypt, upload, read back + sha256, manifest) | ${off.secondsCopying.toFixed(1)} | ${off.throughputMiBps} of ciphertext (${mib(off.bytesCopied).toFixed(0)} MiB) |`,
            `| disaster recovery, bare server to serving the backup's data (pulumi up) | ${rto.toFixed(1)} | |`,
            `| of which fetch + decrypt + check (preflight) | ${restored.fetchSeconds.toFixed(1)} | ${(mib(off.bytesCopied) / restored.fetchSeconds).toFixed(0)} |`,
            `| of which the restore (pg_restore -j 2 into the new database, counts checked) | ${restored.seconds.toFixed(1)} | ${(mib(dbBytes) / restored.seconds).toFixed(0)} of database |`,
        ];
        console.log(rows.join("\n"));
        console.log(`upload_MiBps=${off.throughputMiBps} copy_vs_backup=${(off.secondsCopying / backupSeconds).toFixed(2)} rto_s=${rto.toFixed(1)} ` +
            `fetch_s=${restored.fetchSeconds.toFixed(1)} restore_s=${restored.seconds.toFixed(1)} db_MiB=${mib(dbBytes).toFixed(0)}`);
    } finally {
        await s3b?.stop();
        await s3.stop();
        if (stack2) await removeStack(stack2);
        await removeStack(stack);
        if (h2) await down(h2.name);
        await down(h.name);
    }
}

main().catch((e) => {
    console.error(e);
    process.exit(1);
});
