"""Auxiliary database names (staged copy, kept databases) never equal the live name, fit PostgreSQL's
63 bytes, and are found in bounded time."""
from __future__ import annotations

import re

import pytest
from conftest import make_spec

from jhe_upgrade.db import aux_name, stamp_name
from jhe_upgrade.staging import staged_db


@pytest.mark.parametrize("length", [1, 20, 44, 45, 50, 56, 57, 62, 63])
def test_aux_names_fit_and_differ(tmp_path, length: int) -> None:
    base = ("jhe_" + "x" * 70)[:length]
    for suffix in ("_staged", "_was_v1_0_0_20261129120000", "_replaced_20261129120000_999"):
        name = aux_name(base, suffix)
        assert len(name.encode()) <= 63 and name != base and name.endswith(suffix)
    assert staged_db(make_spec(tmp_path, dbName=base)) != base


def test_long_names_sharing_a_prefix_get_different_aux_names() -> None:
    a, b = "jhe_" + "a" * 58 + "1", "jhe_" + "a" * 58 + "2"
    assert aux_name(a, "_staged") != aux_name(b, "_staged")


def test_stamp_name_takes_the_next_free_name_and_stops() -> None:
    base = "jhe_" + "p" * 55  # from about 45 bytes on, the old name was cut and looped forever
    taken: set[str] = set()
    first = stamp_name(base, "was_v1_0_0", taken.__contains__)
    taken.add(first)
    second = stamp_name(base, "was_v1_0_0", taken.__contains__)
    assert second != first and re.search(r"_was_v1_0_0_\d{14}_2$", second) and len(second) <= 63
    with pytest.raises(RuntimeError, match="no free database name"):
        stamp_name(base, "was_v1_0_0", lambda name: True)


def test_long_tags_still_give_kept_names_that_fit(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jhe_upgrade import db
    from jhe_upgrade.db import kept_name
    monkeypatch.setattr(db, "db_exists", lambda name: False)
    name = kept_name(make_spec(tmp_path, dbName="jhe_" + "q" * 50), "release-" + "x" * 90)
    assert len(name) <= 63 and "_was_release_" in name


def test_sql_goes_to_psql_on_stdin_never_on_its_command_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from jhe_upgrade import util
    seen: dict = {}

    def fake_run(args: list[str], **kw: object) -> object:
        seen.update(args=args, input=kw.get("input"))
        return type("P", (), {"stdout": "ok\n"})()
    monkeypatch.setattr(util, "run", fake_run)
    keys = ",".join(f"'{i:032x}'" for i in range(8000))  # ~300 KB: more than one argument may hold
    assert util.psql("jhe_production", f"SELECT 1 WHERE id::text IN ({keys})") == "ok"
    assert max(len(a) for a in seen["args"]) < 100 and keys in seen["input"]
