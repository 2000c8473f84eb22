"""The command line: one step per call, one JSON line on stdout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from . import util
from .backup import BackupFailed
from .clone import step_clone, step_snapshot
from .db import reopen_databases
from .handover import settle_handover
from .offsite import step_offsite
from .pgmajor import step_postgres
from .plan import step_plan
from .provision import step_adopt, step_superuser
from .recovery import safety_net
from .spec import Spec
from .state import run_lock
from .steps import step_backup, step_finish, step_health, step_migrate, step_preflight, step_prepare, step_status, step_switch, step_unlock
from .util import Refusal, log
from .watch import step_watch

STEPS = {"status": step_status, "plan": step_plan, "adopt": step_adopt, "preflight": step_preflight,
         "prepare": step_prepare, "backup": step_backup, "migrate": step_migrate, "switch": step_switch,
         "health": step_health, "finish": step_finish, "offsite": step_offsite, "unlock": step_unlock, "superuser": step_superuser,
         "snapshot": step_snapshot, "clone": step_clone, "watch": step_watch, "postgres": step_postgres}


# Steps that may run inside a window: whatever fails in them ends with the old version serving.
WINDOW_STEPS = ("backup", "migrate", "switch", "health", "finish", "watch")  # (the watch may roll back)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] not in STEPS:
        print(f"usage: {argv[0]} {{{'|'.join(STEPS)}}} < spec.json", file=sys.stderr)
        return 2
    STEP = util.STEP = argv[1]
    if os.geteuid() != 0:
        print(json.dumps({"ok": False, "error": "run as root (the program uses sudo when its SSH user is not root)"}))
        return 1
    spec = None
    try:
        if "--spec-b64" in argv:  # `plan` only: the tool itself arrives on stdin, the spec (no secrets) here
            import base64
            spec = Spec(json.loads(base64.b64decode(argv[argv.index("--spec-b64") + 1])))
        else:
            spec = Spec(json.loads(sys.stdin.read() or "{}"))
        if STEP in ("plan", "status"):  # read-only: never waits for a running step
            result = STEPS[STEP](spec)
        else:
            with run_lock(spec):
                reopened = reopen_databases()  # a killed run's databases, closed while it moved them
                if reopened:
                    log(f"databases left closed to sessions by an interrupted run are open again (oids {', '.join(reopened)})")
                problem = settle_handover(spec)  # a run killed while the hand-over unit served
                if problem:
                    log(problem)
                result = STEPS[STEP](spec)
        print(json.dumps({"ok": True, "step": STEP, "seconds": round(time.monotonic() - util.T0, 2), **(result or {})}, sort_keys=True))
        return 0
    except Refusal as e:
        log(f"refused: {e}")
        print(json.dumps({"ok": False, "step": STEP, "error": str(e)}))
        print(f"\njhe-upgrade {STEP}: {e}", file=sys.stderr)
        return 1
    except (subprocess.CalledProcessError, BackupFailed) as e:
        msg = (f"{' '.join(map(str, e.cmd))} exited {e.returncode}: {(e.stderr or '').strip()[-800:]}"
               if isinstance(e, subprocess.CalledProcessError) else str(e))
        log(msg)
        if spec is not None and STEP in WINDOW_STEPS:  # a failed command inside the window: the old version back
            msg += ". " + safety_net(spec, f"{STEP} failed: {msg}")
        print(json.dumps({"ok": False, "step": STEP, "error": msg}))
        print(f"\njhe-upgrade {STEP} failed: {msg}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or an unforeseen server state: say so plainly, with the trace
        import traceback
        traceback.print_exc(file=sys.stderr)
        msg = f"unexpected {type(e).__name__}: {e}."
        if spec is not None and STEP in WINDOW_STEPS:
            msg += " " + safety_net(spec, f"{STEP} failed: {type(e).__name__}: {e}")
        msg += " Run `pulumi up` again after checking the message above (the steps converge from whatever state the server is in)"
        print(json.dumps({"ok": False, "step": STEP, "error": msg}))
        print(f"\njhe-upgrade {STEP} failed: {msg}", file=sys.stderr)
        return 1
