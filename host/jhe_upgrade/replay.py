"""Rollback's replay: rows written on the newer version inserted into the older database, or exported."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .db import foreign_keys, public_tables, table_marks, tables_written
from .rowkeys import SCHEMA_TABLES, columns, in_list, key_expr, key_kind, keys, primary_key, q, read_deleted_keys
from .spec import Spec
from .util import db_args, psql, sql_literal


def _copy(src_db: str, query: str, dst_db: str | None = None, table: str | None = None, cols: str | None = None,
          to_file: Path | None = None) -> None:
    """COPY rows of `query` in src_db into dst_db.table(cols), or as CSV into to_file."""
    # The query (its key lists can be large) goes on stdin as a script, never on the command line.
    out = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *db_args(src_db), "-f", "-"],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    assert out.stdin is not None
    out.stdin.write((f"\\copy ({query}) TO STDOUT" + (" WITH CSV HEADER" if to_file else "") + "\n").encode())
    out.stdin.close()
    assert out.stdout is not None and out.stderr is not None
    if to_file:
        fd = os.open(to_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(out.stdout, f)
        rc_in = 0
        err_in = b""
    else:
        assert dst_db is not None
        p = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", *db_args(dst_db),
                            "-c", f"\\copy {table} ({cols}) FROM STDIN"], stdin=out.stdout, capture_output=True, cwd="/")
        rc_in, err_in = p.returncode, p.stderr
    out.stdout.close()
    err_out = out.stderr.read()
    if out.wait() != 0 or rc_in != 0:
        raise RuntimeError((err_in or err_out).decode(errors="replace").strip()[-400:])


def replay_order(tables: list[str], edges: list[tuple[str, str]]) -> list[str]:
    """Parents before children: `edges` are (child, parent) foreign keys; a cycle is taken as it comes
    (its failures are exported)."""
    order: list[str] = []
    pending = set(tables)
    while pending:
        ready = sorted(t for t in pending if not any(c == t and p in pending and p != t for c, p in edges))
        for t in ready or sorted(pending):
            order.append(t)
            pending.discard(t)
    return order


def table_plan(table: str, pk: list[tuple[str, str]], dst_cols: list[str], src_cols: list[str], required: set[str],
               renames: dict[str, str] | None = None) -> dict:
    """How one table's rows are compared. `ordered` (integer keys): rows above the older database's
    highest key are new, plus any below it that it never had. `set` (every other key - uuid, text,
    composite - and tables without one, whose rows are compared whole): the keys each side has.
    `renames` (older column -> newer) pairs the columns a RenameField moved."""
    kind = key_kind(pk)
    src, dst = set(src_cols), set(dst_cols)
    colmap: dict[str, str] = {}
    for old, new in (renames or {}).items():  # field names: a foreign key's column is <name>_id
        for o, n in ((old, new), (old + "_id", new + "_id")):
            if o in dst and n in src:
                colmap[o] = n
                break
    pairs = [(c, colmap.get(c, c)) for c in dst_cols if colmap.get(c, c) in src]
    common, src_common = [d for d, _ in pairs], [n for _, n in pairs]
    pk_cols = [c for c, _ in pk]
    plan = {"table": table, "key": kind, "pk": pk_cols, "common": common, "srcCommon": src_common,
            "missing": sorted(required - set(common)), "mode": "ordered" if kind == "integer" else "set", "note": None}
    if not set(pk_cols) <= set(common):
        plan["mode"], plan["note"] = None, f"{table}: its key ({', '.join(pk_cols)}) is not in the newer table, not compared"
    elif kind == "none":
        plan["note"] = f"{table}: no primary key, rows compared whole (identical rows count once)"
    plan["newerOnly"] = [c for c in src_cols if c not in set(src_common)]
    rename = dict(pairs)
    plan["dstKey"] = key_expr(kind, pk_cols, common)
    plan["srcKey"] = key_expr(kind, [rename.get(c, c) for c in pk_cols], src_common)
    return plan


def _marker_condition(src_db: str, since: dict | None) -> str | None:
    """The marker is usable while it is of this cluster and recent (xids are compared modulo 2^32)."""
    if since and psql(src_db, "SELECT system_identifier FROM pg_control_system()") == str(since.get("cluster")) \
            and int(psql(src_db, f"SELECT age('{int(since['xid'])}'::xid)")) < 1_000_000_000:
        return f"age(xmin) <= age('{int(since['xid'])}'::xid)"
    return None


def _read_plan(src_db: str, dst_db: str, t: str, renames: dict[str, str]) -> dict:
    required = set(psql(dst_db, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                                f"AND table_name = {sql_literal(t)} AND is_nullable = 'NO' AND column_default IS NULL "
                                f"AND is_identity = 'NO'").splitlines())
    return table_plan(t, primary_key(dst_db, t), columns(dst_db, t), columns(src_db, t), required, renames)


def replay_rows(spec: Spec, src_db: str, dst_db: str, export_dir: Path, since: dict | None = None,
                renames: dict[str, dict[str, str]] | None = None, deleted_by_migrations: dict | None = None) -> dict:
    """Rows written to src_db (the newer version's database) after dst_db's state was kept are
    inserted into dst_db where its schema allows; what cannot be inserted, rows changed or deleted by
    users since, and rows of tables only the newer version has are exported as CSV to export_dir.
    Never silently dropped. `since` (a live_marker of when the newer version began serving) narrows
    the search to rows written after it; `deleted_by_migrations` (recorded when the newer version's
    migrations ran) tells their deletions - undone by the older database itself - from users'.
    `tables` in the result says, for every table something was written to, what was done."""
    dst_tables, src_tables = public_tables(dst_db), set(public_tables(src_db))
    edges = foreign_keys(dst_db)
    newer = _marker_condition(src_db, since)
    # With the marker's write counters, only the tables written (inserted, updated, deleted, truncated)
    # since the newer version began serving are compared: the rest are as they were then.
    marks = (since or {}).get("marks") if newer else None
    touched = set(tables_written(marks, table_marks(src_db))) if marks else None
    out: dict = {"rowsReplayed": {}, "rowsExported": {}, "notes": [], "tables": {}}
    for t in replay_order([t for t in dst_tables if t in src_tables and (touched is None or t in touched)], edges):
        if t in SCHEMA_TABLES:
            n = int(psql(src_db, f"SELECT count(*) FROM {q(t)} WHERE {newer or 'false'}"))
            if n:
                out["tables"][t] = {"written": n, "done": "not replayed: Django's bookkeeping, as the older migrations left it"}
            continue
        plan = _read_plan(src_db, dst_db, t, (renames or {}).get(t, {}))
        if not plan["mode"]:
            out["notes"].append(plan["note"])
            continue
        if plan["note"]:
            out["notes"].append(plan["note"])
        _replay_table(src_db, dst_db, plan, export_dir, newer, (deleted_by_migrations or {}).get(t), out)
    for t in sorted(src_tables - set(dst_tables) - SCHEMA_TABLES - (set() if touched is None else src_tables - touched)):
        _only_in_newer(src_db, t, export_dir, newer, out)
    return {"rowsReplayed": out["rowsReplayed"], "rowsExported": out["rowsExported"],
            "exportDir": str(export_dir) if out["rowsExported"] else None, "tables": out["tables"],
            "notes": out["notes"], "comparedSince": "marker" if newer else "all rows"}


def _only_in_newer(src_db: str, t: str, export_dir: Path, newer: str | None, out: dict) -> None:
    """A table the older version does not have: its rows written since the newer version began serving
    (all of them without a marker) are exported; rows its migrations made are counted only."""
    total = int(psql(src_db, f"SELECT count(*) FROM {q(t)}"))
    n = int(psql(src_db, f"SELECT count(*) FROM {q(t)} WHERE {newer}")) if newer else total
    entry: dict = {"onlyInNewer": True}
    if n:
        export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        _copy(src_db, f"SELECT * FROM {q(t)} WHERE {newer or 'true'}", to_file=export_dir / f"{t}.only-in-newer.csv")
        out["rowsExported"][f"{t}.only-in-newer"] = n
        entry.update(new=n, exported=f"{t}.only-in-newer.csv",
                     done="exported: the older version has no such table")
    if total - n:
        entry["madeByMigrations"] = total - n
        entry.setdefault("done", "nothing to keep: rows the newer version's migrations made")
    if n or total:
        out["tables"][t] = entry


def _replay_table(src_db: str, dst_db: str, plan: dict, export_dir: Path, newer: str | None,
                  mig_deleted: dict | None, out: dict) -> None:
    t, dst_k, src_k = plan["table"], plan["dstKey"], plan["srcKey"]
    replayed, exported, notes = out["rowsReplayed"], out["rowsExported"], out["notes"]
    collist, src_collist = ",".join(q(c) for c in plan["common"]), ",".join(q(c) for c in plan["srcCommon"])
    ordered = plan["mode"] == "ordered"
    entry: dict = {}
    if ordered:
        pk, src_pk = q(plan["pk"][0]), q(plan["srcCommon"][plan["common"].index(plan["pk"][0])])
        maxid = psql(dst_db, f"SELECT coalesce(max({pk})::text, '') FROM {q(t)}")
        below = f"{src_pk} <= {sql_literal(maxid)}" if maxid else "false"
        have_old = bool(maxid)
    else:  # set: every key is compared, whatever its order
        below = "true"
        have_old = psql(dst_db, f"SELECT EXISTS (SELECT 1 FROM {q(t)})") == "t"
    dst_ids = keys(dst_db, t, dst_k) if have_old else set()
    src_below = keys(src_db, t, src_k, below) if have_old or not ordered else set()
    # New rows: above dst's highest key (sequences), and any below it that dst never had - of them, with
    # a marker, only those written since the newer version began serving (its migrations' are its own).
    gaps = sorted(src_below - dst_ids)
    made = 0
    if newer and gaps:
        since = keys(src_db, t, src_k, f"({below}) AND {newer}")
        made, gaps = len(gaps), [k for k in gaps if k in since]
        made -= len(gaps)
    mark = f" AND {newer}" if newer else ""
    conds = ([f"NOT ({below}){mark}"] if ordered else []) + [in_list(src_k, gaps[i:i + 5000]) for i in range(0, len(gaps), 5000)]
    above = int(psql(src_db, f"SELECT count(*) FROM {q(t)} WHERE NOT ({below}){mark}")) if ordered else 0
    if ordered and newer:
        made += int(psql(src_db, f"SELECT count(*) FROM {q(t)} WHERE NOT ({below})")) - above
    if made:
        entry["madeByMigrations"] = made  # not users' data: the older version never had them
    n_new = above + len(gaps)
    order = f" ORDER BY {src_k}"
    if n_new:
        export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        entry["new"] = n_new
        if plan["newerOnly"]:
            notes.append(f"{t}: the older table has no {', '.join(plan['newerOnly'])}; those values of the {n_new} "
                         f"newer rows stay in the kept newer database only")
        done = 0
        try:
            if plan["missing"]:
                raise RuntimeError(f"{t} in the older schema requires {', '.join(plan['missing'])}, which the newer rows lack")
            for c in conds:
                _copy(src_db, f"SELECT {src_collist} FROM {q(t)} WHERE {c}{order}", dst_db, q(t), collist)
                done += 1
            replayed[t] = entry["replayed"] = n_new
            if ordered:
                _advance_sequence(dst_db, t, plan["pk"][0])
        except RuntimeError as e:
            if ordered and done:
                _advance_sequence(dst_db, t, plan["pk"][0])  # past what did go in
            for i, c in enumerate(conds):
                name = f"{t}.new-rows.csv" if i == 0 else f"{t}.new-rows-{i}.csv"
                _copy(src_db, f"SELECT * FROM {q(t)} WHERE {c}{order}", to_file=export_dir / name)
            exported[f"{t}.new-rows"] = entry["exportedNew"] = n_new
            notes.append(f"{t}: {n_new} newer rows exported" + (" (some inserted before the failure)" if done else ", not inserted")
                         + f" ({e})")
    if have_old:
        # Rows that existed before and were changed or deleted since: exported, for a person to judge.
        # With a marker only rows written after it can differ (the rest were never touched since).
        cand = f"({below}) AND {newer}" if newer else below
        new_h = _hashes(src_db, t, src_k, src_collist, cand)
        if not newer or len(new_h) > 20000:
            old_h = _hashes(dst_db, t, dst_k, collist, "true")
        else:
            ks = [k for k in new_h if k in dst_ids]
            old_h = {}
            for i in range(0, len(ks), 5000):
                old_h.update(_hashes(dst_db, t, dst_k, collist, in_list(dst_k, ks[i:i + 5000])))
        changed = [k for k, v in new_h.items() if k in old_h and old_h[k] != v]
        deleted = dst_ids - src_below
        by_migrations = read_deleted_keys(mig_deleted)
        if by_migrations is not None:
            entry["deletedByMigrations"] = len(deleted & by_migrations)
            deleted -= by_migrations  # back with the older database, as they were before the upgrade
        elif mig_deleted and deleted:
            notes.append(f"{t}: the newer version's migrations deleted {mig_deleted.get('count')} rows (not recorded by key): "
                         f"the {len(deleted)} rows deleted since are all exported")
        if changed or deleted:
            export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if changed:
            _copy(src_db, f"SELECT * FROM {q(t)} WHERE {in_list(src_k, changed)}", to_file=export_dir / f"{t}.changed-rows.csv")
            exported[f"{t}.changed-rows"] = entry["changed"] = len(changed)
        if deleted:
            _copy(dst_db, f"SELECT * FROM {q(t)} WHERE {in_list(dst_k, sorted(deleted))}", to_file=export_dir / f"{t}.deleted-since.csv")
            exported[f"{t}.deleted-since"] = entry["deletedByUsers"] = len(deleted)
    if any(entry.values()):
        entry["done"] = "; ".join(x for x in (
            f"{entry['replayed']} new rows inserted" if entry.get("replayed") else "",
            f"{entry['exportedNew']} new rows exported (not insertable)" if entry.get("exportedNew") else "",
            f"{entry['changed']} changed rows exported for review" if entry.get("changed") else "",
            f"{entry['deletedByUsers']} rows deleted by users exported for review (they are back)" if entry.get("deletedByUsers") else "",
            f"{entry['deletedByMigrations']} rows the newer migrations deleted are back" if entry.get("deletedByMigrations") else "",
            f"{entry['madeByMigrations']} rows the newer migrations made left out" if entry.get("madeByMigrations") else "",
        ) if x)
        out["tables"][t] = {"key": plan["key"], **{k: v for k, v in entry.items() if v}}


def _hashes(db: str, t: str, key: str, collist: str, where: str) -> dict[str, str]:
    rows = psql(db, f"SELECT {key}, md5(ROW({collist})::text) FROM {q(t)} WHERE {where}").splitlines()
    return dict(line.rsplit("|", 1) for line in rows if line)


def _advance_sequence(db: str, t: str, pk: str) -> None:
    """The older table's id sequence past the rows put in, so its next insert does not collide."""
    psql(db, f"SELECT setval(s, m) FROM (SELECT pg_get_serial_sequence({sql_literal(q(t))}, {sql_literal(pk)}) AS s, "
             f"max({q(pk)}) AS m FROM {q(t)}) x WHERE s IS NOT NULL AND m IS NOT NULL")
