"""The superuser code run by `manage.py shell`, against stand-ins for Django's user models: Django's own
(login by username) and JHE's JheUser (USERNAME_FIELD = "email", no username, REQUIRED_FIELDS = [])."""
from __future__ import annotations

import json
import sys
import types
from typing import Any

import pytest

from jhe_upgrade.provision import SUPERUSER_CODE


def make_model(username_field: str, required: list[str]) -> type:
    class Manager:
        rows: list[Any] = []

        def filter(self, **kw: str) -> Any:
            found = [u for u in self.rows if all(getattr(u, k, None) == v for k, v in kw.items())]
            return types.SimpleNamespace(first=lambda: found[0] if found else None)

        def create_superuser(self, password: str, **kw: str) -> Any:
            assert username_field in kw, "the manager is called with the model's login field"
            u = User(**kw, is_staff=True, is_superuser=True, is_active=True)
            u.set_password(password)
            self.rows.append(u)
            return u

    class User(types.SimpleNamespace):
        USERNAME_FIELD = username_field
        REQUIRED_FIELDS = required
        _default_manager = Manager()

        @staticmethod
        def get_email_field_name() -> str:
            return "email"

        def set_password(self, pw: str) -> None:
            self.password = f"hashed:{pw}"

        def save(self) -> None:
            pass

    return User


def run_code(model: type, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], **env: str) -> dict:
    auth = types.ModuleType("django.contrib.auth")
    auth.get_user_model = lambda: model  # type: ignore[attr-defined]
    for name in ("django", "django.contrib"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "django.contrib.auth", auth)
    for k in ("JHE_ADMIN_USER", "JHE_ADMIN_EMAIL", "JHE_ADMIN_PASSWORD"):
        monkeypatch.setenv(k, env.get(k, ""))
    exec(compile(SUPERUSER_CODE, "superuser", "exec"), {})
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_django_user_model_logs_in_by_username(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    U = make_model("username", ["email"])
    out = run_code(U, monkeypatch, capsys, JHE_ADMIN_USER="admin", JHE_ADMIN_EMAIL="a@example.org", JHE_ADMIN_PASSWORD="pw1")
    assert out == {"login": "username", "as": "admin", "result": "created"}
    (u,) = U._default_manager.rows  # type: ignore[attr-defined]
    assert (u.username, u.email, u.is_superuser, u.password) == ("admin", "a@example.org", True, "hashed:pw1")
    out = run_code(U, monkeypatch, capsys, JHE_ADMIN_USER="admin", JHE_ADMIN_PASSWORD="pw2")
    assert out["result"] == "updated" and u.password == "hashed:pw2"


def test_jhe_user_model_logs_in_by_email(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    U = make_model("email", [])
    out = run_code(U, monkeypatch, capsys, JHE_ADMIN_USER="admin", JHE_ADMIN_EMAIL="admin@jhe.example.org", JHE_ADMIN_PASSWORD="pw")
    assert out == {"login": "email", "as": "admin@jhe.example.org", "result": "created"}
    (u,) = U._default_manager.rows  # type: ignore[attr-defined]
    assert not hasattr(u, "username") and u.is_staff and u.is_superuser


def test_an_email_model_without_jhe_admin_email_is_refused_by_name(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="this app's users log in by email: set jhe:adminEmail"):
        run_code(make_model("email", []), monkeypatch, capsys, JHE_ADMIN_USER="admin", JHE_ADMIN_PASSWORD="pw")


def test_required_fields_the_stack_cannot_give_are_named(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit, match="also requires date_of_birth"):
        run_code(make_model("email", ["date_of_birth"]), monkeypatch, capsys, JHE_ADMIN_EMAIL="a@b.org", JHE_ADMIN_PASSWORD="pw")
