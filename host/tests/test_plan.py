"""The plan computed from facts read off a server (recorded here), as `pulumi preview` shows it."""
from __future__ import annotations

import subprocess
from pathlib import Path

from jhe_upgrade.envfile import env_added, env_example
from jhe_upgrade.gitrepo import tag_migrations
from jhe_upgrade.plan import migration_delta, plan_from_facts

V100 = ["core.0001_initial", "admin.0001_initial", "auth.0001_initial"]
V110 = V100 + ["core.0002_observation_source", "core.0003_backfill_source"]


def facts(**over: object) -> dict:
    f: dict = {"from": "v1.0.0", "to": "v1.1.0", "pending": [], "undo": [],
               "configured": {"SITE_URL", "DB_NAME"}, "envAdded": ["JHE_FEATURE_X"], "unset": ["JHE_FEATURE_X"]}
    f.update(over)
    return f


def test_migration_delta_per_app() -> None:
    applied = V100 + ["oauth2_provider.0001_initial", "sessions.0001_initial"]
    pending, undo = migration_delta(sorted(V110 + ["oauth2_provider.0001_initial", "oauth2_provider.0014_x"]), applied)
    assert pending == ["core.0002_observation_source", "core.0003_backfill_source", "oauth2_provider.0014_x"]
    assert undo == []  # sessions: an app the target's files do not list is not undone
    pending, undo = migration_delta(sorted(V100), V110)
    assert (pending, undo) == ([], ["core.0002_observation_source", "core.0003_backfill_source"])


def test_upgrade_with_migrations_on_a_staged_copy() -> None:
    p = plan_from_facts(facts(pending=V110[3:], strategy="staged", why="..."))
    assert p["action"] == "upgrade" and p["migrationStrategy"] == "staged"
    assert p["summary"].startswith("upgrade v1.0.0 -> v1.1.0: backup and migrations on a copy while v1.0.0 serves")
    assert p["envAdded"] == ["JHE_FEATURE_X"] and p["envMissing"] == []


def test_upgrade_in_the_window_says_why() -> None:
    p = plan_from_facts(facts(pending=V110[3:], strategy="in-window", why="track_counts is off"))
    assert p["summary"].endswith(": backup and migrations in the window (track_counts is off)")


def test_code_only_upgrade() -> None:
    p = plan_from_facts(facts())
    assert p["summary"] == "upgrade v1.0.0 -> v1.1.0 (code only, the database stays as it is)"
    assert "migrationStrategy" not in p


def test_a_variable_new_in_the_example_and_set_nowhere_is_listed_with_what_jhe_does() -> None:
    p = plan_from_facts(facts(envAdded=["JHE_INSTANCE_NAME", "DEBUG", "DB_PORT"], configured={"SITE_URL"}, unset=[]))
    assert p["envMissing"] == ["JHE_INSTANCE_NAME", "DEBUG"]  # DB_PORT: the tool writes it
    assert list(p["envHints"]) == ["DEBUG"] and "any non-empty value" in p["envHints"]["DEBUG"]


def test_install_on_a_bare_server() -> None:
    p = plan_from_facts(facts(**{"from": None}, pending=V110))
    assert p["action"] == "install" and "summary" not in p


def test_rollback_by_rename_of_the_kept_database() -> None:
    b = {"id": "20261129-v1.0.0-to-v1.1.0", "keptDatabase": "jhe_production_was_v1_0_0_20261129"}
    p = plan_from_facts(facts(**{"from": "v1.1.0", "to": "v1.0.0"}, undo=V110[3:], backup=b, keptExists=True))
    assert p["action"] == "rollback" and p["restoreFrom"] == b["id"]
    assert "bring back the database kept when v1.0.0 was left (jhe_production_was_v1_0_0_20261129) by rename" in p["summary"]
    p = plan_from_facts(facts(**{"from": "v1.1.0", "to": "v1.0.0"}, undo=V110[3:], backup=b, keptExists=False))
    assert "restore backup 20261129-v1.0.0-to-v1.1.0 and replay" in p["summary"]


def test_rollback_without_a_backup_will_be_refused() -> None:
    p = plan_from_facts(facts(**{"from": "v1.1.0", "to": "v1.0.0"}, undo=V110[3:], backup=None))
    assert p["restoreFrom"] is None and p["summary"] == "rollback v1.1.0 -> v1.0.0 will be refused: no backup taken when leaving v1.0.0"


def test_code_only_downgrade_is_a_rollback() -> None:
    p = plan_from_facts(facts(**{"from": "v1.2.0", "to": "v1.1.0"}))
    assert p["action"] == "rollback" and p["summary"].startswith("rollback v1.2.0 -> v1.1.0 (code only")


def _git(repo: Path, *args: str, input: str | None = None) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, input=input,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t",
                        "PATH": "/usr/bin:/bin", "HOME": str(repo)})


def test_env_added_and_migrations_read_from_the_tags_of_a_real_repository(tmp_path: Path) -> None:
    """The env-example diff (the runbook's `diff .env dot_env_example.txt`, per tag) and a tag's migrations,
    read with git from tags as JHE has them: dot_env_example.txt renamed .env.example later."""
    repo = tmp_path / "jhe"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "core" / "migrations").mkdir(parents=True)
    (repo / "core" / "migrations" / "0001_initial.py").write_text("")
    (repo / "core" / "migrations" / "__init__.py").write_text("")
    (repo / "dot_env_example.txt").write_text("SITE_URL=http://localhost:8000\nDEBUG=True # comment\nSECRET_KEY=\n")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "a")
    _git(repo, "tag", "v0.0.11")
    (repo / "dot_env_example.txt").unlink()
    (repo / ".env.example").write_text("SITE_URL=http://localhost:8000\nDEBUG=True\nSECRET_KEY=\nOW_API_URL=\nOW_API_KEY=\n")
    (repo / "core" / "migrations" / "0002_jheclient.py").write_text("")
    (repo / "oauth2_provider" / "migrations").mkdir(parents=True)  # an app of the project with migrations
    (repo / "oauth2_provider" / "migrations" / "0014_x.py").write_text("")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "b")
    _git(repo, "tag", "v0.0.12")
    assert env_example(repo, "v0.0.11")[0] == "dot_env_example.txt"
    assert env_example(repo, "v0.0.12")[0] == ".env.example"
    assert env_added(repo, "v0.0.11", "v0.0.12") == ["OW_API_URL", "OW_API_KEY"]
    assert env_added(repo, None, "v0.0.11") == ["SITE_URL", "DEBUG", "SECRET_KEY"]  # an install: all of them are new
    assert tag_migrations(repo, "v0.0.12") == ["core.0001_initial", "core.0002_jheclient", "oauth2_provider.0014_x"]
