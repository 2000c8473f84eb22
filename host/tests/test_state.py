"""The state a step leaves on the server and what the next step makes of it: the host lock, registered
backups, no-op detection, a failed move's bookkeeping (state files in a temporary app root)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import make_spec

from jhe_upgrade import recovery, steps
from jhe_upgrade.recovery import end_failed_move
from jhe_upgrade.spec import Spec
from jhe_upgrade.state import (
    MOVE_KEYS,
    current_version,
    latest_backup_from,
    load_state,
    register_backup,
    release_lock,
    save_state,
    take_lock,
)
from jhe_upgrade.util import Refusal


def serving(spec: Spec, tag: str) -> None:
    (spec.releases / tag).mkdir(parents=True, exist_ok=True)
    if spec.current.is_symlink():
        spec.current.unlink()
    os.symlink(f"releases/{tag}", spec.current)


def test_state_round_trip_is_private(spec: Spec) -> None:
    assert load_state(spec) == {}
    save_state(spec, {"deployed": {"version": "v1.0.0"}})
    assert load_state(spec) == {"deployed": {"version": "v1.0.0"}}
    assert oct(spec.state_file.stat().st_mode & 0o777) == "0o600"


def test_the_host_lock_belongs_to_one_stack(tmp_path: Path) -> None:
    prod = make_spec(tmp_path, owner="org/jhe-upgrade/prod")
    other = make_spec(tmp_path, owner="org/jhe-upgrade/other")
    take_lock(prod, "upgrade to v1.1.0")
    take_lock(prod, "upgrade to v1.1.0")  # the same stack again (a re-run) continues under its lock
    with pytest.raises(Refusal, match="locked by another upgrade: stack org/jhe-upgrade/prod .*upgrade to v1.1.0"):
        take_lock(other, "upgrade to v1.2.0")
    release_lock(other)  # not its lock: nothing happens
    assert json.loads(prod.lock_file.read_text())["owner"] == "org/jhe-upgrade/prod"
    release_lock(prod)
    take_lock(other, "upgrade to v1.2.0")
    assert json.loads(other.lock_file.read_text())["purpose"] == "upgrade to v1.2.0"


def test_current_version_from_the_releases_layout(spec: Spec) -> None:
    assert current_version(spec) is None
    serving(spec, "v1.0.0")
    assert current_version(spec) == "v1.0.0"


def test_latest_backup_from_a_version_still_on_disk(spec: Spec, tmp_path: Path) -> None:
    state: dict = {}
    for i, (frm, to) in enumerate([("v1.0.0", "v1.1.0"), ("v1.1.0", "v1.2.0"), ("v1.0.0", "v2.0.0")]):
        d = tmp_path / f"b{i}"
        d.mkdir()
        (d / "db.dump").write_text("x")
        register_backup(state, frm, to, {"id": f"b{i}", "path": str(d), "dump": "db.dump", "created": f"2026-11-2{i}T00:00:00Z",
                                         "ignored": "not registered"})
    assert "ignored" not in state["backups"]["v1.0.0->v1.1.0"]
    assert (latest_backup_from(state, "v1.0.0") or {}).get("id") == "b2"
    (tmp_path / "b2" / "db.dump").unlink()
    assert (latest_backup_from(state, "v1.0.0") or {}).get("id") == "b0"
    assert latest_backup_from(state, "v3.0.0") is None


def test_noop_when_the_target_serves_and_nothing_is_under_way(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps, "service_active", lambda s: True)
    assert not steps.is_noop(spec, {})  # nothing serving yet
    serving(spec, "v1.1.0")
    assert steps.is_noop(spec, {})
    assert not steps.is_noop(spec, {"window": {"id": "w"}})  # a window left open: the steps must close it
    assert not steps.is_noop(spec, {"target": {"from": "v1.0.0", "to": "v1.1.0"}})  # a move to finish
    # a move towards another version that failed and was undone is not under way
    assert steps.is_noop(spec, {"target": {"from": "v1.1.0", "to": "v1.2.0", "recovered": "2026-11-29T00:00:00Z"}})
    monkeypatch.setattr(steps, "service_active", lambda s: False)
    assert not steps.is_noop(spec, {})  # stopped: up must start it


def test_steps_after_preflight_need_its_record(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps, "service_active", lambda s: True)
    serving(spec, "v1.0.0")
    with pytest.raises(Refusal, match="no preflight recorded for v1.1.0"):
        steps._target(spec)
    save_state(spec, {"target": {"from": "v1.0.0", "to": "v1.1.0"}})
    state, frm, to = steps._target(spec)
    assert (frm, to) == ("v1.0.0", "v1.1.0") and state["target"]["to"] == "v1.1.0"


def test_upgrade_done_after_the_cutover(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps, "service_active", lambda s: True)
    serving(spec, "v1.1.0")
    state = {"target": {"from": "v1.0.0", "to": "v1.1.0"}}
    assert not steps._upgrade_done(spec, state, "v1.1.0")
    state["cutover"] = {"to": "v1.1.0"}
    assert steps._upgrade_done(spec, state, "v1.1.0")
    state["window"] = {"id": "w"}
    assert not steps._upgrade_done(spec, state, "v1.1.0")


def test_a_failed_move_is_recorded_and_the_server_freed(spec: Spec) -> None:
    take_lock(spec, "upgrade to v1.1.0")
    state: dict = {"target": {"from": "v1.0.0", "to": "v1.1.0"}, "deployed": {"version": "v1.0.0"}}
    state.update({k: {"x": 1} for k in MOVE_KEYS})
    end_failed_move(spec, state, "v1.0.0", "migration failed", ["database restored"])
    saved = load_state(spec)
    assert saved["lastRecovery"]["reason"] == "migration failed" and saved["lastRecovery"]["restored"] == ["database restored"]
    assert saved["target"]["recovered"]  # the preflight stays valid for a re-run of the same move
    assert not any(k in saved for k in MOVE_KEYS) and saved["deployed"] == {"version": "v1.0.0"}
    assert not spec.lock_file.exists()


def test_safety_net_does_nothing_without_a_window(spec: Spec) -> None:
    save_state(spec, {"target": {"from": "v1.0.0", "to": "v1.1.0"}})
    assert recovery.safety_net(spec, "boom") == ""
