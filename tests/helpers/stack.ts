// Stacks of this project (the real program, compiled in bin/) aimed at a test server, driven through
// the Automation API with the project's own engine.
import * as crypto from "crypto";
import * as fs from "fs";
import * as path from "path";
import { ConfigMap, LocalWorkspace, Stack } from "@pulumi/pulumi/automation";
import { engineEnv, pulumiCommand, ROOT } from "./engine";
import { down, HostInfo, leftovers, query, sshOk } from "./testhost";

/** The fixture's v1.1.0 migrations, in order (tests/fixtures/jhe-app/tags/v1.1.0). */
export const V110_MIGRATIONS = [
    "core.0002_observation_source", "core.0003_backfill_source", "core.0004_study_title_patientidentifier", "core.0005_drop_aux_cache",
];
/** ... and what an upgrade to it applies: those, and the migration of the django-oauth-toolkit it moves to (3.2.0 -> 3.3.0). */
export const V110_APPLIED = [...V110_MIGRATIONS, "oauth2_provider.0014_alter_help_text"];

export const STATE_DIR = path.join(ROOT, ".cache", "e2e-state");

/** Every file below `dir` (none if it does not exist). */
export function filesUnder(dir: string): string[] {
    if (!fs.existsSync(dir)) return [];
    return fs.readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? filesUnder(path.join(dir, e.name)) : [path.join(dir, e.name)]));
}

/** The stack config that aims the program at a test server (the legacy layout's names are defaults). */
export function hostConfig(h: HostInfo, version: string): ConfigMap {
    return {
        "jhe:version": { value: version },
        "jhe:host": { value: h.address },
        "jhe:sshHostKey": { value: h.hostKey },
        "jhe:sshPrivateKey": { value: fs.readFileSync(h.privateKeyPath, "utf8"), secret: true },
        "jhe:siteUrl": { value: h.siteUrl ?? `https://${h.name}.jhe.test` },
        "jhe:repoUrl": { value: h.upstreamRepo },
        "jhe:wheelhouse": { value: h.wheelhouse },
        "jhe:healthTimeoutSeconds": { value: "20" },
        // (the watch after an upgrade has suites of its own: tests/e2e/watch.test.ts)
        "jhe:watchSeconds": { value: "0" },
    };
}

/** A fresh stack of the project for test server `h`; its Pulumi.<stack>.yaml is removed by `remove`. */
export async function projectStack(h: HostInfo, version: string, extra: ConfigMap = {}): Promise<Stack> {
    const stackName = `t-${h.name}-${crypto.randomBytes(3).toString("hex")}`;
    const stack = await LocalWorkspace.createStack(
        { stackName, workDir: ROOT },
        { envVars: engineEnv(STATE_DIR), pulumiCommand: await pulumiCommand() },
    );
    await stack.setAllConfig({ ...hostConfig(h, version), ...extra });
    return stack;
}

/**
 * Lists variables as left unset on purpose (jhe:envUnset), as an operator answers a preflight that
 * names a variable new in the target's env example (the fixture's v1.1.0 adds JHE_FEATURE_X).
 */
export async function leaveUnset(stack: Stack, ...names: string[]): Promise<void> {
    for (const [i, k] of names.entries()) await stack.setConfig(`jhe:envUnset[${i}]`, { value: k }, true);
}

export async function removeStack(stack: Stack): Promise<void> {
    await stack.workspace.removeStack(stack.name, { force: true }).catch(() => undefined);
    fs.rmSync(path.join(ROOT, `Pulumi.${stack.name}.yaml`), { force: true });
}

const APP = "/opt/jupyterhealth-exchange";

/**
 * Everything about the server an upgrade may change: code serving, config files, service state,
 * the database's tables and migrations, the log. Equal before/after means nothing changed.
 */
export async function serverFingerprint(h: HostInfo): Promise<Record<string, unknown>> {
    const files = await sshOk(
        h,
        `cd ${APP}; readlink current || echo no-current; ls releases 2>/dev/null | tr '\\n' ' '; echo
         for f in current/.env .env UPGRADE_LOG.md /etc/systemd/system/jhe.service /etc/nginx/sites-available/jhe; do
           [ -e "$f" ] && sha256sum "$f" || echo "absent $f"; done
         systemctl is-active jhe; ls /backups/jhe 2>/dev/null | tr '\\n' ' '; echo
         test -e /var/lib/jhe-upgrade/jhe/maintenance-on && echo maintenance-on || echo maintenance-off`,
    );
    // Every table of the live database, by count and content, and the list of databases (a kept, staged
    // or restored database appearing or going is a change too).
    const tables: Record<string, unknown> = {};
    const names = (await query<{ t: string }>(h, "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")).map((r) => r.t);
    for (const t of names) {
        const [r] = await query<{ n: string; c: string }>(
            h, `SELECT count(*) AS n, md5(string_agg(md5(x::text), '' ORDER BY md5(x::text))) AS c FROM "${t.replace(/"/g, '""')}" x`);
        tables[t] = `${r.n}:${r.c}`;
    }
    const databases = (await query<{ d: string }>(h, "SELECT datname AS d FROM pg_database WHERE NOT datistemplate ORDER BY 1")).map((r) => r.d);
    return { files, tables, databases };
}

/** End of a suite: the stack's files go, the server goes, and nothing of it is left on this machine. */
export async function teardown(stack: Stack | undefined, h: HostInfo | undefined): Promise<void> {
    if (stack) await removeStack(stack);
    if (!h) return;
    await down(h.name);
    const left = await leftovers(h);
    if (left.length) throw new Error(`test server ${h.name} left behind: ${left.join(", ")}`);
}
