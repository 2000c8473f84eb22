"""Backups that survive the server: each verified backup encrypted to the stack's public key, uploaded
to S3-compatible storage with a manifest, read back and checked; local dumps pruned only once their
copy is verified; a backup whose local copy is gone fetched back (decrypted with the private key
given for that restore)."""
from __future__ import annotations

import json
import os
import re
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from .backup import ensure_backup_dir, verify_backup
from .crypt import check_public_key, decrypt_file, encrypt_file
from .db import db_exists
from .s3 import Bucket, Creds, S3Error
from .spec import Spec
from .state import load_state, save_state
from .util import Refusal, log, now, sha256_file

# The files of a backup directory that are copied off the server (those present), besides manifest.json.
BACKUP_FILES = ("db.dump", "env", "nginx-site", "systemd-unit")
PREFIX_OK = re.compile(r"^(?:[A-Za-z0-9!_.*'()-]+/)*$")


@dataclass(repr=False)
class Offsite:
    """Where backups go (from the spec's secret part). Never printed: its repr hides everything."""
    endpoint: str
    region: str
    bucket: str
    prefix: str
    creds: Creds
    public_key: str | None  # None: the stack says backups go unencrypted
    private_key: str | None = None  # only for a restore
    keep_local: int = 3
    cafile: str | None = None

    def __repr__(self) -> str:
        return f"Offsite(s3://{self.bucket}/{self.prefix})"

    def client(self) -> Bucket:
        return Bucket(self.endpoint, self.region, self.bucket, self.creds, cafile=self.cafile)

    def location(self, backup_id: str) -> str:
        return f"s3://{self.bucket}/{self.prefix}{backup_id}/"


def settings(spec: Spec) -> Offsite | None:
    """The spec's off-host settings, checked (None when the stack has no backup bucket)."""
    o = spec.raw.get("offsite")
    if not o:
        return None
    need = ("endpoint", "region", "bucket", "prefix", "accessKeyId", "secretAccessKey")
    missing = [k for k in need if not isinstance(o.get(k), str) or (not o.get(k) and k != "prefix")]
    if missing:
        raise Refusal(f"spec.offsite lacks {', '.join(missing)}")
    prefix = o["prefix"]
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    if not PREFIX_OK.match(prefix) or {".", ".."} & set(prefix.split("/")):
        raise Refusal(f"jhe:backupPrefix {o['prefix']!r} must be path segments of letters, digits and !_.*'()- separated by /")
    if o.get("publicKey") is None and o.get("encryption") != "none":
        raise Refusal("spec.offsite has no public key and does not say backups go unencrypted")
    creds = Creds(o["accessKeyId"], o["secretAccessKey"], o.get("sessionToken") or None)
    return Offsite(o["endpoint"], o["region"], o["bucket"], prefix, creds, o.get("publicKey"), o.get("privateKey") or None,
                   int(o.get("keepLocal", 3)), o.get("caFile") or None)


def check_offsite(o: Offsite) -> dict:
    """Preflight: the bucket answers to these credentials and the public key can encrypt. A clear
    refusal naming the setting otherwise, before anything changes."""
    try:
        o.client().check()
    except S3Error as e:
        hint = {403: "jhe:backupAccessKeyId / jhe:backupSecretAccessKey are not accepted for it (or may not list it)",
                404: "it does not exist (create it, or set jhe:backupBucket to \"create\")",
                301: "it is in another region (set jhe:backupRegion)", 400: "the request was refused (check jhe:backupRegion)"}
        raise Refusal(f"the backup bucket {o.bucket} at {o.endpoint}: {hint.get(e.status, str(e))} ({e.code})") from e
    except OSError as e:
        raise Refusal(f"the backup bucket's endpoint {o.endpoint} cannot be reached from the server ({e}); "
                      f"check jhe:backupEndpoint and the server's outbound network") from e
    fpr = check_public_key(o.public_key) if o.public_key else None
    return {"bucket": o.bucket, "prefix": o.prefix, "encryptedTo": fpr}


def upload_backup(o: Offsite, entry: dict) -> dict:
    """Copies one local backup off the server: each file encrypted (when a key is set) into a
    temporary file beside it, uploaded, read back and compared by sha256; then the manifest (its
    presence marks a complete copy). Returns the record kept in the state. The caller has verified the
    backup (only one that verifies leaves the server); the dump's sha256 is checked again as it is read."""
    d = Path(entry["path"])
    b = o.client()
    base = f"{o.prefix}{entry['id']}/"
    objects: dict[str, dict] = {}
    t = time.monotonic()
    sent = 0
    fpr = None
    work = d / ".offsite"
    work.mkdir(mode=0o700, exist_ok=True)
    try:
        for name in BACKUP_FILES:
            src = d / name
            if not src.exists():
                continue
            if o.public_key:
                tmp = work / f"{name}.gpg"
                enc = encrypt_file(o.public_key, src, tmp)
                fpr = enc["fingerprint"]
                key = f"{base}{name}.gpg"
            else:
                tmp = src
                digest = sha256_file(src)
                enc = {"plainSha256": digest, "sha256": digest, "bytes": src.stat().st_size}
                key = f"{base}{name}"
            if name == "db.dump" and enc["plainSha256"] != entry["sha256"]:
                raise RuntimeError(f"backup {entry['id']}: the dump changed while it was encrypted")
            b.put_file(key, tmp, enc["sha256"], metadata={"sha256": enc["sha256"], "plain-sha256": enc["plainSha256"]})
            got, size = b.hash_object(key)
            if got != enc["sha256"] or size != enc["bytes"]:
                raise RuntimeError(f"the copy of {name} in {b.url(key)} does not match what was sent "
                                   f"(sha256 {got[:12]}… vs {enc['sha256'][:12]}…, {size} vs {enc['bytes']} bytes)")
            sent += enc["bytes"]
            objects[name] = {"key": key, "bytes": enc["bytes"], "sha256": enc["sha256"], "plainSha256": enc["plainSha256"]}
            if tmp != src:
                tmp.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    seconds = round(time.monotonic() - t, 2)
    manifest = {
        **{k: entry.get(k) for k in ("id", "from", "to", "created", "database", "sha256", "bytes", "rowCounts", "appliedMigrations",
                                     "tocEntries", "owner")},
        "host": socket.getfqdn(), "objects": objects,
        "encryption": {"tool": "gpg", "fingerprint": fpr} if o.public_key else None,
        "uploaded": now(),
    }
    mkey = f"{base}manifest.json"
    body = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    b.put_bytes(mkey, body, "application/json")
    if b.get_bytes(mkey) != body:
        raise RuntimeError(f"the manifest read back from {b.url(mkey)} differs from the one sent")
    rate = sent / 2**20 / seconds if seconds else None
    log(f"backup {entry['id']} copied to {o.location(entry['id'])}: {sent / 2**20:.1f} MiB "
        f"{'encrypted to ' + fpr if fpr else 'unencrypted'}, read back and checked, {seconds} s"
        + (f" ({rate:.1f} MiB/s)" if rate else ""))
    return {"location": o.location(entry["id"]), "bucket": o.bucket, "prefix": o.prefix, "objects": objects,
            "encryptedTo": fpr, "verified": now(), "seconds": seconds, "bytes": sent}


def _local_ok(entry: dict) -> bool:
    try:
        verify_backup(entry)
        return True
    except Exception:  # noqa: BLE001 - missing or changed: not usable
        return False


def step_offsite(spec: Spec) -> dict:
    """After the window: every registered backup still on the server and not yet copied goes to the
    bucket; then local backups beyond the newest `keepLocal` go, each only once its copy is verified."""
    o = settings(spec)
    if o is None:
        return {"offsite": None}
    state = load_state(spec)
    entries = sorted((state.get("backups") or {}).values(), key=lambda e: e.get("created") or "", reverse=True)
    copied, kept_only_here = [], []
    whole = set()  # backups whose copy is whole in the bucket now (checked, or just sent and read back)
    for e in entries:
        done = e.get("offsite") or {}
        here = (Path(e["path"]) / "db.dump").exists()
        if done.get("bucket") == o.bucket and done.get("prefix") == o.prefix and done.get("verified"):
            if not here:
                continue
            if _still_copied(o, e):
                whole.add(e["id"])
                continue
            # (a copy lost from the bucket since is sent again while the dump is here)
        if not _local_ok(e):
            if here:  # there but changed since it was written: not sent
                kept_only_here.append(e["id"])
            continue
        e["offsite"] = upload_backup(o, e)
        save_state(spec, state)
        copied.append(e["id"])
        whole.add(e["id"])
    pruned = []
    for e in entries[o.keep_local:]:
        # Only once its copy is verified and still whole in the bucket, and never while the database kept
        # with it is there (finish drops that only against a dump that verifies on the server).
        if Path(e["path"]).exists() and e["id"] in whole and not _kept_exists(e):
            shutil.rmtree(e["path"])
            pruned.append(e["id"])
    if pruned:
        log(f"local backups pruned (their copies in the bucket are verified; the newest {o.keep_local} stay): {', '.join(pruned)}")
    latest = (entries[0].get("offsite") or {}) if entries else {}
    sent = [e["offsite"] for e in entries if e["id"] in copied]
    nbytes, secs = sum(x["bytes"] for x in sent), sum(x["seconds"] for x in sent)
    return {"offsite": {
        "bucket": o.bucket, "prefix": o.prefix, "copied": copied, "prunedLocal": pruned, "notCopied": kept_only_here,
        "latest": latest.get("location"), "encryptedTo": latest.get("encryptedTo"),
        "bytesCopied": nbytes, "secondsCopying": round(secs, 2),
        "throughputMiBps": round(nbytes / 2**20 / secs, 1) if secs else None}}


def _kept_exists(e: dict) -> bool:
    return bool(e.get("keptDatabase")) and db_exists(e["keptDatabase"])


def _still_copied(o: Offsite, e: dict) -> bool:
    """Every object of the backup's copy is in the bucket now, at the size sent (a copy may have been
    deleted or expired since it was verified)."""
    b = o.client()
    objs = (e.get("offsite") or {}).get("objects") or {}
    if not objs or b.head(f"{e['offsite']['prefix']}{e['id']}/manifest.json") is None:
        return False
    return all((b.head(x["key"]) or {}).get("content-length") == str(x["bytes"]) for x in objs.values())


def ensure_local(spec: Spec, entry: dict) -> str:
    """The backup usable on this server: its local copy when it verifies; else, when it was copied
    off the server, fetched back from the bucket, decrypted and checked. Returns "local" or "bucket"."""
    if _local_ok(entry):
        return "local"
    where = (entry.get("offsite") or {}).get("location")
    if not where:
        raise Refusal(f"backup {entry['id']} is gone from {entry['path']} (or fails its sha256 check) and was never copied "
                      f"off the server; it cannot be restored")
    o = settings(spec)
    if o is None or o.bucket != entry["offsite"]["bucket"]:
        raise Refusal(f"backup {entry['id']} is gone from this server; its copy is in {where}: set jhe:backupBucket "
                      f"({entry['offsite']['bucket']}) and its credentials so it can be fetched")
    fetch_backup(spec, o, entry["offsite"]["prefix"], entry["id"], Path(entry["path"]), entry["sha256"])
    verify_backup(entry)
    return "bucket"


def fetch_backup(spec: Spec, o: Offsite, prefix: str, backup_id: str, dest: Path, sha256: str | None = None,
                 expect_from: str | None = None, files: tuple[str, ...] = BACKUP_FILES) -> dict:
    """Downloads a backup's objects from the bucket into `dest` (a 0700 directory of postgres, as
    take_backup makes), decrypting each with the private key given for this restore; every file's
    plaintext is checked against the manifest. `expect_from`: the version whose database it must hold
    (checked on the manifest, before anything is downloaded). Returns the bucket's manifest."""
    b = o.client()
    base = f"{prefix}{backup_id}/"
    try:
        manifest = json.loads(b.get_bytes(f"{base}manifest.json"))
    except S3Error as e:
        if e.status == 404:
            raise Refusal(f"there is no backup {backup_id} in s3://{o.bucket}/{prefix} (no manifest.json)") from e
        raise
    if sha256 and manifest.get("sha256") != sha256:
        raise Refusal(f"the copy of backup {backup_id} in the bucket is of another dump (sha256 {str(manifest.get('sha256'))[:12]}… "
                      f"vs {sha256[:12]}…)")
    if expect_from and manifest.get("from") != expect_from:
        raise Refusal(f"backup {backup_id} holds the database of {manifest.get('from')} (taken when it was left for "
                      f"{manifest.get('to')}); set jhe:version to {manifest.get('from')} to restore it, then upgrade as usual")
    enc = manifest.get("encryption")
    if enc and not o.private_key:
        raise Refusal(f"backup {backup_id} in s3://{o.bucket}/{prefix} is encrypted to {enc.get('fingerprint')}: give its private key "
                      f"for this restore (`pulumi config set --secret jhe:backupDecryptionKey < private-key.asc`)")
    t = time.monotonic()
    ensure_backup_dir(spec)
    part = dest.with_name(dest.name + ".fetching")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(mode=0o700)
    got = 0
    try:
        for name, obj in (manifest.get("objects") or {}).items():
            if name not in files:
                continue
            raw = part / (name + (".gpg" if enc else ""))
            digest, size = b.get_file(obj["key"], raw)
            got += size
            if digest != obj["sha256"]:
                raise RuntimeError(f"{obj['key']} downloaded with sha256 {digest[:12]}…, the manifest says {obj['sha256'][:12]}…")
            if enc:
                assert o.private_key is not None
                plain = decrypt_file(o.private_key, raw, part / name)
                raw.unlink()
                if plain != obj["plainSha256"]:
                    raise RuntimeError(f"{name} decrypted to sha256 {plain[:12]}…, the manifest says {obj['plainSha256'][:12]}…")
            os.chmod(part / name, 0o600)
        (part / "db.dump.sha256").write_text(f"{manifest['sha256']}  db.dump\n")
        local = {k: v for k, v in manifest.items() if k not in ("objects", "encryption", "uploaded", "host")}
        (part / "manifest.json").write_text(json.dumps({**local, "path": str(dest), "dump": "db.dump",
                                                        "fetchedFrom": f"s3://{o.bucket}/{base}"}, indent=2) + "\n")
        for f in part.iterdir():
            os.chmod(f, 0o600)
            shutil.chown(f, "postgres", "postgres")
        shutil.chown(part, "postgres", "postgres")
        if dest.exists():
            shutil.rmtree(dest)
        part.rename(dest)
    except BaseException:
        shutil.rmtree(part, ignore_errors=True)
        raise
    secs = round(time.monotonic() - t, 2)
    log(f"backup {backup_id} fetched from s3://{o.bucket}/{base} into {dest}: {got / 2**20:.1f} MiB in {secs} s, "
        f"{'decrypted and ' if enc else ''}checked against its manifest")
    return {**manifest, "fetchSeconds": secs}


RESTORE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}$")
BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def parse_location(loc: str) -> tuple[str, str, str] | None:
    """(bucket, prefix, last segment) of s3://<bucket>/<prefix><id>/ (the backup output's form), each
    checked; None when `loc` is no such location."""
    m = re.match(r"^s3://([^/]+)/((?:[^/]+/)*)([^/]+)/?$", loc)
    if not m:
        return None
    bucket, prefix, last = m.groups()
    if not BUCKET_NAME.match(bucket) or not RESTORE_ID.match(last) or not PREFIX_OK.match(prefix) or {".", ".."} & set(prefix.split("/")):
        return None
    return bucket, prefix, last


def restore_source(spec: Spec, o: Offsite | None) -> tuple[str, str] | None:
    """(prefix, backup id) of jhe:restoreFrom: a backup id under this stack's prefix, or the location
    the backup output showed (s3://<bucket>/<prefix><id>/). None when not set."""
    rf = spec.raw.get("restoreFrom")
    if not rf:
        return None
    if o is None:
        raise Refusal("jhe:restoreFrom needs jhe:backupBucket and its credentials: the backup is fetched from the bucket")
    loc = parse_location(rf)
    if loc:
        if loc[0] != o.bucket:
            raise Refusal(f"jhe:restoreFrom names bucket {loc[0]}, but jhe:backupBucket is {o.bucket}")
        _, prefix, bid = loc
    else:
        prefix, bid = o.prefix, rf
    if not RESTORE_ID.match(bid) or not PREFIX_OK.match(prefix) or {".", ".."} & set(prefix.split("/")):
        raise Refusal(f"jhe:restoreFrom must be a backup id (like 20260101-120000-v1.0.0-to-v1.1.0) or its location "
                      f"s3://<bucket>/<prefix><id>/ (got {rf!r})")
    return prefix, bid


def fetch_for_restore(spec: Spec, state: dict, to: str, database_empty: bool) -> dict | None:
    """Disaster recovery onto a new server: jhe:restoreFrom's backup fetched from the bucket, decrypted
    and checked before anything is changed, as the entry the migrate step restores (None without
    jhe:restoreFrom). Refused on a server whose database has JHE's tables already: a restore never
    replaces data (a rollback does that, by reverting jhe:version)."""
    o = settings(spec)
    src = restore_source(spec, o)
    if src is None:
        return None
    assert o is not None
    prefix, bid = src
    if not database_empty and (state.get("restoredFrom") or {}).get("id") == bid:
        log(f"the database here was restored from {bid} already (an earlier run): the install goes on with it")
        return None
    if not database_empty:
        raise Refusal(f"jhe:restoreFrom is for a new server, and the database {spec.db_name} here already has JHE's tables: "
                      f"nothing was restored. Remove jhe:restoreFrom (to go back to an older version's data, revert jhe:version)")
    dest = spec.backup_dir / bid
    manifest = fetch_backup(spec, o, prefix, bid, dest, expect_from=to)
    entry = {"id": bid, "path": str(dest), "dump": "db.dump", "sha256": manifest["sha256"], "created": manifest.get("created"),
             "from": manifest.get("from"), "to": manifest.get("to"), "rowCounts": manifest.get("rowCounts"),
             "appliedMigrations": manifest.get("appliedMigrations"), "fetchedFrom": f"s3://{o.bucket}/{prefix}{bid}/",
             "fetchSeconds": manifest.get("fetchSeconds")}
    verify_backup(entry)
    return entry
