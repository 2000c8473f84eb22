"""Moving databases: swap a copy in by rename, swap back, restore a dump; nothing is ever dropped."""
from __future__ import annotations

from pathlib import Path

from .backup import verify_backup
from .db import copy_db_properties, db_exists, sessions_closed, stamp_name
from .spec import Spec
from .state import save_state
from .util import log, now, psql, run


def swap_in(spec: Spec, state: dict, new_db: str, keep_as: str) -> None:
    """The live database becomes `keep_as` and `new_db` takes its name: two renames, well under a
    second at any size. Recorded first, so recovery (and a re-run) can put the previous one back."""
    state["swap"] = {"previous": keep_as, "in": new_db, "at": now()}
    save_state(spec, state)
    with sessions_closed(spec.db_name, new_db):
        psql("postgres", f'ALTER DATABASE "{spec.db_name}" RENAME TO "{keep_as}"')
        try:
            psql("postgres", f'ALTER DATABASE "{new_db}" RENAME TO "{spec.db_name}"')
        except Exception:
            psql("postgres", f'ALTER DATABASE "{keep_as}" RENAME TO "{spec.db_name}"')
            state.pop("swap", None)
            save_state(spec, state)
            raise
    log(f"database {new_db} is now {spec.db_name}; the previous one is kept as {keep_as}")


def finish_interrupted_swap(spec: Spec, state: dict) -> bool:
    """A run killed between swap_in's two renames left no database under the live name: the one being
    swapped in takes it, as the killed run was doing. True when it did."""
    sw = state.get("swap") or {}
    if not sw.get("in") or db_exists(spec.db_name) or not db_exists(sw["in"]) or not db_exists(sw.get("previous", "")):
        return False
    with sessions_closed(sw["in"]):
        psql("postgres", f'ALTER DATABASE "{sw["in"]}" RENAME TO "{spec.db_name}"')
    log(f"an interrupted swap is finished: {sw['in']} is {spec.db_name}; the previous one is kept as {sw['previous']}")
    return True


def swap_back(spec: Spec, state: dict) -> str | None:
    """Undoes this window's swap: the database it replaced serves again under the live name; the one
    that had taken its place is kept (renamed, never dropped). Returns that name, None if no swap."""
    sw = state.get("swap")
    if not sw or not db_exists(sw["previous"]):
        return None
    failed = stamp_name(spec.db_name, "failed")
    with sessions_closed(spec.db_name, sw["previous"]):
        if db_exists(spec.db_name):
            psql("postgres", f'ALTER DATABASE "{spec.db_name}" RENAME TO "{failed}"')
        psql("postgres", f'ALTER DATABASE "{sw["previous"]}" RENAME TO "{spec.db_name}"')
    state.pop("swap", None)
    for b in [state.get("backup") or {}, *(state.get("backups") or {}).values()]:
        if b.get("keptDatabase") == sw["previous"]:
            b["keptDatabase"] = None  # it is the live database again
    save_state(spec, state)
    log(f"database {sw['previous']} is {spec.db_name} again; the replaced one is kept as {failed}")
    return failed


def restore_backup(spec: Spec, manifest: dict) -> str:
    """Puts the database back to the backup. The database being replaced is kept, renamed, never
    dropped. Returns the name it was kept under."""
    verify_backup(manifest)
    keep = stamp_name(spec.db_name, "replaced")
    with sessions_closed(spec.db_name):
        psql("postgres", f'ALTER DATABASE "{spec.db_name}" RENAME TO "{keep}"')
    try:
        psql("postgres", f'CREATE DATABASE "{spec.db_name}" OWNER "{spec.db_user}" TEMPLATE template0 ENCODING \'UTF8\'')
        copy_db_properties(keep, spec.db_name)
        p = run(["pg_restore", "-j", "2", "--no-owner", "--role", spec.db_user, "-d", spec.db_name,
                 str(Path(manifest["path"]) / manifest["dump"])], user="postgres", cwd="/", check=False)
        if p.returncode != 0:
            raise RuntimeError(f"pg_restore failed: {p.stderr.strip()[-400:]}")
    except Exception:
        # Put the database that was there back under its name; the half-restored one holds nothing
        # the backup does not, so it goes.
        psql("postgres", f'DROP DATABASE IF EXISTS "{spec.db_name}"', check=False)
        psql("postgres", f'ALTER DATABASE "{keep}" RENAME TO "{spec.db_name}"')
        raise
    log(f"database restored from {manifest['id']}; the replaced one is kept as {keep}")
    return keep
