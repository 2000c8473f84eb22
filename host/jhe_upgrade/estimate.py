"""How long the maintenance page will be up, estimated before anything happens (the plan at preview,
and preflight, which records it so finish can set it against what was measured).

The path follows from the strategy (staging.choose_strategy): online has no window; a staged copy is
swapped in by rename (the window holds the switch only) unless rows are written meanwhile - then the
window holds a snapshot of the database and the migration, as the in-window path does. Whether the
database is written to is read now (transaction ids handed out over a second and a half).

The parts' rates come from this server: earlier moves' timings (state["timings"], recorded by finish),
else a quick probe that leaves nothing behind - a timed copy of up to 16 MiB of the largest table into a
temporary table in a transaction that is rolled back (5 s at most), and a timed 16 MiB write (fsynced,
then removed) beside PostgreSQL's data, only with 2 GiB free there. With neither, defaults measured
on test servers."""
from __future__ import annotations

import os
import shutil
import statistics
import time
from pathlib import Path

from .db import table_marks, tables_written
from .util import psql, quote_ident, sql_literal

# Defaults (2-core test servers): the switch through the hand-over unit (maintenance page, old workers
# gone, nginx to the booted release, page lifted), `manage.py migrate`'s own start and bookkeeping, a
# rollback's window (renames and the replay of a few tables), a snapshot's copy rate against the disk's
# write rate, and a migration's rewrite rate against the probe's plain copy (an UPDATE of every row writes
# new row versions, their WAL and every index entry again).
SWITCH_SECONDS = 1.0
MIGRATE_OVERHEAD_SECONDS = 2.0
ROLLBACK_SECONDS = 2.5
COPY_PER_WRITE = 1.0
REWRITE_PER_COPY = 0.35
KEEP_TIMINGS = 10
PROBE_MIN_FREE = 2 * 2**30  # the write probe runs only with this much free beside PostgreSQL's data


def tables_of(classes: dict, tables: list[str] | dict, key: str = "rewrites") -> set[str]:
    """The tables the pending migrations work on (see migclass: "rewrites" - rewritten or locked -, or
    "changes" - any SQL): a model's table, or every table of the app for "*"."""
    out: set[str] = set()
    for mig, c in classes.items():
        app = mig.split(".", 1)[0]
        for model in c.get(key) or []:
            table = model.replace(".", "_", 1) if "." in model else f"{app}_{model}"
            if model == "*":
                out |= {t for t in tables if t.startswith(app + "_")}
            elif table in tables:
                out.add(table)
    return out


def rewrite_bytes(classes: dict, table_bytes: dict[str, int]) -> int:
    """Bytes of the tables the pending migrations rewrite or lock, each counted once."""
    return sum(table_bytes[t] for t in tables_of(classes, table_bytes))


def _median(values: list) -> float | None:
    xs = [float(v) for v in values if v is not None and v > 0]
    return statistics.median(xs) if xs else None


def rates(timings: list[dict], probe: dict | None) -> dict:
    """Switch seconds, snapshot copy rate, migration overhead and rewrite rate (bytes/s), each with where
    it comes from: this server's earlier moves, the probe, or the defaults."""
    out: dict = {"basis": {}}
    switch = _median([t.get("switchSeconds") for t in timings if t.get("path") != "rollback"])
    out["switchSeconds"], out["basis"]["switch"] = (switch, "earlier moves") if switch else (SWITCH_SECONDS, "default")
    rb = _median([t.get("windowSeconds") for t in timings if t.get("path") == "rollback"])
    out["rollbackSeconds"], out["basis"]["rollback"] = (rb, "earlier rollbacks") if rb else (ROLLBACK_SECONDS, "default")
    probe = probe or {}

    def pick(part: str, key: str, measured: float | None, probed: float | None, default: float, earlier: str) -> None:
        out[key], out["basis"][part] = ((measured, earlier) if measured else (probed, "probe") if probed else (default, "default"))

    pick("snapshot", "copyBytesPerSecond",
         _median([t["snapshotBytes"] / t["snapshotSeconds"] for t in timings if t.get("snapshotBytes") and t.get("snapshotSeconds")]),
         probe.get("writeBytesPerSecond", 0) * COPY_PER_WRITE, 150 * 2**20, "earlier snapshots")
    ran = [t for t in timings if t.get("migrateSeconds") and t.get("path") in ("in-window", "staged", "online")]
    overhead = _median([t["migrateSeconds"] for t in ran if not t.get("rewriteBytes")])
    out["migrateOverheadSeconds"] = min(overhead, 30.0) if overhead else MIGRATE_OVERHEAD_SECONDS
    pick("migration", "rewriteBytesPerSecond",
         _median([t["rewriteBytes"] / max(0.1, t["migrateSeconds"] - out["migrateOverheadSeconds"]) for t in ran if t.get("rewriteBytes")]),
         probe.get("copyBytesPerSecond", 0) * REWRITE_PER_COPY, 20 * 2**20, "earlier migrations")
    return out


def estimate(*, action: str, strategy: str | None, pending: list[str], db_bytes: int, rewrite: int,
             writes_per_second: float | None, r: dict, written_changed: list[str] | None = None) -> dict:
    """{seconds, path, parts}: the maintenance page's time for this move, from the rates `r` (see rates).
    `written_changed`: of the tables written to now, those the migrations change (None: not known) -
    writes to other tables are caught up in the staged copy (see catchup) and do not make it fall back."""
    def done(seconds: float, path: str, **parts: float) -> dict:
        return {"seconds": round(seconds, 1), "path": path, "parts": {k: round(v, 2) for k, v in parts.items()},
                "basis": r["basis"]}

    if action == "install":
        return done(0, "install: nothing serves yet")
    if action == "rollback":
        return done(r["rollbackSeconds"], "rollback: the kept database back by rename, rows written since replayed")
    switch = r["switchSeconds"]
    if strategy == "online":
        return done(0, "online: no window (migrations applied while the old version serves, then the hand-over)")
    if not pending:
        return done(switch, "code only: the switch", switch=switch)
    snapshot = db_bytes / r["copyBytesPerSecond"]
    migrate = r["migrateOverheadSeconds"] + rewrite / r["rewriteBytesPerSecond"]
    if strategy == "staged" and not writes_per_second:
        return done(switch, "staged: migrated on a copy before the window, swapped in by rename", switch=switch)
    if strategy == "staged" and written_changed == []:
        return done(switch, f"staged: the database is written to now ({writes_per_second:.1f} transactions/s), to tables "
                            f"the migrations leave alone: those rows are caught up in the copy, swapped in by rename",
                    switch=switch)
    why = (f"staged, but the database is written to now ({writes_per_second:.1f} transactions/s)"
           + (f", to tables the migrations change ({', '.join(written_changed)})" if written_changed else "")
           + ": the copy is dropped and the window holds a snapshot and the migration" if strategy == "staged" else
           "in the window: a snapshot of the database and the migration")
    return done(snapshot + migrate + switch, why, snapshot=snapshot, migrate=migrate, switch=switch)


# --- What the estimate reads from the server (read-only) ---

def writes_now(db: str, seconds: float = 1.5) -> tuple[float, list[str]]:
    """Write transactions per second in the whole cluster now (transaction ids handed out while this
    waits: a read-only transaction gets none, nor do our own statements), and the tables of `db` whose
    write counters moved meanwhile (a session that stays open reports its counts up to 10 s late, so
    this list can miss some)."""
    q = "SELECT txid_snapshot_xmax(txid_current_snapshot())"
    a, t, m0 = int(psql("postgres", q)), time.monotonic(), table_marks(db)
    time.sleep(seconds)
    b, m1 = int(psql("postgres", q)), table_marks(db)
    return max(0, b - a) / (time.monotonic() - t), tables_written(m0, m1)


def table_bytes(db: str) -> dict[str, int]:
    out = {}
    for line in psql(db, "SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                         "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace").splitlines():
        if line:
            name, size = line.rsplit("|", 1)
            out[name] = int(size)
    return out


def probe(db: str, tables: dict[str, int], sample: int = 16 * 2**20) -> dict:
    """Copy rate (bytes/s) of up to `sample` bytes of the largest table into a temporary table, rolled
    back; and the disk's write rate beside PostgreSQL's data (a file written, fsynced and removed)."""
    out: dict = {}
    if tables:
        big = max(tables, key=lambda t: tables[t])
        rows, size = psql(db, f"SELECT greatest(reltuples, 0)::bigint, pg_table_size(oid) FROM pg_class "
                              f"WHERE oid = {sql_literal('public.' + quote_ident(big))}::regclass").split("|")
        if int(rows) > 0 and int(size) > 0:
            limit = max(1, int(int(rows) * min(1.0, sample / int(size))))
            t0 = time.monotonic()
            psql(db, "SELECT 1")
            base = time.monotonic() - t0
            t0 = time.monotonic()
            # (sized with TOAST included; given up after 5 s: a preview never waits on it)
            copied = psql(db, f"BEGIN; SET LOCAL statement_timeout = '5s'; CREATE TEMPORARY TABLE jhe_upgrade_probe AS "
                              f"SELECT * FROM public.{quote_ident(big)} LIMIT {limit}; "
                              f"SELECT pg_table_size('jhe_upgrade_probe'); ROLLBACK;", check=False)
            took = max(0.001, time.monotonic() - t0 - base)
            if copied.split() and copied.split()[-1].isdigit():
                out["copyBytesPerSecond"] = int(copied.split()[-1]) / took
    data_dir = Path(psql("postgres", "SHOW data_directory")).parent
    for stale in data_dir.glob(".jhe-upgrade-probe-*"):  # (left by a run that was killed)
        stale.unlink(missing_ok=True)
    if shutil.disk_usage(data_dir).free < PROBE_MIN_FREE:
        return out  # never near a full disk (PostgreSQL's own writes come first): the defaults stand
    f = data_dir / f".jhe-upgrade-probe-{os.getpid()}"
    chunk = os.urandom(2**20)
    try:
        t0 = time.monotonic()
        with open(f, "wb") as fh:
            for _ in range(sample // len(chunk)):
                fh.write(chunk)
            fh.flush()
            os.fsync(fh.fileno())
        out["writeBytesPerSecond"] = sample / max(0.001, time.monotonic() - t0)
    except OSError:
        pass  # (a full or read-only disk: the defaults stand)
    finally:
        f.unlink(missing_ok=True)
    return out


def estimate_for(spec, state: dict, *, action: str, strategy: str | None, pending: list[str], classes: dict,
                 db_bytes: int) -> dict:
    """The estimate for this move on this server: reads what it needs, then `estimate`."""
    timings = state.get("timings") or []
    need_rates = action == "upgrade" and strategy != "online" and pending
    tables = table_bytes(spec.db_name) if need_rates else {}
    wps, written = writes_now(spec.db_name) if need_rates and strategy == "staged" else (None, [])
    r = rates(timings, probe(spec.db_name, tables) if need_rates and not _calibrated(timings) else None)
    changed = tables_of(classes, tables, "changes")
    rewrite = rewrite_bytes(classes, tables)
    out = estimate(action=action, strategy=strategy, pending=pending, db_bytes=db_bytes, rewrite=rewrite,
                   writes_per_second=wps, r=r, written_changed=sorted(t for t in written if t in changed) if written else None)
    out["rewriteBytes"] = rewrite
    if wps is not None:
        out["writesPerSecond"] = round(wps, 1)
    return out


def _calibrated(timings: list[dict]) -> bool:
    """Earlier migrations on this server give the rewrite rate: no probe (a snapshot's rate then comes
    from earlier snapshots, or the default)."""
    return any(t.get("rewriteBytes") and t.get("migrateSeconds") for t in timings)


def observed(state: dict, window_seconds: float) -> dict:
    """What this move's window held, for later estimates (recorded by finish before the backup record
    is replaced): its path, the backup or snapshot taken in it, the migration in it, the rest (switch)."""
    tgt = state.get("target") or {}
    b = state.get("backup") or {}
    m = state.get("migrated") or {}
    path = ("rollback" if tgt.get("kind") == "rollback" else "online" if m.get("online") else
            "staged" if m.get("staged") else "in-window")
    in_window_backup = b.get("copySeconds", b.get("seconds")) if b.get("window") and path == "in-window" else None
    migrate_in_window = m.get("seconds") if path == "in-window" else m.get("caughtUpSeconds")  # (catch-up: in the window)
    est = tgt.get("estimate") or {}
    out = {"path": path, "windowSeconds": window_seconds, "migrateSeconds": m.get("seconds"),
           "rewriteBytes": est.get("rewriteBytes"), "estimatedSeconds": est.get("seconds"),
           "switchSeconds": round(max(0.0, window_seconds - (in_window_backup or 0) - (migrate_in_window or 0)), 2)
           if path != "rollback" else None}
    if b.get("snapshot") and b.get("copySeconds"):
        out.update(snapshotSeconds=b["copySeconds"], snapshotBytes=b.get("bytes"))
    return out


def record(state: dict, timing: dict) -> None:
    state["timings"] = (state.get("timings") or [])[-(KEEP_TIMINGS - 1):] + [timing]
