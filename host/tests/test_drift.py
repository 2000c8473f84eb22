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


def test_a_drop_in_is_told_but_left_and_the_key_does_not_move(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path)
    layout(tmp_path, spec, "v1.1.0")
    monkeypatch.setattr(plan, "INSTALLED", tmp_path / "files")
    monkeypatch.setattr(plan, "SYSTEMD", tmp_path / "systemd")
    (tmp_path / "systemd" / "jhe.service.d").mkdir(parents=True)
    (tmp_path / "systemd" / "jhe.service.d" / "override.conf").write_text("[Service]\nEnvironment=X=1\n")
    state = {"deployed": {"version": "v1.1.0"}, "repairs": 1}
    d = plan.detect_drift(spec, state, "v1.1.0")
    assert [(x["what"], x["found"], x["repair"]) for x in d] == [("unit drop-in", "override.conf", False)]
    assert plan.repair_key(state, d) == "repair-1", "nothing `up` would do: no change in the preview"


def test_current_moved_is_drift_only_while_the_stack_asks_for_what_it_deployed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan, "INSTALLED", tmp_path / "files")
    spec = make_spec(tmp_path, version="v1.2.0")  # a new jhe:version: a move from whatever serves, not drift
    layout(tmp_path, spec, "v1.0.0")
    assert plan.detect_drift(spec, {"deployed": {"version": "v1.1.0"}}, "v1.0.0") == []


def test_a_hand_edited_env_goes_back_to_the_copy_the_stack_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jhe_upgrade import steps
    spec = make_spec(tmp_path, repairKey="repair-1")
    layout(tmp_path, spec, "v1.1.0")
    spec.meta.mkdir(parents=True)
    monkeypatch.setattr(steps, "write_private", lambda p, text, *a: Path(p).write_text(text))
    state: dict = {"deployed": {"version": "v1.1.0"}}
    monkeypatch.setattr(steps, "save_state", lambda s, st: None)
    steps.record_env(spec, state, "v1.1.0")
    env = spec.releases / "v1.1.0" / ".env"
    stack_wrote = env.read_text()
    assert state["deployed"]["envSha256"] == sha256_file(env) and steps.deployed_env(spec, "v1.1.0").read_text() == stack_wrote
    env.write_text(stack_wrote + "DEBUG=True\n")  # by hand
    assert steps.restore_deployed_env(spec, state, "v1.1.0")
    assert env.read_text() == stack_wrote
    assert not steps.restore_deployed_env(spec, state, "v1.1.0"), "nothing to put back"
    env.write_text(stack_wrote + "DEBUG=True\n")
    assert not steps.restore_deployed_env(make_spec(tmp_path), state, "v1.1.0"), "only a repair (a key given) puts it back"
