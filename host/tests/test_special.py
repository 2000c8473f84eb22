"""The runbook's special upgrades as releases of the same tag built otherwise: jhe:pins (a Django
security release over the tag's lock) and jhe:python (another interpreter)."""
from __future__ import annotations

from pathlib import Path

import pytest
from conftest import make_spec

from jhe_upgrade import release as release_mod
from jhe_upgrade.requirements import apply_pins, lock_install
from jhe_upgrade.spec import release_id, tag_of
from jhe_upgrade.util import Refusal

LOCK = {"requirements.txt": "Django==5.2.18 --hash=sha256:aa\npsycopg2-binary==2.9.13 --hash=sha256:bb\nsqlparse==0.6.1 --hash=sha256:cc\n"}


def test_release_ids_are_the_tag_with_what_differs_as_build_metadata() -> None:
    assert release_id("v1.2.0", {}, "python3") == "v1.2.0"
    assert release_id("v1.2.0", {"Django": "5.2.19"}, "python3") == "v1.2.0+django-5.2.19"
    assert release_id("v2.0.0", {}, "python3.13") == "v2.0.0+py3.13"
    # sorted by normalized name, so the same pins in another order are the same release
    assert release_id("v1.2.0", {"sqlparse": "0.6.2", "Django": "5.2.19"}, "python3.13") == "v1.2.0+django-5.2.19.sqlparse-0.6.2.py3.13"
    assert tag_of("v1.2.0+django-5.2.19.py3.13") == "v1.2.0" and tag_of("v1.2.0") == "v1.2.0"


def test_spec_checks_the_release_against_its_pins_and_interpreter(tmp_path: Path) -> None:
    s = make_spec(tmp_path, version="v1.2.0+django-5.2.19", pins={"django": "5.2.19"})
    assert (s.tag, s.pins, s.python) == ("v1.2.0", {"django": "5.2.19"}, "python3")
    assert s.recipe("v1.2.0+django-5.2.19") == ("v1.2.0", {"django": "5.2.19"}, "python3")
    assert s.recipe("v1.1.0") == ("v1.1.0", {}, "python3")  # another release (an adopted install): its tag as locked
    with pytest.raises(Refusal, match="is not the release of tag v1.2.0"):
        make_spec(tmp_path, version="v1.2.0", pins={"django": "5.2.19"})
    with pytest.raises(Refusal, match=r"spec\.pins is malformed .*exact version"):
        make_spec(tmp_path, version="v1.2.0+django-5.2.x", pins={"django": "5.2.x"})
    with pytest.raises(Refusal, match=r"spec\.python is malformed"):
        make_spec(tmp_path, version="v1.2.0+py3.13", python="/usr/bin/python3.13; rm -rf /")
    assert make_spec(tmp_path, version="v2.0.0+py3.13", python="python3.13").python == "python3.13"


def test_pins_replace_the_locks_line_and_name_what_they_replace() -> None:
    lock = lock_install(LOCK)
    assert lock["hashed"] and lock["exact"]
    rest, pinned, replaced = apply_pins(lock, {"django": "5.2.19"})
    assert pinned == ["django==5.2.19"] and replaced == {"django": "5.2.18"}
    # the rest keeps its hashes (checked), the pin goes without the other version's hash
    assert [ln.split("==")[0] for ln in rest["lines"]] == ["psycopg2-binary", "sqlparse"] and rest["hashed"]
    assert apply_pins(lock, {}) == (lock, [], {})
    with pytest.raises(Refusal, match="jhe:pins names djanog, which the tag's requirements does not install"):
        apply_pins(lock, {"djanog": "5.2.19"})


def test_a_venv_the_servers_python_changed_under_is_built_again_or_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = make_spec(tmp_path, version="v2.0.0")
    rel = s.release("v2.0.0")
    (rel / "venv").mkdir(parents=True)
    (rel / ".jhe-release.json").write_text('{"tag": "v2.0.0", "python": "3.11.2"}\n')
    monkeypatch.setattr(release_mod, "tag_tree", lambda repo, tag: {"pyproject.toml": '[project]\nrequires-python = ">=3.12"\n'})
    monkeypatch.setattr(release_mod, "python_version", lambda python="python3": (3, 11))
    with pytest.raises(Refusal, match=r"python3 on the server \(3\.11\) is not what v2\.0\.0 asks for \(>=3\.12\): set jhe:python"):
        release_mod.rebuild_venv(s, "v2.0.0", rel, "made with Python 3.11.2")
    assert (rel / "venv").is_dir()  # untouched
    monkeypatch.setattr(release_mod, "python_version", lambda python="python3": (3, 13))

    def failing(spec, release, r):  # the new venv cannot be installed: the broken one comes back
        (r / "venv").mkdir()
        raise Refusal("installing ... failed: no wheel")
    monkeypatch.setattr(release_mod, "_install", failing)
    (rel / "venv" / "marker").write_text("old")
    with pytest.raises(Refusal, match="building it again failed: installing ... failed: no wheel .the broken one is back"):
        release_mod.rebuild_venv(s, "v2.0.0", rel, "made with Python 3.11.2")
    assert (rel / "venv" / "marker").read_text() == "old"
    monkeypatch.setattr(release_mod, "_install", lambda spec, release, r: ((r / "venv").mkdir(), {"python": "3.13.5"})[1])
    info = release_mod.rebuild_venv(s, "v2.0.0", rel, "made with Python 3.11.2")
    assert info["python"] == "3.13.5" and info["rebuiltNow"] and info["rebuilt"]["why"] == "made with Python 3.11.2"
    assert not (rel / "venv" / "marker").exists() and not list(rel.glob("venv.broken-*"))
    assert "rebuiltNow" not in (rel / ".jhe-release.json").read_text()
