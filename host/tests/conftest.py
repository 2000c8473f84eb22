"""Unit tests of the host tool, without a server: pure functions, and the state kept in files (in a
temporary app root). Commands that would touch a server (psql, systemctl, git) are replaced where a
test needs them, never run."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jhe_upgrade.spec import Spec  # noqa: E402


def make_spec(tmp: Path, **over: object) -> Spec:
    d: dict = {"version": "v1.1.0", "appRoot": str(tmp / "app"), "appUser": "jheapp", "appGroup": "www-data",
               "serviceName": "jhe", "backupDir": str(tmp / "backups"), "repoUrl": "/srv/jhe-upstream.git",
               "siteUrl": "https://jhe.example.org", "dbName": "jhe_production", "dbUser": "jheuser", "owner": "org/jhe-upgrade/prod"}
    d.update(over)
    return Spec({k: v for k, v in d.items() if v is not None})


@pytest.fixture
def spec(tmp_path: Path) -> Spec:
    return make_spec(tmp_path)
