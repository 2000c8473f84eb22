"""After a failure: the old version serving again, the record of what failed, the lock released."""
from __future__ import annotations

from .dbmoves import restore_backup, swap_back
from .handover import end_handover, next_flag
from .health import health
from .release import release_ready, switch_current
from .spec import Spec
from .state import MOVE_KEYS, current_version, load_state, release_lock, save_state
from .upgradelog import append_log
from .util import Refusal, now, run
from .window import close_window, open_window, service_active, start_service


def recover(spec: Spec, state: dict, frm: str | None, reason: str, restore_db: bool) -> str:
    """Puts the old version back serving: code (`current`), database (from this window's backup when
    migrations ran), service, maintenance off. Returns what was done, for the error message."""
    done = []
    if next_flag(spec).exists():
        done.append("nginx back to the service")
    end_handover(spec)  # the release booted for the switch goes; the old one is started below
    failed_db = swap_back(spec, state) if restore_db else None
    if failed_db:
        done.append(f"database {spec.db_name} as it was before the window, by rename (the replaced one kept as {failed_db})")
    elif restore_db and state.get("backup"):
        kept = restore_backup(spec, state["backup"])
        done.append(f"database restored from backup {state['backup']['id']} (the failed one kept as {kept})")
    if frm and release_ready(spec, frm):
        if current_version(spec) != frm:
            switch_current(spec, frm)
            done.append(f"current -> releases/{frm}")
        if service_active(spec):
            run(["systemctl", "stop", spec.service])
        start_service(spec)
        h = health(spec, frm, spec.health_timeout)
        done.append(f"{frm} serving again ({h.get('check')} {h.get('status')})" if h["ok"]
                    else f"{frm} restarted but unhealthy: {h.get('detail')}")
    seconds = close_window(spec, state)
    done.append("maintenance page lifted")
    kind = (state.get("target") or {}).get("kind", "upgrade")
    append_log(spec, f"## Recovery: {kind} {frm} -> {spec.version} failed - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**Downtime:** {seconds} s\n\n"
                     f"**What failed:** {reason}\n\n**What was restored:**\n" + "".join(f"- {d}\n" for d in done))
    end_failed_move(spec, state, frm, reason, done)
    return "; ".join(done)


def end_failed_move(spec: Spec, state: dict, frm: str | None, reason: str, restored: list[str]) -> None:
    """After a failure (recovered, or before any window): the record of it, the lock released. The
    move's preflight stays valid (same version and settings; Pulumi re-runs preflight when either
    changes), so a later `pulumi up` that only re-runs the remaining steps can go on."""
    state["lastRecovery"] = {"from": frm, "to": spec.version, "reason": reason, "restored": restored, "at": now()}
    if state.get("target"):
        state["target"]["recovered"] = now()
    for k in MOVE_KEYS:
        state.pop(k, None)
    save_state(spec, state)
    release_lock(spec)


def database_changed(state: dict) -> bool:
    """This move changed the database (migrations applied, a rollback's, a swap): a revert puts the old one back."""
    return bool((state.get("migrated") or {}).get("applied")) or bool(state.get("rollback")) or bool(state.get("swap"))


def fail_health(spec: Spec, state: dict, frm: str | None, to: str, h: dict) -> None:
    journal = run(["journalctl", "-u", spec.service, "-n", "5", "--no-pager", "-o", "cat"], check=False, quiet=True).stdout.strip()
    migrated = database_changed(state)
    reason = f"{to} failed its health check ({h.get('detail')})"
    if not state.get("window"):
        open_window(spec, state)
    else:
        run(["systemctl", "stop", spec.service], check=False)
    what = recover(spec, state, frm, reason, restore_db=migrated)
    raise Refusal(f"{reason}; reverted automatically: {what}" + (f"\nlast log lines of {spec.service}:\n{journal}" if journal else ""))


def safety_net(spec: Spec, reason: str) -> str:
    """After an unforeseen failure inside a window: the old version serves again (a known version
    always serves), the database restored if this window changed it."""
    state = load_state(spec)
    if not state.get("window"):
        return ""
    frm = (state.get("target") or {}).get("from")
    try:
        return "Recovered: " + recover(spec, state, frm, reason, restore_db=bool(state.get("dbTouched") or state.get("swap")))
    except Exception as e:  # noqa: BLE001 - report, never mask the first failure
        return f"Automatic recovery failed too ({type(e).__name__}: {e}); the maintenance page stays up."
