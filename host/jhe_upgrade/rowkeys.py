"""Rows by key, for every kind of table: what a table's key is, the keys a database holds, the columns a
RenameField moved, and which rows a version's own data migrations deleted (so that a rollback can tell
them from users' deletions)."""
from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

from .db import public_tables, table_marks
from .spec import Spec
from .util import psql, quote_ident, sql_literal

INTEGER_TYPES = {"smallint", "integer", "bigint"}
# Django's own bookkeeping, rebuilt by the older version's migrations: never replayed.
SCHEMA_TABLES = {"django_migrations", "django_content_type", "auth_permission"}


# A table or column name in SQL, whatever it holds (quoted; the database's names are data).
q = quote_ident


def regclass(table: str) -> str:
    return f"{sql_literal('public.' + quote_ident(table))}::regclass"


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


def key_expr(kind: str, pk_cols: list[str], cols: list[str]) -> str:
    """SQL giving a row's identity as one line of text: its key (integers and UUIDs as they are; any
    other key hex-encoded, so a text key holding a newline or '|' stays one token); both key columns
    for a composite key; the whole row (`cols`, in the order both sides share) without a key."""
    if kind == "none":
        return f"md5(ROW({','.join(q(c) for c in cols)})::text)"
    if kind in ("integer", "uuid"):
        return f"{q(pk_cols[0])}::text"
    inner = f"ROW({','.join(q(c) for c in pk_cols)})::text" if kind == "composite" else f"{q(pk_cols[0])}::text"
    return f"encode(convert_to({inner}, 'UTF8'), 'hex')"


def primary_key(db: str, table: str) -> list[tuple[str, str]]:
    rows = psql(db, f"SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_index i "
                    f"CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n) "
                    f"JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
                    f"WHERE i.indrelid = {regclass(table)} AND i.indisprimary ORDER BY k.n")
    return [(a, b) for a, b in (line.split("|", 1) for line in rows.splitlines() if line)]


def columns(db: str, table: str) -> list[str]:
    return psql(db, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                    f"AND table_name = {sql_literal(table)} AND is_generated = 'NEVER' ORDER BY ordinal_position").splitlines()


def keys(db: str, table: str, expr: str, where: str = "true") -> set[str]:
    return set(psql(db, f"SELECT {expr} FROM {q(table)} WHERE {where}").splitlines())


def in_list(expr: str, ids: list[str]) -> str:
    return f"{expr} IN ({','.join(sql_literal(k) for k in ids)})"


_RENAME = re.compile(r"RenameField\(([^)]*)\)")
_KWARG = re.compile(r"""(model_name|old_name|new_name)\s*=\s*["']([A-Za-z0-9_]+)["']""")


def renames_in(app: str, migration_source: str) -> list[tuple[str, str, str]]:
    """(table, old field, new field) of each RenameField of a migration file of `app` (default table
    names, `<app>_<model>`), in order."""
    out = []
    for m in _RENAME.finditer(migration_source):
        kw = dict(_KWARG.findall(m.group(1)))
        if {"model_name", "old_name", "new_name"} <= kw.keys():
            out.append((f"{app}_{kw['model_name'].lower()}", kw["old_name"], kw["new_name"]))
    return out


def column_renames(release: Path, undone: list[str]) -> dict[str, dict[str, str]]:
    """For a rollback: per table, the older column name -> the newer one, from the RenameField
    operations of the migrations it undoes (read from the newer release's own files, in order)."""
    out: dict[str, dict[str, str]] = {}
    for m in sorted(undone, key=lambda s: s.split(".", 1)):
        app, name = m.split(".", 1)
        f = release / app / "migrations" / f"{name}.py"
        if not f.is_file():
            continue
        for table, old, new in renames_in(app, f.read_text(errors="replace")):
            cols = out.setdefault(table, {})
            src = next((o for o, n in cols.items() if n == old), old)  # a column renamed twice
            cols[src] = new
    return out


def deletion_counters(db: str) -> dict[str, int]:
    """PostgreSQL's count of rows deleted per table (n_tup_del, one of the tables' write marks)."""
    return {t: int(m[2]) for t, m in table_marks(db).items()}


def migration_deletions(pre_db: str | None, post_db: str, before: dict[str, int], after: dict[str, int],
                        out_dir: Path) -> dict[str, dict]:
    """The rows a version's migrations deleted: tables whose deletion counter moved while they ran,
    their keys then compared with the database as it was before (`pre_db`; None: counts only). Keys
    are written to out_dir/<table>.keys; returns table -> {count, keysFile}."""
    out: dict[str, dict] = {}
    pre_tables = set(public_tables(pre_db)) if pre_db else set()
    for t in sorted(k for k, n in after.items() if n > before.get(k, 0)):
        entry: dict = {"count": after[t] - before.get(t, 0), "keysFile": None}
        out[t] = entry
        if pre_db is None or t not in pre_tables:
            continue
        try:
            pk = primary_key(post_db, t)
            kind = key_kind(pk)
            if kind == "none":
                continue  # rows compared whole: a count is all there is
            expr = key_expr(kind, [c for c, _ in pk], [])
            gone = sorted(keys(pre_db, t, expr) - keys(post_db, t, expr))
            out_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            f = out_dir / f"{t}.keys"
            f.write_text("".join(k + "\n" for k in gone))
            entry.update(count=len(gone), keysFile=str(f))
        except (RuntimeError, OSError, subprocess.CalledProcessError) as e:  # the migration stands; only this record is short
            entry["error"] = str(e)[-300:]
    return out


def deletions_dir(spec: Spec, frm: str | None, to: str) -> Path:
    """Where the keys a move's migrations deleted are kept (beside the state, as long as its backup)."""
    return spec.meta / "deleted-by-migrations" / f"{frm or 'none'}-to-{to}-{dt.datetime.now(dt.timezone.utc):%Y%m%d%H%M%S}"


def read_deleted_keys(entry: dict | None) -> set[str] | None:
    """The keys a migration deleted, as recorded; None when only their count is known."""
    f = (entry or {}).get("keysFile")
    if not f or not Path(f).is_file():
        return None
    return set(Path(f).read_text().splitlines())
