"""A server made ready: app user, database, adoption of an in-place install, a superuser."""
from __future__ import annotations

import json
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
from .util import Refusal, error_summary, now, run


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


# Run by `manage.py shell` with the release's settings: works with any user model - Django's (log in
# by username) or a custom one such as JHE's JheUser (USERNAME_FIELD = "email", no username) - through
# its own manager's create_superuser. Prints one JSON line.
SUPERUSER_CODE = """
import json, os, sys
from django.contrib.auth import get_user_model
U = get_user_model()
field, email_field = U.USERNAME_FIELD, U.get_email_field_name()
user, email, password = (os.environ.get(k, "") for k in ("JHE_ADMIN_USER", "JHE_ADMIN_EMAIL", "JHE_ADMIN_PASSWORD"))
ident = email if field == email_field else user
if not ident:
    sys.exit(f"this app's users log in by {field}: set jhe:admin{'Email' if field == email_field else 'User'}")
extra = {email_field: email} if email and field != email_field else {}
missing = [f for f in U.REQUIRED_FIELDS if f not in extra and f != field]
u = U._default_manager.filter(**{field: ident}).first()
if u is None:
    if missing:
        sys.exit(f"this app's user model also requires {', '.join(missing)} for a superuser, which the stack cannot give")
    U._default_manager.create_superuser(**{field: ident}, password=password, **extra)
    made = True
else:
    u.is_staff = u.is_superuser = u.is_active = True
    u.set_password(password)
    u.save()
    made = False
print(json.dumps({"login": field, "as": ident, "result": "created" if made else "updated"}))
"""


def step_superuser(spec: Spec) -> dict:
    """A Django superuser from the stack's config (password a secret), created once; an existing one
    gets the configured password. The identifier is what the app's user model logs in by: jhe:adminUser
    for Django's own, jhe:adminEmail for an e-mail model such as JHE's."""
    user, email, password = spec.raw.get("adminUser") or "", spec.raw.get("adminEmail") or "", spec.raw.get("adminPassword")
    if not (user or email) or not password:
        raise Refusal("a superuser needs jhe:adminUser (or jhe:adminEmail, for apps whose users log in by e-mail, as JHE) "
                      "and the secret jhe:adminPassword")
    rel = spec.current.resolve()
    env = {**os.environ, "JHE_ADMIN_USER": user, "JHE_ADMIN_EMAIL": email, "JHE_ADMIN_PASSWORD": password}
    p = run(["runuser", "-u", spec.app_user, "--preserve-environment", "--", str(rel / "venv/bin/python"), "manage.py", "shell",
             "-c", SUPERUSER_CODE], cwd=rel, env=env, quiet=True, check=False)
    if p.returncode != 0:
        raise Refusal(f"creating the superuser failed: {error_summary(p.stderr)}")
    result = json.loads(p.stdout.strip().splitlines()[-1])
    return {"superuser": result["as"], "login": result["login"], "result": result["result"]}
