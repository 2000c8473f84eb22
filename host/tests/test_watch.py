"""The watch after the switch, without a server: nginx's log read by time and status, the verdict
against the rate before, and the step - nothing to watch, a pass, a rollback made and then said
again on every run until the stack's version agrees."""
from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from conftest import make_spec

from jhe_upgrade import watch
from jhe_upgrade.spec import Spec
from jhe_upgrade.state import load_state, save_state
from jhe_upgrade.util import Refusal


def line(t: float, status: int, path: str = "/fhir/r5/Observation", agent: str = "node") -> str:
    stamp = dt.datetime.fromtimestamp(t, dt.timezone.utc).strftime("%d/%b/%Y:%H:%M:%S +0000")
    return f'10.0.0.1 - - [{stamp}] "POST {path} HTTP/1.1" {status} 120 "-" "{agent}"'


def test_nginx_counts_by_time_and_status_without_the_smoke_tests() -> None:
    t0 = 1_800_000_000.0
    lines = [line(t0 - 5, 500), line(t0, 201), line(t0 + 1, 502), line(t0 + 2, 404), line(t0 + 3, 500, agent="jhe-upgrade smoke test"),
             "garbage", line(t0 + 10, 201)]
    assert watch.nginx_counts(lines, t0) == {"requests": 4, "errors": 1}
    assert watch.nginx_counts(lines, t0, t0 + 10) == {"requests": 3, "errors": 1}
    assert watch.nginx_counts(lines, t0 - 60, t0) == {"requests": 1, "errors": 1}
    assert watch.nginx_counts(lines + [line(t0 - 6, 503)], t0 - 60, t0, ignore=("503",)) == {"requests": 1, "errors": 1}


def test_verdict_against_the_rate_before() -> None:
    before = {"requests": 1000, "failed": 10, "rate": 0.01}
    assert watch.verdict(before, {"requests": 100, "failed": 5, "rate": 0.05}, 5, 20) is None  # 4 points more: within 5
    why = watch.verdict(before, {"requests": 100, "failed": 40, "rate": 0.4}, 5, 20)
    assert why and "40 of 100 requests failed after the switch (40.0 %), against 1.0 % (10 of 1000) before" in why
    assert watch.verdict(before, {"requests": 10, "failed": 10, "rate": 1.0}, 5, 20) is None  # too few to judge
    assert watch.verdict(before, {"requests": 20, "failed": 3, "rate": 0.15}, 5, 20) is None  # a handful of failures


def served(spec: Spec, tag: str) -> None:
    spec.app_root.mkdir(parents=True, exist_ok=True)
    if spec.current.is_symlink():
        spec.current.unlink()
    os.symlink(f"releases/{tag}", spec.current)


def test_step_watch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, version="v1.7.0", watch={"seconds": 1, "maxErrorRate": 5, "minRequests": 20})
    spec.meta.mkdir(parents=True)
    served(spec, "v1.7.0")
    # Nothing moved (or watched already): nothing to do.
    save_state(spec, {"deployed": {"version": "v1.7.0", "previous": "v1.0.0", "at": "2026-11-30T14:00:00Z"}})
    assert "skipped" in watch.step_watch(spec)["watch"]
    # A healthy upgrade passes (a quiet server says it had too few requests to judge).
    pending = {"from": "2026-11-30T14:00:00Z", "moveBegan": "2026-11-30T13:58:00Z"}
    save_state(spec, {"deployed": {"version": "v1.7.0", "previous": "v1.0.0", "at": "2026-11-30T14:00:00Z", "watch": pending}})
    quiet = {"requests": 3, "errors": 0, "journalErrors": 0, "failed": 0, "rate": 0.0}
    monkeypatch.setattr(watch, "measure", lambda s, since, until=None: quiet)
    r = watch.step_watch(spec)["watch"]
    assert r["verdict"] == "passed" and "too few to judge" in r["note"]
    assert "watch" not in load_state(spec)["deployed"]
    # Failing requests after the switch: rolled back by the same steps as reverting the version, and said.
    save_state(spec, {"deployed": {"version": "v1.7.0", "previous": "v1.0.0", "at": "2026-11-30T14:00:00Z", "watch": pending}})
    rates = {"before": {"requests": 500, "errors": 0, "journalErrors": 0, "failed": 0, "rate": 0.0},
             "after": {"requests": 60, "errors": 30, "journalErrors": 30, "failed": 30, "rate": 0.5}}
    monkeypatch.setattr(watch, "measure", lambda s, since, until=None: rates["before" if until else "after"])
    moves: list[str] = []

    def roll_back(s: Spec, frm: str) -> dict:
        moves.append(frm)
        served(s, frm)
        st = load_state(s)
        st["deployed"] = {"version": frm, "previous": "v1.7.0", "at": "2026-11-30T14:01:00Z"}
        save_state(s, st)
        return {"downtimeSeconds": 1.2}
    monkeypatch.setattr(watch, "roll_back", roll_back)
    monkeypatch.setattr(watch, "append_log", lambda s, text: None)
    with pytest.raises(Refusal, match=r"30 of 60 requests failed after the switch \(50\.0 %\).*Rolled back to v1\.0\.0 automatically"):
        watch.step_watch(spec)
    assert moves == ["v1.0.0"]
    st = load_state(spec)
    assert st["watchRollback"]["from"] == "v1.7.0" and st["rehearsals"]["v1.7.0"]["status"] == "failed"
    # Every later run with the stack still at v1.7.0 says so again, and moves nothing.
    with pytest.raises(Refusal, match=r"the watch rolled v1\.7\.0 back to v1\.0\.0 .*pulumi config set jhe:version v1\.0\.0"):
        watch.step_watch(spec)
    assert moves == ["v1.0.0"]
    # Once the stack says v1.0.0, nothing to watch.
    assert "skipped" in watch.step_watch(make_spec(tmp_path, version="v1.0.0", watch={"seconds": 1}))["watch"]


def test_a_failed_rollback_is_said_on_every_later_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = make_spec(tmp_path, version="v1.7.0", watch={"seconds": 1, "maxErrorRate": 5, "minRequests": 20})
    spec.meta.mkdir(parents=True)
    served(spec, "v1.7.0")
    pending = {"from": "2026-11-30T14:00:00Z", "moveBegan": "2026-11-30T13:58:00Z"}
    save_state(spec, {"deployed": {"version": "v1.7.0", "previous": "v1.0.0", "at": "2026-11-30T14:00:00Z", "watch": pending}})
    bad = {"requests": 60, "errors": 30, "journalErrors": 0, "failed": 30, "rate": 0.5}
    monkeypatch.setattr(watch, "measure", lambda s, since, until=None: {**bad, "failed": 0, "rate": 0.0} if until else bad)

    def roll_back(s: Spec, frm: str) -> dict:
        raise Refusal("preflight refused the rollback to v1.0.0 before any change: no backup")
    monkeypatch.setattr(watch, "roll_back", roll_back)
    with pytest.raises(Refusal, match="Rolling back to v1.0.0 failed: preflight refused"):
        watch.step_watch(spec)
    # Nothing left to watch, but the verdict stands: the next run says it again (v1.7.0 still serves).
    with pytest.raises(Refusal, match=r"rolling back to v1\.0\.0 failed then \(preflight refused.*Set jhe:version v1\.0\.0"):
        watch.step_watch(spec)
