"""Staged migration: a copy migrated while the old version serves, swapped in by rename in the window."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from .backup import BackupFailed, take_backup, verify_backup
from .catchup import catch_up
from .db import (
    applied_migrations,
    aux_name,
    copy_db_properties,
    copy_marks,
    data_dir_free,
    db_exists,
    drain,
    kept_name,
    live_marker,
    public_tables,
    table_marks,
    tables_written,
    wait_ready,
)
from .dbmoves import finish_interrupted_swap, swap_back, swap_in
from .estimate import tables_of
from .handover import handover_unit_file
from .migclass import worst
from .recovery import end_failed_move
from .rehearsal import migration_times
from .release import pending_classes
from .rowkeys import deletion_counters, deletions_dir, migration_deletions
from .spec import Spec
from .state import register_backup, save_state
from .upgradelog import append_log
from .util import Refusal, error_summary, log, now, psql, run, sql_literal

T = TypeVar("T")


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
    started = (psql("postgres", "SELECT pg_postmaster_start_time()"), data_dir_free()[0])
    try:
        _make_copy(spec, st, sdb, Path(b["path"]) / b["dump"], frm, to)
    except StagedFailed as e:
        raise _refuse_staged(spec, state, frm, to, st["phase"], e.err, started) from e
    except (RuntimeError, subprocess.CalledProcessError) as e:  # PostgreSQL failing under it (a full disk, a crash)
        raise _refuse_staged(spec, state, frm, to, st["phase"], f"{e} {getattr(e, 'stderr', None) or ''}", started) from e
    # What the migrations' code reaches, read from their files (a RunPython's get_model calls; SQL or
    # code that names no model: the whole app): with what was measured on the copy, what catch-up avoids.
    st["changedByCode"] = sorted(tables_of(pending_classes(spec, spec.repo, to, st["applied"]), public_tables(sdb), "changes"))
    save_state(spec, state)
    log(f"staged copy {sdb} migrated ({len(st['applied'])} migrations, {st['migrateSeconds']} s) while {frm} serves")
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


class StagedFailed(Exception):
    """A command making or migrating the staged copy failed; `err` is its output."""

    def __init__(self, err: str) -> None:
        super().__init__(err[-300:])
        self.err = err


def _make_copy(spec: Spec, st: dict, sdb: str, dump: Path, frm: str | None, to: str) -> None:
    """The staged copy: the dump restored into it, then migrated with the new release (`st`, part of the
    state, records the phase reached and the results)."""
    t = time.monotonic()
    try:
        restore_copy(spec, sdb, dump)
    except RuntimeError as e:
        raise StagedFailed(str(e)) from e
    st["restoreSeconds"] = round(time.monotonic() - t, 2)
    # The copy's counters around its migration say which tables the migration changed (see catchup);
    # read with no session left on it, so every count is written.
    st["marksBeforeMigrate"] = copy_marks(sdb) if drain(sdb) else None
    before = set(applied_migrations(spec, sdb))
    counters = deletion_counters(sdb)
    st["phase"] = "migrating"
    t = time.monotonic()
    rel = spec.release(to)
    # Through `manage.py shell` so the settings are the release's own, with DB_NAME pointing at the
    # copy (JHE's settings read the environment first); it refuses unless they really do.
    code = ("import os, sys; from django.conf import settings; from django.core.management import call_command; "
            "name = settings.DATABASES['default']['NAME']; "
            "sys.exit(f'the settings use database {name}, not the staged copy') if name != os.environ['DB_NAME'] "
            "else call_command('migrate', interactive=False, verbosity=2)")
    p = run([str(rel / "venv/bin/python"), "manage.py", "shell", "-c", code], user=spec.app_user, cwd=rel,
            env={**os.environ, "DB_NAME": sdb}, check=False, timeout=7200)
    if p.returncode != 0:
        raise StagedFailed(p.stderr)
    applied = [m for m in applied_migrations(spec, sdb) if m not in before]
    st.update(phase="migrated", applied=applied, migrateSeconds=round(time.monotonic() - t, 2), migrationTimes=migration_times(p.stdout))
    st["marksAfterMigrate"] = copy_marks(sdb) if st["marksBeforeMigrate"] is not None and drain(sdb) else None
    # The rows the migrations deleted: the copy against the live database, unchanged since the dump
    # (else the window migrates the live database and records them again).
    st["deletedByMigrations"] = migration_deletions(spec.db_name, sdb, counters, deletion_counters(sdb),
                                                    deletions_dir(spec, frm, to))


def _refuse_staged(spec: Spec, state: dict, frm: str | None, to: str, phase: str, err: str,
                   started: tuple[str, str]) -> Refusal:
    """The staged copy could not be made or migrated: PostgreSQL back (it restarts itself after a crash,
    e.g. when it could not write its log on a full disk), the copy dropped, the move refused with what
    happened - said plainly when the data directory filled up. `started`: the postmaster's start time
    and the data directory, read before."""
    data_dir = started[1]
    free_then = shutil.disk_usage(data_dir).free
    try:
        restarted = _once_up(lambda: psql("postgres", "SELECT pg_postmaster_start_time()")) != started[0]
        _once_up(lambda: drop_staged(spec, state))
    except subprocess.CalledProcessError:
        return Refusal(f"{staged_failed(err, phase, to, (data_dir, free_then, None))}; PostgreSQL crashed and has not accepted "
                       f"connections since (60 s): free space in {data_dir} and start it (systemctl start postgresql), then "
                       f"run `pulumi up` again (the staged copy {staged_db(spec)} is dropped then)")
    reason = staged_failed(err, phase, to, (data_dir, free_then, shutil.disk_usage(data_dir).free))
    if restarted:
        reason += f"; PostgreSQL restarted itself meanwhile (the sessions of {frm} were reset, its data is intact)"
    return refuse_unchanged(spec, state, frm, reason)


def _once_up(fn: Callable[[], T], seconds: float = 60.0) -> T:
    """`fn` (reading or changing the cluster) once PostgreSQL takes sessions again: after a crash it
    restarts on its own, and may still be going down, or recovering, when first asked."""
    deadline = time.monotonic() + seconds
    while True:
        wait_ready(max(1.0, deadline - time.monotonic()))
        try:
            return fn()
        except subprocess.CalledProcessError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def staged_failed(err: str, phase: str, to: str, room: tuple[str, int, int | None] | None) -> str:
    """Why the staged copy could not be made (`phase` restoring) or migrated, and what to do - said
    plainly when the data directory filled up: PostgreSQL names the full disk, or the disk has next to
    no room left (PostgreSQL may have crashed instead of saying so)."""
    full = "No space left on device" in err or "could not extend file" in err or (room is not None and room[1] < 64 * 2**20)
    if full:
        where = f"the PostgreSQL data directory{' ' + room[0] if room else ''}"
        state = ("PostgreSQL is down" if not room else f"{room[1] / 2**20:.0f} MiB free" if room[2] is None else
                 f"{room[1] / 2**20:.0f} MiB free then, {room[2] / 2**20:.0f} MiB now that the copy is dropped")
        return (f"{where} filled up while the staged copy was {'restored' if phase == 'restoring' else 'migrated'} ({state}). "
                f"Free space there, or set jhe:migrationStrategy to in-window (the migration then runs on the live database "
                f"in the window and needs no copy), then run `pulumi up` again (PostgreSQL: {_pg_error(err)})")
    if phase == "restoring":
        return f"restoring the backup into the staged copy failed: {_pg_error(err)}"
    return f"`manage.py migrate` of {to} failed on a staged copy of the database: {error_summary(err)}"


def _pg_error(err: str) -> str:
    """The error that says why: a full disk when one is named (the errors after it are its consequences,
    e.g. a foreign key whose index could not be built), else the first error."""
    every = [l.strip() for l in err.splitlines() if l.strip()]
    lines = ([l for l in every if "No space left" in l]
             or [l for l in every if re.search(r"ERROR|[Ee]rror:|FATAL|PANIC", l)])
    return (lines[0] if lines else err.strip().splitlines()[-1] if err.strip() else "(no output)")[:300]


def refuse_unchanged(spec: Spec, state: dict, frm: str | None, reason: str, kept: list[str] | None = None) -> Refusal:
    """A failure before the window: bookkeeping as after a recovery, though there was nothing to undo.
    `kept`: additive migrations applied while the old version served that could not be reversed - the
    database keeps what they added (the old version does not use it), and the refusal says so."""
    restored = (f"the database keeps what migrations {', '.join(kept)} added (reversing them failed; {frm} does not use it); "
                f"{frm} served throughout" if kept else f"nothing needed it: {frm} served throughout")
    append_log(spec, f"## Refused: {(state.get('target') or {}).get('kind', 'upgrade')} {frm} -> {spec.version} - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**Downtime:** none\n\n"
                     f"**What failed:** {reason}\n\n**What was restored:** {restored}\n")
    staged = (state.get("target") or {}).get("strategy") == "staged"
    end_failed_move(spec, state, frm, reason, [])
    if kept:
        return Refusal(f"{reason}. {frm} kept serving throughout (no window was opened); the database keeps the tables, columns "
                       f"or indexes that {', '.join(kept)} added, which {frm} does not use: `pulumi up` again continues with them "
                       f"applied, or reverse them by hand with `manage.py migrate <app> <migration>` from releases/{spec.version}")
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
            written = tables_written(st.get("windowMarks") or b.get("marks") or {}, table_marks(sw["previous"]))
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
    if written and marks is not None:
        t = time.monotonic()
        done = catch_up(spec.db_name, st["db"], written, b, marks, st)
        if isinstance(done, dict):
            st["caughtUp"] = done
            st["caughtUpSeconds"] = round(time.monotonic() - t, 2)
            b["caughtUp"] = True  # the dump lacks those rows: finish dumps the database kept instead
            save_state(spec, state)
            written = []
        else:
            log(f"the rows written meanwhile cannot be caught up in the migrated copy: {done}")
            state["catchUpRefused"] = done
    if not written and marks is not None:
        state["dbTouched"] = True
        st["windowMarks"] = marks  # what the copy holds: a re-run after a cut swap compares the kept database with it
        save_state(spec, state)
        kept = kept_name(spec, frm)
        swap_in(spec, state, st["db"], kept)
        # A client other than the app (stopped) could have written between the check and the rename:
        # the counters of the database kept, read again now that nobody can reach it, say so.
        written = tables_written(marks, table_marks(kept))
        if not written:
            return _staged_swapped(spec, state, frm, to, kept)
        b["window"] = None
        b.pop("caughtUp", None)
        swap_back(spec, state)  # the copy stays, renamed: it was the live database for a moment
        state.pop("staged", None)
        save_state(spec, state)
    log(f"written since the backup began: {', '.join(written)}; the staged copy is dropped and the "
        f"window backs up and migrates the live database instead")
    state["stagedFallback"] = {"written": written, "at": now(), "notCaughtUp": state.pop("catchUpRefused", None)}
    drop_staged(spec, state)
    return False


def _staged_swapped(spec: Spec, state: dict, frm: str | None, to: str, kept: str) -> bool:
    b, st = state["backup"], state["staged"]
    b["keptDatabase"] = kept
    register_backup(state, frm, to, b)
    st["phase"] = "swapped"
    state["dbTouched"] = True
    state["migrated"] = {"to": to, "applied": st.get("applied", []), "seconds": st.get("migrateSeconds"), "staged": True,
                         "times": st.get("migrationTimes") or {},
                         "deletedByMigrations": st.get("deletedByMigrations") or {}, "caughtUp": st.get("caughtUp"),
                         "caughtUpSeconds": st.get("caughtUpSeconds")}
    save_state(spec, state)
    return True
