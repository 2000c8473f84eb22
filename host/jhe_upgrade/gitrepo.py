"""The bare mirror of the JHE repository and what a tag holds (files, migrations)."""
from __future__ import annotations

import re
from pathlib import Path

from .spec import Spec, tag_of
from .util import Refusal, run


def ensure_repo(spec: Spec) -> None:
    """repo.git: a bare mirror of the JHE repository; tags are fetched into it."""
    if not (spec.repo / "HEAD").exists():
        spec.app_root.mkdir(parents=True, exist_ok=True)
        run(["git", "init", "-q", "--bare", str(spec.repo)])
        run(["git", "-C", str(spec.repo), "remote", "add", "origin", spec.repo_url])
    else:
        run(["git", "-C", str(spec.repo), "remote", "set-url", "origin", spec.repo_url], quiet=True)


def fetch_tags(spec: Spec) -> None:
    ensure_repo(spec)
    p = run(["git", "-C", str(spec.repo), "fetch", "-q", "--prune", "--tags", "origin",
             "+refs/heads/*:refs/heads/*"], check=False, timeout=600)
    if p.returncode != 0:
        raise Refusal(f"cannot fetch tags from jhe:repoUrl {spec.repo_url}: {p.stderr.strip()[-400:]}")


# Each takes a release (v1.2.0+django-5.2.19) or a tag: what is read is always the tag's.

def tag_exists(repo: Path, tag: str) -> bool:
    return run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", f"refs/tags/{tag_of(tag)}^{{commit}}"],
               check=False, quiet=True).returncode == 0


def show(repo: Path, tag: str, path: str) -> str | None:
    p = run(["git", "-C", str(repo), "show", f"{tag_of(tag)}:{path}"], check=False, quiet=True)
    return p.stdout if p.returncode == 0 else None


def ls_tree(repo: Path, tag: str, path: str) -> list[str]:
    p = run(["git", "-C", str(repo), "ls-tree", "--name-only", f"{tag_of(tag)}:{path}"], check=False, quiet=True)
    return p.stdout.split() if p.returncode == 0 else []


def tag_migrations(repo: Path, tag: str) -> list[str]:
    """app.name of every migration file in the tag (apps: top-level dirs with a migrations/)."""
    out = []
    for app in ls_tree(repo, tag, ""):
        for f in ls_tree(repo, tag, f"{app}/migrations"):
            if re.match(r"^\d{4}_\w+\.py$", f):
                out.append(f"{app}.{f[:-3]}")
    return sorted(out)


def tag_tree(repo: Path, tag: str) -> dict[str, str]:
    files = {}
    for f in ("Pipfile", "Pipfile.lock", "uv.lock", "pyproject.toml", "requirements.txt"):
        t = show(repo, tag, f)
        if t is not None:
            files[f] = t
    return files
