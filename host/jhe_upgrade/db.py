"""PostgreSQL: facts (migrations applied, sizes, counters), sessions, names of kept databases."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from .spec import Spec
from .util import Refusal, psql, quote_ident, run, sql_literal


def applied_migrations(spec: Spec, db: str | None = None) -> list[str]:
    db = db or spec.db_name
    exists = psql(db, "SELECT to_regclass('public.django_migrations') IS NOT NULL", check=False)
    if exists != "t":
        return []
    rows = psql(db, "SELECT app || '.' || name FROM django_migrations ORDER BY app, name")
    return [r for r in rows.splitlines() if r]


def pg_major() -> int:
    return int(psql("postgres", "SHOW server_version_num")) // 10000


def public_tables(db: str) -> list[str]:
    return [t for t in psql(db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").splitlines() if t]


def row_counts(spec: Spec, db: str | None = None, limits: str = "") -> dict[str, int]:
    """Exact row counts of every table of the database's public schema (every app's, Django's own
    too), in one statement: one consistent snapshot. `limits`: SET statements run first (timeouts)."""
    db = db or spec.db_name
    tables = public_tables(db)
    if not tables:
        return {}
    sql = " UNION ALL ".join(f"SELECT {sql_literal(t)}, count(*) FROM public.{quote_ident(t)}" for t in tables)
    return {t: int(n) for t, n in (line.rsplit("|", 1) for line in psql(db, limits + sql).splitlines() if line)}


def db_exists(name: str) -> bool:
    return psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(name)}") == "1"


def db_size(name: str) -> int:
    """Bytes of a database, 0 if there is none of that name."""
    return int(psql("postgres", f"SELECT coalesce((SELECT pg_database_size(datname) FROM pg_database "
                                f"WHERE datname = {sql_literal(name)}), 0)") or 0)


def data_dir_free() -> tuple[str, int]:
    """PostgreSQL's data directory and its free bytes (where a copy of a database goes)."""
    data_dir = psql("postgres", "SHOW data_directory")
    return data_dir, shutil.disk_usage(data_dir).free


MAX_NAME = 63  # PostgreSQL's identifier length in bytes (names here are ASCII: spec.dbName's pattern)


def aux_name(base: str, suffix: str) -> str:
    """<base><suffix> within PostgreSQL's 63 bytes, never equal to `base`: the suffix is kept whole and a
    base too long for it is shortened and marked with a digest of its full name (so two long names
    that share a prefix get different auxiliary names)."""
    if len(suffix) > MAX_NAME - 8:
        raise ValueError(f"suffix {suffix!r} is too long for a database name")
    if len(base) + len(suffix) <= MAX_NAME:
        return base + suffix
    digest = hashlib.sha256(base.encode()).hexdigest()[:6]
    return f"{base[:MAX_NAME - len(suffix) - 7]}_{digest}{suffix}"


def stamp_name(base: str, what: str, exists: Callable[[str], bool] | None = None) -> str:
    """A database name for a kept copy: <base>_<what>_<UTC time>[_n], unique, at most 63 bytes."""
    exists = exists or db_exists
    t = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    for n in range(1, 1000):
        name = aux_name(base, f"_{what}_{t}" + (f"_{n}" if n > 1 else ""))
        if not exists(name):
            return name
    raise RuntimeError(f"no free database name for {base}_{what}_{t} (999 taken)")


def backend_pids(db: str) -> list[int]:
    """Server processes of client sessions on `db`, from their process titles ("postgres: [cluster: ]user
    db ..."): a session leaves pg_stat_activity before its exit hooks have run, a process only after."""
    rx = re.compile(rb"^postgres: (?:\S+: )?\S+ " + re.escape(db.encode()) + rb" ")
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if rx.match((d / "cmdline").read_bytes()):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def drain(db: str, wait: float = 15.0) -> bool:
    """Ends every session on `db` and waits (bounded) until their processes are gone (their statistics
    are written by then). True when none is left."""
    deadline = time.monotonic() + wait
    while True:
        pids = backend_pids(db)
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        psql("postgres", f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         f"WHERE datname = {sql_literal(db)} AND pid <> pg_backend_pid()")
        time.sleep(0.05)


# Databases closed to new sessions while they are copied or renamed, by oid (a rename keeps it): written
# before they close, so whatever kills the tool, the next run opens them again (reopen_databases).
CLOSED_FILE = Path("/var/lib/jhe-upgrade/closed-databases.json")


def _allow(oid: str, allow: bool) -> None:
    name = psql("postgres", f"SELECT datname FROM pg_database WHERE oid = {int(oid)}")
    if name:
        psql("postgres", f"ALTER DATABASE {quote_ident(name)} WITH ALLOW_CONNECTIONS {'true' if allow else 'false'}")


def reopen_databases() -> list[str]:
    """Databases a killed run left closed to sessions, open again (every step starts with this)."""
    if not CLOSED_FILE.exists():
        return []
    oids = [str(o) for o in json.loads(CLOSED_FILE.read_text() or "[]")]
    for oid in oids:
        _allow(oid, True)
    CLOSED_FILE.unlink()
    return oids


@contextmanager
def sessions_closed(*dbs: str, wait: float = 15.0) -> Iterator[None]:
    """No session on `dbs` while a database is copied (TEMPLATE) or renamed: new connections refused
    (ALLOW_CONNECTIONS false: a cron job, a worker or an admin's psql that reconnects in a loop cannot
    get in), every session ended, and the move refused if one will not end. Open again afterwards,
    under whatever name each then has - also after a crash, by the next run."""
    oids = [o for o in (psql("postgres", f"SELECT oid FROM pg_database WHERE datname = {sql_literal(d)}") for d in dbs) if o]
    earlier = json.loads(CLOSED_FILE.read_text() or "[]") if CLOSED_FILE.exists() else []
    CLOSED_FILE.parent.mkdir(parents=True, exist_ok=True)
    CLOSED_FILE.write_text(json.dumps(sorted(set(map(str, earlier)) | set(oids))))
    try:
        for oid in oids:
            _allow(oid, False)
        for d in dbs:
            if db_exists(d) and not drain(d, wait):
                raise RuntimeError(f"sessions on database {d} did not end within {wait:.0f} s "
                                   f"({', '.join(map(str, backend_pids(d)))}); it was not moved")
        yield
    finally:
        for oid in oids:
            _allow(oid, True)
        CLOSED_FILE.unlink(missing_ok=True)


def copy_db_properties(src: str, dst: str) -> None:
    """What a dump does not carry but the database has: its privileges (GRANT CONNECT ...), connection
    limit and settings (ALTER DATABASE / ALTER ROLE ... IN DATABASE ... SET), copied as the catalogs
    hold them, so a database made from a dump can take the live one's place."""
    psql("postgres", f"""BEGIN;
UPDATE pg_database d SET datacl = s.datacl, datconnlimit = s.datconnlimit
  FROM pg_database s WHERE s.datname = {sql_literal(src)} AND d.datname = {sql_literal(dst)};
DELETE FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = {sql_literal(dst)});
INSERT INTO pg_db_role_setting (setdatabase, setrole, setconfig)
  SELECT (SELECT oid FROM pg_database WHERE datname = {sql_literal(dst)}), setrole, setconfig
  FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = {sql_literal(src)});
COMMIT;""")


_MARKS_COLUMNS = """SELECT c.relname, coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_del, 0),
  c.relfilenode, md5(coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
    || a.attnotnull, ',' ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
    AND NOT a.attisdropped), ''))"""
_MARKS_FROM = """FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"""
MARKS_SQL = f"{_MARKS_COLUMNS}\n{_MARKS_FROM}"
# For a staged copy around its migration (see catchup): besides the write counters, file node and
# columns, a digest of its indexes and constraints (an added unique constraint or index). (Not its
# scans: re-adding a foreign key validates it by reading the table it references, so every parent
# table would count. What a data migration reads comes from its code instead: migclass "changes".)
COPY_MARKS_SQL = f"""{_MARKS_COLUMNS},
  md5(coalesce((SELECT string_agg(pg_get_indexdef(i.indexrelid), ';' ORDER BY 1) FROM pg_index i WHERE i.indrelid = c.oid), '')
    || coalesce((SELECT string_agg(pg_get_constraintdef(k.oid), ';' ORDER BY 1) FROM pg_constraint k WHERE k.conrelid = c.oid), ''))
{_MARKS_FROM}"""


def table_marks(db: str, sql: str = MARKS_SQL) -> dict[str, list[str]]:
    """Per table: rows inserted/updated/deleted so far (counted even for aborted transactions), the
    file node (changes on TRUNCATE and rewrites) and a digest of the columns (COPY_MARKS_SQL: and of
    the indexes and constraints)."""
    return {name: rest for name, *rest in (line.split("|") for line in psql(db, sql).splitlines() if line)}


def copy_marks(db: str) -> dict[str, list[str]]:
    return table_marks(db, COPY_MARKS_SQL)


def foreign_keys(db: str) -> list[tuple[str, str]]:
    """(child, parent) table pairs of the public schema's foreign keys."""
    return [(c, p) for c, p in (line.split("|") for line in psql(
        db, "SELECT c.relname, p.relname FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid "
            "JOIN pg_class p ON p.oid = k.confrelid WHERE k.contype = 'f' AND k.connamespace = 'public'::regnamespace"
    ).splitlines() if line)]


def tables_written(before: dict, after: dict) -> list[str]:
    return sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))


def kept_name(spec: Spec, frm: str | None) -> str:
    """A new name for the database as `frm` had it, kept when it is left: <db>_was_<version>_<time>."""
    version = re.sub(r"[^a-z0-9]+", "_", (frm or "none").lower())
    if len(version) > 24:  # a long tag: its start and a digest of the whole, so the name still fits
        version = f"{version[:15]}_{hashlib.sha256(version.encode()).hexdigest()[:8]}"
    return stamp_name(spec.db_name, "was_" + version)


def live_marker(db: str) -> dict:
    """Where "written since" starts: the oldest transaction still running now (every row committed
    after - also by a transaction that began before and commits later, e.g. after a dump's snapshot
    while the old version serves - has an xmin no older), with the cluster it belongs to, and the
    tables' write counters then (a later rollback compares only the tables whose counters moved)."""
    xid, sysid = psql(db, "SELECT txid_snapshot_xmin(txid_current_snapshot()) % 4294967296, "
                          "(SELECT system_identifier FROM pg_control_system())").split("|")
    return {"xid": int(xid), "cluster": sysid, "marks": table_marks(db)}


def wait_ready(seconds: float) -> bool:
    """Waits (bounded) until PostgreSQL accepts connections: after a crash it restarts on its own and
    refuses sessions while it recovers. True when it does."""
    deadline = time.monotonic() + seconds
    while run(["pg_isready", "-q"], check=False, quiet=True).returncode != 0:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)
    return True


def ensure_postgres() -> None:
    if run(["pg_isready", "-q"], check=False, quiet=True).returncode != 0:
        raise Refusal("PostgreSQL is not running on the server (pg_isready failed): start it "
                      "(systemctl start postgresql), then run `pulumi up` again; nothing was changed")


def ensure_database(spec: Spec) -> list[str]:
    """The database role and the database it owns (a password, if configured, is set by `prepare`)."""
    done = []
    if psql("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(spec.db_user)}") != "1":
        psql("postgres", f'CREATE ROLE "{spec.db_user}" LOGIN')
        done.append(f"role {spec.db_user}")
    if psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(spec.db_name)}") != "1":
        psql("postgres", f'CREATE DATABASE "{spec.db_name}" OWNER "{spec.db_user}" TEMPLATE template0 ENCODING \'UTF8\'')
        done.append(f"database {spec.db_name}")
    return done


def set_db_password(spec: Spec) -> None:
    """Sets the role's password from the stack's secret, over stdin (never on a command line)."""
    pw = spec.raw.get("dbPassword")
    if not pw:
        return
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"], user="postgres", cwd="/", quiet=True,
        input=f'ALTER ROLE "{spec.db_user}" PASSWORD {sql_literal(pw)};\n')
