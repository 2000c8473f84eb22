"""What a server ran and passed, and what it rolled back from, with what each move cost there: a
staging stack's outputs carry it, a prod stack upgrades only to a version that passed there, and
prod's preview shows what staging measured for it (downtime, each migration's time, the plan, the
data it ran on)."""
from __future__ import annotations

import re

from .util import now, version_key

# `manage.py migrate -v 2` says, per migration: "  Applying core.0002_observation_source... OK (0.123s)"
# (colour codes only on a terminal; stripped anyway).
_APPLIED = re.compile(r"Applying ([\w.]+)\.\.\.\s*OK \((\d+(?:\.\d+)?)s\)")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def migration_times(stdout: str) -> dict[str, float]:
    """Seconds each migration took, from `migrate`'s verbose output (empty when it printed none)."""
    return {m: float(s) for m, s in _APPLIED.findall(_ANSI.sub("", stdout or ""))}


def move_report(state: dict, timing: dict, strategy: str, database_bytes: int) -> dict:
    """What this move cost on this server, as prod will read it from staging: the window, the
    migration (each one's time), the plan that ran, and the data it ran on (size, rows, and whether
    it was a de-identified copy of prod's, and of when)."""
    tgt = state.get("target") or {}
    m = state.get("migrated") or {}
    rows = ((state.get("backup") or {}).get("rowCounts")) or {}
    return {
        "downtimeSeconds": timing.get("windowSeconds"), "path": timing.get("path"), "strategy": strategy,
        "estimatedDowntimeSeconds": timing.get("estimatedSeconds"), "migrateSeconds": m.get("seconds"),
        "migrationSeconds": m.get("times") or {},
        "plan": {"pending": tgt.get("pending") or [], "undo": tgt.get("undo") or [], "classes": tgt.get("classes") or {}},
        "data": {"databaseBytes": database_bytes, "rows": sum(rows.values()) if rows else None,
                 "clonedFrom": state.get("clonedFrom")},
    }


def rehearsed(state: dict, frm: str | None, to: str, kind: str, migrated: list[str], served: bool = True,
              report: dict | None = None) -> dict:
    """Records the move in the state's rehearsals. `served`: `to` serves now and the move was not
    reverted (a finish after a reverted health gate records "failed", never "passed"). `report`:
    what the move cost (move_report), kept with a passed version."""
    reh = state.setdefault("rehearsals", {})
    if not served:
        reh[to] = {"status": "failed", "at": now(), "from": frm}
        return reh
    if frm and frm != to and (kind == "rollback" or version_key(to) < version_key(frm)):
        reh[frm] = {"status": "rolled back", "at": now(), "to": to}
    reh[to] = {"status": "passed", "at": now(), "from": frm, "kind": kind, "migrationsApplied": migrated,
               **({"report": report} if report else {})}
    return reh
