// OpenPGP key pairs for the backup-encryption tests, made by gpg in a throwaway GNUPGHOME (no
// passphrase; ed25519 primary key with a cv25519 encryption subkey).
import { execFileSync } from "child_process";
import * as fs from "fs";
import * as os from "os";
import * as path from "path";

export interface KeyPair {
    fingerprint: string;
    publicKey: string;
    privateKey: string;
}

export function makeKeys(name: string): KeyPair {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), "jhe-test-gpg."));
    const env = { ...process.env, GNUPGHOME: home };
    const gpg = (args: string[]) => execFileSync("gpg", ["--batch", "--pinentry-mode", "loopback", "--passphrase", "", ...args],
        { env, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    try {
        gpg(["--quick-gen-key", `${name} <${name}@jhe.invalid>`, "ed25519", "sign", "never"]);
        const fingerprint = gpg(["--with-colons", "--list-keys"]).split("\n").find((l) => l.startsWith("fpr:"))!.split(":")[9];
        gpg(["--quick-add-key", fingerprint, "cv25519", "encr", "never"]);
        return { fingerprint, publicKey: gpg(["--armor", "--export", fingerprint]), privateKey: gpg(["--armor", "--export-secret-keys", fingerprint]) };
    } finally {
        try {
            execFileSync("gpgconf", ["--homedir", home, "--kill", "all"], { stdio: "ignore" });
        } catch {
            /* no agent was started */
        }
        fs.rmSync(home, { recursive: true, force: true });
    }
}
