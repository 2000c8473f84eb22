"""The tool's memory on the server (state.json), the host lock, the step lock, registered backups."""
from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from typing import TextIO

from . import util
from .spec import Spec
from .util import Refusal, log, now, run, write_private


def load_state(spec: Spec) -> dict:
    try:
        return json.loads(spec.state_file.read_text())
    except FileNotFoundError:
        return {}


def save_state(spec: Spec, state: dict) -> None:
    spec.meta.mkdir(parents=True, exist_ok=True)
    write_private(spec.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def current_version(spec: Spec) -> str | None:
    """The version serving now: `current`'s release, or an in-place (legacy) checkout's tag."""
    if spec.current.is_symlink():
        return os.readlink(spec.current).rstrip("/").split("/")[-1]
    if (spec.app_root / ".git").exists():
        p = run(["git", "-C", str(spec.app_root), "describe", "--tags", "--exact-match"], check=False, quiet=True)
        if p.returncode == 0:
            return p.stdout.strip()
        p = run(["git", "-C", str(spec.app_root), "describe", "--tags"], check=False, quiet=True)
        return p.stdout.strip() or None
    return None


def live_root(spec: Spec) -> Path | None:
    """Directory of the code serving now (current release, or the in-place checkout)."""
    if spec.current.is_symlink():
        return spec.current.resolve()
    if (spec.app_root / "manage.py").exists():
        return spec.app_root
    return None


def take_lock(spec: Spec, purpose: str) -> None:
    """One upgrade at a time per server. The holder is the stack (org/project/stack); the same stack
    re-running after an interruption continues under its own lock."""
    spec.meta.mkdir(parents=True, exist_ok=True)
    os.chmod(spec.meta, 0o700)
    with open(spec.meta / ".lock.guard", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            held = json.loads(spec.lock_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            held = None
        if held and held.get("owner") != spec.owner:
            raise Refusal(
                f"the server is locked by another upgrade: stack {held.get('owner')} "
                f"(operator {held.get('operator')}, {held.get('purpose')}, since {held.get('since')}). "
                f"Wait for it to finish; if it died, run `npm run jhe-host -- unlock` for that stack's server "
                f"after checking nobody is upgrading")
        if not held or held.get("purpose") != purpose:
            write_private(spec.lock_file, json.dumps({"owner": spec.owner, "operator": spec.operator,
                                                      "purpose": purpose, "since": now(), "pid": os.getpid()}))


def release_lock(spec: Spec) -> None:
    try:
        held = json.loads(spec.lock_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if held.get("owner") == spec.owner:
        spec.lock_file.unlink()


class run_lock:
    """One step at a time per server: a re-run waits (bounded) for a step still running from an
    interrupted `pulumi up` (it runs detached from SSH and finishes on its own), then converges."""
    def __init__(self, spec: Spec, timeout: float = 3 * 3600):
        self.path = Path(f"/run/lock/jhe-upgrade-{spec.service}.lock")
        self.timeout = timeout
        self.f: TextIO | None = None

    def __enter__(self) -> run_lock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = self.f = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        said = False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    f.seek(0)
                    log(f"waiting for a step still running on this server ({f.read().strip() or 'unknown'})")
                    said = True
                if time.monotonic() > deadline:
                    raise Refusal("another jhe-upgrade step has been running on this server for too long; check it") from None
                time.sleep(0.5)
        f.seek(0)
        f.truncate()
        f.write(f"step {util.STEP}, pid {os.getpid()}, since {now()}\n")
        f.flush()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.f:
            fcntl.flock(self.f, fcntl.LOCK_UN)
            self.f.close()


MOVE_KEYS = ("migrated", "rollback", "dbTouched", "swap", "staged", "cutover", "stagedFallback", "restored")


def register_backup(state: dict, frm: str | None, to: str, b: dict, key: str | None = None) -> str:
    """Records backup `b` with the server's backups, under "<from>-><to>" (a move's: a rollback to
    <from> finds it) or `key`; returns the key."""
    key = key or f"{frm}->{to}"
    state.setdefault("backups", {})[key] = {
        k: b.get(k) for k in ("id", "path", "dump", "sha256", "bytes", "created", "rowCounts", "appliedMigrations", "keptDatabase",
                              "liveSince", "deletedByMigrations", "offsite", "from", "to", "database", "tocEntries", "owner")}
    return key


def latest_backup_from(state: dict, tag: str) -> dict | None:
    """The newest backup taken when leaving `tag` (the database as `tag` had it), still on disk or
    copied off the server (offsite.ensure_local fetches it back)."""
    cands = [b for k, b in (state.get("backups") or {}).items() if k.split("->")[0] == tag]
    cands = [b for b in cands if (Path(b["path"]) / "db.dump").exists() or (b.get("offsite") or {}).get("verified")]
    return max(cands, key=lambda b: b["created"]) if cands else None
