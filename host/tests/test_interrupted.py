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

    def psql(self, db: str, sql: str, check: bool = True) -> str:
        self.sql.append(sql)
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
            for name, fn in (("psql", self.psql), ("db_exists", lambda n: n in self.dbs), ("sessions_closed", closed)):
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
    assert str(e).startswith("pg_dump failed (pg_dump: error: connection to server failed") and "filled up" not in str(e)


def test_a_restore_that_filled_the_data_directory_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(staging, "data_dir_free", lambda: ("/var/lib/postgresql/15/main", 5 * 2**20))
    err = ('pg_restore: error: could not execute query: ERROR:  could not extend file "base/16390/16421": No space left on device\n'
           "HINT:  Check free disk space.\n"
           "pg_restore: error: could not execute query: ERROR:  there is no unique constraint matching given keys "
           'for referenced table "core_patient"\n'
           "pg_restore: warning: errors ignored on restore: 2")
    msg = staging.restore_failed(err)
    assert msg.startswith("the PostgreSQL data directory /var/lib/postgresql/15/main filled up while the backup was restored")
    assert "(5 MiB free now that the copy is dropped)" in msg and "jhe:migrationStrategy to in-window" in msg
    assert 'could not extend file "base/16390/16421"' in msg
    assert staging.restore_failed("pg_restore: error: could not open input file").startswith(
        "restoring the backup into the staged copy failed: pg_restore: error: could not open input file")


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
    assert pg.sql[0] == "-- closed jhe_production_was_v1_0_0_1", "dropped with nobody connected"


def test_a_snapshot_copy_from_another_window_is_kept(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    pg = FakeCluster("jhe_production", "jhe_production_was_v1_0_0_1")
    pg.install(monkeypatch, backup)
    pending = {"name": "jhe_production_was_v1_0_0_1", "window": "w2"}
    backup.drop_unfinished_snapshot(spec, {"window": {"id": "w3"}, "snapshotPending": pending})
    assert pg.dbs == {"jhe_production", "jhe_production_was_v1_0_0_1"} and not pg.sql
