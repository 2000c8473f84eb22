"""The hand-over without a server: requests under way counted from the kernel's TCP table, and what
settling does with the flag nginx reads (systemctl and the health check replaced)."""
from __future__ import annotations

from pathlib import Path

import pytest

from jhe_upgrade import handover, window
from jhe_upgrade.spec import Spec

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:1F40 0100007F:A1B2 01 00000000:00000000 00:00000000 00000000  1000        0 2 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:A1B2 0100007F:1F40 01 00000000:00000000 00:00000000 00000000    33        0 3 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:1F41 0100007F:A1B3 01 00000000:00000000 00:00000000 00000000  1000        0 4 1 0000000000000000 20 4 30 10 -1
   4: 0100007F:1F40 0100007F:A1B4 06 00000000:00000000 00:00000000 00000000  1000        0 5 1 0000000000000000 20 4 30 10 -1
"""


def test_requests_under_way_are_established_connections_to_the_port(tmp_path: Path) -> None:
    t = tmp_path / "tcp"
    t.write_text(TCP)
    # the listener (0A), nginx's side (remote port 8000), another port and a TIME_WAIT (06) are not counted
    assert window.connections_to(8000, (str(t), str(tmp_path / "absent"))) == 1
    assert window.connections_to(8001, (str(t),)) == 1


class Host:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, spec: Spec, active: bool, healthy: bool) -> None:
        self.calls: list[str] = []
        spec.maintenance_dir.mkdir(parents=True, exist_ok=True)
        monkeypatch.setattr(handover, "run", lambda args, **kw: self.calls.append(" ".join(args)))
        monkeypatch.setattr(handover, "service_active", lambda s: active)
        monkeypatch.setattr(handover, "start_service", lambda s: self.calls.append("start service"))
        monkeypatch.setattr(handover, "current_version", lambda s: "v1.1.0")
        monkeypatch.setattr(handover, "health", lambda s, tag, timeout, port: {"ok": healthy, "detail": "refused"})
        monkeypatch.setattr(handover, "next_unit", lambda s, tag: f"jhe-next@{tag}.service")
        monkeypatch.setattr(handover, "connections_to", lambda port: 0)
        monkeypatch.setattr(handover.time, "sleep", lambda s: self.calls.append(f"wait {s}"))


@pytest.fixture
def spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Spec:
    from conftest import make_spec
    s = make_spec(tmp_path)
    monkeypatch.setattr(Spec, "maintenance_dir", property(lambda self: tmp_path / "maint"))
    return s


def test_without_the_flag_a_leftover_hand_over_unit_is_stopped(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Host(monkeypatch, spec, active=True, healthy=True)
    assert handover.settle_handover(spec) is None
    assert h.calls == ["systemctl stop jhe-next@*.service"]


def test_the_service_takes_over_then_nginx_goes_back(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Host(monkeypatch, spec, active=False, healthy=True)
    handover.route_to_next(spec, True)
    assert handover.settle_handover(spec) is None
    assert not handover.next_flag(spec).exists(), "nginx back to the service"
    assert h.calls == ["wait 0.5", "start service", "wait 0.5", "systemctl stop jhe-next@*.service"], \
        "started before nginx goes back; requests routed before the flip reach their side before the hand-over unit stops"


def test_a_service_that_does_not_come_back_leaves_the_hand_over_unit_serving(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    h = Host(monkeypatch, spec, active=False, healthy=False)
    handover.route_to_next(spec, True)
    problem = handover.settle_handover(spec)
    assert problem and "v1.1.0 keeps serving from jhe-next@v1.1.0.service" in problem
    assert handover.next_flag(spec).exists() and "systemctl stop jhe-next@*.service" not in h.calls
