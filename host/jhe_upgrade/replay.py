"""Rollback's replay: rows written on the newer version inserted into the older database, or exported."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from .spec import Spec
from .util import psql, sql_literal

SKIP_REPLAY = {"django_migrations", "django_content_type", "auth_permission", "django_session"}


def _q(name: str) -> str:
    if not re.match(r"^[a-z_][a-z0-9_]*$", name):
        raise RuntimeError(f"unexpected identifier {name!r}")
    return f'"{name}"'


def _copy(src_db: str, query: str, dst_db: str | None = None, table: str | None = None, cols: str | None = None,
          to_file: Path | None = None) -> None:
    """COPY rows of `query` in src_db into dst_db.table(cols), or as CSV into to_file."""
    # The query (its key lists can be large) goes on stdin as a script, never on the command line.
    out = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src_db, "-f", "-"],
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
        p = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dst_db,
                            "-c", f"\\copy {table} ({cols}) FROM STDIN"], stdin=out.stdout, capture_output=True, cwd="/")
        rc_in, err_in = p.returncode, p.stderr
    out.stdout.close()
    err_out = out.stderr.read()
    if out.wait() != 0 or rc_in != 0:
        raise RuntimeError((err_in or err_out).decode(errors="replace").strip()[-400:])


def _ids(db: str, t: str, pk: str, where: str = "true") -> set[str]:
    return set(psql(db, f"SELECT {_q(pk)}::text FROM {_q(t)} WHERE {where}").splitlines())


def _hashes(db: str, t: str, pk: str, collist: str, where: str) -> dict[str, str]:
    rows = psql(db, f"SELECT {_q(pk)}, md5(ROW({collist})::text) FROM {_q(t)} WHERE {where}").splitlines()
    return dict(line.split("|", 1) for line in rows if line)


def _in_list(pk: str, ids: list[str]) -> str:
    return f"{_q(pk)}::text IN ({','.join(sql_literal(k) for k in ids)})"


INTEGER_TYPES = {"smallint", "integer", "bigint"}


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


def key_kind(pk: list[tuple[str, str]]) -> str:
    """A table's primary key as the replay sees it, from its (column, type) list: integer (ids from a
    sequence), uuid, text, other (one column of another type), composite, none."""
    if not pk:
        return "none"
    if len(pk) > 1:
        return "composite"
    typ = pk[0][1]
    return ("integer" if typ in INTEGER_TYPES else "uuid" if typ == "uuid"
            else "text" if typ in ("text", "character varying") or typ.startswith("character varying(") else "other")


def table_plan(table: str, pk: list[tuple[str, str]], dst_cols: list[str], src_cols: list[str], required: set[str]) -> dict:
    """How one table's rows are compared: `ordered` (integer keys: rows above the older database's
    highest key are new, plus any below it that it never had), `set` (any other single-column key: the
    keys each side has), or not at all (no single-column key: noted)."""
    kind = key_kind(pk)
    common = [c for c in dst_cols if c in set(src_cols)]
    plan = {"table": table, "key": kind, "pk": pk[0][0] if len(pk) == 1 else None, "common": common,
            "missing": sorted(required - set(common)), "mode": None, "note": None}
    if kind in ("none", "composite"):
        plan["note"] = f"{table}: no single-column primary key, not compared"
    else:
        plan["mode"] = "ordered" if kind == "integer" else "set"
    return plan


def _marker_condition(src_db: str, since: dict | None) -> str | None:
    """The marker is usable while it is of this cluster and recent (xids are compared modulo 2^32)."""
    if since and psql(src_db, "SELECT system_identifier FROM pg_control_system()") == str(since.get("cluster")) \
            and int(psql(src_db, f"SELECT age('{int(since['xid'])}'::xid)")) < 1_000_000_000:
        return f"age(xmin) <= age('{int(since['xid'])}'::xid)"
    return None


def _read_plan(src_db: str, dst_db: str, t: str) -> dict:
    pk = [tuple(line.split("|", 1)) for line in psql(
        dst_db, f"SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
                f"CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
                f"JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                f"WHERE i.indrelid = 'public.{t}'::regclass AND i.indisprimary ORDER BY k.n").splitlines() if line]

    def cols_of(db: str) -> list[str]:
        return psql(db, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                        f"AND table_name = '{t}' AND is_generated = 'NEVER' ORDER BY ordinal_position").splitlines()
    required = set(psql(dst_db, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                                f"AND table_name = '{t}' AND is_nullable = 'NO' AND column_default IS NULL "
                                f"AND is_identity = 'NO'").splitlines())
    return table_plan(t, [(a, b) for a, b in pk], cols_of(dst_db), cols_of(src_db), required)


def replay_rows(spec: Spec, src_db: str, dst_db: str, export_dir: Path, since: dict | None = None) -> dict:
    """Rows written to src_db (the newer version's database) after dst_db's state was kept are
    inserted into dst_db where its schema allows; what cannot be inserted, and rows changed or deleted
    since, are exported as CSV to export_dir. Never silently dropped. `since` (a live_marker of when
    the newer version began serving) narrows the search for changed rows to those written after it."""
    tables = [t for t in psql(dst_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").splitlines()
              if t and t not in SKIP_REPLAY]
    src_tables = set(psql(src_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").splitlines())
    edges = [(c, p) for c, p in (line.split("|") for line in psql(
        dst_db, "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                "WHERE contype = 'f' AND connamespace = 'public'::regnamespace").splitlines() if line)]
    newer = _marker_condition(src_db, since)
    out: dict = {"rowsReplayed": {}, "rowsExported": {}, "notes": []}
    for t in replay_order(tables, edges):
        if t not in src_tables:
            continue
        plan = _read_plan(src_db, dst_db, t)
        if not plan["mode"]:
            out["notes"].append(plan["note"])
            continue
        _replay_table(src_db, dst_db, plan, export_dir, newer, out)
    return {"rowsReplayed": out["rowsReplayed"], "rowsExported": out["rowsExported"],
            "exportDir": str(export_dir) if out["rowsExported"] else None,
            "notes": out["notes"], "comparedSince": "marker" if newer else "all rows"}


def _replay_table(src_db: str, dst_db: str, plan: dict, export_dir: Path, newer: str | None, out: dict) -> None:
    t, pk, common = plan["table"], plan["pk"], plan["common"]
    replayed, exported, notes = out["rowsReplayed"], out["rowsExported"], out["notes"]
    collist = ",".join(_q(c) for c in common)
    ordered = plan["mode"] == "ordered"
    if ordered:
        maxid = psql(dst_db, f"SELECT coalesce(max({_q(pk)})::text, '') FROM {_q(t)}")
        below = f"{_q(pk)} <= {sql_literal(maxid)}" if maxid else "false"
        have_old = bool(maxid)
    else:  # set: every key is compared, whatever its order
        below = "true"
        have_old = psql(dst_db, f"SELECT EXISTS (SELECT 1 FROM {_q(t)})") == "t"
    dst_ids = _ids(dst_db, t, pk) if have_old else set()
    src_below = _ids(src_db, t, pk, below) if have_old or not ordered else set()
    # New rows: above dst's highest key (sequences), and any below it that dst never had.
    gaps = sorted(src_below - dst_ids)
    conds = ([f"NOT ({below})"] if ordered else []) + [_in_list(pk, gaps[i:i + 5000]) for i in range(0, len(gaps), 5000)]
    n_new = (int(psql(src_db, f"SELECT count(*) FROM {_q(t)} WHERE NOT ({below})")) if ordered else 0) + len(gaps)
    if n_new:
        export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        done = 0
        try:
            if plan["missing"]:
                raise RuntimeError(f"{t} in the older schema requires {', '.join(plan['missing'])}, which the newer rows lack")
            for c in conds:
                _copy(src_db, f"SELECT {collist} FROM {_q(t)} WHERE {c} ORDER BY {_q(pk)}", dst_db, _q(t), collist)
                done += 1
            replayed[t] = n_new
            if ordered:
                psql(dst_db, f"SELECT setval(s, m) FROM (SELECT pg_get_serial_sequence('public.{t}', '{pk}') AS s, "
                             f"max({_q(pk)}) AS m FROM {_q(t)}) x WHERE s IS NOT NULL AND m IS NOT NULL")
        except RuntimeError as e:
            for i, c in enumerate(conds):
                name = f"{t}.new-rows.csv" if i == 0 else f"{t}.new-rows-{i}.csv"
                _copy(src_db, f"SELECT * FROM {_q(t)} WHERE {c} ORDER BY {_q(pk)}", to_file=export_dir / name)
            exported[f"{t}.new-rows"] = n_new
            notes.append(f"{t}: {n_new} newer rows exported" + (" (some inserted before the failure)" if done else ", not inserted")
                         + f" ({e})")
    if have_old:
        # Rows that existed before and were changed or deleted since: exported, for a person to judge.
        # With a marker only rows written after it can differ (the rest were never touched since).
        cand = f"({below}) AND {newer}" if newer else below
        new_h = _hashes(src_db, t, pk, collist, cand)
        if not newer or len(new_h) > 20000:
            old_h = _hashes(dst_db, t, pk, collist, "true")
        else:
            keys = [k for k in new_h if k in dst_ids]
            old_h = {}
            for i in range(0, len(keys), 5000):
                old_h.update(_hashes(dst_db, t, pk, collist, _in_list(pk, keys[i:i + 5000])))
        changed = [k for k, v in new_h.items() if k in old_h and old_h[k] != v]
        deleted = sorted(dst_ids - src_below)
        if changed or deleted:
            export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if changed:
            _copy(src_db, f"SELECT * FROM {_q(t)} WHERE {_in_list(pk, changed)}", to_file=export_dir / f"{t}.changed-rows.csv")
            exported[f"{t}.changed-rows"] = len(changed)
        if deleted:
            _copy(dst_db, f"SELECT * FROM {_q(t)} WHERE {_in_list(pk, deleted)}", to_file=export_dir / f"{t}.deleted-since.csv")
            exported[f"{t}.deleted-since"] = len(deleted)
