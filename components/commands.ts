// Pure builders of the shell commands the program runs on the server (Kamal's style): each returns
// text, is unit-tested without a server, and quotes every value with a real shell-quoting library.
// Values never include secrets: those travel on stdin.
import { quote } from "shell-quote";

const SAFE_PATH = /^\/(?:[A-Za-z0-9._@-]+\/?)+$/;

/** Where the host-side tool lives on the server. */
export const TOOL_DIR = "/usr/local/lib/jhe-upgrade";
export const TOOL_PATH = `${TOOL_DIR}/jhe_upgrade.py`;

export const STEPS = ["status", "plan", "adopt", "preflight", "prepare", "backup", "migrate", "switch", "health", "finish", "offsite", "unlock", "superuser", "snapshot", "clone", "watch", "postgres"] as const;

/** Debian packages a JHE server needs (the app's Python packages come from its lock file). */
export const SYSTEM_PACKAGES = ["python3", "python3-venv", "postgresql", "nginx", "git", "openssl", "curl", "ca-certificates"];

/**
 * Installs the Debian packages that are missing, and only those: with all present it does nothing
 * (and needs no network). Prints {"installed":[...]}.
 */
export function ensurePackages(sshUser: string, packages: string[] = SYSTEM_PACKAGES): string {
    for (const p of packages) if (!/^[a-z0-9][a-z0-9.+-]+$/.test(p)) throw new Error(`bad package name ${p}`);
    return privileged(
        sshUser,
        [
            "set -eu",
            `missing=""`,
            `for p in ${quote(packages)}; do`,
            `  dpkg-query -W -f='\${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"`,
            `  [ "$p" != nginx ] || ! dpkg-query -W -f='\${Status}' nginx-light nginx-core nginx-full 2>/dev/null | grep -q 'install ok installed' || missing=$(echo "$missing" | sed 's/ nginx$//')`,
            `done`,
            `if [ -n "$missing" ]; then`,
            `  echo "jhe-upgrade: installing$missing" >&2`,
            `  export DEBIAN_FRONTEND=noninteractive`,
            `  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends $missing >&2`,
            `fi`,
            `printf '{"installed":"%s"}\n' "$(echo $missing)"`,
        ].join("\n"),
    );
}

/** A self-signed certificate for test stacks, made once (kept if the files exist). */
export function selfSignedCert(sshUser: string, certPath: string, keyPath: string, hostName: string): string {
    for (const p of [certPath, keyPath]) if (!SAFE_PATH.test(p) || p.split("/").includes("..")) throw new Error(`unsafe path ${p}`);
    if (!/^[A-Za-z0-9.-]+$/.test(hostName)) throw new Error(`bad host name ${hostName}`);
    const c = quote([certPath]);
    const k = quote([keyPath]);
    return privileged(
        sshUser,
        [
            "set -eu",
            `if [ -s ${c} ] && [ -s ${k} ]; then echo '{"generated":false}'; exit 0; fi`,
            `install -d -m 0755 "$(dirname ${c})"; install -d -m 0700 "$(dirname ${k})"`,
            `umask 077`,
            `openssl req -x509 -newkey rsa:2048 -nodes -days 825 -subj ${quote([`/CN=${hostName}`])} ` +
                `-addext ${quote([`subjectAltName=DNS:${hostName}`])} -keyout ${k} -out ${c} 2>/dev/null`,
            `chmod 0644 ${c}; chmod 0600 ${k}`,
            `echo '{"generated":true}'`,
        ].join("\n"),
    );
}
export type Step = (typeof STEPS)[number];

/** Runs `script` as root: directly for root, else through password-less sudo (failing fast, clearly). */
export function privileged(sshUser: string, script: string): string {
    if (sshUser === "root") return `sh -c ${quote([script])}`;
    // The message is composed on the server (user and sudo's answer filled in there), so it never
    // appears in the command text that a failing command's error also carries.
    return (
        `if ! sudo_says=$(sudo -n true 2>&1); then printf ${quote([
            "jhe-upgrade: the SSH user %s needs password-less sudo on this server (sudo -n: %s); " +
                "add a sudoers rule, or connect as root (jhe:sshUser)\n",
        ])} "$(id -un)" "$(echo "$sudo_says" | head -n 1)" >&2; exit 1; fi; ` + `sudo -n sh -c ${quote([script])}`
    );
}

/**
 * One step of the host-side tool; its spec arrives on stdin. The tool runs detached from the SSH
 * session (its own session, output to files in a root-only directory), so a dropped connection or a
 * killed `pulumi up` never cuts a step in half: it finishes on the server, and the re-run waits for
 * it (the tool's run lock) and then finds its work done. Progress is streamed meanwhile.
 */
export function toolStep(sshUser: string, step: Step): string {
    if (!STEPS.includes(step)) throw new Error(`unknown step ${step}`);
    return privileged(
        sshUser,
        [
            "set -eu",
            `d=$(mktemp -d /run/jhe-upgrade-step.XXXXXX)`,
            `cat > "$d/spec"`,
            `: > "$d/err"`,
            `setsid sh -c 'exec 3<"$1/spec"; rm -f "$1/spec"; python3 ${TOOL_PATH} ${step} <&3 >"$1/out" 2>"$1/err"; echo $? >"$1/rc"' ` +
                `jhe-step "$d" </dev/null >/dev/null 2>&1 &`,
            `pid=$!`,
            // tail reads once more after the step's process is gone, so no last line is lost.
            `tail -n +1 -s 0.2 --pid=$pid -f "$d/err" >&2 || true`,
            `wait $pid || true`,
            `cat "$d/out" 2>/dev/null || true`,
            `rc=$(cat "$d/rc" 2>/dev/null || echo 1)`,
            `rm -rf "$d"`,
            `exit "$rc"`,
        ].join("\n"),
    );
}

/** Installs the host-side tool from stdin (atomically; 0755 root). */
export function installTool(sshUser: string): string {
    return privileged(
        sshUser,
        [
            "set -eu",
            `command -v python3 >/dev/null || { echo 'jhe-upgrade: the server has no python3 (JHE needs it)' >&2; exit 1; }`,
            `install -d -m 0755 ${quote([TOOL_DIR])}`,
            `cat > ${quote([TOOL_PATH + ".tmp"])}`,
            `chmod 0755 ${quote([TOOL_PATH + ".tmp"])}`,
            `mv -f ${quote([TOOL_PATH + ".tmp"])} ${quote([TOOL_PATH])}`,
            `python3 ${quote([TOOL_PATH])} status </dev/null >/dev/null 2>&1 || true`,
            `echo '{"installed":true}'`,
        ].join("\n"),
    );
}

export interface InstallFileArgs {
    path: string;
    mode: string;
    /** Command that must pass with the new file in place; on failure the old file comes back. */
    validate?: string;
    /** Command run only when the file's content changed (and validated). */
    onChange?: string;
    /** Where the sha256 of what was installed is kept, for the plan's drift check (default: the server's). */
    recordDir?: string;
}

/** Where each installed file's sha256 is kept (host/jhe_upgrade/plan.py INSTALLED reads it). */
export const INSTALLED_DIR = "/var/lib/jhe-upgrade/files";

/**
 * Installs a file from stdin when its content differs; validates it (keeping the previous file
 * on failure) and runs onChange. Prints {"changed":bool}.
 */
export function installFile(sshUser: string, a: InstallFileArgs): string {
    if (!SAFE_PATH.test(a.path) || a.path.split("/").includes("..")) throw new Error(`unsafe path ${a.path}`);
    if (!/^0[0-7]{3}$/.test(a.mode)) throw new Error(`bad mode ${a.mode}`);
    const p = quote([a.path]);
    const bak = quote([`${a.path}.jhe-upgrade.bak`]);
    return privileged(
        sshUser,
        [
            "set -eu",
            `new=$(mktemp)`,
            `trap 'rm -f "$new"' EXIT`,
            `cat > "$new"`,
            // What was installed, recorded (the plan tells a hand edit by it: drift)
            `rec=${quote([`${a.recordDir ?? INSTALLED_DIR}/${a.path.replace(/\//g, "_")}.sha256`])}`,
            `record() { mkdir -p ${quote([a.recordDir ?? INSTALLED_DIR])} && sha256sum ${p} | cut -d' ' -f1 > "$rec"; }`,
            `if [ -f ${p} ] && cmp -s "$new" ${p}; then record; echo '{"changed":false}'; exit 0; fi`,
            `had=0; if [ -f ${p} ]; then cp -p ${p} ${bak}; had=1; fi`,
            `install -D -m ${a.mode} "$new" ${p}`,
            a.validate
                ? `if ! out=$( { ${a.validate} ; } 2>&1 ); then if [ $had = 1 ]; then mv -f ${bak} ${p}; else rm -f ${p}; fi; ` +
                  `echo "jhe-upgrade: the new ${a.path} does not validate, the previous file was kept:" >&2; echo "$out" >&2; exit 1; fi`
                : ":",
            a.onChange
                ? `if ! out=$( { ${a.onChange} ; } 2>&1 ); then echo "$out" >&2; ` +
                  `if [ $had = 1 ]; then mv -f ${bak} ${p}; { ${a.onChange} ; } >/dev/null 2>&1 || true; ` +
                  `echo "jhe-upgrade: applying the new ${a.path} failed; the previous file is back in place and applied" >&2; ` +
                  `else echo "jhe-upgrade: applying the new ${a.path} failed" >&2; fi; exit 1; fi`
                : ":",
            "record",
            `echo '{"changed":true}'`,
        ].join("\n"),
    );
}
