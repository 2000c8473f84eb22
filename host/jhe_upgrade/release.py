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
from .requirements import (
    LOCK_FILES,
    apply_pins,
    interpreter_version,
    line_name,
    lock_install,
    locked_version,
    pip_check_problems,
    pip_install_args,
    python_requirement,
    python_version,
    version_ok,
)
from .spec import DEFAULT_PYTHON, Spec
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
        broken = venv_problem(spec, rel)
        if broken:
            info = rebuild_venv(spec, tag, rel, broken)
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


def venv_problem(spec: Spec, rel: Path) -> str | None:
    """Why a built release's virtualenv no longer starts Django (the interpreter it was made with is gone
    or another one answers under its name: an OS upgrade moved python3 from 3.11 to 3.13), or None."""
    py = rel / "venv/bin/python"
    if not (rel / "venv").is_dir():
        return None
    if not py.exists():  # (a dangling link: the interpreter is gone)
        return f"its interpreter {os.readlink(py) if py.is_symlink() else py} is gone"
    p = run([str(py), "-c", "import sys, django; print('%d.%d.%d' % sys.version_info[:3])"], user=spec.app_user, cwd=rel,
            check=False, quiet=True, timeout=120)
    if p.returncode == 0:
        return None
    made = re.search(r"^version\s*=\s*(\S+)", (rel / "venv/pyvenv.cfg").read_text() if (rel / "venv/pyvenv.cfg").exists() else "", re.M)
    now_is = interpreter_version(str(py))
    return (f"made with Python {made.group(1) if made else '?'}, its python is now {now_is or 'not starting'}: "
            f"{error_summary(p.stderr) or 'django does not import'}")


def rebuild_venv(spec: Spec, release: str, rel: Path, why: str) -> dict:
    """A built release whose virtualenv broke under it: a new one in its place with the same pins (the
    code, .env and static files stay); the broken one is put back if that fails."""
    tag, _, python = spec.recipe(release)
    have, req = python_version(python), python_requirement(tag_tree(spec.repo, tag))
    if have is None or not version_ok(have, req):
        raise Refusal(f"releases/{release}'s virtualenv no longer starts ({why}), and {python} on the server "
                      f"({'missing' if have is None else '%d.%d' % have}) is not what {tag} asks for ({req}): set jhe:python to an "
                      f"interpreter it accepts, or install one")
    log(f"releases/{release}: the virtualenv no longer starts ({why}); building it again")
    t = time.monotonic()
    aside = rel / f"venv.broken-{int(time.time())}"
    (rel / "venv").rename(aside)
    try:
        info = _install(spec, release, rel)
    except BaseException as e:
        shutil.rmtree(rel / "venv", ignore_errors=True)
        aside.rename(rel / "venv")
        if isinstance(e, Refusal):
            raise Refusal(f"releases/{release}'s virtualenv no longer starts ({why}), and building it again failed: {e} "
                          f"(the broken one is back as it was)") from e
        raise
    shutil.rmtree(aside, ignore_errors=True)
    old = json.loads((rel / ".jhe-release.json").read_text())
    info = {**old, **info, "rebuilt": {"at": now(), "why": why, "seconds": round(time.monotonic() - t, 1)}}
    (rel / ".jhe-release.json").write_text(json.dumps(info) + "\n")
    log(f"releases/{release}: virtualenv built again with Python {info['python']} in {info['rebuilt']['seconds']} s")
    return {**info, "rebuiltNow": True}


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


def _build(spec: Spec, release: str, env: dict[str, str], rel: Path) -> dict:
    tag, pins, python = spec.recipe(release)
    archive = subprocess.run(["git", "-C", str(spec.repo), "archive", "--format=tar", tag], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(rel)], input=archive.stdout, check=True)
    run(["chown", "-R", f"{spec.app_user}:{spec.app_group}", str(rel)])
    try:
        info = _install(spec, release, rel)
    except Refusal as e:
        raise Refusal(f"{e} (nothing changed; the half-built release was removed)") from e
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
    return {"tag": tag, "release": release, "built": now(), **info}


def _install(spec: Spec, release: str, rel: Path) -> dict:
    """releases/<release>/venv: made with the release's interpreter, the tag's lock installed as it is,
    then jhe:pins over it."""
    tag, pins, python = spec.recipe(release)
    lock, pinned, replaced = apply_pins(lock_install(tag_tree(spec.repo, tag)), pins)
    p = run([python, "-m", "venv", str(rel / "venv")], user=spec.app_user, check=False)
    if p.returncode != 0:
        raise Refusal(f"making {release}'s virtualenv with {python} failed: {error_summary(p.stderr)}")
    pip = str(rel / "venv/bin/pip")
    # The lock as it is, then the pins over it (jhe:pins), each without resolving: exactly these versions.
    for name, lines, this in (("requirements", lock["lines"], lock), ("pins", pinned, {**lock, "exact": True, "hashed": False})):
        if not lines:
            continue
        req_file = rel / f".jhe-{name}.txt"
        req_file.write_text("\n".join(lines) + "\n")
        shutil.chown(req_file, spec.app_user, spec.app_group)
        p = run(pip_install_args(pip, str(req_file), this, spec.wheelhouse), user=spec.app_user, cwd=rel, timeout=1800, check=False)
        if p.returncode != 0:
            what = f"{tag}'s dependencies as its {LOCK_FILES[lock['tool']]} pins them" if name == "requirements" else \
                f"jhe:pins ({', '.join(pinned)}) over {tag}'s {LOCK_FILES[lock['tool']]}"
            raise Refusal(f"installing {what} with {python} failed: {error_summary(p.stderr)}")
    # Installed as locked, without resolving: a lock whose pins contradict each other still installs (as
    # `pipenv sync` does); pip check says what is inconsistent, reported but not fatal.
    problems = pip_check_problems(run([pip, "check"], user=spec.app_user, cwd=rel, check=False, quiet=True).stdout)
    # A pin is the operator's override of the lock: one that breaks what it needs or what needs it is refused.
    broken = [ln for ln in problems if pins and line_name(ln) in pins or any(f" {n} " in f" {ln.lower()} " for n in pins)]
    if broken:
        raise Refusal(f"jhe:pins ({', '.join(pinned)}) does not fit {tag}'s lock: {'; '.join(broken)} - pin what it needs too, "
                      f"or choose another version")
    version = interpreter_version(str(rel / "venv/bin/python"))
    return {"installer": lock["tool"], "requirements": len(lock["lines"]) + len(pinned), "exact": lock["exact"],
            "hashesChecked": lock["hashed"], "pipCheck": problems, "skipped": lock["skipped"],
            "python": version, "interpreter": python, "pins": {n: {"from": replaced.get(n), "to": v} for n, v in pins.items()}}


def build_change(spec: Spec, repo: Path, frm: str | None, to: str) -> dict | None:
    """For the plan: what the target release is built with beside its tag (jhe:pins, jhe:python) against
    the release that serves - None when both are their tags as locked, with python3."""
    tag, pins, python = spec.recipe(to)
    try:
        cur = json.loads((spec.release(frm) / ".jhe-release.json").read_text()) if frm else {}
    except (OSError, ValueError):
        cur = {}
    cur_pins = {n: p.get("to") for n, p in (cur.get("pins") or {}).items()}
    if not pins and not cur_pins and python == DEFAULT_PYTHON and cur.get("interpreter", DEFAULT_PYTHON) == DEFAULT_PYTHON:
        return None
    try:
        lines = lock_install(tag_tree(repo, tag))["lines"]
    except Refusal:
        lines = []
    locked = {line_name(ln): v for ln in lines if (v := locked_version(ln))}
    out: dict = {"tag": tag, "pins": {}}
    for n in sorted(set(pins) | set(cur_pins)):
        was = cur_pins.get(n) or (f"{locked.get(n)} (as locked)" if n in locked else None)
        want = pins.get(n) or (f"{locked.get(n)} (as locked)" if n in locked else None)
        if was != want:
            out["pins"][n] = {"from": was, "to": want}
    have = python_version(python)
    was = ".".join(str(cur["python"]).split(".")[:2]) if cur.get("python") else None
    out["python"] = {"from": was, "to": "%d.%d" % have if have else None, "interpreter": python}
    return out


def release_dependencies(spec: Spec, tag: str) -> dict | None:
    """How a built release's dependencies were installed, and what `pip check` found in them."""
    try:
        info = json.loads((spec.release(tag) / ".jhe-release.json").read_text())
    except (FileNotFoundError, ValueError):
        return None
    keys = ("installer", "requirements", "exact", "hashesChecked", "pipCheck", "python", "pins", "rebuilt")
    return {k: info.get(k) for k in keys if k in info}


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
