"""releases/<tag>: built while the old release serves, switched atomically, pruned."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from .envfile import render_env
from .gitrepo import tag_tree
from .requirements import requirements_of
from .spec import Spec
from .util import log, now, run, write_private


def release_ready(spec: Spec, tag: str) -> bool:
    return (spec.release(tag) / ".jhe-release.json").exists()


def build_release(spec: Spec, tag: str, env: dict[str, str]) -> dict:
    """releases/<tag>: the tag's files, its venv with pinned dependencies, collected static files,
    its .env, and `manage.py check` - all while the old release keeps serving."""
    rel = spec.release(tag)
    if release_ready(spec, tag):
        info = json.loads((rel / ".jhe-release.json").read_text())
        write_private(rel / ".env", render_env(env), spec.app_user, spec.app_group)
        return info
    t = time.monotonic()
    spec.releases.mkdir(parents=True, exist_ok=True)
    if rel.exists():  # a half-built leftover of an interrupted run: set it aside, never delete blindly
        rel.rename(spec.releases / f".{tag}.incomplete-{int(time.time())}")
    # Built in place (a venv cannot move), complete only once .jhe-release.json is written.
    tmp = rel
    tmp.mkdir()
    archive = subprocess.run(["git", "-C", str(spec.repo), "archive", "--format=tar", tag], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
    run(["chown", "-R", f"{spec.app_user}:{spec.app_group}", str(tmp)])
    tool, reqs, _py = requirements_of(tag_tree(spec.repo, tag))
    run(["python3", "-m", "venv", str(tmp / "venv")], user=spec.app_user)
    req_file = tmp / ".jhe-requirements.txt"
    req_file.write_text("\n".join(reqs) + "\n")
    shutil.chown(req_file, spec.app_user, spec.app_group)
    pip = [str(tmp / "venv/bin/pip"), "install", "-q", "--disable-pip-version-check", "-r", str(req_file)]
    if spec.wheelhouse:
        pip += ["--no-index", "--find-links", spec.wheelhouse]
    run(pip, user=spec.app_user, cwd=tmp, timeout=1800)
    write_private(tmp / ".env", render_env(env), spec.app_user, spec.app_group)
    py = str(tmp / "venv/bin/python")
    run([py, "manage.py", "collectstatic", "--no-input", "-v", "0"], user=spec.app_user, cwd=tmp, timeout=600)
    run([py, "manage.py", "check"], user=spec.app_user, cwd=tmp, timeout=300)
    info = {"tag": tag, "built": now(), "installer": tool, "requirements": len(reqs), "seconds": round(time.monotonic() - t, 1)}
    (tmp / ".jhe-release.json").write_text(json.dumps(info) + "\n")
    log(f"release {tag} built in {info['seconds']} s ({tool}, {len(reqs)} packages)")
    return info


def switch_current(spec: Spec, tag: str) -> None:
    tmp = spec.app_root / ".current.tmp"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(f"releases/{tag}", tmp)
    os.replace(tmp, spec.current)  # atomic (rename(2)), like `mv -T`


def prune_releases(spec: Spec, keep_tags: set[str]) -> list[str]:
    rels = sorted((p for p in spec.releases.iterdir() if p.is_dir() and not p.name.startswith(".")),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for p in rels[spec.keep:]:
        if p.name not in keep_tags:
            shutil.rmtree(p)
            removed.append(p.name)
    return removed
