"""Drift: what serves differs from what the stack last deployed (a hand-made change), shown by the
plan with what `up` does about it; the repair key changes only when something drifted, and once the
repair's finish recorded it the next plan's key is the same (no more changes)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import make_spec

from jhe_upgrade import plan
from jhe_upgrade.spec import Spec
from jhe_upgrade.steps import note_repair
from jhe_upgrade.util import sha256_file


def layout(tmp: Path, spec: Spec, serving: str) -> None:
    for tag in ("v1.0.0", "v1.1.0"):
        (spec.releases / tag).mkdir(parents=True, exist_ok=True)
        (spec.releases / tag / ".env").write_text(f"SITE_URL=https://jhe.example.org\nTAG={tag}\n")
    if spec.current.is_symlink():
        spec.current.unlink()
    os.symlink(spec.releases / serving, spec.current)


def test_nothing_drifts_on_a_server_as_deployed_and_the_key_stays(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path)
    layout(tmp_path, spec, "v1.1.0")
    monkeypatch.setattr(plan, "INSTALLED", tmp_path / "files")
    state = {"deployed": {"version": "v1.1.0", "envSha256": sha256_file(spec.releases / "v1.1.0" / ".env")}}
    assert plan.detect_drift(spec, state, "v1.1.0") == []
    assert plan.repair_key(state, []) == ""
    assert plan.repair_key({**state, "repairs": 2}, []) == "repair-2"


def test_current_moved_and_env_edited_are_found_and_repaired_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path)
    layout(tmp_path, spec, "v1.1.0")
    monkeypatch.setattr(plan, "INSTALLED", tmp_path / "files")
    state: dict = {"deployed": {"version": "v1.1.0", "envSha256": sha256_file(spec.releases / "v1.1.0" / ".env")}}
    with open(spec.releases / "v1.1.0" / ".env", "a") as f:
        f.write("DEBUG=True\n")  # by hand
    d = plan.detect_drift(spec, state, "v1.1.0")
    assert [x["what"] for x in d] == [".env"] and "written again from the stack's config" in d[0]["up"]
    layout(tmp_path, spec, "v1.0.0")  # `current` moved by hand
    d = plan.detect_drift(spec, state, "v1.0.0")
    assert d[0] == {"what": "current", "deployed": "v1.1.0", "found": "v1.0.0", "up": d[0]["up"]} and "v1.1.0 serves again" in d[0]["up"]
    key = plan.repair_key(state, d)
    assert key == "repair-1"
    # The repair's finish records the key it ran with; the next plan (nothing drifts) gives the same key.
    assert note_repair(make_spec(tmp_path, repairKey=key), state) and state["repairs"] == 1
    assert plan.repair_key(state, []) == key
    # A move under way is not drift (the window, or a target not reached yet).
    assert plan.detect_drift(spec, {**state, "target": {"from": "v1.1.0", "to": "v1.0.0"}}, "v1.0.0") == []


def test_an_edited_unit_is_told_by_what_the_stack_installed_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path)
    layout(tmp_path, spec, "v1.1.0")
    files = tmp_path / "files"
    files.mkdir()
    monkeypatch.setattr(plan, "INSTALLED", files)
    unit = tmp_path / "jhe.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    (files / "_etc_systemd_system_jhe.service.sha256").write_text(sha256_file(unit) + "\n")
    real = plan._sha
    monkeypatch.setattr(plan, "_sha", lambda p: real(unit) if str(p).endswith("jhe.service") else real(p))
    state = {"deployed": {"version": "v1.1.0"}}
    assert plan.detect_drift(spec, state, "v1.1.0") == []
    unit.write_text("[Service]\nExecStart=/bin/true\nEnvironment=X=1\n")
    d = plan.detect_drift(spec, state, "v1.1.0")
    assert [x["what"] for x in d] == ["unit"] and d[0]["up"] == "the stack's unit is installed again (and applied)"
