"""The hand-over: the release a window switches to boots before the window, in `<service>-next@<tag>`
on its own port, so the window holds neither a boot nor a graceful shutdown. In the window nginx is
routed to it (a flag file it checks per request, like the maintenance page); after the window the
service starts that release (booting while the hand-over unit serves), nginx goes back to the service
and the hand-over unit stops, its requests under way finishing first."""
from __future__ import annotations

import time
from pathlib import Path

from .health import MAIN_PORT, NEXT_PORT, health
from .release import release_ready
from .spec import Spec
from .state import current_version
from .util import log, run
from .window import connections_to, service_active, start_service


def handover_unit_file(spec: Spec) -> Path:
    return Path(f"/etc/systemd/system/{spec.service}-next@.service")


def next_unit(spec: Spec, tag: str) -> str:
    inst = run(["systemd-escape", tag], quiet=True).stdout.strip()
    return f"{spec.service}-next@{inst}.service"


def next_flag(spec: Spec) -> Path:
    """While it exists nginx sends requests to the hand-over unit (components/nginx.ts)."""
    return spec.maintenance_dir / "next-on"


def stop_next(spec: Spec) -> None:
    """Every hand-over unit stopped (gracefully: requests under way finish)."""
    run(["systemctl", "stop", f"{spec.service}-next@*.service"], check=False, quiet=True)


def boot_next(spec: Spec, tag: str) -> dict | None:
    """`tag` booted in the hand-over unit, checked on its own port: the health check's result (when it
    fails, the unit is stopped again). None when there is no hand-over unit (a server set up by an
    older program) or no such release."""
    if not handover_unit_file(spec).exists() or not release_ready(spec, tag):
        return None
    unit = next_unit(spec, tag)
    if next_flag(spec).exists():  # nginx is routed to it (a killed run's): never stopped while it serves
        h = health(spec, tag, 5.0, port=NEXT_PORT)
        if h["ok"]:
            return {**h, "unit": unit, "bootSeconds": 0.0}
    stop_next(spec)
    t = time.monotonic()
    p = run(["systemctl", "start", unit], check=False)
    h = _healthy(spec, tag, unit) if p.returncode == 0 else {"ok": False, "detail": p.stderr.strip()[-300:]}
    h["unit"] = unit
    if not h["ok"]:
        stop_next(spec)
        log(f"{tag} did not pass its health check in {unit} ({h.get('detail')})")
        return h
    h["bootSeconds"] = round(time.monotonic() - t, 2)
    log(f"{tag} booted in {unit} ({h['bootSeconds']} s), healthy on port {NEXT_PORT}")
    return h


def _healthy(spec: Spec, tag: str, unit: str) -> dict:
    """The health check on the hand-over port, given up as soon as the unit has crashed (systemd
    restarting it, or given up on it): a release that cannot start is not waited for."""
    deadline = time.monotonic() + spec.health_timeout
    while True:
        h = health(spec, tag, 1.0, port=NEXT_PORT)
        if h["ok"] or time.monotonic() > deadline:
            return h
        show = run(["systemctl", "show", "-p", "NRestarts,ActiveState", unit], check=False, quiet=True).stdout
        props = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
        if props.get("ActiveState") == "failed" or int(props.get("NRestarts") or 0) > 0:
            return {**h, "detail": f"{unit} exited while starting ({h.get('detail')})"}


def restart_through_next(spec: Spec) -> str | None:
    """The service restarted while the hand-over unit (booted and healthy) answers: nginx is routed
    to it, the service restarts (its requests under way finish first), then nginx goes back. No
    request waits for a boot. None when done, else why the service did not come back."""
    route_to_next(spec, True)
    run(["systemctl", "restart", spec.service])
    return settle_handover(spec)


def route_to_next(spec: Spec, on: bool, settle: float = 0.5) -> None:
    """nginx to the hand-over unit (or back). nginx reads the flag as a request arrives, then connects:
    a request routed just before the flip still reaches the side it chose, which must still listen -
    so this waits `settle` seconds before the caller stops anything."""
    f = next_flag(spec)
    if on:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.touch()
    elif f.exists():
        f.unlink()
    else:
        return
    time.sleep(settle)


def end_handover(spec: Spec) -> None:
    """nginx back to the service, the hand-over unit stopped once its requests under way are done
    (bounded; its graceful stop lets them finish anyway)."""
    route_to_next(spec, False)
    deadline = time.monotonic() + 5
    while connections_to(NEXT_PORT) and time.monotonic() < deadline:
        time.sleep(0.05)
    stop_next(spec)


def settle_handover(spec: Spec) -> str | None:
    """After a window that switched through the hand-over unit (and at the start of every step, after
    a run killed half-way): the service runs the release `current` points at, healthy, then nginx goes
    back to it and the hand-over unit stops. None when done (or nothing to do), else why not: the
    hand-over unit then keeps serving."""
    if not next_flag(spec).exists():
        stop_next(spec)  # booted by a run that was killed before it switched: nobody is routed to it
        return None
    ver = current_version(spec)
    if not ver:
        return None
    if not service_active(spec):
        start_service(spec)
    h = health(spec, ver, spec.health_timeout, port=MAIN_PORT)
    if not h["ok"] and service_active(spec):  # still the code it started with (a run killed before its restart)
        run(["systemctl", "restart", spec.service])
        h = health(spec, ver, spec.health_timeout, port=MAIN_PORT)
    if not h["ok"]:
        return (f"{spec.service} did not pass its health check with {ver} ({h.get('detail')}); {ver} keeps serving "
                f"from {next_unit(spec, ver)}; run `pulumi up` again once {spec.service} starts")
    end_handover(spec)
    log(f"{spec.service} serves {ver}; the hand-over unit is stopped")
    return None

