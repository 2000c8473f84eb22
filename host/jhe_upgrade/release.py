"""releases/<tag>: built while the old release serves, switched atomically, pruned."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from .envfile import render_env
from .gitrepo import ls_tree, show, tag_migrations, tag_tree
from .migclass import classify_pending
from .requirements import LOCK_FILES, lock_install, pip_check_problems, pip_install_args
from .spec import Spec
from .util import Refusal, error_summary, log, now, run, write_private


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
    building = rel / ".jhe-building"
    if rel.exists() and building.exists():
        shutil.rmtree(rel)  # our own half-built leftover of an interrupted run: code from git and a venv, made again
    elif rel.exists():  # something else under that name: set aside, never delete what we did not make
        rel.rename(spec.releases / f".{tag}.set-aside-{int(time.time())}")
    # Built in place (a venv cannot move), complete only once .jhe-release.json is written.
    rel.mkdir()
    building.write_text(f"{now()}\n")
    try:
        info = _build(spec, tag, env, rel)
    except BaseException:
        shutil.rmtree(rel, ignore_errors=True)  # a failed build leaves nothing behind
        raise
    info["seconds"] = round(time.monotonic() - t, 1)
    (rel / ".jhe-release.json").write_text(json.dumps(info) + "\n")
    building.unlink()
    log(f"release {tag} built in {info['seconds']} s ({info['installer']}, {info['requirements']} packages"
        + (f"; pip check: {'; '.join(info['pipCheck'])}" if info["pipCheck"] else "") + ")")
    return info


MIGRATIONS_FILE = ".jhe-migrations.json"
CHECK_AND_LIST_MIGRATIONS = (
    "import json; from django.core.management import call_command; call_command('check'); "
    "from django.db.migrations.loader import MigrationLoader; "
    "print(json.dumps(sorted(f'{a}.{n}' for a, n in MigrationLoader(None, ignore_no_migrations=True).disk_migrations)))")


def release_knows_all_migrations(spec: Spec, tag: str) -> bool:
    return release_ready(spec, tag) and (spec.release(tag) / MIGRATIONS_FILE).is_file()


def release_migrations(spec: Spec, repo: Path, tag: str) -> list[str]:
    """Every migration `tag` knows: all apps' (third-party ones too) once its release is built, else
    the migration files of the project's own apps in the tag."""
    f = spec.release(tag) / MIGRATIONS_FILE
    if release_knows_all_migrations(spec, tag):
        try:
            return sorted(json.loads(f.read_text()))
        except ValueError:
            pass
    return tag_migrations(repo, tag)


def _build(spec: Spec, tag: str, env: dict[str, str], rel: Path) -> dict:
    archive = subprocess.run(["git", "-C", str(spec.repo), "archive", "--format=tar", tag], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(rel)], input=archive.stdout, check=True)
    run(["chown", "-R", f"{spec.app_user}:{spec.app_group}", str(rel)])
    lock = lock_install(tag_tree(spec.repo, tag))
    run(["python3", "-m", "venv", str(rel / "venv")], user=spec.app_user)
    req_file = rel / ".jhe-requirements.txt"
    req_file.write_text("\n".join(lock["lines"]) + "\n")
    shutil.chown(req_file, spec.app_user, spec.app_group)
    pip = str(rel / "venv/bin/pip")
    p = run(pip_install_args(pip, str(req_file), lock, spec.wheelhouse), user=spec.app_user, cwd=rel, timeout=1800, check=False)
    if p.returncode != 0:
        raise Refusal(f"installing {tag}'s dependencies as its {LOCK_FILES[lock['tool']]} pins them failed "
                      f"(nothing changed; the half-built release was removed): {error_summary(p.stderr)}")
    # Installed as locked, without resolving: a lock whose pins contradict each other still installs (as
    # `pipenv sync` does); pip check says what is inconsistent, reported but not fatal.
    problems = pip_check_problems(run([pip, "check"], user=spec.app_user, cwd=rel, check=False, quiet=True).stdout)
    write_private(rel / ".env", render_env(env), spec.app_user, spec.app_group)
    py = str(rel / "venv/bin/python")
    run([py, "manage.py", "collectstatic", "--no-input", "-v", "0"], user=spec.app_user, cwd=rel, timeout=600)
    # `manage.py check`, then every migration the release knows - its own apps' and its installed
    # packages' (oauth2_provider, allauth's account, ...) - in the same boot, for the plan and preflight.
    out = run([py, "manage.py", "shell", "-c", CHECK_AND_LIST_MIGRATIONS], user=spec.app_user, cwd=rel, timeout=300, quiet=True).stdout
    try:
        migrations = json.loads((out.strip().splitlines() or ["null"])[-1])
    except ValueError:
        migrations = None
    if isinstance(migrations, list):  # else the plan falls back to the tag's own migration files
        write_private(rel / MIGRATIONS_FILE, json.dumps(migrations) + "\n", spec.app_user, spec.app_group, mode=0o644)
    return {"tag": tag, "built": now(), "installer": lock["tool"], "requirements": len(lock["lines"]), "exact": lock["exact"],
            "hashesChecked": lock["hashed"], "pipCheck": problems, "skipped": lock["skipped"]}



def release_dependencies(spec: Spec, tag: str) -> dict | None:
    """How a built release's dependencies were installed, and what `pip check` found in them."""
    try:
        info = json.loads((spec.release(tag) / ".jhe-release.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    return {k: info.get(k) for k in ("installer", "requirements", "exact", "hashesChecked", "pipCheck")}


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


def pending_classes(spec: Spec, repo: Path, to: str, pending: list[str]) -> dict:
    """Each pending migration's class (see migclass), from its file: the project's apps' in the tag, an
    installed package's in releases/<to>'s venv once it is built (else classed unknown: destructive)."""
    site = sorted(spec.release(to).glob("venv/lib/python3*/site-packages"))

    def listing(app: str) -> list[str]:
        names = [f[:-3] for f in ls_tree(repo, to, f"{app}/migrations") if re.match(r"^\d{4}_\w+\.py$", f)]
        if not names and site:
            names = [p.stem for p in (site[0] / app / "migrations").glob("[0-9][0-9][0-9][0-9]_*.py")]
        return sorted(names)

    def read(app: str, name: str) -> str | None:
        text = show(repo, to, f"{app}/migrations/{name}.py")
        if text is None and site and (site[0] / app / "migrations" / f"{name}.py").is_file():
            text = (site[0] / app / "migrations" / f"{name}.py").read_text()
        return text

    return classify_pending(pending, read, listing)
