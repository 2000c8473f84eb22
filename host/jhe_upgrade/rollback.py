"""Rollback B -> A: the database as A left it, the rows written since replayed."""
from __future__ import annotations

import datetime as dt
import time

from .db import applied_migrations, db_exists, row_counts, stamp_name
from .dbmoves import finish_interrupted_swap, restore_backup, swap_in
from .offsite import ensure_local
from .recovery import recover
from .replay import replay_rows
from .rowkeys import column_renames
from .spec import Spec
from .state import save_state
from .util import Refusal, now


def rollback_database(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """B -> A: the database back to A's as it was when A was left - the database kept then, by rename,
    while it is still there and unchanged; else A's pre-upgrade backup, restored - then the rows
    written since replayed. B's database is kept (renamed) and dumped; nothing is deleted."""
    t0 = time.monotonic()
    pre = state["target"]["restoreFrom"]
    # The registered record (preflight's copy predates changes to it, e.g. a kept database put back).
    entry: dict = next((b for b in (state.get("backups") or {}).values() if b.get("id") == pre["id"]), {})
    how = "backup"
    finish_interrupted_swap(spec, state)  # (recovery after a failure here sees the swap recorded: safety_net)
    if (state.get("swap") or {}).get("in") and db_exists(state["swap"]["previous"]):
        kept, how = state["swap"]["previous"], "rename"  # a re-run: the swap happened already
        if entry.get("keptDatabase") == state["swap"]["in"]:
            entry["keptDatabase"] = None  # it is the live database now
    elif kept_a := kept_usable(spec, state, pre):
        kept, how = stamp_name(spec.db_name, "replaced"), "rename"
        swap_in(spec, state, kept_a, kept)
        entry["keptDatabase"] = None  # it is the live database now
    else:
        ensure_local(spec, pre)  # its dump, fetched back from the bucket if the server lost it since preflight
        kept = restore_backup(spec, pre)
        state["swap"] = {"previous": kept, "in": None, "at": now()}
    try:
        state["dbTouched"] = True
        save_state(spec, state)
        export = spec.backup_dir / f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}-{frm}-to-{to}-rows-not-replayed"
        renames = column_renames(spec.release(frm), state["target"].get("undo", [])) if frm else {}
        stats = replay_rows(spec, kept, spec.db_name, export, entry.get("liveSince"), renames, entry.get("deletedByMigrations"))
    except Exception as e:  # put B's database back as it was, then B serves again
        what = recover(spec, state, frm, f"replaying rows into {to}'s database failed: {e}", restore_db=True)
        raise Refusal(f"rolling back {frm} -> {to} failed while replaying rows ({e}); {frm}'s database is back unchanged: {what}") from e
    state["rollback"] = {"restoredFrom": pre["id"], "restoredBy": how, "keptDatabase": kept, **stats,
                         "seconds": round(time.monotonic() - t0, 2)}
    state["migrated"] = {"to": to, "applied": [], "undone": state["target"].get("undo", [])}
    save_state(spec, state)
    return {"rollback": state["rollback"]}


def kept_usable(spec: Spec, state: dict, pre: dict) -> str | None:
    """The database kept when the target was left, if it is still there and unchanged (its backup's
    migrations and row counts): the rollback brings it back by rename, and needs no dump."""
    entry: dict = next((b for b in (state.get("backups") or {}).values() if b.get("id") == pre["id"]), {})
    kept = entry.get("keptDatabase")
    if kept and db_exists(kept) and sorted(applied_migrations(spec, kept)) == sorted(pre.get("appliedMigrations") or []) \
            and same_counts(row_counts(spec, kept), pre.get("rowCounts")):
        return str(kept)
    return None


def same_counts(now: dict[str, int], then: dict[str, int] | None) -> bool:
    """The kept database still has the rows its backup counted (backups of older tool versions counted
    fewer tables: those are compared)."""
    return bool(then) and all(now.get(t) == n for t, n in (then or {}).items())
