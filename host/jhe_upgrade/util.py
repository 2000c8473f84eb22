"""Small helpers every module uses: refusals, logging to stderr, running commands, psql, files."""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

TOOL_VERSION = 1
T0 = time.monotonic()
STEP = "?"  # the step this process runs (set by cli.main), shown in every log line


class Refusal(Exception):
    """A clear "no": nothing was changed (or what was changed has been put back)."""


def log(msg: str) -> None:
    print(f"[{STEP} +{time.monotonic() - T0:5.1f}s] {msg}", file=sys.stderr, flush=True)


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def run(args: list[str], *, user: str | None = None, cwd: str | Path | None = None, env: dict | None = None,
        input: str | None = None, check: bool = True, timeout: float | None = None, quiet: bool = False) -> subprocess.CompletedProcess:
    """Runs a command (never through a shell); as `user` via runuser when given."""
    if user and user != "root":
        args = ["runuser", "-u", user, "--"] + args
    if not quiet:
        log("$ " + " ".join(args))
    p = subprocess.run(args, cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise subprocess.CalledProcessError(p.returncode, args, p.stdout, p.stderr)
    return p


def db_args(db: str) -> list[str]:
    """psql's arguments for a database: `name`, on the default port's cluster, or `name@port`, on the
    cluster of that port (a PostgreSQL major upgrade's other cluster; a database name never holds "@")."""
    name, _, port = db.partition("@")
    return ["-d", name] + (["-p", port] if port.isdigit() else [])


def psql(db: str, sql: str, *, check: bool = True) -> str:
    """Runs SQL as postgres and returns its unaligned output. The SQL goes on stdin, never on the command
    line: a replay's key lists can be far larger than one argument may be (128 KiB)."""
    return run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", *db_args(db), "-f", "-"],
               user="postgres", cwd="/", check=check, quiet=True, input=sql + "\n").stdout.strip()


def sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def quote_ident(name: str) -> str:
    """A PostgreSQL identifier, quoted (any name a table may have)."""
    return '"' + name.replace('"', '""') + '"'


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_private(path: Path, text: str, owner: str | None = None, group: str | None = None, mode: int = 0o600) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(tmp, mode)
    if owner:
        shutil.chown(tmp, owner, group)
    os.replace(tmp, path)


def error_summary(stderr: str) -> str:
    """The exception line of a Python traceback (plus PostgreSQL's DETAIL), else the last line."""
    lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
    exc = [l for l in lines if re.match(r"^[\w.]+(Error|Exception|Warning)\b.*:", l)]
    detail = [l for l in lines if l.startswith("DETAIL:")]
    if exc:
        return exc[-1] + (f" {detail[-1]}" if detail and detail[-1] not in exc[-1] else "")
    return lines[-1] if lines else "(no output)"


def version_key(tag: str | None) -> tuple:
    """A tag's numbers, for ordering; a release's build metadata (v1.2.0+django-5.2.19) does not count:
    the releases of one tag are neither older nor newer than each other."""
    return tuple(int(x) for x in re.findall(r"\d+", (tag or "").split("+", 1)[0]))
