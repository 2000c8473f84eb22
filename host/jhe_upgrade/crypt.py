"""OpenPGP encryption of backup copies with gpg, to a public key from the stack's config.

The server gets the public key; the private key only while the stack gives it (jhe:backupDecryptionKey,
for a restore), in the step's spec on stdin, imported into a throwaway keyring under /run (memory)
only when something must be decrypted, and removed right after (a killed step's, by the next one)."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

from .util import Refusal, sha256_file


@contextlib.contextmanager
def keyring(armored: str, what: str) -> Iterator[tuple[Path, str]]:
    """A temporary GNUPGHOME holding only `armored` (imported through gpg's stdin); yields it and the
    key's fingerprint. Removed on exit."""
    if shutil.which("gpg") is None:
        raise Refusal("gpg is not installed on the server (Debian package gnupg): backups cannot be encrypted or decrypted")
    base = Path("/run") if Path("/run").is_dir() and os.access("/run", os.W_OK) else None
    if base:
        # Keyrings of a step that was killed (one step runs at a time: any other one is stale). A killed
        # restore's may hold the private key: it goes now, with its agent.
        for stale in base.glob("jhe-upgrade-gpg.*"):
            subprocess.run(["gpgconf", "--homedir", str(stale), "--kill", "all"], capture_output=True, check=False)
            shutil.rmtree(stale, ignore_errors=True)
    home = Path(tempfile.mkdtemp(prefix="jhe-upgrade-gpg.", dir=base))
    try:
        os.chmod(home, 0o700)
        p = subprocess.run(["gpg", "--batch", "--homedir", str(home), "--import-options", "import-show", "--with-colons", "--import"],
                           input=armored.encode(), capture_output=True)
        fprs = [l.split(":")[9] for l in p.stdout.decode(errors="replace").splitlines() if l.startswith("fpr:")]
        if p.returncode != 0 or not fprs:
            raise Refusal(f"{what} is not an OpenPGP key gpg can import "
                          f"({p.stderr.decode(errors='replace').strip().splitlines()[-1:] or ['no key found']})")
        yield home, fprs[0]
    finally:
        # gpg-agent may hold the directory's socket: stop it, then remove everything.
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)


def check_public_key(armored: str) -> str:
    """The public key's fingerprint, after checking it is a public key that can encrypt (never a
    private key: the server must not hold that)."""
    if "PRIVATE KEY BLOCK" in armored:
        raise Refusal("jhe:backupEncryptionKey holds a private key; give the public key (gpg --export --armor <key id>): "
                      "the server must never hold the private one")
    with keyring(armored, "jhe:backupEncryptionKey") as (home, fpr):
        p = subprocess.run(["gpg", "--batch", "--homedir", str(home), "--with-colons", "--list-keys", fpr], capture_output=True, text=True)
        usable = any(l.split(":")[1] not in ("e", "r", "d") and "e" in l.split(":")[11]
                     for l in p.stdout.splitlines() if l.startswith(("pub:", "sub:")) and len(l.split(":")) > 11)
        if not usable:
            raise Refusal(f"jhe:backupEncryptionKey {fpr} has no valid encryption key (expired, revoked, or signing only): "
                          "give a public key with an encryption subkey")
        return fpr


def encrypt_file(armored: str, src: Path, dst: Path) -> dict:
    """Encrypts `src` to the public key into `dst` (0600); returns the fingerprint and the sha256 of
    the plaintext and of the ciphertext (the plaintext is read once, through a pipe)."""
    with keyring(armored, "jhe:backupEncryptionKey") as (home, fpr):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        plain = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            p = subprocess.Popen(["gpg", "--batch", "--homedir", str(home), "--trust-model", "always", "--compress-algo", "none",
                                  "--recipient", fpr, "--encrypt"], stdin=subprocess.PIPE, stdout=out, stderr=subprocess.PIPE)
            assert p.stdin is not None and p.stderr is not None
            try:
                with open(src, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        plain.update(chunk)
                        p.stdin.write(chunk)
                p.stdin.close()
            except BrokenPipeError:  # gpg stopped early: its message below says why
                pass
            err = p.stderr.read().decode(errors="replace")
            if p.wait() != 0:
                dst.unlink(missing_ok=True)
                raise RuntimeError(f"gpg could not encrypt {src.name}: {err.strip()[-300:]}")
    return {"fingerprint": fpr, "plainSha256": plain.hexdigest(), "sha256": sha256_file(dst), "bytes": dst.stat().st_size}


def decrypt_file(private_armored: str, src: Path, dst: Path) -> str:
    """Decrypts `src` into `dst` (0600) with the private key given for this restore; returns the
    plaintext's sha256."""
    if "PRIVATE KEY BLOCK" not in private_armored:
        raise Refusal("jhe:backupDecryptionKey must be the private key the backups were encrypted to "
                      "(gpg --export-secret-keys --armor <key id>)")
    with keyring(private_armored, "jhe:backupDecryptionKey") as (home, _):
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            p = subprocess.run(["gpg", "--batch", "--homedir", str(home), "--pinentry-mode", "loopback", "--passphrase", "",
                                "--decrypt", str(src)], stdout=out, stderr=subprocess.PIPE)
        if p.returncode != 0:
            dst.unlink(missing_ok=True)
            err = p.stderr.decode(errors="replace").strip()
            if "No secret key" in err or "decryption failed" in err:
                raise Refusal(f"{src.name} cannot be decrypted with jhe:backupDecryptionKey (is it the private key of the public "
                              f"key the backup was encrypted to? passphrase-protected keys are not supported): {err[-200:]}")
            raise RuntimeError(f"gpg could not decrypt {src.name}: {err[-300:]}")
    return sha256_file(dst)
