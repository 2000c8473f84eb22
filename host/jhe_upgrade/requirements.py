"""A tag's dependencies (Pipfile.lock, uv.lock, requirements.txt, pyproject) and version checks."""
from __future__ import annotations

import json
import re

try:
    import tomllib
except ImportError:  # Python < 3.11: uv.lock/pyproject read by a small fallback below
    tomllib = None  # type: ignore[assignment]

from .util import Refusal, run

# What each installer's lock is called, for messages and the upgrade log.
LOCK_FILES = {"pipenv": "Pipfile.lock", "uv": "uv.lock", "pip": "requirements"}


def requirements_of(tree: dict[str, str]) -> tuple[str, list[str], str | None]:
    """(tool, the pinned requirements without markers or hashes, python requirement) from a tag's
    dependency files: what preflight checks (the Django pin, the Python version). The same lines as
    lock_install installs."""
    lock = lock_install(tree)
    reqs = [re.split(r"\s+(?:;|--hash=)", ln, maxsplit=1)[0] for ln in lock["lines"] if " @ " not in ln]
    return lock["tool"], reqs, python_requirement(tree)


def python_requirement(tree: dict[str, str]) -> str | None:
    """The Python a tag asks for: Pipfile.lock's (or the Pipfile's) python_version, else pyproject's
    requires-python."""
    if "Pipfile.lock" in tree:
        py = json.loads(tree["Pipfile.lock"]).get("_meta", {}).get("requires", {}).get("python_version")
        if not py and "Pipfile" in tree:
            m = re.search(r'python_version\s*=\s*"([^"]+)"', tree["Pipfile"])
            py = m.group(1) if m else None
        return f"=={py}" if py else None
    if "requirements.txt" in tree and "uv.lock" not in tree:
        return None
    return _toml(tree.get("pyproject.toml", "")).get("project", {}).get("requires-python")


def _toml(text: str) -> dict:
    if tomllib:
        return tomllib.loads(text)
    # Minimal fallback for uv.lock / pyproject on Python < 3.11: [[package]] name/version, [project].
    out: dict = {"package": [], "project": {}}
    cur: dict | None = None
    for line in text.splitlines():
        s = line.strip()
        if s == "[[package]]":
            cur = {}
            out["package"].append(cur)
        elif s == "[project]":
            cur = out["project"]
        elif s.startswith("["):
            cur = None
        elif cur is not None:
            m = re.match(r'^([A-Za-z_-]+)\s*=\s*"([^"]*)"', s)
            if m:
                cur[m.group(1)] = m.group(2)
    return out


def interpreter_version(python: str) -> str | None:
    """major.minor.micro of an interpreter (a name on the server's PATH, or a venv's python); None when
    there is none of that name or it does not start."""
    try:
        p = run([python, "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"], quiet=True, check=False)
    except OSError:  # (not on the PATH)
        return None
    return p.stdout.strip() if p.returncode == 0 else None


def python_version(python: str = "python3") -> tuple[int, int] | None:
    """major.minor of an interpreter on the server's PATH; None when there is none of that name."""
    v = interpreter_version(python)
    if v is None:
        return None
    a, b, _ = v.split(".", 2)
    return int(a), int(b)


def locked_version(line: str) -> str | None:
    """The exact version a requirement line pins (name==1.2 or name===1.2), else None."""
    m = re.match(r"^[^=<>~!;\s]+\s*===?\s*([^\s;,]+)", line)
    return m.group(1) if m else None


def line_name(line: str) -> str:
    """The package a requirement line installs, normalized (PEP 503)."""
    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line)
    return re.sub(r"[-_.]+", "-", m.group(1)).lower() if m else ""


def apply_pins(lock: dict, pins: dict[str, str]) -> tuple[dict, list[str], dict[str, str]]:
    """The lock with the pinned packages taken out, the pins' own lines (exact, no hashes: the lock's
    hashes are the other version's), and what each pin replaces ({name: the lock's version}). A pin of
    a package the lock does not have is refused (a typo would otherwise install something new)."""
    if not pins:
        return lock, [], {}
    keep, replaced = [], {}
    for ln in lock["lines"]:
        name = line_name(ln)
        if name in pins:
            replaced[name] = locked_version(ln) or ln.split(";")[0].strip()
        else:
            keep.append(ln)
    unknown = sorted(set(pins) - set(replaced))
    if unknown:
        have = ", ".join(sorted(line_name(ln) for ln in lock["lines"] if line_name(ln))[:60])
        raise Refusal(f"jhe:pins names {', '.join(unknown)}, which the tag's {LOCK_FILES[lock['tool']]} does not install "
                      f"(it has: {have}); pin only packages the release already has")
    return {**lock, "lines": keep}, [f"{n}=={pins[n]}" for n in sorted(pins)], replaced


def version_ok(have: tuple[int, int], req: str | None) -> bool:
    """Checks a python requirement like '==3.11', '>=3.10', '>=3.10,<3.14' against major.minor."""
    if not req:
        return True
    for part in req.split(","):
        m = re.match(r"^\s*(==|>=|<=|>|<|~=|!=)?\s*(\d+)\.(\d+)", part)
        if not m:
            continue
        op, want = m.group(1) or "==", (int(m.group(2)), int(m.group(3)))
        if not {"==": have == want, ">=": have >= want, "<=": have <= want, ">": have > want,
                "<": have < want, "~=": have >= want, "!=": have != want}[op]:
            return False
    return True


# ---- installing exactly what the lock says (as `pipenv sync` / `uv sync --frozen` do) ---------------

def _pipfile_line(name: str, entry: dict) -> str | None:
    """One Pipfile.lock entry as a pip requirement line (markers and hashes kept), None if unusable."""
    if "version" in entry:
        line = f"{name}{entry['version']}"
    elif "git" in entry:
        line = f"{name} @ git+{entry['git']}" + (f"@{entry['ref']}" if entry.get("ref") else "")
    elif "file" in entry:
        line = f"{name} @ {entry['file']}"
    else:
        return None
    if entry.get("markers"):
        line += f" ; {entry['markers']}"
    return line + "".join(f" --hash={h}" for h in entry.get("hashes") or [])


def _uv_markers(pkgs: list[dict], roots: list[str]) -> dict[str, str | None]:
    """For each package reachable from `roots` (through `dependencies`, default groups only), the marker
    under which uv would install it: None when always, else the OR of every path's markers."""
    by_name = {p.get("name"): p for p in pkgs}
    need: dict[str, str | None] = {}
    todo: list[tuple[str, str | None]] = [(r, None) for r in roots]
    seen: set[tuple[str, str | None]] = set()
    while todo:
        name, marker = todo.pop()
        if (name, marker) in seen or len(seen) > 20000:
            continue
        seen.add((name, marker))
        if name in need:
            prev = need[name]
            if prev is None:
                continue  # installed always already
            need[name] = None if marker is None else f"({prev}) or ({marker})"
        else:
            need[name] = marker
        for dep in (by_name.get(name) or {}).get("dependencies") or []:
            m = dep.get("marker")
            both = marker if not m else (m if marker is None else f"({marker}) and ({m})")
            todo.append((dep["name"], both))
    return need


def lock_install(tree: dict[str, str]) -> dict:
    """What to install for a tag: {tool, lines (pip requirement lines), exact (every line pinned: install
    with --no-deps, no resolution, as a lock manager does), hashed (every line carries hashes: pip
    --require-hashes), skipped (entries that cannot be installed from a lock, named)}."""
    lines: list[str] = []
    skipped: list[str] = []
    if "Pipfile.lock" in tree:
        tool = "pipenv"
        for name, entry in sorted(json.loads(tree["Pipfile.lock"]).get("default", {}).items()):
            line = _pipfile_line(name, entry)
            (lines.append(line) if line else skipped.append(name))
    elif "uv.lock" in tree:
        tool = "uv"
        pkgs = _toml(tree["uv.lock"]).get("package", [])
        project = _toml(tree.get("pyproject.toml", "")).get("project", {}).get("name")
        root = next((p for p in pkgs if p.get("name") == project or "editable" in (p.get("source") or {})
                     or "virtual" in (p.get("source") or {})), None)
        markers: dict[str, str | None] = (_uv_markers(pkgs, [root["name"]]) if root and root.get("dependencies") is not None
                                          else {p.get("name"): None for p in pkgs})
        for p in sorted(pkgs, key=lambda p: p.get("name", "")):
            name = p.get("name")
            if not name or p is root or name not in markers or "version" not in p:
                continue
            hashes = [h for h in [(p.get("sdist") or {}).get("hash"), *[w.get("hash") for w in p.get("wheels") or []]] if h]
            line = f"{name}=={p['version']}" + (f" ; {markers[name]}" if markers[name] else "")
            lines.append(line + "".join(f" --hash={h}" for h in hashes))
    elif "requirements.txt" in tree:
        tool = "pip"
        lines = [ln.strip() for ln in tree["requirements.txt"].splitlines() if ln.strip() and not ln.strip().startswith("#")]
    elif "pyproject.toml" in tree:
        tool = "pip"
        lines = list(_toml(tree["pyproject.toml"]).get("project", {}).get("dependencies", []))
    else:
        raise Refusal("the tag has no Pipfile.lock, uv.lock, requirements.txt or pyproject.toml to install from")
    reqs = [ln for ln in lines if not ln.startswith("-")]
    exact = tool in ("pipenv", "uv") or (bool(reqs) and all(re.match(r"^[A-Za-z0-9._\[\],-]+\s*===?\s*[^\s;,]+\s*(;|--hash|$)", r)
                                                           or " @ " in r for r in reqs))
    hashed = bool(reqs) and all("--hash=" in r for r in reqs)
    return {"tool": tool, "lines": lines, "exact": exact, "hashed": hashed, "skipped": skipped}


def pip_install_args(pip: str, req_file: str, lock: dict, wheelhouse: str | None) -> list[str]:
    """pip's arguments for a lock: exact pins without resolving (--no-deps), hashes checked when the
    lock has them, from the wheelhouse only when one is configured."""
    args = [pip, "install", "-q", "--disable-pip-version-check", "-r", req_file]
    if lock["exact"]:
        args.append("--no-deps")
    if lock["hashed"]:
        args.append("--require-hashes")
    if wheelhouse:
        args += ["--no-index", "--find-links", wheelhouse]
    return args


def pip_check_problems(output: str) -> list[str]:
    """`pip check`'s findings, one per line ("No broken requirements found." is none)."""
    return [ln.strip() for ln in output.splitlines() if ln.strip() and not ln.startswith("No broken requirements")]
