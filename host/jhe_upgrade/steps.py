"""The steps of an upgrade, in the runbook's order. Each reads what the server really is and converges:

    preflight   compatibility, .env against the tag's example, disk, pending migrations (every refusal
                happens here, before any window); the host lock
    prepare     releases/<tag> built while the old version serves (code, venv, .env, static files, check)
    backup      a verified dump (before the window when staged), or a snapshot in the window
    migrate     on a staged copy, or in place in the window; then the cutover: switch `current`,
                restart, health gate, maintenance page lifted (a failure brings the old version back)
    switch      (done by migrate's cutover; a re-run after an interruption switches here)
    health      the gate again
    finish      deferred dumps, smoke tests, UPGRADE_LOG.md, pruning, the lock released

and `status` / `unlock` for an operator. Rollback is the same order with `rollback.rollback_database`
in migrate's place.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .backup import ensure_backup, prune_kept_databases, take_backup, verify_backup
from .db import applied_migrations, db_exists, db_size, ensure_postgres, live_marker, pg_major, row_counts, set_db_password
from .dbmoves import restore_backup
from .envfile import env_added, env_problems, target_env
from .estimate import estimate_for, observed, record
from .gitrepo import fetch_tags, tag_exists, tag_tree
from .handover import boot_next, next_unit, restart_through_next, route_to_next, settle_handover
from .health import MAIN_PORT, NEXT_PORT, health
from .offsite import check_offsite, ensure_local, fetch_for_restore, settings
from .plan import migration_delta
from .recovery import database_changed, fail_health, recover
from .rehearsal import migration_times, move_report, rehearsed
from .release import build_release, pending_classes, prune_releases, release_dependencies, release_migrations, switch_current
from .report import post_upgrade_report, public_report
from .requirements import apply_pins, line_name, lock_install, python_version, requirements_of, version_ok
from .rollback import kept_usable, rollback_database, same_counts
from .rowkeys import deletion_counters, deletions_dir, migration_deletions
from .smoke import Session, anonymous, drop_token, provision
from .spec import Spec
from .staging import choose_strategy, ensure_backup_ahead, migrate_copy, refuse_unchanged, use_staged, written_since_backup
from .state import MOVE_KEYS, current_version, latest_backup_from, load_state, register_backup, release_lock, save_state, take_lock
from .upgradelog import append_log, finish_entry
from .util import Refusal, error_summary, log, now, run, sha256_file, write_private
from .window import close_window, open_window, service_active, start_service


def is_noop(spec: Spec, state: dict) -> bool:
    """The target already serves, nothing is under way: the versioned steps have nothing to do."""
    t = state.get("target") or {}
    if t.get("recovered") and t.get("to") != spec.version:
        t = {}  # a move that failed and was undone, towards another version: not under way
    return (current_version(spec) == spec.version and spec.current.is_symlink() and not state.get("window")
            and t.get("to") in (None, spec.version) and not (t.get("to") == spec.version and t.get("from") != spec.version)
            and service_active(spec))


def _target(spec: Spec) -> tuple[dict, str | None, str]:
    to = spec.need_version()
    state = load_state(spec)
    t = state.get("target") or {}
    if t.get("to") != to and not is_noop(spec, state):
        raise Refusal(f"no preflight recorded for {to}; run `pulumi up` again (preflight runs first)")
    return state, t.get("from", to), to


def _upgrade_done(spec: Spec, state: dict, to: str) -> bool:
    """The target already serves and no window is open: the upgrade steps have nothing to do."""
    return is_noop(spec, state) or (current_version(spec) == to and not state.get("window") and service_active(spec)
                                    and ((state.get("target") or {}).get("from") == to
                                         or (state.get("cutover") or {}).get("to") == to))


def step_preflight(spec: Spec) -> dict:
    """Every refusal happens here, before any window opens; nothing serving is touched."""
    spec.need_version()
    if is_noop(spec, load_state(spec)):
        return {"from": spec.version, "to": spec.version, "noop": True}
    take_lock(spec, f"upgrade to {spec.version}")
    try:
        return _preflight(spec)
    except Exception:
        state = load_state(spec)
        if not state.get("window") and not state.get("target"):
            release_lock(spec)  # refused before anything started: the server is free again
        raise


def _preflight(spec: Spec) -> dict:
    ensure_postgres()
    frm = current_version(spec)
    to = spec.need_version()
    problems: list[str] = []
    fetch_tags(spec)
    if not tag_exists(spec.repo, to):
        tags = run(["git", "-C", str(spec.repo), "tag", "--sort=-v:refname"], quiet=True).stdout.split()[:8]
        raise Refusal(f"jhe:version {spec.tag} is not a tag of {spec.repo_url} (newest tags: {', '.join(tags) or 'none'})")
    tree = tag_tree(spec.repo, to)
    tool, reqs, py_req = requirements_of(tree)
    have = python_version(spec.python)
    built, replaced = build_problems(spec, tree, py_req, have)
    problems += built
    reqs = [r for r in reqs if line_name(r) not in spec.pins] + [f"{n}=={v}" for n, v in spec.pins.items()]
    django = next((r.split("==", 1)[1] for r in reqs if r.lower().startswith("django==")), None)
    if django and not re.match(r"^(4\.2|5\.\d+|6\.\d+)(\.|$)", django):
        problems.append(f"{to} pins Django {django}; this program supports Django 4.2 and 5.x")
    pg = pg_major()
    if pg < 13:
        problems.append(f"PostgreSQL {pg} is too old for JHE (13 or newer); upgrade PostgreSQL first")
    if django and re.match(r"^(5\.|6\.)", django) and pg < 14:
        problems.append(f"Django {django} needs PostgreSQL 14 or newer; the server has {pg}")
    env = target_env(spec, to)
    problems += env_problems(spec, frm, to, env)
    smoke = spec.raw.get("smokeTest") or {}
    if smoke.get("user") and not smoke.get("create") and not frm and not spec.raw.get("restoreFrom"):
        problems.append(f"jhe:smokeTestUser {smoke['user']} cannot exist on a new server's empty database: let the program "
                        f"make it (pulumi config set jhe:smokeTestCreate true), or add it after the install")
    back = load_state(spec).get("watchRollback") or {}
    if back.get("from") == to and frm == back.get("to"):
        problems.append(f"the watch rolled {to} back to {frm} at {back.get('at')} ({back.get('why')}): set jhe:version back to "
                        f"{frm} (pulumi config set jhe:version {frm}), or move on to a fixed version")
    # Disk: the backup (about the database's size, compressed) plus a release, with headroom.
    db_bytes = db_size(spec.db_name)
    need = db_bytes + 300 * 1024 * 1024
    spec.backup_dir.mkdir(parents=True, exist_ok=True)
    free_backup = shutil.disk_usage(spec.backup_dir).free
    free_app = shutil.disk_usage(spec.app_root).free
    if min(free_backup, free_app) < need:
        problems.append(f"not enough free disk: the backup and the release need about {need // 2**20} MiB, "
                        f"{spec.backup_dir} has {free_backup // 2**20} MiB and {spec.app_root} {free_app // 2**20} MiB free")
    if problems:
        raise Refusal("preflight refused the upgrade " + f"{frm} -> {to}" + " before any change:\n  - " + "\n  - ".join(problems))
    pending, extra = migration_delta(release_migrations(spec, spec.repo, to), applied_migrations(spec))
    state = load_state(spec)
    prior = state.get("target") or {}
    if prior.get("to") == to and prior.get("from") not in (None, to):
        frm = prior["from"]  # a re-run after an interruption continues the same move
        kind = prior.get("kind", "upgrade")
        restore_from = prior.get("restoreFrom")
        fetched = kind == "rollback" and restore_from is not None and _rollback_dump(spec, state, restore_from)
    elif extra and pending:
        raise Refusal(f"{frm} -> {to} is a move across branches: the database has migrations {to} does not know "
                      f"({', '.join(extra)}) and lacks some it needs ({', '.join(pending)}). Roll back to a version "
                      f"both descend from first, then upgrade")
    elif extra:
        kind = "rollback"
        b = latest_backup_from(state, to)
        if not b:
            known = sorted({k.split('->')[0] for k in (state.get('backups') or {})})
            raise Refusal(f"rolling back {frm} -> {to} needs the database as {to} had it, and this server has no backup "
                          f"taken when leaving {to}. Versions that can be rolled back to here: {', '.join(known) or 'none'}; "
                          f"go through one of them, or restore by hand")
        fetched = _rollback_dump(spec, state, b)
        restore_from = b
    else:
        kind = "upgrade" if frm else "install"
        # A new server restored from the bucket (jhe:restoreFrom): fetched and checked now, restored by migrate.
        restore_from = fetch_for_restore(spec, state, to, not applied_migrations(spec)) if kind == "install" else None
    if kind != "rollback":
        fetched = restore_from is not None
    offsite_check = _check_offsite(spec, kind)
    classes = pending_classes(spec, spec.repo, to, pending) if kind == "upgrade" else {}
    strategy, why = choose_strategy(spec, kind, db_bytes, [c["class"] for c in classes.values()] if kind == "upgrade" else None)
    est = estimate_for(spec, state, action=kind, strategy=strategy, pending=pending, classes=classes, db_bytes=db_bytes)
    state["target"] = {"from": frm, "to": to, "kind": kind, "preflight": now(), "pending": pending, "databaseBytes": db_bytes,
                       "undo": extra, "restoreFrom": restore_from, "strategy": strategy,
                       "classes": {m: c["class"] for m, c in classes.items()},
                       "estimate": {k: est[k] for k in ("seconds", "path", "rewriteBytes")}}
    save_state(spec, state)
    return {"from": frm, "to": to, "kind": kind, "pendingMigrations": pending, "migrationsToUndo": extra,
            "strategy": strategy, "strategyWhy": why,
            "restoreFrom": restore_from["id"] if restore_from else None, "pythonRequired": py_req,
            "python": f"{have[0]}.{have[1]}" if have else None, "interpreter": spec.python,
            "pins": {n: {"from": replaced.get(n), "to": v} for n, v in spec.pins.items()},
            "postgres": pg, "django": django, "installer": tool,
            "databaseBytes": db_bytes, "estimatedDowntimeSeconds": est["seconds"], "estimatedPath": est["path"],
            "restoreFetchedFromBucket": fetched, "offsite": offsite_check}


def build_problems(spec: Spec, tree: dict[str, str], py_req: str | None, have: tuple[int, int] | None) -> tuple[list[str], dict]:
    """What refuses building the stack's release from the tag's files `tree`: jhe:python's interpreter
    (`have`, its major.minor) missing or not what the tag asks for, jhe:pins naming what the lock lacks.
    Also what each pin replaces. (Preflight's, and the PostgreSQL step's for an `up` that changes both.)"""
    out: list[str] = []
    if have is None:
        out.append(f"jhe:python {spec.python} is not installed on the server (apt-get install {spec.python} {spec.python}-venv; "
                   f"or set jhe:python to one it has)")
    elif not version_ok(have, py_req):
        m = re.search(r"(\d+)\.(\d+)", py_req or "")
        example = f"python{m.group(1)}.{m.group(2)}" if m else "python3.13"
        hint = f"set jhe:python to an interpreter it accepts (e.g. pulumi config set jhe:python {example}), or choose another version"
        out.append(f"{spec.tag} needs Python {py_req}; {spec.python} on the server is {have[0]}.{have[1]} ({hint})")
    try:
        _, _, replaced = apply_pins(lock_install(tree), spec.pins)
    except Refusal as e:
        out.append(str(e))
        replaced = {}
    return out, replaced


def _rollback_dump(spec: Spec, state: dict, b: dict) -> bool:
    """The rollback's restore point, before any window: the kept database when it is still there and
    unchanged (no dump needed); else the dump, fetched back from the bucket if the server lost it.
    True when it was fetched."""
    kept = kept_usable(spec, state, b)
    if kept:
        if not (Path(b["path"]) / "db.dump").exists():
            log(f"backup {b['id']} is gone from this server; the rollback brings back the database kept then ({kept}) by rename")
        return False
    return ensure_local(spec, b) == "bucket"


def _check_offsite(spec: Spec, kind: str) -> dict | None:
    """The bucket answers and the key encrypts: checked before an upgrade or install (a wrong setting is
    refused before anything changes); before a rollback only said (a bucket that is down must not
    hold back a rollback that needs only what is on the server)."""
    o = settings(spec)
    if not o:
        return None
    try:
        return check_offsite(o)
    except Refusal as e:
        if kind == "rollback":
            log(f"warning: {e}; the rollback goes on (its backup copy is made after the window, or by the next `pulumi up`)")
            return {"error": str(e)}
        raise Refusal(f"preflight refused the {kind} to {spec.version} before any change: {e}") from e


def step_prepare(spec: Spec) -> dict:
    state, frm, to = _target(spec)
    # The smoke tests' account, token and patient record, made with the code that serves now (so they are
    # in every copy of the database the window may serve).
    smoke = provision(spec, current_version(spec))
    if is_noop(spec, state):
        # Same version: only the .env can have changed (config); apply it with a restart if it did.
        env_file = spec.release(to) / ".env"
        old = env_file.read_text() if env_file.exists() else None
        repaired = restore_deployed_env(spec, state, to)  # drift: a hand-edited .env goes back to what the stack wrote
        # (and a virtualenv the server's Python changed under is built again: then the service restarts on it)
        rebuilt = build_release(spec, to, target_env(spec, to)).get("rebuiltNow", False)
        if old == env_file.read_text() and not rebuilt:
            record_env(spec, state, to)
            return {"release": str(spec.release(to)), "configChanged": False, "smokeTest": smoke}
        t = time.monotonic()
        # The new settings tried first in the hand-over unit, while the service keeps serving with the old.
        h = boot_next(spec, to)
        if h is not None and not h["ok"]:
            write_private(env_file, old or "", spec.app_user, spec.app_group)
            raise Refusal(f"{to} failed its health check with the new settings ({h.get('detail')}); the previous .env "
                          f"is back, and {to} served with it throughout (the new settings were tried in {h['unit']})")
        if h is not None:
            problem = restart_through_next(spec)
            if problem:
                raise Refusal(problem)
            downtime = "none (the settings were tried, then served, by the hand-over unit while the service restarted)"
        else:
            run(["systemctl", "restart", spec.service])
            h = health(spec, to, spec.health_timeout)
            if not h["ok"]:
                write_private(env_file, old or "", spec.app_user, spec.app_group)
                run(["systemctl", "restart", spec.service])
                raise Refusal(f"{to} failed its health check with the new settings ({h.get('detail')}); "
                              f"the previous .env is back and {to} restarted with it")
            downtime = f"restart, {round(time.monotonic() - t, 2)} s"
        append_log(spec, f"## {'Virtualenv built again' if rebuilt else 'Settings changed'} for {to} - {now()}\n\n"
                         f"**Performed by:** {spec.operator} (stack {spec.owner})\n"
                         + ("**Why:** the .env was edited on the server by hand (drift); the stack's is back\n" if repaired else "")
                         + ("**Why:** the server's Python changed under the release (its venv no longer started)\n" if rebuilt else "")
                         + f"**Downtime:** {downtime}\n")
        record_env(spec, state, to)
        return {"release": str(spec.release(to)), "configChanged": old != env_file.read_text(), "venvRebuilt": rebuilt,
                "seconds": round(time.monotonic() - t, 2),
                "handover": h.get("unit"), "smokeTest": smoke}
    set_db_password(spec)
    info = build_release(spec, to, target_env(spec, to))
    return {"release": str(spec.release(to)), **info, "smokeTest": smoke}


def step_backup(spec: Spec) -> dict:
    state, frm, to = _target(spec)
    if _upgrade_done(spec, state, to):
        return {"skipped": f"{to} already serving"}
    t = time.monotonic()
    if state["target"].get("kind") == "rollback":
        return {"deferred": True, "beforeWindow": True,
                "note": f"{frm}'s database is kept whole, by rename, in the window; its dump is written after the window"}
    if state["target"].get("strategy") in ("staged", "online") and not state.get("window"):
        b = ensure_backup_ahead(spec, state, frm, to)  # while the old version serves
        return {"backup": b["path"], "sha256": b["sha256"], "rowCounts": b["rowCounts"], "beforeWindow": True,
                "seconds": round(time.monotonic() - t, 2)}
    open_window(spec, state)
    b = ensure_backup(spec, state, frm, to)
    if b.get("snapshot"):
        return {"snapshot": b["snapshot"], "rowCounts": b["rowCounts"], "beforeWindow": False,
                "note": "the dump of the snapshot is written after the window", "seconds": round(time.monotonic() - t, 2)}
    return {"backup": b["path"], "sha256": b["sha256"], "rowCounts": b["rowCounts"], "beforeWindow": False,
            "seconds": round(time.monotonic() - t, 2)}


def step_migrate(spec: Spec) -> dict:
    """Migrates (on the staged copy before the window, or in place in it), then cuts over: `current`
    to the new release, restart, health gate, maintenance off - in one process, one window."""
    state, frm, to = _target(spec)
    if _upgrade_done(spec, state, to):
        return {"skipped": f"{to} already serving", "applied": []}
    tgt = state["target"]
    if tgt.get("strategy") == "online" and not state.get("window") and not state.get("migrated"):
        # Preflight knew the project's own migrations; the built release knows every app's (an installed
        # package may bring one that is not safe while the old version serves): judged again now.
        pending, _ = migration_delta(release_migrations(spec, spec.repo, to), applied_migrations(spec))
        classes = pending_classes(spec, spec.repo, to, pending)
        unsafe = {m: c["class"] for m, c in classes.items() if c["class"] not in ("no-sql", "additive")}
        if unsafe:
            log(f"the built release brings migrations that are not safe while {frm} serves "
                f"({', '.join(f'{m}: {c}' for m, c in unsafe.items())}): staged instead of online")
            tgt.update(strategy="staged", pending=pending, classes={m: c["class"] for m, c in classes.items()})
            save_state(spec, state)
    if tgt.get("strategy") == "online" and not state.get("window"):
        return migrate_online(spec, state, frm, to)
    staged = tgt.get("strategy") == "staged" and bool(tgt.get("pending"))
    if staged and not state.get("window") and (state.get("staged") or {}).get("phase") != "swapped":
        if not (state.get("backup") or {}).get("ahead"):
            ensure_backup_ahead(spec, state, frm, to)
        migrate_copy(spec, state, frm, to)
    # The release boots now, in the hand-over unit, while the old one serves (not on a re-run inside a
    # window that is open already: the window then boots it, as without a hand-over unit).
    session = Session(spec, to)  # the smoke tests' paths, read from the new release before the window
    booted = boot_next(spec, to) if not state.get("window") else None
    if booted and not booted["ok"]:
        log(f"{to} is booted in the window instead (a release may need its migrations to start)")
        booted = None
    open_window(spec, state)
    result: dict = {"strategy": tgt.get("strategy", "in-window")}
    if booted:
        result["bootedBeforeWindow"] = {"unit": next_unit(spec, to), "seconds": booted.get("bootSeconds")}
    if tgt.get("strategy") == "staged":
        if staged and use_staged(spec, state, frm, to):
            result["staged"] = {k: state["staged"].get(k) for k in ("restoreSeconds", "migrateSeconds", "caughtUp")}
            result["keptDatabase"] = state["backup"]["keptDatabase"]
        elif (state.get("backup") or {}).get("ahead") and not state["backup"].get("window"):
            # Code-only, or the staged copy was dropped (use_staged found the writes then): the backup
            # must be exact as of the window, else ensure_backup below takes one in it.
            written = (state.get("stagedFallback") or {}).get("written") or written_since_backup(spec, state)[0]
            if written:
                result["writtenSinceBackup"] = written
    if tgt.get("kind") == "rollback":
        result.update(rollback_database(spec, state, frm, to))
    elif not state.get("migrated"):  # (a swapped-in staged copy is migrated already)
        if tgt.get("kind") == "install" and tgt.get("restoreFrom") and not state.get("restored"):
            result["restored"] = restore_new_server(spec, state, tgt["restoreFrom"])
        ensure_backup(spec, state, frm, to)
        result.update(migrate_in_place(spec, state, frm, to))
    result["keptDatabase"] = (state.get("backup") or {}).get("keptDatabase")
    result["applied"] = state["migrated"].get("applied", [])
    result["migrateSeconds"] = state["migrated"].get("seconds")
    result["cutover"] = cutover(spec, state, frm, to, booted, session)
    return result


def restore_new_server(spec: Spec, state: dict, entry: dict) -> dict:
    """Disaster recovery: the backup fetched at preflight becomes the database of this new server (its
    empty database is kept, renamed); migrate then finds the backup's migrations applied."""
    t = time.monotonic()
    ensure_local(spec, entry)
    kept = restore_backup(spec, entry)
    restored = {"from": entry["id"], "fetchedFrom": entry.get("fetchedFrom"), "emptyDatabaseKept": kept,
                "rowCounts": row_counts(spec, spec.db_name), "seconds": round(time.monotonic() - t, 2),
                "fetchSeconds": entry.get("fetchSeconds")}
    if entry.get("rowCounts") and not same_counts(restored["rowCounts"], entry["rowCounts"]):
        raise RuntimeError(f"the database restored from {entry['id']} does not have the rows its backup counted")
    state["restored"] = restored
    state["restoredFrom"] = {"id": entry["id"], "at": now()}  # (kept: a re-run goes on with this data)
    save_state(spec, state)
    # The decrypted copy goes: the database holds it now, and the bucket keeps the encrypted one.
    shutil.rmtree(entry["path"], ignore_errors=True)
    rows = json.dumps(restored["rowCounts"], sort_keys=True)
    append_log(spec, f"## Restored onto this server from {entry['id']} - {now()}\n\n**Performed by:** {spec.operator} "
                     f"(stack {spec.owner})\n**From:** {entry.get('fetchedFrom')}\n**Rows:** {rows}\n")
    log(f"database restored from {entry['id']} ({entry.get('fetchedFrom')}), {restored['seconds']} s")
    return restored


def migrate_online(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """No window: every pending migration is no-SQL or additive, so they run on the live database while
    the old version serves (it never reads what they add); then the new release, booted and healthy in
    the hand-over unit, takes the requests while `jhe` restarts with it. A failure before the switch is
    refused with the migrations reversed: the old version served throughout."""
    t = time.monotonic()
    b = state.get("backup") or ensure_backup_ahead(spec, state, frm, to)
    if not state.get("migrated"):
        before = applied_migrations(spec)
        # Never queue behind a long transaction holding a lock the migration needs (every request would
        # queue behind the migration): give up after a few seconds instead, and refuse.
        p = manage_migrate(spec, to, env={**os.environ, "PGOPTIONS": "-c lock_timeout=5s"})
        # (a killed run may have applied some already: the preflight's pending ones count as this move's)
        applied = [m for m in applied_migrations(spec) if m not in before or m in (state["target"].get("pending") or [])]
        if p.returncode != 0:
            said, kept = unapply(spec, to, before, applied)
            raise refuse_unchanged(spec, state, frm, f"`manage.py migrate` of {to} failed while {frm} served "
                                                     f"({error_summary(p.stderr)}); {said}", kept)
        state["migrated"] = {"to": to, "applied": applied, "seconds": round(time.monotonic() - t, 2), "online": True,
                             "times": migration_times(p.stdout)}
        save_state(spec, state)
    applied = state["migrated"]["applied"]
    h = boot_next(spec, to)
    if not h or not h["ok"]:
        why = h.get("detail") if h else "the hand-over unit is missing"
        state.pop("migrated", None)
        said, kept = unapply(spec, to, None, applied)
        raise refuse_unchanged(spec, state, frm, f"{to} failed its health check in the hand-over unit ({why}); {said}", kept)
    route_to_next(spec, True)
    # The smoke tests, on the new release through nginx, before the service switches to it (the same database:
    # on a failure, their rows go and the migrations are reversed; the old version served throughout).
    session = Session(spec, to)
    h["smoke"] = session.check()
    if not h["smoke"]["ok"]:
        route_to_next(spec, False)
        session.end(to)
        state.pop("migrated", None)
        said, kept = unapply(spec, to, None, applied)
        raise refuse_unchanged(spec, state, frm, f"{to} failed its {h['smoke']['detail']} in the hand-over unit; {said}", kept)
    h["smoke"]["cleanup"] = session.end(to)
    switch_current(spec, to)
    run(["systemctl", "restart", spec.service])  # the old workers finish their requests; new ones go to the hand-over unit
    state["cutover"] = {"to": to, "windowSeconds": 0.0, "health": h, "at": now(), "online": True,
                        "since": b.get("since"), "seconds": round(time.monotonic() - t, 2)}
    save_state(spec, state)
    problem = settle_handover(spec)
    if problem:
        raise Refusal(problem)
    return {"strategy": "online", "applied": applied, "migrateSeconds": state["migrated"].get("seconds"),
            "keptDatabase": None, "bootedBeforeWindow": {"unit": h.get("unit"), "seconds": h.get("bootSeconds")},
            "cutover": {"current": to, "health": h, "windowSeconds": 0.0, "seconds": round(time.monotonic() - t, 2)}}


def unapply(spec: Spec, to: str, before: list[str] | None, applied: list[str]) -> tuple[str, list[str]]:
    """Reverses migrations just applied (additive ones reverse cleanly: what they added goes, and the
    old version never wrote to it), app by app back to where each was. Returns what was done, and the
    migrations still applied afterwards (none when every reversal worked)."""
    if not applied:
        return "no migration had been applied", []
    done: list[str] = []
    failed: list[str] = []
    for app, target in unapply_targets(before if before is not None else applied_migrations(spec), applied).items():
        p = manage_migrate(spec, to, app, target)
        if p.returncode == 0:
            done.append(f"{app} back to {target}")
        else:
            failed.append(f"{app} back to {target} ({error_summary(p.stderr)})")
    if failed:
        now_applied = set(applied_migrations(spec))
        return (f"reversing them failed for {', '.join(failed)}" + (f"; reversed: {', '.join(done)}" if done else ""),
                [m for m in applied if m in now_applied])
    return f"the migrations it applied were reversed ({', '.join(done)})", []


def manage_migrate(spec: Spec, tag: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`manage.py migrate [app target]` with release `tag`'s code, as the app user (not checked); verbose,
    so its output gives each migration's time (rehearsal.migration_times)."""
    rel = spec.release(tag)
    return run([str(rel / "venv/bin/python"), "manage.py", "migrate", *args, "--no-input", "-v", "2"], user=spec.app_user, cwd=rel,
               env=env, check=False, timeout=7200)


def unapply_targets(before: list[str], applied: list[str]) -> dict[str, str]:
    """For each app with migrations in `applied`: the migration to go back to (`manage.py migrate <app>
    <target>`) - its newest in `before` older than the first applied, else "zero"."""
    out = {}
    for app in sorted({m.split(".", 1)[0] for m in applied}):
        first = min(m.split(".", 1)[1] for m in applied if m.startswith(app + "."))
        earlier = sorted(m.split(".", 1)[1] for m in before if m.startswith(app + ".") and m.split(".", 1)[1] < first)
        out[app] = earlier[-1] if earlier else "zero"
    return out


def migrate_in_place(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    before = set(applied_migrations(spec))
    counters = deletion_counters(spec.db_name)
    t = time.monotonic()
    state["dbTouched"] = True
    save_state(spec, state)
    p = manage_migrate(spec, to)
    after = applied_migrations(spec)
    applied = [m for m in after if m not in before]
    if p.returncode != 0:
        err = error_summary(p.stderr)
        what = recover(spec, state, frm, f"`manage.py migrate` of {to} failed: {err}", restore_db=True)
        raise Refusal(f"the migration of {to} failed ({err}); nothing was lost: {what}")
    seconds = round(time.monotonic() - t, 2)
    # The rows the migrations deleted, against the window's snapshot (without one: their count only).
    snap = (state.get("backup") or {}).get("snapshot")
    deleted = migration_deletions(snap if snap and db_exists(snap) else None, spec.db_name, counters,
                                  deletion_counters(spec.db_name), deletions_dir(spec, frm, to))
    state["migrated"] = {"to": to, "applied": applied, "seconds": seconds, "deletedByMigrations": deleted,
                         "times": migration_times(p.stdout)}
    save_state(spec, state)
    return {}


def cutover(spec: Spec, state: dict, frm: str | None, to: str, booted: dict | None = None, session: Session | None = None) -> dict:
    """`current` -> the new release; nginx to the release booted before the window (else the service
    restarted with it), health gate, maintenance off; then, outside the window, the service takes the
    release over from the hand-over unit. On a failed health check the old version comes back (code,
    database if it changed, config) and the step fails."""
    t = time.monotonic()
    switch_current(spec, to)
    if service_active(spec):
        run(["systemctl", "stop", spec.service])
    since = live_marker(spec.db_name)  # rows written from here on are the new version's
    if booted:
        route_to_next(spec, True)
        h = gate(spec, to, NEXT_PORT, session)
    else:
        start_service(spec)
        h = gate(spec, to, MAIN_PORT, session)
    if not h["ok"]:
        fail_gate(spec, state, frm, to, h, session)
    seconds = close_window(spec, state)
    if session:
        h["smoke"]["cleanup"] = session.end(to)
    state["cutover"] = {"to": to, "windowSeconds": seconds, "health": h, "seconds": round(time.monotonic() - t, 2), "at": now(),
                        "since": since, "handover": bool(booted)}
    save_state(spec, state)
    out = {"current": to, "health": h, "windowSeconds": seconds, "seconds": state["cutover"]["seconds"]}
    if booted:
        problem = settle_handover(spec)
        if problem:
            raise Refusal(problem)
        out["handedOverSeconds"] = round(time.monotonic() - t - seconds, 2)
    return out


def step_switch(spec: Spec) -> dict:
    state, frm, to = _target(spec)
    if (state.get("cutover") or {}).get("to") == to and current_version(spec) == to:
        return {"current": to, "switchedBy": "migrate (the cutover runs in the migration's window)", **state["cutover"]}
    if _upgrade_done(spec, state, to):
        return {"skipped": f"{to} already serving"}
    if not state.get("window"):
        open_window(spec, state)
    t = time.monotonic()
    switch_current(spec, to)
    if service_active(spec):
        run(["systemctl", "stop", spec.service])
    start_service(spec)
    return {"current": to, "seconds": round(time.monotonic() - t, 2)}


def gate(spec: Spec, to: str, port: int, session: Session | None) -> dict:
    """The health gate: /health (else /admin/) and the OIDC keys straight at gunicorn, then the smoke
    tests through nginx (`session`'s, made before the window)."""
    h = health(spec, to, spec.health_timeout, port=port)
    if h["ok"] and session:
        h["smoke"] = session.check()
        if not h["smoke"]["ok"]:
            h.update(ok=False, detail=h["smoke"]["detail"])
    return h


def fail_gate(spec: Spec, state: dict, frm: str | None, to: str, h: dict, session: Session | None) -> None:
    """A failed gate reverts; the smoke tests' token goes from the database that serves again, and their
    observations too when that is the database they were written to (no migration ran: it is not put
    back) - never by id in another one."""
    same_db = not database_changed(state)
    try:
        fail_health(spec, state, frm, to, h)
    finally:
        if session and frm:
            session.end(frm, rows=same_db)


def step_health(spec: Spec) -> dict:
    """The gate again, after the cutover (or the gate itself when a re-run switched in step_switch):
    health, then the smoke tests when the cutover's did not run (a re-run)."""
    state, frm, to = _target(spec)
    ran = ((state.get("cutover") or {}).get("health") or {}).get("smoke")
    session = None if ran else Session(spec, to, serving=to)
    h = gate(spec, to, MAIN_PORT, session)
    if not h["ok"]:
        fail_gate(spec, state, frm, to, h, session)
    if session:
        h["smoke"]["cleanup"] = session.end(to)
    return h


def step_finish(spec: Spec) -> dict:
    state = load_state(spec)
    t = state.get("target") or {}
    to = spec.need_version()
    frm = t.get("from")
    if t.get("to") != to:
        if note_repair(spec, state):
            save_state(spec, state)
        return {"skipped": f"{to} already finished", "current": current_version(spec), "rehearsals": state.get("rehearsals") or {}}
    if not spec.raw.get("byWatch"):
        state.pop("watchRollback", None)  # (a move the stack asked for finished: the watch's verdict is spent)
    seconds = close_window(spec, state) or (state.get("cutover") or {}).get("windowSeconds", 0.0)
    # The gate's smoke tests (as the account, in the window); those anyone can run, through nginx, now.
    smoke = {**anonymous(spec), **({"gate": g} if (g := ((state.get("cutover") or {}).get("health") or {}).get("smoke")) else {})}
    drop_token(spec, to if current_version(spec) == to else frm or to)
    if frm == to:  # nothing was upgraded (e.g. the first run on an adopted server)
        state["deployed"] = {"version": to, "previous": (state.get("deployed") or {}).get("previous"), "at": now()}
        record_env(spec, state, to)
        note_repair(spec, state)
        for k in ("target", "dbTouched", "cutover"):
            state.pop(k, None)
        rebuilt = (release_dependencies(spec, to) or {}).get("rebuilt") or {}
        if str(rebuilt.get("at", "")) >= str(t.get("preflight") or "~"):  # the release's virtualenv, built again by this run
            append_log(spec, f"## Virtualenv built again for {to} - {now()}\n\n**Performed by:** {spec.operator} (stack {spec.owner})\n"
                             f"**Why:** the server's Python changed under the release ({rebuilt.get('why')})\n"
                             f"**Took:** {rebuilt.get('seconds')} s; the service had not started on the broken one\n")
        rehearsals = rehearsed(state, frm, to, "adopted", [], served=current_version(spec) == to)
        save_state(spec, state)
        release_lock(spec)
        return {"from": frm, "to": to, "noop": True, "downtimeSeconds": 0, "migrationsApplied": [], "smoke": smoke,
                "rehearsals": rehearsals}
    kind = (state.get("target") or {}).get("kind", "upgrade")
    # Drift put back: the stack's version serves again after `current` was moved by hand - not a move the
    # stack asked for, so not a rehearsal (staging's record of what passed stays as it was), nor watched.
    repair = bool(spec.raw.get("repairKey")) and (state.get("deployed") or {}).get("version") == to and frm != to
    timing = observed(state, seconds)  # (before the backup record below is replaced by the deferred dump's)
    rows_before = (state.get("backup") or {}).get("rowCounts")
    rb = state.get("rollback")
    b = state.get("backup") or {}
    # Dumps written now that the new version serves (in the window the database was only copied or
    # renamed): a rollback's backup of the newer database, or the portable dump of the snapshot.
    src = (rb["keptDatabase"] if rb and b.get("to") != to else
           b["snapshot"] if b.get("snapshot") and not b.get("dump") else
           b["keptDatabase"] if b.get("caughtUp") and b.get("keptDatabase") else None)  # (see catchup)
    if src and db_exists(src):
        b = take_backup(spec, frm or "none", to, db=src)
        verify_backup(b)
        if not rb:
            b["keptDatabase"] = src
        state["backup"] = b
    if b.get("path"):
        if (state.get("cutover") or {}).get("since"):
            b["liveSince"] = state["cutover"]["since"]  # a later rollback compares only rows written after it
        if (state.get("migrated") or {}).get("deletedByMigrations"):
            b["deletedByMigrations"] = state["migrated"]["deletedByMigrations"]  # ... and tells them from users'
        register_backup(state, frm, to, b)
        save_state(spec, state)
    migrated = (state.get("migrated") or {}).get("applied", [])
    removed = prune_releases(spec, {to, frm} if frm else {to})
    dropped = prune_kept_databases(spec, state)
    added = env_added(spec.repo, frm, to)
    strategy = (state.get("target") or {}).get("strategy", "in-window")
    fallback = state.get("stagedFallback")
    # The runbook's checks once the new version serves: database, journal since the cutover, disk, memory, tasks.
    report = post_upgrade_report(spec, (state.get("target") or {}).get("preflight"), (state.get("target") or {}).get("databaseBytes"),
                                 rows_before)
    db_bytes = (report.get("database") or {}).get("bytes") or db_size(spec.db_name)  # (read by the report already)
    summary = {
        "from": frm, "to": to, "downtimeSeconds": seconds, "migrationsApplied": migrated,
        "backup": {k: b.get(k) for k in ("id", "path", "sha256", "rowCounts", "bytes", "seconds", "keptDatabase")} if b else None,
        "envAdded": added, "smoke": smoke, "releasesRemoved": removed, "finished": now(), "kind": kind,
        "rollback": rb, "strategy": strategy, "stagedFallback": fallback, "keptDatabasesDropped": dropped,
        "dependencies": release_dependencies(spec, to),
        "estimatedDowntimeSeconds": timing["estimatedSeconds"], "window": timing,
        "rehearsals": (state.get("rehearsals") or {}) if repair else
        rehearsed(state, frm, to, kind, migrated, served=current_version(spec) == to and not t.get("recovered"),
                                report=move_report(state, timing, strategy, db_bytes)),
        "stagingOverride": spec.raw.get("stagingOverride"), "report": report,
    }
    append_log(spec, finish_entry(spec.operator, spec.owner, summary, state, now()))
    summary["report"] = public_report(report)
    state.setdefault("history", []).append({k: summary[k] for k in ("from", "to", "downtimeSeconds", "finished")})
    record(state, timing)
    state["deployed"] = {"version": to, "previous": frm, "at": now()}
    if kind != "rollback" and frm and not repair:  # the watch (jhe:watchSeconds) judges from now against the time before the move
        state["deployed"]["watch"] = {"from": now(), "moveBegan": t.get("preflight") or now()}
    record_env(spec, state, to)
    note_repair(spec, state)
    for k in ("target", "backup", *MOVE_KEYS):
        state.pop(k, None)
    save_state(spec, state)
    release_lock(spec)
    return summary


def deployed_env(spec: Spec, tag: str) -> Path:
    """A copy of the .env the stack last wrote for release `tag`, beside it (the same owner and mode: the
    secrets stay where they belong): a hand edit of the live one is put back from it."""
    return spec.release(tag) / ".env.deployed"


def record_env(spec: Spec, state: dict, to: str) -> None:
    """Once `to` serves with the .env the stack wrote: its sha256 (the plan tells a hand edit by it) and a copy."""
    env_file = spec.release(to) / ".env"
    if current_version(spec) != to or not env_file.exists() or not state.get("deployed"):
        return
    state["deployed"]["envSha256"] = sha256_file(env_file)
    write_private(deployed_env(spec, to), env_file.read_text(), spec.app_user, spec.app_group)
    save_state(spec, state)


def restore_deployed_env(spec: Spec, state: dict, to: str) -> bool:
    """Drift repair (a repair key given): the serving release's .env, edited by hand, back to the stack's copy."""
    env_file, copy = spec.release(to) / ".env", deployed_env(spec, to)
    want = (state.get("deployed") or {}).get("envSha256")
    if not (spec.raw.get("repairKey") and want and copy.exists() and env_file.exists()):
        return False
    if sha256_file(env_file) == want or sha256_file(copy) != want:
        return False
    write_private(env_file, copy.read_text(), spec.app_user, spec.app_group)
    log(f"{env_file} was edited by hand: the one the stack wrote is back (then the stack's settings on top)")
    return True


def note_repair(spec: Spec, state: dict) -> bool:
    """The plan's repair key this run was given (drift put back): recorded, so the next plan's key is
    the same and shows no change. True when it was."""
    key = spec.raw.get("repairKey") or ""
    if not key.startswith("repair-"):
        return False
    state["repairs"] = max(int(state.get("repairs") or 0), int(key.split("-", 1)[1]))
    return True


def step_status(spec: Spec) -> dict:
    return {"current": current_version(spec), "layout": "releases" if spec.current.is_symlink() else
            ("in-place" if (spec.app_root / ".git").exists() else "none"), "state": load_state(spec)}


def step_unlock(spec: Spec) -> dict:
    try:
        held = json.loads(spec.lock_file.read_text())
    except FileNotFoundError:
        return {"unlocked": False, "note": "no lock held"}
    spec.lock_file.unlink()
    return {"unlocked": True, "was": held}
