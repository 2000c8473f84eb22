"""Staged migration: a copy migrated while the old version serves, swapped in by rename in the window."""
from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from .backup import BackupFailed, take_backup, verify_backup
from .db import (
    applied_migrations,
    aux_name,
    copy_db_properties,
    data_dir_free,
    db_exists,
    drain,
    kept_name,
    live_marker,
    table_marks,
    tables_written,
    wait_ready,
)
from .dbmoves import finish_interrupted_swap, swap_back, swap_in
from .handover import handover_unit_file
from .migclass import worst
from .recovery import end_failed_move
from .rowkeys import deletion_counters, deletions_dir, migration_deletions
from .spec import Spec
from .state import register_backup, save_state
from .upgradelog import append_log
from .util import Refusal, error_summary, log, now, psql, run, sql_literal


def staged_db(spec: Spec) -> str:
    return aux_name(spec.db_name, "_staged")


def drop_staged(spec: Spec, state: dict) -> None:
    """The staged copy holds nothing the live database or the backup does not: it may go."""
    sdb = staged_db(spec)
    if db_exists(sdb):
        drain(sdb)
        psql("postgres", f'DROP DATABASE "{sdb}"')
    state.pop("staged", None)
    save_state(spec, state)


def choose_strategy(spec: Spec, kind: str, db_bytes: int, classes: list[str] | None = None) -> tuple[str, str]:
    """online, staged or in-window, and why (shown by preview and in the outputs). `classes`: the
    pending migrations' (see migclass); None when not known."""
    if spec.strategy != "staged":
        return "in-window", "jhe:migrationStrategy is in-window"
    if kind != "upgrade":
        return "in-window", f"a {kind} runs in the window"
    if classes is not None and worst(classes) in ("no-sql", "additive") and handover_unit_file(spec).exists():
        return "online", ("every pending migration is no-SQL or additive (safe for the old code): applied while the old "
                          "version serves, then the new release takes over through the hand-over unit - no window")
    if psql("postgres", "SHOW track_counts") != "on":
        return "in-window", "track_counts is off: writes made during staging could not be detected"
    if psql("postgres", "SELECT count(*) FROM pg_prepared_xacts") != "0":
        return "in-window", "prepared transactions exist"
    data_dir, free = data_dir_free()
    need = 2 * db_bytes + 300 * 2**20
    if free < need:
        return "in-window", (f"the staged copy needs about {need // 2**20} MiB in {data_dir}, "
                             f"{free // 2**20} MiB are free")
    return "staged", "backup and migration on a copy while the old version serves; a rename swap in the window"


def ensure_backup_ahead(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """The backup taken before the window, with the table counters read just before it began."""
    b = state.get("backup")
    if (b and b.get("ahead") and b.get("from") == (frm or "none") and b.get("to") == to
            and (Path(b["path"]) / b["dump"]).exists()):
        verify_ahead(spec, state, frm, to, b)
        return b
    marks = table_marks(spec.db_name)
    since = live_marker(spec.db_name)  # an online upgrade's rows "written since": from before the dump
    try:
        b = take_backup(spec, frm or "none", to)
    except BackupFailed as e:
        drop_staged(spec, state)
        raise refuse_unchanged(spec, state, frm, str(e)) from e
    b.update(window=None, ahead=True, marks=marks, since=since)
    verify_backup(b)
    state["backup"] = b
    register_backup(state, frm, to, b)
    save_state(spec, state)
    return b


def verify_ahead(spec: Spec, state: dict, frm: str | None, to: str, b: dict) -> None:
    """A backup taken before the window that no longer verifies is set aside (never used, kept on
    disk for a look) and the move refused; the next `pulumi up` takes a new one."""
    try:
        verify_backup(b)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        state.pop("backup", None)
        key = f"{frm}->{to}"
        if (state.get("backups") or {}).get(key, {}).get("id") == b["id"]:
            del state["backups"][key]
        drop_staged(spec, state)
        raise refuse_unchanged(spec, state, frm, f"{e}; it is set aside, and `pulumi up` again takes a new one") from e


def migrate_copy(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """Restores the backup taken before the window into the staged copy and migrates the copy with
    the new release, while the old version serves. Refuses (nothing on the server changed) if the
    migration fails."""
    b = state["backup"]
    sdb = staged_db(spec)
    st = state.get("staged") or {}
    if st.get("to") == to and st.get("backup") == b["id"] and st.get("phase") == "migrated" and db_exists(sdb):
        return st
    drop_staged(spec, state)  # left over from an interrupted run: a copy, made again
    verify_ahead(spec, state, frm, to, b)
    st = {"to": to, "backup": b["id"], "db": sdb, "phase": "restoring"}
    state["staged"] = st
    save_state(spec, state)
    t = time.monotonic()
    try:
        restore_copy(spec, sdb, Path(b["path"]) / b["dump"])
    except (RuntimeError, subprocess.CalledProcessError) as e:
        err = f"{e} {getattr(e, 'stderr', None) or ''}"
        if not wait_ready(60):  # PostgreSQL restarts itself if it could not write its log (a full disk)
            raise Refusal(f"{restore_failed(err, measure=False)}; PostgreSQL has not accepted connections since (60 s): "
                          f"free space in its data directory and start it (systemctl start postgresql), then run "
                          f"`pulumi up` again - the staged copy {sdb} is dropped then") from e
        drop_staged(spec, state)
        raise refuse_unchanged(spec, state, frm, restore_failed(err)) from e
    st["restoreSeconds"] = round(time.monotonic() - t, 2)
    before = set(applied_migrations(spec, sdb))
    counters = deletion_counters(sdb)
    st["phase"] = "migrating"
    save_state(spec, state)
    t = time.monotonic()
    rel = spec.release(to)
    # Through `manage.py shell` so the settings are the release's own, with DB_NAME pointing at the
    # copy (JHE's settings read the environment first); it refuses unless they really do.
    code = ("import os, sys; from django.conf import settings; from django.core.management import call_command; "
            "name = settings.DATABASES['default']['NAME']; "
            "sys.exit(f'the settings use database {name}, not the staged copy') if name != os.environ['DB_NAME'] "
            "else call_command('migrate', interactive=False, verbosity=1)")
    p = run([str(rel / "venv/bin/python"), "manage.py", "shell", "-c", code], user=spec.app_user, cwd=rel,
            env={**os.environ, "DB_NAME": sdb}, check=False, timeout=7200)
    applied = [m for m in applied_migrations(spec, sdb) if m not in before]
    if p.returncode != 0:
        err = error_summary(p.stderr)
        drop_staged(spec, state)
        raise refuse_unchanged(spec, state, frm, f"`manage.py migrate` of {to} failed on a staged copy of the database: {err}")
    st.update(phase="migrated", applied=applied, migrateSeconds=round(time.monotonic() - t, 2))
    # The rows the migrations deleted: the copy against the live database, unchanged since the dump
    # (else the window migrates the live database and records them again).
    st["deletedByMigrations"] = migration_deletions(spec.db_name, sdb, counters, deletion_counters(sdb),
                                                    deletions_dir(spec, frm, to))
    save_state(spec, state)
    log(f"staged copy {sdb} migrated ({len(applied)} migrations, {st['migrateSeconds']} s) while {frm} serves")
    return st


def restore_copy(spec: Spec, sdb: str, dump: Path) -> None:
    """The staged copy: a new database like the live one, the dump restored into it."""
    enc = psql("postgres", f"SELECT pg_encoding_to_char(encoding) || '|' || datcollate || '|' || datctype "
                           f"FROM pg_database WHERE datname = {sql_literal(spec.db_name)}").split("|")
    psql("postgres", f'CREATE DATABASE "{sdb}" OWNER "{spec.db_user}" TEMPLATE template0 ENCODING {sql_literal(enc[0])} '
                     f"LC_COLLATE {sql_literal(enc[1])} LC_CTYPE {sql_literal(enc[2])}")
    copy_db_properties(spec.db_name, sdb)
    p = run(["pg_restore", "-j", "2", "--no-owner", "--role", spec.db_user, "-d", sdb, str(dump)],
            user="postgres", cwd="/", check=False)
    if p.returncode != 0:
        raise RuntimeError(p.stderr.strip() or f"pg_restore exited {p.returncode}")  # whole: the first error is the cause


def restore_failed(err: str, measure: bool = True) -> str:
    """Why the staged copy could not be made, and what to do (said plainly when the disk filled)."""
    if "No space left on device" in err or "could not extend file" in err:
        data_dir, free = data_dir_free() if measure else ("", -1)
        room = f"{free / 2**20:.0f} MiB free now that the copy is dropped" if measure else "PostgreSQL is down"
        where = f"the PostgreSQL data directory{' ' + data_dir if data_dir else ''}"
        return (f"{where} filled up while the backup was restored into the staged copy ({room}). Free space there, or set "
                f"jhe:migrationStrategy to in-window (the migration then runs on the live database in the window and "
                f"needs no copy), then run `pulumi up` again (PostgreSQL: {_pg_error(err)})")
    return f"restoring the backup into the staged copy failed: {_pg_error(err)}"


def _pg_error(err: str) -> str:
    """The error that says why: a full disk when one is named (the errors after it are its consequences,
    e.g. a foreign key whose index could not be built), else the first error."""
    lines = [l.strip() for l in err.splitlines() if "ERROR" in l or "error:" in l or "FATAL" in l or "PANIC" in l]
    lines = [l for l in lines if "No space left" in l] or lines
    return (lines[0] if lines else err.strip().splitlines()[-1] if err.strip() else "(no output)")[:300]


def refuse_unchanged(spec: Spec, state: dict, frm: str | None, reason: str) -> Refusal:
    """A failure before the window: bookkeeping as after a recovery, though there was nothing to undo."""
    append_log(spec, f"## Refused: {(state.get('target') or {}).get('kind', 'upgrade')} {frm} -> {spec.version} - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**Downtime:** none\n\n"
                     f"**What failed:** {reason}\n\n**What was restored:** nothing needed it: {frm} served throughout\n")
    staged = (state.get("target") or {}).get("strategy") == "staged"
    end_failed_move(spec, state, frm, reason, [])
    return Refusal(f"{reason}. Nothing on the server changed: {frm} kept serving throughout (no window was opened"
                   + ("; the staged copy, if one was made, was dropped)" if staged else ")"))


def written_since_backup(spec: Spec, state: dict) -> tuple[list[str], dict | None]:
    """In the window: the tables written since the backup taken before it began (every session ended
    first), and the counters read. None written: the backup is exact as of this window, marked so."""
    b = state["backup"]
    marks = table_marks(spec.db_name) if drain(spec.db_name) else None
    written = tables_written(b["marks"], marks) if marks is not None else ["(sessions that did not end)"]
    if not written:
        b["window"] = state["window"]["id"]
        save_state(spec, state)
    return written, marks


def use_staged(spec: Spec, state: dict, frm: str | None, to: str) -> bool:
    """In the window, after a staged migration: True when the migrated copy took the live name;
    False when something was written since the backup began (the copy is dropped, the window then
    backs up and migrates the live database in place)."""
    b = state.get("backup") or {}
    st = state.get("staged") or {}
    sw = state.get("swap") or {}
    if st and sw.get("in") == st.get("db"):  # a re-run after an interruption around the renames
        finish_interrupted_swap(spec, state)
        if db_exists(sw["previous"]) and not db_exists(sw["in"]):
            # As after the renames of an uninterrupted run: the database kept must hold nothing the
            # backup (and so the copy) lacks, else the copy goes back and the window migrates in place.
            written = tables_written(b.get("marks") or {}, table_marks(sw["previous"]))
            if not written:
                return _staged_swapped(spec, state, frm, to, sw["previous"])
            b["window"] = None
            swap_back(spec, state)
            state.pop("staged", None)
            log(f"written since the backup began: {', '.join(written)}; the staged copy is dropped and the "
                f"window backs up and migrates the live database instead")
            state["stagedFallback"] = {"written": written, "at": now()}
            drop_staged(spec, state)
            return False
        state.pop("swap", None)
    if not b.get("ahead") or st.get("phase") != "migrated" or not db_exists(st.get("db", "")):
        return False
    written, marks = written_since_backup(spec, state)
    if not written and marks is not None:
        state["dbTouched"] = True
        save_state(spec, state)
        kept = kept_name(spec, frm)
        swap_in(spec, state, st["db"], kept)
        # A client other than the app (stopped) could have written between the check and the rename:
        # the counters of the database kept, read again now that nobody can reach it, say so.
        written = tables_written(marks, table_marks(kept))
        if not written:
            return _staged_swapped(spec, state, frm, to, kept)
        b["window"] = None
        swap_back(spec, state)  # the copy stays, renamed: it was the live database for a moment
        state.pop("staged", None)
        save_state(spec, state)
    log(f"written since the backup began: {', '.join(written)}; the staged copy is dropped and the "
        f"window backs up and migrates the live database instead")
    state["stagedFallback"] = {"written": written, "at": now()}
    drop_staged(spec, state)
    return False


def _staged_swapped(spec: Spec, state: dict, frm: str | None, to: str, kept: str) -> bool:
    b, st = state["backup"], state["staged"]
    b["keptDatabase"] = kept
    register_backup(state, frm, to, b)
    st["phase"] = "swapped"
    state["dbTouched"] = True
    state["migrated"] = {"to": to, "applied": st.get("applied", []), "seconds": st.get("migrateSeconds"), "staged": True,
                         "deletedByMigrations": st.get("deletedByMigrations") or {}}
    save_state(spec, state)
    return True
