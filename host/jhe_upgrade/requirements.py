"""A tag's dependencies (Pipfile.lock, uv.lock, requirements.txt, pyproject) and version checks."""
from __future__ import annotations

import json
import re

try:
    import tomllib
except ImportError:  # Python < 3.11: uv.lock/pyproject read by a small fallback below
    tomllib = None  # type: ignore[assignment]

from .util import Refusal, run


def requirements_of(tree: dict[str, str]) -> tuple[str, list[str], str | None]:
    """(tool, pinned requirements, python requirement) from a tag's dependency files."""
    if "Pipfile.lock" in tree:
        lock = json.loads(tree["Pipfile.lock"])
        reqs = [f"{n}{s['version']}" for n, s in sorted(lock.get("default", {}).items()) if "version" in s]
        py = lock.get("_meta", {}).get("requires", {}).get("python_version")
        if not py and "Pipfile" in tree:
            m = re.search(r'python_version\s*=\s*"([^"]+)"', tree["Pipfile"])
            py = m.group(1) if m else None
        return "pipenv", reqs, (f"=={py}" if py else None)
    if "uv.lock" in tree:
        pkgs = _toml(tree["uv.lock"]).get("package", [])
        proj = _toml(tree.get("pyproject.toml", "")).get("project", {})
        name = proj.get("name")
        reqs = [f"{p['name']}=={p['version']}" for p in pkgs if p.get("name") != name and "version" in p]
        return "uv", reqs, proj.get("requires-python")
    if "requirements.txt" in tree:
        reqs = [l.strip() for l in tree["requirements.txt"].splitlines() if l.strip() and not l.startswith("#")]
        return "pip", reqs, None
    if "pyproject.toml" in tree:
        proj = _toml(tree["pyproject.toml"]).get("project", {})
        return "pip", list(proj.get("dependencies", [])), proj.get("requires-python")
    raise Refusal("the tag has no Pipfile.lock, uv.lock, requirements.txt or pyproject.toml to install from")


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


def python_version() -> tuple[int, int]:
    p = run(["python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], quiet=True)
    a, b = p.stdout.strip().split(".")
    return int(a), int(b)


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
