"""Backups: a verified pg_dump with the config files and a manifest, or a snapshot copy in the window."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import subprocess
import time
from pathlib import Path

from .db import (
    applied_migrations,
    copy_db_properties,
    data_dir_free,
    db_exists,
    db_size,
    drain,
    kept_name,
    pg_major,
    row_counts,
    sessions_closed,
)
from .spec import Spec
from .state import live_root, register_backup, save_state
from .util import log, now, psql, quote_ident, run, sha256_file, sql_literal, write_private


def take_backup(spec: Spec, frm: str, to: str, db: str | None = None, name: str | None = None) -> dict:
    """pg_dump -Fc of the database (the live one, or `db`: one kept by rename) + sha256 + the config
    files, in a 0700 directory <UTC time>-<from>-to-<to> (or <UTC time>-<name>)."""
    db = db or spec.db_name
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    d = spec.backup_dir / f"{stamp}-{name or f'{frm}-to-{to}'}"
    n = 1
    while d.exists():  # two backups in one second (a re-run): never reuse a directory
        n += 1
        d = spec.backup_dir / f"{stamp}-{name or f'{frm}-to-{to}'}-{n}"
    ensure_backup_dir(spec)
    d.mkdir(mode=0o700)
    shutil.chown(d, "postgres", "postgres")
    try:
        manifest = _write_backup(spec, d, frm, to, db)
    except (OSError, subprocess.CalledProcessError) as e:  # no room for the checksum, a config file, the manifest
        raise dump_failed(spec.backup_dir, d, f"{e} {getattr(e, 'stderr', None) or ''}") from e
    log(f"backup {d} ({manifest['bytes']} bytes, sha256 {manifest['sha256'][:12]}…, {manifest['seconds']} s)")
    return manifest


def ensure_backup_dir(spec: Spec) -> None:
    """jhe:backupDir, where only root and the database's owner (postgres, who writes and restores the
    dumps) get in."""
    spec.backup_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(spec.backup_dir, "root", "postgres")
    os.chmod(spec.backup_dir, 0o710)


def _write_backup(spec: Spec, d: Path, frm: str, to: str, db: str) -> dict:
    """The dump, its checksum, the config files and the manifest, into `d`."""
    t = time.monotonic()
    dump = d / "db.dump"
    p = run(["pg_dump", "-Fc", "-Z", "1", "-f", str(dump), db], user="postgres", cwd="/", check=False)
    if p.returncode != 0:
        raise dump_failed(spec.backup_dir, d, p.stderr)
    os.chmod(dump, 0o600)
    digest = sha256_file(dump)
    write_private(d / "db.dump.sha256", f"{digest}  db.dump\n")
    listing = run(["pg_restore", "--list", str(dump)], quiet=True)
    entries = sum(1 for l in listing.stdout.splitlines() if l and not l.startswith(";"))
    root = live_root(spec)
    copied = []
    for src, name in ((root / ".env" if root else None, "env"),
                      (Path(f"/etc/nginx/sites-available/{spec.service}"), "nginx-site"),
                      (Path(f"/etc/systemd/system/{spec.service}.service"), "systemd-unit")):
        if src and src.exists():
            shutil.copy2(src, d / name)
            os.chmod(d / name, 0o600)
            copied.append(name)
    manifest = {
        "id": d.name, "path": str(d), "from": frm, "to": to, "created": now(),
        "database": db, "dump": "db.dump", "sha256": digest, "bytes": dump.stat().st_size,
        "tocEntries": entries, "rowCounts": row_counts(spec, db), "appliedMigrations": applied_migrations(spec, db),
        "files": copied, "seconds": round(time.monotonic() - t, 2), "owner": spec.owner,
    }
    write_private(d / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    return manifest


class BackupFailed(RuntimeError):
    """The dump could not be written; what it had written is gone, nothing else changed."""


def dump_failed(backup_dir: Path, d: Path, stderr: str) -> BackupFailed:
    """A failed pg_dump: its partial file removed (it restores nothing and holds the space), and a
    message that says what filled up when that was the cause."""
    dump = d / "db.dump"
    written = dump.stat().st_size if dump.exists() else 0
    shutil.rmtree(d, ignore_errors=True)
    err = stderr.strip()[-400:]
    if "No space left on device" in stderr or "Disk quota exceeded" in stderr:
        u = shutil.disk_usage(backup_dir)
        full = "filled up" if "No space left on device" in stderr else "reached its disk quota"
        return BackupFailed(
            f"the backup could not be written: {backup_dir} {full} during the dump ({written / 2**20:.1f} MiB "
            f"of it written; {u.free / 2**20:.1f} MiB of {u.total / 2**20:.0f} MiB free now that the partial dump "
            f"is removed). Free space there, or set jhe:backupDir to a directory on a larger filesystem, then run "
            f"`pulumi up` again (pg_dump: {err})")
    return BackupFailed(f"the backup could not be written ({err}); what it had written was removed")


def verify_backup(manifest: dict) -> None:
    dump = Path(manifest["path"]) / manifest["dump"]
    if not dump.exists() or sha256_file(dump) != manifest["sha256"]:
        raise RuntimeError(f"backup {manifest['id']} fails its sha256 check: it changed after it was written")
    run(["pg_restore", "--list", str(dump)], quiet=True)


def ensure_backup(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """The database as it is in this window (writes are stopped), kept: a snapshot copy by template
    (file speed; a rename brings it back; dumped after the window), or without room for one, a
    verified pg_dump now."""
    w = state["window"]["id"]
    b = state.get("backup")
    if b and b.get("window") == w and b.get("from") == (frm or "none") and b.get("to") == to:
        if not b.get("ahead") and not b.get("snapshot"):  # one taken before the window was verified then
            verify_backup(b)
        return b
    snap = take_snapshot(spec, state, frm, to)
    if snap:
        return snap
    b = take_backup(spec, frm or "none", to)
    b["window"] = w
    verify_backup(b)
    state["backup"] = b
    register_backup(state, frm, to, b)
    save_state(spec, state)
    return b


def take_snapshot(spec: Spec, state: dict, frm: str | None, to: str) -> dict | None:
    """CREATE DATABASE ... TEMPLATE the live one: a copy at file speed, taken with nobody connected.
    Recorded as this window's swap, so recovery brings it back by rename. None without room for it."""
    drop_unfinished_snapshot(spec, state)  # first: its space counts as free
    db_bytes = db_size(spec.db_name)
    data_dir, free = data_dir_free()
    if free < db_bytes + 300 * 2**20:
        log(f"no room in {data_dir} for a snapshot copy of {db_bytes // 2**20} MiB: the backup is a pg_dump in the window")
        return None
    t = time.monotonic()
    name = kept_name(spec, frm)
    strategy = " STRATEGY FILE_COPY" if pg_major() >= 15 else ""
    # Named in the state first: a run killed while the copy is made leaves a copy the next run knows.
    state["snapshotPending"] = {"name": name, "window": state["window"]["id"]}
    save_state(spec, state)
    with sessions_closed(spec.db_name):
        psql("postgres", f'CREATE DATABASE "{name}" OWNER "{spec.db_user}" TEMPLATE "{spec.db_name}"{strategy}')
    copy_db_properties(spec.db_name, name)
    copy_seconds = round(time.monotonic() - t, 2)
    b = {"id": name, "snapshot": name, "keptDatabase": name, "window": state["window"]["id"], "from": frm or "none",
         "to": to, "created": now(), "rowCounts": row_counts(spec, name), "appliedMigrations": applied_migrations(spec, name),
         "seconds": round(time.monotonic() - t, 2), "copySeconds": copy_seconds, "bytes": db_bytes}
    state["backup"] = b
    state["swap"] = {"previous": name, "in": None, "at": now(), "snapshot": True}
    state.pop("snapshotPending", None)
    save_state(spec, state)
    log(f"snapshot {name} of {spec.db_name} ({db_bytes // 2**20} MiB, {b['seconds']} s); its dump is written after the window")
    return b


def drop_unfinished_snapshot(spec: Spec, state: dict) -> None:
    """A snapshot copy begun in this window by a run that was killed: it copies the live database,
    which nothing has changed since (the window's migration comes after its backup), so it goes and
    a new one is made. One from another window is only named in the log (kept)."""
    p = state.pop("snapshotPending", None)
    if not p or p["name"] == spec.db_name:
        return
    # The killed run's psql died with it, not its server process: a copy still being made is cancelled
    # (an unfinished CREATE DATABASE leaves nothing behind) before it can commit unrecorded.
    if cancel_create(p["name"]):
        log(f"the snapshot copy {p['name']} an interrupted run had begun was still being made: cancelled")
    if not db_exists(p["name"]):
        return
    if p.get("window") != state["window"]["id"] or not db_exists(spec.db_name):
        log(f"database {p['name']} is a snapshot copy an interrupted run began in another window; it is kept")
        return
    with sessions_closed(p["name"]):
        psql("postgres", f'DROP DATABASE "{p["name"]}"')
    log(f"the snapshot copy {p['name']} an interrupted run began is dropped; a new one is made of the unchanged database")


def cancel_create(name: str, wait: float = 30.0) -> bool:
    """Ends a CREATE DATABASE of `name` still running (its client is gone) and waits for it to end.
    True when there was one."""
    q = (f"FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND query ILIKE "
         f"{sql_literal('CREATE DATABASE ' + quote_ident(name) + '%')}")
    if psql("postgres", f"SELECT count(*) {q}") == "0":
        return False
    deadline = time.monotonic() + wait
    while psql("postgres", f"SELECT count(pg_terminate_backend(pid)) {q}") != "0" and time.monotonic() < deadline:
        time.sleep(0.1)
    return True


def prune_kept_databases(spec: Spec, state: dict, keep: int = 2) -> list[str]:
    """Databases kept by staged upgrades beyond the newest `keep` go, each only when its backup (taken
    with nothing written until the swap, so it holds the same rows) verifies; their dumps stay."""
    entries = sorted((b for b in (state.get("backups") or {}).values() if b.get("keptDatabase")),
                     key=lambda b: b.get("created", ""), reverse=True)
    dropped = []
    for b in entries[keep:]:
        try:
            verify_backup(b)
        except Exception as e:  # noqa: BLE001 - then the kept database is the good copy: it stays
            log(f"keeping {b['keptDatabase']}: its backup {b['id']} does not verify ({e})")
            continue
        if db_exists(b["keptDatabase"]):
            drain(b["keptDatabase"])
            psql("postgres", f'DROP DATABASE "{b["keptDatabase"]}"')
            dropped.append(b["keptDatabase"])
        b["keptDatabase"] = None
    return dropped
