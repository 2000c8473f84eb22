"""Prod's data on staging, de-identified (jhe:cloneFrom), and the backups it comes from (jhe:snapshot
on prod: a verified backup of what serves now, copied to the bucket, with no downtime).

The clone: prod's backup fetched from the bucket (decrypted, checked against its manifest), restored
into a new database, its personal data replaced (deidentify), its rows counted against the backup's,
then swapped in by rename in a short window; staging's own database is kept, renamed. Prod's
decrypted dump is removed whatever happens, and a copy that was not de-identified is dropped: no
app ever opens prod's personal data here."""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import socket
import time
from pathlib import Path

from .backup import take_backup, verify_backup
from .db import db_exists, row_counts, stamp_name
from .dbmoves import swap_back, swap_in
from .deidentify import deidentify
from .health import health
from .offsite import Offsite, fetch_backup, parse_location, settings, step_offsite
from .s3 import S3Error
from .spec import Spec
from .staging import restore_copy
from .state import current_version, load_state, register_backup, release_lock, save_state, take_lock
from .upgradelog import append_log
from .util import Refusal, log, now, psql
from .window import close_window, open_window, start_service


def _idle(spec: Spec, state: dict, what: str) -> str:
    """The version serving, with no move under way (a snapshot or a clone goes between moves)."""
    v = current_version(spec)
    if not v or not spec.current.is_symlink():
        raise Refusal(f"{what} needs JHE serving in the releases layout here (run `pulumi up` without it first)")
    t = state.get("target") or {}
    if state.get("window") or (t.get("to") and t.get("to") != v) or (t.get("to") == v and t.get("from") not in (None, v)):
        raise Refusal(f"{what}: a move to {t.get('to')} is under way on this server; run `pulumi up` to finish it first")
    return v


def step_snapshot(spec: Spec) -> dict:
    """jhe:snapshot: a verified pg_dump of the live database (the app keeps serving), registered with
    the server's backups and copied to the bucket like them."""
    label = spec.raw.get("snapshot") or ""
    state = load_state(spec)
    v = _idle(spec, state, "jhe:snapshot")
    held = spec.lock_file.exists()
    take_lock(spec, f"snapshot {label}")
    try:
        b = take_backup(spec, v, v, name=f"{v}-snapshot")
        verify_backup(b)
        state = load_state(spec)
        # Keyed apart from the moves' backups ("<from>-><to>"): a rollback never takes a snapshot for them.
        key = register_backup(state, v, v, b, key=f"{v}@{b['id']}")
        state["backups"][key]["label"] = label
        save_state(spec, state)
        off = step_offsite(spec).get("offsite") if settings(spec) else None
    finally:
        if not held:
            release_lock(spec)
    entry = load_state(spec)["backups"][key]
    where = (entry.get("offsite") or {}).get("location")
    append_log(spec, f"## Snapshot {b['id']} - {now()}\n\n**Performed by:** {spec.operator} (stack {spec.owner})\n"
                     f"**Label:** {label}\n**Version:** {v}\n**Copied to:** {where or 'nowhere (no bucket)'}\n")
    return {"snapshot": {"id": b["id"], "label": label, "version": v, "path": b["path"], "sha256": b["sha256"], "bytes": b["bytes"],
                         "rows": sum((b.get("rowCounts") or {}).values()), "seconds": b.get("seconds"), "location": where,
                         "offsite": off}}


def _source(spec: Spec) -> tuple[Offsite, str, str, str]:
    """(bucket settings for the source, its prefix, the backup id or "latest", the location as given)."""
    c = spec.raw.get("clone") or {}
    frm = c.get("from") or ""
    if spec.raw.get("stage") == "prod":
        raise Refusal("jhe:cloneFrom is for staging stacks: it replaces this server's database; nothing was changed")
    o = settings(spec)
    if o is None:
        raise Refusal("jhe:cloneFrom needs this stack's bucket settings (jhe:backupBucket, jhe:backupEndpoint and credentials "
                      "that may read prod's prefix)")
    loc = parse_location(frm)
    if not loc:
        raise Refusal(f"jhe:cloneFrom must be s3://<bucket>/<prefix>latest or s3://<bucket>/<prefix><backup id>/ (got {frm!r})")
    bucket, prefix, which = loc
    return dataclasses.replace(o, bucket=bucket, prefix=prefix), prefix, which, frm


def newest_backup(src: Offsite, prefix: str, version: str) -> str:
    """The newest complete backup under `prefix` (its manifest.json is written last) that holds the
    database of `version` (a snapshot of it, or a backup taken when leaving it); ids begin with their
    UTC time, so the newest sorts last."""
    try:
        keys = src.client().list(prefix)
    except S3Error as e:
        raise Refusal(f"jhe:cloneFrom: s3://{src.bucket}/{prefix} cannot be listed ({e}); check that this stack's "
                      f"credentials may read prod's prefix") from e
    ids = sorted({k[len(prefix):].split("/", 1)[0] for k in keys if k.endswith("/manifest.json") and k.count("/") == prefix.count("/") + 1})
    for bid in reversed(ids[-30:]):
        try:
            if json.loads(src.client().get_bytes(f"{prefix}{bid}/manifest.json")).get("from") == version:
                return bid
        except (S3Error, ValueError):
            continue
    raise Refusal(f"jhe:cloneFrom: there is no backup of {version} (the version this server serves) among the newest in "
                  f"s3://{src.bucket}/{prefix} ({', '.join(ids[-3:]) or 'none'}): set jhe:snapshot on the prod stack and run its "
                  f"`pulumi up` to make one, or move staging to prod's version first")


def _redacted(e: BaseException) -> str:
    """An error of the clone's restore or de-identification, without the lines PostgreSQL adds that
    quote a row (CONTEXT: COPY ... line N: "<row>", DETAIL: Failing row contains (...))."""
    text = str(e) + " " + str(getattr(e, "stderr", "") or "")
    keep = [ln for ln in text.splitlines() if not re.match(r"^\s*(CONTEXT|DETAIL|LINE \d+):", ln) and "Failing row" not in ln]
    return " ".join(" ".join(keep).split())[-600:]


def sweep_clone_leftovers(spec: Spec, state: dict) -> list[str]:
    """A clone killed part-way (OOM, reboot) left a copy that may not be de-identified, or prod's
    decrypted dump: both go before anything else runs."""
    c = state.get("cloning")
    if not c:
        return []
    gone = []
    if c.get("db") and db_exists(c["db"]):
        psql("postgres", f'DROP DATABASE "{c["db"]}" WITH (FORCE)')
        gone.append(c["db"])
    for d in (c.get("dir"), f"{c.get('dir')}.fetching"):
        if d and Path(d).exists():
            shutil.rmtree(d)
            gone.append(d)
    state.pop("cloning", None)
    save_state(spec, state)
    if gone:
        log(f"an interrupted clone's leftovers are removed: {', '.join(gone)}")
    return gone


def step_clone(spec: Spec) -> dict:
    """jhe:cloneFrom: staging's database replaced by a de-identified copy of prod's backup."""
    src, prefix, which, given = _source(spec)
    state = load_state(spec)
    sweep_clone_leftovers(spec, state)
    v = _idle(spec, state, "jhe:cloneFrom")
    done = state.get("clonedFrom") or {}
    # Re-run with the same jhe:cloneFrom (another setting changed): never a new clone ("latest" may name
    # a newer backup by now; naming it is the way to clone it).
    if done.get("given") == given:
        log(f"this server's database is already the de-identified clone of {done.get('location')} ({done.get('at')})")
        return {"clone": {**done, "unchanged": True}}
    bid = newest_backup(src, prefix, v) if which == "latest" else which
    location = f"s3://{src.bucket}/{prefix}{bid}/"
    try:
        manifest = json.loads(src.client().get_bytes(f"{prefix}{bid}/manifest.json"))
    except S3Error as e:
        raise Refusal(f"jhe:cloneFrom: no backup at {location} ({e.status}: no manifest.json)") from e
    if manifest.get("from") != v:
        raise Refusal(f"jhe:cloneFrom: backup {bid} holds the database of {manifest.get('from')}, and this server serves {v}: "
                      f"move staging to {manifest.get('from')} first (jhe:version), or clone a backup of {v} (jhe:snapshot on the prod "
                      f"stack takes one of what it serves now); nothing was changed")
    if manifest.get("host") and manifest["host"] == socket.getfqdn():
        raise Refusal(f"jhe:cloneFrom: backup {bid} was taken on this very server ({manifest['host']}): a clone replaces the "
                      f"database of the server it runs on, and this one is the source; nothing was changed")
    held = spec.lock_file.exists()
    take_lock(spec, f"clone of {bid}")
    t0 = time.monotonic()
    dest = spec.backup_dir / f"{bid}.clone"
    cdb = stamp_name(spec.db_name, "clone")
    # Recorded first: a run killed from here on leaves nothing behind (the next run sweeps it).
    state["cloning"] = {"db": cdb, "dir": str(dest), "at": now()}
    save_state(spec, state)
    try:
        fetched = fetch_backup(spec, src, prefix, bid, dest, files=("db.dump",))
        entry = {"id": bid, "path": str(dest), "dump": "db.dump", "sha256": fetched["sha256"]}
        verify_backup(entry)
        t = time.monotonic()
        restore_copy(spec, cdb, dest / "db.dump")
        restore_s = round(time.monotonic() - t, 2)
        # (the backup's own counts were read beside a dump of a live database: rows written meanwhile
        # make them differ from the dump's; the copy's counts are the clone's)
        counts = row_counts(spec, cdb)
        t = time.monotonic()
        deid = deidentify(cdb, (spec.raw.get("clone") or {}).get("keepColumns") or [])
        deid_s = round(time.monotonic() - t, 2)
    except BaseException as e:
        # The copy may hold prod's personal data: it goes (it is only a copy of prod's backup).
        psql("postgres", f'DROP DATABASE IF EXISTS "{cdb}" WITH (FORCE)')
        shutil.rmtree(dest, ignore_errors=True)
        state.pop("cloning", None)
        save_state(spec, state)
        if not held:
            release_lock(spec)
        if isinstance(e, Refusal):
            raise
        if isinstance(e, Exception):
            raise RuntimeError(f"the clone of {bid} failed; the copy is dropped, staging is unchanged: {_redacted(e)}") from None
        raise
    finally:
        shutil.rmtree(dest, ignore_errors=True)  # prod's decrypted dump never stays here
        shutil.rmtree(dest.with_name(dest.name + ".fetching"), ignore_errors=True)
    state.pop("cloning", None)  # de-identified: no longer a leftover to sweep
    save_state(spec, state)
    # The window: the app stopped, the de-identified copy takes the live name; staging's database kept.
    kept = stamp_name(spec.db_name, "beforeclone")
    try:
        open_window(spec, state)
        take_lock(spec, f"clone of {bid}")  # (the window names its own purpose: this is no upgrade)
        swap_in(spec, state, cdb, kept)
        start_service(spec)
        h = health(spec, v, spec.health_timeout)
        if not h["ok"]:
            raise Refusal(f"{v} failed its health check on the clone of {bid} ({h.get('detail')}); staging's own database serves "
                          f"again (the clone is kept, renamed)")
    except BaseException:
        for undo in ((lambda: swap_back(spec, state)) if state.get("swap") else None, lambda: start_service(spec),
                     lambda: close_window(spec, state), None if held else (lambda: release_lock(spec))):
            try:
                if undo:
                    undo()
            except Exception as e:  # noqa: BLE001 - each undone on its own: one failing does not skip the rest
                log(f"while putting staging back: {e}")
        raise
    state.pop("swap", None)
    window = close_window(spec, state)
    rec = {"location": location, "backup": bid, "given": given, "taken": manifest.get("created"), "version": v,
           "deidentified": True, "columnsReplaced": deid["columnsReplaced"], "rows": sum(counts.values()),
           "tables": len(counts), "keptDatabase": kept, "fetchSeconds": fetched.get("fetchSeconds"), "restoreSeconds": restore_s,
           "deidentifySeconds": deid_s, "windowSeconds": window, "seconds": round(time.monotonic() - t0, 2), "at": now()}
    state["clonedFrom"] = rec
    save_state(spec, state)
    if not held:
        release_lock(spec)
    append_log(spec, f"## Database replaced by a de-identified clone of {bid} - {now()}\n\n**Performed by:** {spec.operator} "
                     f"(stack {spec.owner})\n**From:** {location} (taken {manifest.get('created')})\n**Version:** {v}\n"
                     f"**Replaced:** {', '.join(deid['columnsReplaced'])}\n**Rows:** {rec['rows']} in {rec['tables']} tables\n"
                     f"**Staging's previous database kept as:** {kept}\n**Downtime:** {window} s\n")
    log(f"database replaced by a de-identified clone of {bid} ({rec['rows']} rows; {len(deid['columnsReplaced'])} columns "
        f"replaced in {deid_s} s); the previous one is kept as {kept}")
    return {"clone": rec}
