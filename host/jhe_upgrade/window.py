"""The maintenance window: page on, app stopped (at once: no graceful wait), sessions ended; and closed again."""
from __future__ import annotations

import os
import time
from pathlib import Path

from .health import MAIN_PORT
from .spec import Spec
from .state import save_state, take_lock
from .util import now, psql, run, sql_literal


def service_active(spec: Spec) -> bool:
    return run(["systemctl", "is-active", "--quiet", spec.service], check=False, quiet=True).returncode == 0


def open_window(spec: Spec, state: dict) -> None:
    """Maintenance page on, app stopped, database connections drained. Idempotent."""
    take_lock(spec, f"upgrade to {spec.version}")
    if not state.get("window"):
        state["window"] = {"opened": now(), "openedAt": time.time(), "id": os.urandom(6).hex()}
        save_state(spec, state)
    spec.maintenance_dir.mkdir(parents=True, exist_ok=True)
    spec.maintenance_flag.touch()
    stop_now(spec)
    psql("postgres", f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     f"WHERE datname = {sql_literal(spec.db_name)} AND pid <> pg_backend_pid()")


def close_window(spec: Spec, state: dict) -> float:
    """Maintenance page off; returns the window's length in seconds (0 if none was open)."""
    if spec.maintenance_flag.exists():
        spec.maintenance_flag.unlink()
    w = state.pop("window", None)
    save_state(spec, state)
    return round(time.time() - w["openedAt"], 2) if w else 0.0


def start_service(spec: Spec) -> None:
    run(["systemctl", "start", spec.service])


def connections_to(port: int, tables: tuple[str, ...] = ("/proc/net/tcp", "/proc/net/tcp6")) -> int:
    """Established TCP connections to a local port (nginx opens one per proxied request)."""
    n = 0
    for table in tables:
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 3 and f[3] == "01" and int(f[1].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def stop_now(spec: Spec, drain: float = 20.0) -> None:
    """Once the maintenance page is up: the requests under way finish (bounded by `drain`), then the
    service's processes go at once - no graceful shutdown to wait for once they are idle (`drain` is the
    unit's --graceful-timeout: a request that runs longer would be cut off by a graceful stop too)."""
    if not service_active(spec):
        return
    deadline = time.monotonic() + drain
    while connections_to(MAIN_PORT) and time.monotonic() < deadline:
        time.sleep(0.02)
    run(["systemctl", "stop", "--no-block", spec.service])  # a stop job: no Restart= while it runs
    run(["systemctl", "kill", "--signal=SIGKILL", spec.service], check=False)
    run(["systemctl", "stop", spec.service])
    run(["systemctl", "reset-failed", spec.service], check=False, quiet=True)
