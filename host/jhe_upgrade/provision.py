"""A server made ready: app user, database, adoption of an in-place install, a superuser."""
from __future__ import annotations

import os
import pwd
import shutil

from .db import ensure_database
from .envfile import parse_env
from .gitrepo import ensure_repo, fetch_tags, tag_exists
from .release import build_release, switch_current
from .spec import TAG, Spec
from .state import current_version, load_state, release_lock, save_state, take_lock
from .upgradelog import append_log
from .util import Refusal, now, run


def ensure_user(spec: Spec) -> list[str]:
    """The app's group and system user (a bare server has neither)."""
    done = []
    if run(["getent", "group", spec.app_group], check=False, quiet=True).returncode != 0:
        run(["groupadd", "--system", spec.app_group])
        done.append(f"group {spec.app_group}")
    try:
        pwd.getpwnam(spec.app_user)
    except KeyError:
        run(["useradd", "--system", "--gid", spec.app_group, "--home-dir", f"/home/{spec.app_user}", "--create-home",
             "--shell", "/usr/sbin/nologin", spec.app_user])
        done.append(f"user {spec.app_user}")
    return done


def step_adopt(spec: Spec) -> dict:
    """Adopt a server: create the releases layout. An in-place (runbook) install keeps serving while
    its version is rebuilt as releases/<tag> with its own .env; the switch to it happens when the
    unit and nginx site that point at `current` are installed (one restart)."""
    take_lock(spec, "adopt")
    provisioned = ensure_user(spec) + ensure_database(spec)
    for d in (spec.app_root, spec.releases):
        d.mkdir(parents=True, exist_ok=True)
    shutil.chown(spec.app_root, spec.app_user, spec.app_group)
    shutil.chown(spec.releases, spec.app_user, spec.app_group)
    spec.meta.mkdir(exist_ok=True)
    os.chmod(spec.meta, 0o700)
    ensure_repo(spec)
    if spec.current.is_symlink():
        release_lock(spec)
        return {"adopted": False, "layout": "releases", "current": current_version(spec), "provisioned": provisioned}
    if (spec.app_root / ".git").exists() and (spec.app_root / "manage.py").exists():
        tag = current_version(spec)
        if not tag or not TAG.match(tag):
            raise Refusal(f"the in-place install at {spec.app_root} is not at a tag (git describe: {tag!r}); "
                          f"check out the tag it runs, then run again")
        # The in-place checkout's own remote is the source of truth for its history.
        fetch_tags(spec)
        if not tag_exists(spec.repo, tag):
            run(["git", "-C", str(spec.repo), "fetch", "-q", str(spec.app_root), f"refs/tags/{tag}:refs/tags/{tag}"])
        env = parse_env((spec.app_root / ".env").read_text()) if (spec.app_root / ".env").exists() else {}
        build_release(spec, tag, env)
        switch_current(spec, tag)
        state = load_state(spec)
        state["adopted"] = {"from": str(spec.app_root), "version": tag, "at": now()}
        save_state(spec, state)
        append_log(spec, f"## Adopted {tag} - {now()}\n\n**Performed by:** {spec.operator} (stack {spec.owner})\n\n"
                         f"The in-place install in {spec.app_root} was rebuilt as releases/{tag} (same .env); "
                         f"the unit and nginx site now serve `current`. The old checkout's files stay in place, untouched.\n")
        release_lock(spec)
        return {"adopted": True, "layout": "releases", "current": tag}
    release_lock(spec)
    return {"adopted": False, "layout": "none", "current": None, "provisioned": provisioned}


def step_superuser(spec: Spec) -> dict:
    """A Django superuser from the stack's config (password a secret), created once; an existing one
    gets the configured password."""
    user, email, password = spec.raw.get("adminUser"), spec.raw.get("adminEmail") or "", spec.raw.get("adminPassword")
    if not user or not password:
        raise Refusal("jhe:adminUser and the secret jhe:adminPassword are both needed for a superuser")
    rel = spec.current.resolve()
    env = {**os.environ, "DJANGO_SUPERUSER_USERNAME": user, "DJANGO_SUPERUSER_EMAIL": email, "DJANGO_SUPERUSER_PASSWORD": password}
    code = ("import os; from django.contrib.auth import get_user_model; U = get_user_model(); "
            "u, made = U.objects.get_or_create(username=os.environ['DJANGO_SUPERUSER_USERNAME'], "
            "defaults={'email': os.environ['DJANGO_SUPERUSER_EMAIL']}); u.is_staff = u.is_superuser = True; "
            "u.set_password(os.environ['DJANGO_SUPERUSER_PASSWORD']); u.save(); print('created' if made else 'updated')")
    p = run(["runuser", "-u", spec.app_user, "--preserve-environment", "--", str(rel / "venv/bin/python"), "manage.py", "shell",
             "-c", code],
            cwd=rel, env=env, quiet=True)
    return {"superuser": user, "result": p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "?"}
