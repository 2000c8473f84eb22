"""A tag's dependencies and the version checks preflight makes."""
from __future__ import annotations

import json

import pytest

from jhe_upgrade import requirements
from jhe_upgrade.requirements import _toml, requirements_of, version_ok
from jhe_upgrade.util import Refusal

PIPFILE_LOCK = json.dumps({
    "_meta": {"hash": {"sha256": "x"}, "requires": {"python_version": "3.11"}},
    "default": {
        "django": {"hashes": ["sha256:aa"], "index": "pypi", "version": "==5.2.18"},
        "psycopg2-binary": {"version": "==2.9.10", "markers": "python_version >= '3.8'"},
        "gunicorn": {"version": "==23.0.0"},
    },
    "develop": {"pytest": {"version": "==8.0.0"}},
})

UV_LOCK = """version = 1
requires-python = ">=3.11"

[[package]]
name = "django"
version = "5.2.19"
source = { registry = "https://example.invalid/simple" }

[[package]]
name = "jupyterhealth-exchange"
version = "0.0.13"
source = { editable = "." }

[[package]]
name = "gunicorn"
version = "23.0.0"
"""
PYPROJECT = """[project]
name = "jupyterhealth-exchange"
requires-python = ">=3.10,<3.14"
dependencies = ["django>=5.2,<6", "gunicorn"]
"""


def test_pipfile_lock_pins_default_packages_and_python() -> None:
    tool, reqs, py = requirements_of({"Pipfile.lock": PIPFILE_LOCK})
    assert (tool, py) == ("pipenv", "==3.11")
    assert reqs == ["django==5.2.18", "gunicorn==23.0.0", "psycopg2-binary==2.9.10"]  # develop left out


def test_pipfile_gives_python_when_the_lock_does_not() -> None:
    lock = json.loads(PIPFILE_LOCK)
    del lock["_meta"]["requires"]
    _, _, py = requirements_of({"Pipfile.lock": json.dumps(lock), "Pipfile": '[requires]\npython_version = "3.12"\n'})
    assert py == "==3.12"


def test_uv_lock_without_the_project_itself() -> None:
    tool, reqs, py = requirements_of({"uv.lock": UV_LOCK, "pyproject.toml": PYPROJECT})
    assert (tool, py) == ("uv", ">=3.10,<3.14")
    assert reqs == ["django==5.2.19", "gunicorn==23.0.0"]


def test_toml_fallback_reads_what_tomllib_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    with_tomllib = requirements_of({"uv.lock": UV_LOCK, "pyproject.toml": PYPROJECT})
    monkeypatch.setattr(requirements, "tomllib", None)  # a server with Python < 3.11
    assert requirements_of({"uv.lock": UV_LOCK, "pyproject.toml": PYPROJECT}) == with_tomllib
    assert _toml(PYPROJECT)["project"]["name"] == "jupyterhealth-exchange"


def test_requirements_txt_and_pyproject() -> None:
    assert requirements_of({"requirements.txt": "# pinned\nDjango==5.2.18\n\ngunicorn==23.0.0\n"}) == \
        ("pip", ["Django==5.2.18", "gunicorn==23.0.0"], None)
    assert requirements_of({"pyproject.toml": PYPROJECT}) == ("pip", ["django>=5.2,<6", "gunicorn"], ">=3.10,<3.14")


def test_no_dependency_file_is_refused() -> None:
    with pytest.raises(Refusal, match="no Pipfile.lock, uv.lock, requirements.txt or pyproject.toml"):
        requirements_of({})


@pytest.mark.parametrize("have,req,ok", [
    ((3, 11), None, True), ((3, 11), "==3.11", True), ((3, 12), "==3.11", False), ((3, 11), ">=3.10", True),
    ((3, 9), ">=3.10", False), ((3, 13), ">=3.10,<3.14", True), ((3, 14), ">=3.10,<3.14", False),
    ((3, 11), "~=3.11", True), ((3, 11), "!=3.11", False), ((3, 11), "<=3.11", True), ((3, 11), ">3.11", False),
    ((3, 13), "==3.13", True), ((3, 11), ">=3.13", False),
])
def test_version_ok(have: tuple[int, int], req: str | None, ok: bool) -> None:
    assert version_ok(have, req) is ok
