"""The spec Pulumi sends: malformed values are refused naming the field; the command line's misuse."""
from __future__ import annotations

import pytest
from conftest import make_spec

from jhe_upgrade.cli import STEPS, main
from jhe_upgrade.util import Refusal, error_summary


@pytest.mark.parametrize("field,value", [("appRoot", "relative/path"), ("appRoot", "/opt/a b"), ("appUser", "Root;rm"),
                                         ("dbName", "jhe-prod"), ("dbName", "x" * 64), ("version", "v1;reboot"),
                                         ("migrationStrategy", "yolo")])
def test_malformed_spec_values_are_refused_by_name(tmp_path, field: str, value: str) -> None:
    with pytest.raises(Refusal, match=field):
        make_spec(tmp_path, **{field: value})


def test_env_values_are_checked(tmp_path) -> None:
    with pytest.raises(Refusal, match="spec env lower is malformed"):
        make_spec(tmp_path, env={"lower": "x"})
    with pytest.raises(Refusal, match="spec env X is malformed"):
        make_spec(tmp_path, secretEnv={"X": "${HOME}"})


def test_layout_and_host(tmp_path) -> None:
    s = make_spec(tmp_path, siteUrl="https://jhe.example.org:8443/path")
    assert s.site_host == "jhe.example.org"
    assert s.release("v1.1.0") == s.app_root / "releases" / "v1.1.0" and s.current == s.app_root / "current"
    assert make_spec(tmp_path, version=None).version is None
    with pytest.raises(Refusal, match="spec.version is missing"):
        make_spec(tmp_path, version=None).need_version()


def test_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["jhe-upgrade"]) == 2
    assert main(["jhe-upgrade", "reboot"]) == 2
    assert "usage: jhe-upgrade {" + "|".join(STEPS) + "} < spec.json" in capsys.readouterr().err


def test_error_summary() -> None:
    tb = ("Traceback (most recent call last):\n  File \"manage.py\", line 22\ndjango.db.utils.IntegrityError: "
          "could not create unique index\nDETAIL:  Key (x)=(1) is duplicated.\n")
    assert error_summary(tb) == "django.db.utils.IntegrityError: could not create unique index DETAIL:  Key (x)=(1) is duplicated."
    assert error_summary("plain failure\nlast line\n") == "last line"
    assert error_summary("") == "(no output)"
