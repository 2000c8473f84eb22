"""What a failure in the middle of a database move leaves, and what the next run makes of it: a dump
that ran out of room, a staged restore that filled the data directory, a swap cut between its two
renames, a snapshot copy begun by a killed run. PostgreSQL is replaced by a dict of databases."""
from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from jhe_upgrade import backup, dbmoves, staging
from jhe_upgrade.spec import Spec


class FakeCluster:
    """Database names, renamed and dropped by the SQL the tool sends."""

    def __init__(self, *names: str) -> None:
        self.dbs = set(names)
        self.sql: list[str] = []

    creating: list[str] = []  # CREATE DATABASE statements still running (their client gone)

    def psql(self, db: str, sql: str, check: bool = True) -> str:
        self.sql.append(sql)
        if "pg_stat_activity" in sql:  # cancel_create: how many are running / terminated now
            n = len(self.creating)
            if "pg_terminate_backend" in sql:
                self.creating.clear()  # a cancelled CREATE DATABASE leaves no database
            return str(n)
        if m := re.fullmatch(r'CREATE DATABASE "([^"]+)" .*', sql):
            self.dbs.add(m[1])
        if m := re.fullmatch(r'ALTER DATABASE "([^"]+)" RENAME TO "([^"]+)"', sql):
            assert m[1] in self.dbs and m[2] not in self.dbs, sql
            self.dbs.remove(m[1])
            self.dbs.add(m[2])
        elif m := re.fullmatch(r'DROP DATABASE "([^"]+)"', sql):
            self.dbs.remove(m[1])
        return ""

    def install(self, monkeypatch: pytest.MonkeyPatch, *modules: object) -> None:
        @contextmanager
        def closed(*dbs: str, wait: float = 15.0) -> Iterator[None]:
            self.sql.append(f"-- closed {','.join(dbs)}")
            yield

        for m in modules:
            for name, fn in (("psql", self.psql), ("db_exists", lambda n: n in self.dbs), ("sessions_closed", closed),
                             ("save_state", lambda spec, state: self.sql.append(f"-- saved {sorted(state)}"))):
                if hasattr(m, name):
                    monkeypatch.setattr(m, name, fn)


def test_a_dump_that_ran_out_of_room_is_removed_and_named(tmp_path: Path) -> None:
    d = tmp_path / "backups" / "20261130-010203-v1.0.0-to-v1.1.0"
    d.mkdir(parents=True)
    (d / "db.dump").write_bytes(b"x" * (3 * 2**20))
    e = backup.dump_failed(tmp_path / "backups", d, "pg_dump: error: could not write to output file: No space left on device\n")
    assert not d.exists(), "the partial dump is gone (it restores nothing and holds the space)"
    msg = str(e)
    assert f"{tmp_path / 'backups'} filled up during the dump (3.0 MiB of it written;" in msg
    assert "set jhe:backupDir to a directory on a larger filesystem" in msg and "No space left on device" in msg


def test_a_dump_that_failed_otherwise_says_so(tmp_path: Path) -> None:
    d = tmp_path / "b"
    d.mkdir()
    e = backup.dump_failed(tmp_path, d, "pg_dump: error: connection to server failed: FATAL: database \"x\" does not exist\n")
    assert not d.exists()
    assert str(e).startswith("the backup could not be written (pg_dump: error: connection to server failed") and "filled up" not in str(e)


def test_a_staged_copy_that_filled_the_data_directory_says_what_to_do() -> None:
    err = ('pg_restore: error: could not execute query: ERROR:  could not extend file "base/16390/16421": No space left on device\n'
           "HINT:  Check free disk space.\n"
           "pg_restore: error: could not execute query: ERROR:  there is no unique constraint matching given keys "
           'for referenced table "core_patient"\n'
           "pg_restore: warning: errors ignored on restore: 2")
    room = ("/var/lib/postgresql/15/main", 1 * 2**20, 40 * 2**20)
    msg = staging.staged_failed(err, "restoring", "v1.1.0", room)
    assert msg.startswith("the PostgreSQL data directory /var/lib/postgresql/15/main filled up while the staged copy was restored")
    assert "(1 MiB free then, 40 MiB now that the copy is dropped)" in msg and "jhe:migrationStrategy to in-window" in msg
    assert 'could not extend file "base/16390/16421"' in msg, "the first error, the cause"
    # PostgreSQL crashed (could not write its log) instead of naming the disk: the room left says it
    crash = "psql: WARNING:  terminating connection because of crash of another server process\nserver closed the connection unexpectedly"
    assert staging.staged_failed(crash, "migrating", "v1.1.0", room).startswith(
        "the PostgreSQL data directory /var/lib/postgresql/15/main filled up while the staged copy was migrated")
    plenty = ("/var/lib/postgresql/15/main", 900 * 2**20, 940 * 2**20)
    assert staging.staged_failed("pg_restore: error: could not open input file", "restoring", "v1.1.0", plenty).startswith(
        "restoring the backup into the staged copy failed: pg_restore: error: could not open input file")
    assert staging.staged_failed("Traceback...\ndjango.db.utils.IntegrityError: duplicate key", "migrating", "v1.3.0", plenty) == (
        "`manage.py migrate` of v1.3.0 failed on a staged copy of the database: django.db.utils.IntegrityError: duplicate key")


def test_a_swap_cut_between_its_renames_is_finished(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    # swap_in renamed the live database to the kept name, then the run was killed before the second rename
    pg = FakeCluster("jhe_production_replaced_1", "jhe_production_was_v1_0_0_1")
    pg.install(monkeypatch, dbmoves)
    state = {"swap": {"previous": "jhe_production_replaced_1", "in": "jhe_production_was_v1_0_0_1"}}
    assert dbmoves.finish_interrupted_swap(spec, state)
    assert pg.dbs == {"jhe_production", "jhe_production_replaced_1"}
    assert not dbmoves.finish_interrupted_swap(spec, state), "done once; the live name exists now"


@pytest.mark.parametrize("dbs", [
    {"jhe_production", "jhe_production_was_v1_0_0_1"},  # killed before the first rename: nothing to finish
    {"jhe_production", "jhe_production_replaced_1"},  # both renames done
    {"jhe_production_was_v1_0_0_1"},  # neither the live nor the previous one (not a cut swap): no guess
])
def test_a_swap_not_cut_in_the_middle_is_left_alone(spec: Spec, monkeypatch: pytest.MonkeyPatch, dbs: set[str]) -> None:
    pg = FakeCluster(*dbs)
    pg.install(monkeypatch, dbmoves)
    swap = {"previous": "jhe_production_replaced_1", "in": "jhe_production_was_v1_0_0_1"}
    assert not dbmoves.finish_interrupted_swap(spec, {"swap": swap})
    assert pg.dbs == dbs and not [s for s in pg.sql if "RENAME" in s]


def test_a_snapshot_begun_by_a_killed_run_in_this_window_is_made_again(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production", "jhe_production_was_v1_0_0_1")
    pg.install(monkeypatch, backup)
    state = {"window": {"id": "w2"}, "snapshotPending": {"name": "jhe_production_was_v1_0_0_1", "window": "w2"}}
    backup.drop_unfinished_snapshot(spec, state)
    assert pg.dbs == {"jhe_production"} and "snapshotPending" not in state
    assert pg.sql[-2:] == ["-- closed jhe_production_was_v1_0_0_1", 'DROP DATABASE "jhe_production_was_v1_0_0_1"'], \
        "dropped with nobody connected"


def test_a_snapshot_copy_from_another_window_is_kept(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production", "jhe_production_was_v1_0_0_1")
    pg.install(monkeypatch, backup)
    pending = {"name": "jhe_production_was_v1_0_0_1", "window": "w2"}
    backup.drop_unfinished_snapshot(spec, {"window": {"id": "w3"}, "snapshotPending": pending})
    assert pg.dbs == {"jhe_production", "jhe_production_was_v1_0_0_1"} and not [q for q in pg.sql if "DROP" in q]


def test_a_pending_copy_is_kept_when_the_live_database_is_missing(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production_was_v1_0_0_1")
    pg.install(monkeypatch, backup)
    pending = {"name": "jhe_production_was_v1_0_0_1", "window": "w2"}
    backup.drop_unfinished_snapshot(spec, {"window": {"id": "w2"}, "snapshotPending": pending})
    assert pg.dbs == {"jhe_production_was_v1_0_0_1"}, "the only copy there is stays"


def test_a_copy_still_being_made_by_a_killed_run_is_cancelled(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production")
    pg.creating.append('CREATE DATABASE "jhe_production_was_v1_0_0_1" OWNER "jheuser" TEMPLATE "jhe_production"')
    pg.install(monkeypatch, backup)
    pending = {"name": "jhe_production_was_v1_0_0_1", "window": "w2"}
    backup.drop_unfinished_snapshot(spec, {"window": {"id": "w2"}, "snapshotPending": pending})
    assert not pg.creating and pg.dbs == {"jhe_production"}
    assert any("pg_terminate_backend" in q and "CREATE DATABASE \"jhe_production_was_v1_0_0_1\"%" in q for q in pg.sql)


def test_the_snapshot_is_named_in_the_state_before_it_is_made(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production")
    pg.install(monkeypatch, backup)
    for name, value in (("db_size", lambda db: 2**20), ("data_dir_free", lambda: ("/d", 2**40)), ("pg_major", lambda: 15),
                        ("kept_name", lambda spec, frm: "jhe_production_was_v1_0_0_9"), ("copy_db_properties", lambda a, b: None),
                        ("row_counts", lambda spec, db: {}), ("applied_migrations", lambda spec, db: [])):
        monkeypatch.setattr(backup, name, value)
    state: dict = {"window": {"id": "w1"}}
    b = backup.take_snapshot(spec, state, "v1.0.0", "v1.1.0")
    create = next(i for i, q in enumerate(pg.sql) if q.startswith("CREATE DATABASE"))
    assert "snapshotPending" in pg.sql[create - 2], "saved before the copy is begun (and before sessions close)"
    assert b and b["snapshot"] == "jhe_production_was_v1_0_0_9" and "snapshotPending" not in state


def test_a_restore_recorded_as_a_swap_is_not_finished_as_one(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production_replaced_1")  # restore_backup renamed the live one; nothing swaps in
    pg.install(monkeypatch, dbmoves)
    assert not dbmoves.finish_interrupted_swap(spec, {"swap": {"previous": "jhe_production_replaced_1", "in": None}})
    assert pg.dbs == {"jhe_production_replaced_1"}
