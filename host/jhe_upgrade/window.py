"""The maintenance window: page on, app stopped, sessions ended; and closed again."""
from __future__ import annotations

import os
import time

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
    if service_active(spec):
        run(["systemctl", "stop", spec.service])
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
