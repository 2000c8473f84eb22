"""The watch after the switch (as CodeDeploy's alarms): for jhe:watchSeconds after an upgrade, the share
of requests that fail (nginx's 5xx for the site; Django's "Internal Server Error" lines in the journal
when they are more) against the share in the quarter hour before the move began. Above the threshold,
the program rolls back by itself - the same steps as reverting jhe:version - and says so; until the
stack's version is set back (or moved on), every `pulumi up` says it again and changes nothing."""
from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path

from .recovery import safety_net
from .spec import Spec
from .state import current_version, load_state, save_state
from .upgradelog import append_log
from .util import Refusal, log, now, run

BASELINE_SECONDS = 900
MIN_FAILED = 5  # never judged on a handful of failed requests
SAMPLE_SECONDS = 5.0
READ_BYTES = 32 << 20  # of each log's end: enough for a quarter hour of a busy server
# nginx's combined format: ... [30/Nov/2026:14:11:14 +0000] "POST /fhir/r5/Observation HTTP/1.1" 201 ... "user agent"
LINE = re.compile(r'\[(\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "[^"]*" (\d{3}) ')
REQUEST_ERROR = re.compile(r"Internal Server Error: /")
SMOKE_AGENT = '"jhe-upgrade smoke test"'


def access_log(spec: Spec) -> Path:
    """The site's own access log (components/nginx.ts writes it there)."""
    return Path("/var/log/nginx") / f"{spec.service}.access.log"


def _tail(path: Path) -> list[str]:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - READ_BYTES))
            data = f.read()
    except FileNotFoundError:
        return []
    lines = data.decode(errors="replace").splitlines()
    return lines[1:] if size > READ_BYTES else lines  # (the first may be cut)


def nginx_counts(lines: list[str], since: float, until: float | None = None, ignore: tuple[str, ...] = ()) -> dict:
    """Requests and 5xx answers logged in [since, until) (epoch seconds); the smoke tests' own left out,
    and answers with a status in `ignore` (the maintenance page's 503 in the time before)."""
    n = errors = 0
    for line in lines:
        m = LINE.search(line)
        if not m or SMOKE_AGENT in line:
            continue
        t = dt.datetime.strptime(m.group(1), "%d/%b/%Y:%H:%M:%S %z").timestamp()
        if t < since or (until is not None and t >= until) or m.group(2) in ignore:
            continue
        n += 1
        errors += m.group(2).startswith("5")
    return {"requests": n, "errors": errors}


def journal_errors(spec: Spec, since: float, until: float | None = None) -> int:
    args = ["journalctl", "-u", spec.service, "-u", f"{spec.service}-next@*", "--no-pager", "-o", "cat", "-q",
            "--since", f"@{int(since)}"] + (["--until", f"@{int(until)}"] if until else [])
    return sum(1 for line in run(args, check=False, quiet=True).stdout.splitlines() if REQUEST_ERROR.search(line))


def measure(spec: Spec, since: float, until: float | None = None) -> dict:
    """The rate in [since, until): with `until` (the time before the move) a maintenance window's 503s
    in it are not the app's failures. Reads the rotated log too (a rotation may fall in between)."""
    log = access_log(spec)
    log_lines = _tail(log.with_name(log.name + ".1")) + _tail(log)
    c = nginx_counts(log_lines, since, until, ignore=("503",) if until else ())
    c["journalErrors"] = journal_errors(spec, since, until)
    c["failed"] = max(c["errors"], min(c["journalErrors"], c["requests"]))
    c["rate"] = round(c["failed"] / c["requests"], 4) if c["requests"] else 0.0
    return c


def verdict(before: dict, after: dict, max_increase: float, min_requests: int) -> str | None:
    """Why the new version must go (None: it may stay). `max_increase`: percentage points over the rate before."""
    if after["requests"] < min_requests or after["failed"] < MIN_FAILED:
        return None
    if (after["rate"] - before["rate"]) * 100 > max_increase:
        return (f"{after['failed']} of {after['requests']} requests failed after the switch ({after['rate'] * 100:.1f} %), "
                f"against {before['rate'] * 100:.1f} % ({before['failed']} of {before['requests']}) before the upgrade; "
                f"the limit is {max_increase:g} points more")
    return None


def _epoch(iso: str) -> float:
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def step_watch(spec: Spec) -> dict:
    w = spec.raw.get("watch") or {}
    seconds, max_increase, min_requests = float(w.get("seconds", 0)), float(w.get("maxErrorRate", 5)), int(w.get("minRequests", 20))
    to = spec.need_version()
    state = load_state(spec)
    back = state.get("watchRollback")
    if back and back.get("from") == to and current_version(spec) == back.get("to"):
        raise Refusal(f"the watch rolled {to} back to {back['to']} at {back['at']}: {back['why']}. {back['to']} serves; "
                      f"set the version back to agree (pulumi config set jhe:version {back['to']}), or move on to a fixed version")
    if back and back.get("from") == to and not back.get("rolledBack"):
        raise Refusal(f"the watch found at {back['at']}: {back['why']}, and rolling back to {back['to']} failed then "
                      f"({back.get('problem')}); {to} still serves. Set jhe:version {back['to']} and run `pulumi up` to roll back")
    dep = state.get("deployed") or {}
    pending = dep.get("watch")
    if not pending or dep.get("version") != to:
        return {"watch": {"skipped": "no upgrade to watch (it was watched already, or nothing moved)"}}
    if not seconds:
        dep.pop("watch", None)
        save_state(spec, state)
        return {"watch": {"skipped": "jhe:watchSeconds is 0"}}
    frm, start, moved = dep.get("previous"), _epoch(pending["from"]), _epoch(pending["moveBegan"])
    before = measure(spec, moved - BASELINE_SECONDS, moved)
    deadline = start + seconds
    after = measure(spec, start)
    why = None
    while True:
        why = verdict(before, after, max_increase, min_requests)
        if why or time.time() >= deadline:
            break
        time.sleep(min(SAMPLE_SECONDS, max(0.0, deadline - time.time())))
        after = measure(spec, start)
    result = {"seconds": round(time.time() - start, 1), "before": before, "after": after, "maxErrorRate": max_increase,
              "minRequests": min_requests, "verdict": "rolled back" if why else "passed"}
    if after["requests"] < min_requests:
        result["note"] = f"only {after['requests']} requests in the watch (fewer than {min_requests}): too few to judge"
    dep.pop("watch", None)
    if not why:
        save_state(spec, state)
        return {"watch": result}
    if not frm or frm == to:
        save_state(spec, state)
        raise Refusal(f"the watch after the switch to {to}: {why}; there is no earlier version to roll back to")
    # The verdict first (so every later run says it, whatever happens to the rollback), then the rollback.
    state["watchRollback"] = {"from": to, "to": frm, "at": now(), "why": why, "before": before, "after": after, "rolledBack": False}
    (state.setdefault("rehearsals", {}))[to] = {"status": "failed", "at": now(), "from": frm, "why": f"the watch: {why}"}
    save_state(spec, state)
    log(f"the watch: {why}; rolling back to {frm}")
    try:
        done = roll_back(spec, frm)
    except Refusal as e:  # (a failure the steps handled: the version that served before it serves)
        _rollback_failed(spec, str(e))
        raise Refusal(f"the watch after the switch to {to}: {why}. Rolling back to {frm} failed: {e}") from e
    except Exception as e:  # noqa: BLE001 - an unforeseen one inside the rollback's window: a known version serves again
        said = safety_net(spec, f"the watch's rollback to {frm} failed: {type(e).__name__}: {e}")
        _rollback_failed(spec, f"{type(e).__name__}: {e}")
        raise Refusal(f"the watch after the switch to {to}: {why}. Rolling back to {frm} failed ({type(e).__name__}: {e}). {said}") from e
    state = load_state(spec)
    state.setdefault("watchRollback", {}).update(rolledBack=True, rollback={k: done.get(k) for k in ("from", "to", "downtimeSeconds")})
    state.setdefault("rehearsals", {})[to] = {"status": "failed", "at": now(), "from": frm, "why": f"the watch: {why}"}
    (state.get("deployed") or {}).pop("watch", None)
    save_state(spec, state)
    append_log(spec, f"## Watch: {to} rolled back to {frm} - {now()}\n\n**Performed by:** {spec.operator} (stack {spec.owner}), "
                     f"automatically\n\n**Why:** {why}\n\n**Rollback downtime:** {done.get('downtimeSeconds')} s\n")
    raise Refusal(f"the watch after the switch to {to}: {why}. Rolled back to {frm} automatically (as reverting jhe:version; "
                  f"downtime {done.get('downtimeSeconds')} s). Set the version back to agree: pulumi config set jhe:version {frm}")


def _rollback_failed(spec: Spec, problem: str) -> None:
    state = load_state(spec)
    if state.get("watchRollback"):
        state["watchRollback"]["problem"] = problem
        save_state(spec, state)


def roll_back(spec: Spec, frm: str) -> dict:
    """The same steps, in the same order, as a `pulumi up` after setting the version back to `frm`."""
    from .steps import step_backup, step_finish, step_health, step_migrate, step_preflight, step_prepare, step_switch

    back = Spec({**spec.raw, "version": frm, "byWatch": True})
    for step in (step_preflight, step_prepare, step_backup, step_migrate, step_switch, step_health):
        step(back)
    return step_finish(back)
