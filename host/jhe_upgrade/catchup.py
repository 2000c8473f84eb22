"""The staged copy caught up in the window: rows written while it was restored and migrated, to tables
its migration did not change, are copied into it - so only writes to tables the migration changed make
the window fall back to migrating the live database.

Which tables the migration changed is measured on the copy itself: PostgreSQL's write counters, file
node, columns, indexes and constraints of each table read before and after `migrate` ran on it (a data
migration changes counters, a schema change the columns, a rewrite the file node); and the tables the
migrations' code reaches are read from their files (a data migration may only read a table, to build
rows elsewhere: its `apps.get_model` calls; SQL, or code that names no model, reaches the whole app).
A table written meanwhile is caught up only when that is exact: the migration left it alone, it has
the same columns on both sides, a primary key, and since the backup began rows were only inserted or
updated (no delete, no truncate: a deleted row leaves nothing to copy). The rows written since the
marker read before the dump (their xmin) are then put in the copy in one transaction: each replaces
the copy's row of the same key, or is added.
A failure there (a constraint the copy has and the rows break) leaves the copy as it was: the window
then migrates the live database. Not seen: an UPDATE that changes a row's primary key (Django never
does; the copy would keep the row under its old key too)."""
from __future__ import annotations

import subprocess

from .db import foreign_keys, public_tables, tables_written
from .replay import _marker_condition, replay_order
from .rowkeys import columns, key_kind, primary_key, q
from .util import error_summary, log, psql, run, sql_literal

# table_marks' fields (copy_marks adds an index/constraint digest): inserted, updated, deleted, file
# node, columns digest
INS, UPD, DEL, NODE, COLS = range(5)


def catch_up_plan(written: list[str], backup_marks: dict, live_marks: dict, before: dict, after: dict,
                  keyed: dict[str, bool], by_code: list[str] | None = None) -> str | None:
    """None when every table in `written` can be caught up exactly, else why not. `before`/`after`:
    the copy's marks around its migration; `keyed`: whether each table has a primary key; `by_code`:
    the tables the migrations' code reaches (read from their files: a data migration may only read one)."""
    touched = set(tables_written(before, after))
    for t in written:
        if t in touched:
            return f"{t} was written meanwhile and the migration changes it"
        if t in (by_code or []):
            return f"{t} was written meanwhile and the migrations' code reaches it"
        if t not in after or t not in backup_marks or t not in live_marks:
            return f"{t} is not on both sides (new or dropped since the backup)"
        if live_marks[t][COLS] != after[t][COLS]:
            return f"{t} has other columns in the migrated copy"
        if any(int(live_marks[t][i]) < int(backup_marks[t][i]) for i in (INS, UPD, DEL)):
            return f"the statistics of {t} were reset meanwhile (its deletes cannot be told)"
        if live_marks[t][DEL] != backup_marks[t][DEL]:
            return f"rows of {t} were deleted meanwhile"
        if live_marks[t][NODE] != backup_marks[t][NODE]:
            return f"{t} was truncated or rewritten meanwhile"
        if not keyed.get(t):
            return f"{t} has no primary key"
    return None


def catch_up_script(tables: list[str], cols: dict[str, list[str]], pks: dict[str, list[str]], rows: dict[str, str],
                    integer_key: dict[str, bool]) -> str:
    """One transaction on the copy: each table's rows (COPY text, in `rows`) into a temporary table,
    then upserted by primary key (a row the copy has is updated in place - no delete, so no foreign
    key action fires), and an integer key's sequence moved past them. Foreign keys Django declares
    are checked at the commit, so the order of the tables does not matter to them."""
    out = ["BEGIN;"]
    for i, t in enumerate(tables):
        c = ", ".join(q(x) for x in cols[t])
        tmp = f"jhe_upgrade_catchup_{i}"
        key = ", ".join(q(k) for k in pks[t])
        rest = [x for x in cols[t] if x not in pks[t]]
        update = f"UPDATE SET {', '.join(f'{q(x)} = EXCLUDED.{q(x)}' for x in rest)}" if rest else "NOTHING"
        out += [f"CREATE TEMPORARY TABLE {tmp} ON COMMIT DROP AS SELECT {c} FROM public.{q(t)} WITH NO DATA;",
                f"COPY {tmp} ({c}) FROM STDIN;", rows[t] + "\\.",
                f"INSERT INTO public.{q(t)} ({c}) SELECT {c} FROM {tmp} ON CONFLICT ({key}) DO {update};"]
        if integer_key.get(t):
            s = f"pg_get_serial_sequence({sql_literal('public.' + q(t))}, {sql_literal(pks[t][0])})"
            out.append(f"SELECT setval(s, m) FROM (SELECT {s} AS s, (SELECT max({key}) FROM public.{q(t)}) AS m) x "
                       f"WHERE s IS NOT NULL AND m IS NOT NULL AND m > coalesce(pg_sequence_last_value(s::regclass), 0);")
    out.append("COMMIT;")
    return "\n".join(out)


def _copy_out(db: str, query: str) -> str:
    """Rows of `query` in COPY's text format, exactly (no trailing whitespace stripped)."""
    return run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db, "-f", "-"], user="postgres", cwd="/", quiet=True,
               input=f"COPY ({query}) TO STDOUT;\n").stdout


def catch_up(live: str, copy: str, written: list[str], backup: dict, live_marks: dict, staged: dict) -> dict | str:
    """In the window (the app stopped, every session ended): the rows written to `written` since the
    backup began, put in the migrated copy. Returns {table: rows copied}, or why it was not done (the
    copy is then left as it was, and the window migrates the live database)."""
    if not staged.get("marksBeforeMigrate") or not staged.get("marksAfterMigrate") or staged.get("changedByCode") is None:
        return "the copy's counters around its migration were not recorded"
    newer = _marker_condition(live, backup.get("since"))
    if not newer:
        return "no usable marker of when the backup began"
    live_tables = set(public_tables(live))
    typed = {t: primary_key(live, t) for t in written if t in live_tables}
    pks = {t: [k for k, _ in pk] for t, pk in typed.items()}
    why = catch_up_plan(written, backup.get("marks") or {}, live_marks, staged["marksBeforeMigrate"],
                        staged["marksAfterMigrate"], {t: bool(k) for t, k in pks.items()}, staged.get("changedByCode"))
    if why:
        return why
    tables = replay_order(written, foreign_keys(copy))
    cols = {t: columns(copy, t) for t in tables}
    rows = {t: _copy_out(live, f"SELECT {', '.join(q(x) for x in cols[t])} FROM public.{q(t)} WHERE {newer}") for t in tables}
    try:
        psql(copy, catch_up_script(tables, cols, pks, rows, {t: key_kind(pk) == "integer" for t, pk in typed.items()}))
    except subprocess.CalledProcessError as e:  # (e.g. a unique constraint the rows written meanwhile break)
        return f"putting the rows in the copy failed ({error_summary(e.stderr or '')})"
    counts = {t: rows[t].count("\n") for t in tables}
    log(f"caught up in the migrated copy: {', '.join(f'{t} {n}' for t, n in counts.items())} rows written while it was made")
    return counts
