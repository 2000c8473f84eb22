"""Real parts for the off-host backup tests: an S3Proxy server on loopback (a real S3 API with SigV4
authentication; scripts/s3proxy.sh fetches it) and OpenPGP keys made with gpg."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class S3Server:
    endpoint: str
    access_key: str
    secret_key: str
    basedir: Path  # the filesystem backend: <basedir>/<bucket>/<key>
    proc: subprocess.Popen

    def make_bucket(self, name: str) -> None:
        (self.basedir / name).mkdir(exist_ok=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_s3(workdir: Path) -> S3Server:
    jar = subprocess.run([str(ROOT / "scripts" / "s3proxy.sh")], capture_output=True, text=True, check=True).stdout.strip()
    port = _free_port()
    base = workdir / "s3data"
    base.mkdir()
    key, secret = "AK" + secrets.token_hex(8).upper(), secrets.token_urlsafe(30)
    conf = workdir / "s3proxy.conf"
    conf.write_text("\n".join([
        f"s3proxy.endpoint=http://127.0.0.1:{port}", "s3proxy.authorization=aws-v4",
        f"s3proxy.identity={key}", f"s3proxy.credential={secret}",
        "jclouds.provider=filesystem", f"jclouds.filesystem.basedir={base}", ""]))
    log = open(workdir / "s3proxy.log", "wb")
    p = subprocess.Popen(["java", "-Xmx512m", "-jar", jar, "--properties", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"S3Proxy exited {p.returncode}: {(workdir / 's3proxy.log').read_text()[-800:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return S3Server(f"http://127.0.0.1:{port}", key, secret, base, p)
        except OSError:
            time.sleep(0.2)
    p.kill()
    raise RuntimeError("S3Proxy did not listen within 60 s")


def stop_s3(s: S3Server) -> None:
    s.proc.terminate()
    try:
        s.proc.wait(10)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait(10)


@dataclass
class KeyPair:
    fingerprint: str
    public: str
    private: str


def make_keys(name: str, usage: str = "encrypt") -> KeyPair:
    """An OpenPGP key pair without a passphrase (ed25519 primary; a cv25519 encryption subkey unless
    `usage` is "sign", which leaves a key that cannot encrypt)."""
    home = tempfile.mkdtemp(prefix="jhe-test-gpg.")
    try:
        env = {**os.environ, "GNUPGHOME": home}
        gpg = ["gpg", "--batch", "--pinentry-mode", "loopback", "--passphrase", ""]
        subprocess.run(gpg + ["--quick-gen-key", f"{name} <{name}@jhe.invalid>", "ed25519", "sign", "never"], env=env, check=True,
                       capture_output=True)
        out = subprocess.run(["gpg", "--batch", "--with-colons", "--list-keys"], env=env, check=True, capture_output=True, text=True).stdout
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        if usage == "encrypt":
            subprocess.run(gpg + ["--quick-add-key", fpr, "cv25519", "encr", "never"], env=env, check=True, capture_output=True)
        pub = subprocess.run(["gpg", "--batch", "--armor", "--export", fpr], env=env, check=True, capture_output=True, text=True).stdout
        priv = subprocess.run(gpg + ["--armor", "--export-secret-keys", fpr], env=env, check=True, capture_output=True, text=True).stdout
        return KeyPair(fpr, pub, priv)
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
