"""jhe:postgresMajor without a server: what is read from pg_lsclusters, and every refusal before anything changes."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import make_spec

from jhe_upgrade import pgmajor
from jhe_upgrade.util import Refusal, db_args

LS = """15 main 5433 down   postgres /var/lib/postgresql/15/main /var/log/postgresql/postgresql-15-main.log
17 main 5432 online postgres /var/lib/postgresql/17/main /var/log/postgresql/postgresql-17-main.log
"""


def fake_run(out: str):
    def run(args, **kw):
        return subprocess.CompletedProcess(args, 0, out, "")
    return run


def test_clusters_and_the_other_clusters_databases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgmajor, "run", fake_run(LS))
    assert pgmajor.clusters() == [
        {"major": 15, "name": "main", "port": 5433, "online": False, "datadir": "/var/lib/postgresql/15/main"},
        {"major": 17, "name": "main", "port": 5432, "online": True, "datadir": "/var/lib/postgresql/17/main"}]
    assert (pgmajor.find(15, "main") or {}).get("port") == 5433 and pgmajor.find(16, "main") is None
    # a replay between two clusters names the other one's port; a database name never holds "@"
    assert db_args("jhe_production@5433") == ["-d", "jhe_production", "-p", "5433"]
    assert db_args("jhe_production") == ["-d", "jhe_production"]


def _server(monkeypatch: pytest.MonkeyPatch, tmp: Path, serving: int, found: list[dict], state: dict | None = None) -> None:
    monkeypatch.setattr(pgmajor, "serving", lambda: {"major": serving, "port": 5432, "name": "main",
                                                     "datadir": f"/var/lib/postgresql/{serving}/main"})
    monkeypatch.setattr(pgmajor, "clusters", lambda: found)
    monkeypatch.setattr(pgmajor, "load_state", lambda spec: state or {})
    monkeypatch.setattr(pgmajor, "current_version", lambda spec: "v1.1.0")
    monkeypatch.setattr(pgmajor, "LIB", tmp / "lib")
    monkeypatch.setattr(pgmajor, "take_lock", lambda *a: pytest.fail("refused before the lock"))
    monkeypatch.setattr(pgmajor, "run", fake_run("1048576\t/var/lib/postgresql/15/main\n"))  # (du -sb)


def test_refusals_before_anything_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, postgresMajor=17)
    c15 = {"major": 15, "name": "main", "port": 5432, "online": True, "datadir": "/var/lib/postgresql/15/main"}
    _server(monkeypatch, tmp_path, 15, [c15])
    with pytest.raises(Refusal, match=r"PostgreSQL 17 is not installed on the server \(apt-get install postgresql-17\)"):
        pgmajor.step_postgres(spec)
    (tmp_path / "lib/17/bin").mkdir(parents=True)
    (tmp_path / "lib/17/bin/pg_upgrade").write_text("")
    c17 = {"major": 17, "name": "main", "port": 5434, "online": False, "datadir": "/var/lib/postgresql/17/main"}
    _server(monkeypatch, tmp_path, 15, [c15, c17])
    with pytest.raises(Refusal, match=r"a PostgreSQL 17 cluster main already exists .* this program did not make it"):
        pgmajor.step_postgres(spec)
    # down: only to a cluster an upgrade of this program kept
    _server(monkeypatch, tmp_path, 17, [c17])
    with pytest.raises(Refusal, match=r"jhe:postgresMajor 15 is older than the PostgreSQL 17 the server runs, and no 15 cluster kept"):
        pgmajor.step_postgres(make_spec(tmp_path, postgresMajor=15))
    # ... and only while the JHE release that cluster's database belongs to serves
    c15 = {"major": 15, "name": "main", "port": 5433, "online": False, "datadir": "/var/lib/postgresql/15/main"}
    _server(monkeypatch, tmp_path, 17, [c15, c17 | {"port": 5432, "online": True}],
            {"postgres": {"major": 17, "previous": {"major": 15, "name": "main", "port": 5433, "jhe": "v1.0.0"}}})
    with pytest.raises(Refusal, match=r"as JHE v1\.0\.0 had it, and v1\.1\.0 serves now: set jhe:version back to v1\.0\.0"):
        pgmajor.step_postgres(make_spec(tmp_path, postgresMajor=15))
    with pytest.raises(Refusal, match=r"spec\.postgresMajor must be a PostgreSQL major version such as 17"):
        pgmajor.step_postgres(make_spec(tmp_path, postgresMajor="17; rm"))
    # the server runs it already: nothing to do
    assert pgmajor.step_postgres(make_spec(tmp_path, postgresMajor=17))["postgres"]["noop"] is True


def test_the_plan_says_what_comes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    c15 = {"major": 15, "name": "main", "port": 5433, "online": False, "datadir": "/var/lib/postgresql/15/main"}
    c17 = {"major": 17, "name": "main", "port": 5432, "online": True, "datadir": "/var/lib/postgresql/17/main"}
    kept = {"postgres": {"major": 17, "previous": {"major": 15, "name": "main", "port": 5433}}}
    _server(monkeypatch, tmp_path, 17, [c15, c17], kept)
    assert pgmajor.pg_plan(make_spec(tmp_path)) is None
    p = pgmajor.pg_plan(make_spec(tmp_path, postgresMajor=15))
    assert p and p["action"] == "rollback" and "the 15 cluster kept by the upgrade serves again" in p["summary"]
    p = pgmajor.pg_plan(make_spec(tmp_path, postgresMajor=17))
    assert p and p["action"] == "none" and "set jhe:postgresMajor 15 to go back" in p["kept"]
    _server(monkeypatch, tmp_path, 15, [c15 | {"port": 5432, "online": True}])
    p = pgmajor.pg_plan(make_spec(tmp_path, postgresMajor=17))
    assert p and p["action"] == "upgrade" and "17 is not installed on the server (apt-get install postgresql-17" in p["refused"][0]
