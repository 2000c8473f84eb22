"""The runbook's checks after an upgrade, read once the new version serves (read-only): the database's
size and growth, each table's rows, its busiest tables and index hints (the runbook's queries on
pg_stat_user_tables and pg_stats), errors and warnings in the service's journal since the cutover, free
disk, memory and load, and scheduled tasks (timers, failed units, the app user's crontab)."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

from .db import data_dir_free, db_size, row_counts
from .spec import Spec
from .util import log, psql, run

# The runbook's "check query performance": the tables written most (since statistics were reset).
BUSIEST_SQL = """
SELECT relname, n_tup_ins, n_tup_upd, n_tup_del, seq_scan, coalesce(idx_scan, 0), n_live_tup
FROM pg_stat_user_tables WHERE schemaname = 'public' ORDER BY n_tup_ins + n_tup_upd + n_tup_del DESC, relname LIMIT 10"""

# A table read mostly by sequential scans while it is big: an index may be missing.
SEQ_SCAN_SQL = """
SELECT relname, seq_scan, coalesce(idx_scan, 0), n_live_tup FROM pg_stat_user_tables
WHERE schemaname = 'public' AND n_live_tup >= 10000 AND seq_scan > 10 * (coalesce(idx_scan, 0) + 1)
ORDER BY seq_tup_read DESC LIMIT 10"""

# The runbook's "check for missing indexes" (pg_stats, n_distinct < 0: near-unique columns), narrowed
# to the columns that lead no index: where a lookup by that column reads the whole table.
UNINDEXED_SQL = """
SELECT s.tablename, s.attname, s.n_distinct FROM pg_stats s
JOIN pg_class c ON c.relname = s.tablename AND c.relnamespace = 'public'::regnamespace
WHERE s.schemaname = 'public' AND NOT s.inherited AND c.relkind IN ('r', 'p') AND s.n_distinct < -0.5 AND c.reltuples >= 10000
  AND NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
                  WHERE i.indrelid = c.oid AND a.attname = s.attname)
ORDER BY s.n_distinct, s.tablename, s.attname LIMIT 10"""


# The report reads while the new version serves: it never waits long for a lock or a slow query.
LIMITS = "SET statement_timeout = '60s'; SET lock_timeout = '5s';\n"


def _rows(db: str, sql: str) -> list[list[str]]:
    return [line.split("|") for line in psql(db, LIMITS + sql).splitlines() if line]


def database_report(spec: Spec, before_bytes: int | None, rows_before: dict[str, int] | None) -> dict:
    now_bytes = db_size(spec.db_name)
    counts = row_counts(spec, spec.db_name, LIMITS)
    growth = {t: n - (rows_before or {}).get(t, 0) for t, n in counts.items() if rows_before is not None and n != rows_before.get(t, 0)}
    busiest = [{"table": r[0], "inserted": int(r[1]), "updated": int(r[2]), "deleted": int(r[3])} for r in _rows(spec.db_name, BUSIEST_SQL)]
    hints = [f"{r[0]}: {r[1]} sequential scans against {r[2]} index scans over {r[3]} rows - an index may be missing"
             for r in _rows(spec.db_name, SEQ_SCAN_SQL)]
    hints += [f"{r[0]}.{r[1]} is nearly unique (n_distinct {r[2]}) and leads no index: a lookup by it reads the whole table"
              for r in _rows(spec.db_name, UNINDEXED_SQL)]
    return {"bytes": now_bytes, "bytesBefore": before_bytes,
            "growthBytes": now_bytes - before_bytes if before_bytes is not None else None,
            "rows": counts, "rowsChanged": growth if rows_before is not None else None,
            "busiestTables": busiest, "indexHints": hints}


# As the runbook's `grep -i error` / `grep -i warning` (a traceback and a critical line count as errors too).
JOURNAL_ERROR = re.compile(r"error|exception|traceback|critical", re.I)
JOURNAL_WARNING = re.compile(r"warning|\bwarn\b", re.I)


def journal_report(spec: Spec, since: str | None) -> dict:
    """The runbook's `journalctl -u jhe --since ... | grep -i error` (and warning), since the move began."""
    # (the service, and the hand-over unit that served the new version first)
    args = ["journalctl", "-u", spec.service, "-u", f"{spec.service}-next@*", "--no-pager", "-o", "cat", "-q"]
    if since:
        args += ["--since", since.replace("T", " ").replace("Z", " UTC")]
    p = run(args, check=False, quiet=True)
    lines = p.stdout.splitlines()
    errors, warnings = [], []
    for line in lines:
        if JOURNAL_ERROR.search(line):
            errors.append(line)
        elif JOURNAL_WARNING.search(line):
            warnings.append(line)
    return {"since": since, "lines": len(lines), "errors": len(errors), "warnings": len(warnings),
            "firstErrors": [e[:300] for e in errors[:5]], "firstWarnings": [w[:300] for w in warnings[:5]]}


def _meminfo(text: str) -> dict:
    vals = {k.strip(): int(v.split()[0]) * 1024 for k, v in (line.split(":", 1) for line in text.splitlines() if ":" in line)}
    return {"totalBytes": vals.get("MemTotal"), "availableBytes": vals.get("MemAvailable"),
            "swapUsedBytes": (vals.get("SwapTotal", 0) - vals.get("SwapFree", 0))}


def system_report(spec: Spec) -> dict:
    disks = {}
    for name, path in (("app", spec.app_root), ("backups", spec.backup_dir)):
        try:
            u = shutil.disk_usage(path)
            disks[name] = {"path": str(path), "freeBytes": u.free, "totalBytes": u.total, "usedPercent": round(100 * u.used / u.total, 1)}
        except OSError:
            pass
    try:
        data_dir, free = data_dir_free()
        disks["database"] = {"path": data_dir, "freeBytes": free}
    except Exception:  # noqa: BLE001 - reported without it
        pass
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").exists() else []
    return {"disk": disks, "memory": _meminfo(Path("/proc/meminfo").read_text()) if Path("/proc/meminfo").exists() else None,
            "load": [float(x) for x in load]}


def scheduled_report(spec: Spec) -> dict:
    """The runbook's "verify scheduled tasks": timers (when each last ran, and next), units that failed
    (celery workers among them), the app user's crontab."""
    p = run(["systemctl", "list-timers", "--all", "--no-legend", "--plain", "--no-pager"], check=False, quiet=True)
    timers = []
    for line in p.stdout.splitlines():
        m = re.search(r"(\S+\.timer)\s+(\S+\.service)\s*$", line)
        if m:
            timers.append({"timer": m.group(1), "activates": m.group(2), "line": " ".join(line.split())[:200]})
    failed = run(["systemctl", "list-units", "--failed", "--no-legend", "--plain", "--no-pager"], check=False, quiet=True)
    celery = run(["systemctl", "list-units", "--all", "--no-legend", "--plain", "--no-pager", "celery*"], check=False, quiet=True)
    # (no cron installed - a stock minimal Debian - is no crontab, not an error)
    cron = run(["crontab", "-l", "-u", spec.app_user], check=False, quiet=True) if shutil.which("crontab") else None
    lines = cron.stdout.splitlines() if cron and cron.returncode == 0 else []
    return {"timers": timers, "failedUnits": [ln.split()[0] for ln in failed.stdout.splitlines() if ln.strip()],
            "celery": [" ".join(ln.split()[:4]) for ln in celery.stdout.splitlines() if ln.strip()],
            "crontab": [ln for ln in lines if ln.strip() and not ln.startswith("#")], "cron": cron is not None}


def post_upgrade_report(spec: Spec, since: str | None, before_bytes: int | None, rows_before: dict[str, int] | None) -> dict:
    """Everything above; a part that cannot be read is reported as such (never fails the finish)."""
    out: dict = {}
    parts = (("database", lambda: database_report(spec, before_bytes, rows_before)), ("journal", lambda: journal_report(spec, since)),
             ("system", lambda: system_report(spec)), ("scheduled", lambda: scheduled_report(spec)))
    for name, fn in parts:
        try:
            out[name] = fn()
        except Exception as e:  # noqa: BLE001 - a report, not a gate
            log(f"post-upgrade report: {name} could not be read ({e})")
            out[name] = {"error": str(e)[:300]}
    return out


def _mib(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.1f} MiB"


def report_lines(r: dict) -> list[str]:
    """The report as UPGRADE_LOG.md lines."""
    db, j, sysr, sch = (r.get(k) or {} for k in ("database", "journal", "system", "scheduled"))
    out = ["**After the upgrade:**"]
    if "error" not in db:
        growth = db.get("growthBytes")
        out.append(f"- Database: {_mib(db.get('bytes'))}" + (f" ({'+' if growth >= 0 else ''}{_mib(growth)} since preflight)"
                                                            if growth is not None else "")
                   + f"; rows: {', '.join(f'{t} {n}' for t, n in sorted((db.get('rows') or {}).items()))}")
        out += [f"- Index hint: {h}" for h in db.get("indexHints") or []] or ["- Index hints: none"]
    if "error" not in j:
        out.append(f"- Journal since the move began: {j.get('errors')} error line(s), {j.get('warnings')} warning line(s) "
                   f"of {j.get('lines')}")
        out += [f"  - {e}" for e in j.get("firstErrors") or []]
    disks = (sysr.get("disk") or {}) if "error" not in sysr else {}
    if disks:
        out.append("- Disk free: " + ", ".join(f"{k} {_mib(v.get('freeBytes'))} ({v['path']})" for k, v in disks.items()))
    mem = sysr.get("memory") or {}
    if mem:
        out.append(f"- Memory: {_mib(mem.get('availableBytes'))} available of {_mib(mem.get('totalBytes'))}; load {sysr.get('load')}")
    if "error" not in sch:
        failed = ", ".join(sch.get("failedUnits") or []) or "none"
        out.append(f"- Scheduled: {len(sch.get('timers') or [])} timer(s), failed units: {failed}, "
                   f"celery units: {', '.join(sch.get('celery') or []) or 'none'}, crontab of the app user: "
                   f"{len(sch.get('crontab') or [])} line(s)")
    return out + [""]


def public_report(r: dict) -> dict:
    """The report as the stack's outputs hold it (plaintext state): the journal's lines and the
    crontab's stay in UPGRADE_LOG.md on the server (an app's log line may quote a patient's data, a
    crontab line a secret); counts only here."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in r.items()}
    for k in ("firstErrors", "firstWarnings"):
        out.get("journal", {}).pop(k, None)
    sch = out.get("scheduled") or {}
    if "crontab" in sch:
        sch["crontab"] = len(sch["crontab"])
    return out
