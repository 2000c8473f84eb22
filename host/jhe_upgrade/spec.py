"""The spec: what Pulumi wants (version, layout, names, settings), validated, and the host layout."""
from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

from .util import Refusal

NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")


TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


# A release: a tag, and when the stack builds it otherwise than the tag says (jhe:pins, jhe:python), what
# differs, as semver build metadata: v1.2.0+django-5.2.19, v2.0.0+py3.13, v1.2.0+django-5.2.19.py3.13.
# A tag never holds "+" (TAG), so the part before it is always the git tag.
RELEASE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}(\+[A-Za-z0-9.-]{1,200})?$")
PIN_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,98}[A-Za-z0-9])?$")
PIN_VERSION = re.compile(r"^\d+(?:\.\d+){0,3}(?:(?:a|b|rc)\d+)?(?:\.post\d+)?$")
PYTHON = re.compile(r"^python3(?:\.\d{1,2})?$")
DEFAULT_PYTHON = "python3"


def pin_name(name: str) -> str:
    """A package's normalized name (PEP 503), as pins and lock lines are compared."""
    return re.sub(r"[-_.]+", "-", name).lower()


def release_id(tag: str, pins: dict[str, str], python: str) -> str:
    """The release a stack asks for (components/config.ts computes the same)."""
    parts = [f"{pin_name(n)}-{v}" for n, v in sorted(pins.items(), key=lambda kv: pin_name(kv[0]))]
    if python != DEFAULT_PYTHON:
        parts.append(python.replace("python", "py"))
    return tag + ("+" + ".".join(parts) if parts else "")


def tag_of(release: str) -> str:
    """The git tag a release is built from."""
    return release.split("+", 1)[0]


PATH = re.compile(r"^/(?:[A-Za-z0-9._-]+/?)*$")


ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*$")


class Spec:
    def __init__(self, d: dict):
        def need(key, rx=None):
            v = d.get(key)
            if not isinstance(v, str) or (rx and not rx.match(v)):
                raise Refusal(f"spec.{key} is missing or malformed ({v!r})")
            return v
        self.raw = d
        # Steps that do not aim at a version (adopt, status, unlock) get a spec without one.
        self.version = need("version", RELEASE) if d.get("version") is not None else None
        self.tag = tag_of(self.version) if self.version else None
        # How the release is built: the tag's lock with these pins over it, in a venv of this interpreter.
        pins = d.get("pins") or {}
        if not isinstance(pins, dict) or not all(isinstance(k, str) and PIN_NAME.match(k) and isinstance(v, str) and PIN_VERSION.match(v)
                                                 for k, v in pins.items()):
            raise Refusal(f"spec.pins is malformed ({pins!r}): give package: exact version, e.g. django: 5.2.19")
        self.pins = {pin_name(k): v for k, v in pins.items()}
        self.python = d.get("python") or DEFAULT_PYTHON
        if not isinstance(self.python, str) or not PYTHON.match(self.python):
            raise Refusal(f"spec.python is malformed ({self.python!r}): give an interpreter's name, e.g. python3.13")
        if self.version and release_id(self.tag or "", self.pins, self.python) != self.version:
            raise Refusal(f"spec.version {self.version} is not the release of tag {self.tag} with pins {self.pins} and {self.python} "
                          f"({release_id(self.tag or '', self.pins, self.python)}): the program and the host tool disagree")
        self.app_root = Path(need("appRoot", PATH))
        self.app_user = need("appUser", NAME)
        self.app_group = need("appGroup", NAME)
        self.service = need("serviceName", NAME)
        self.backup_dir = Path(need("backupDir", PATH))
        self.repo_url = need("repoUrl")
        self.site_url = need("siteUrl")
        self.stage = d.get("stage", "staging")
        self.db_name = need("dbName", re.compile(r"^[a-z_][a-z0-9_]{0,62}$"))
        self.db_user = need("dbUser", re.compile(r"^[a-z_][a-z0-9_]{0,62}$"))
        self.keep = int(d.get("keepReleases", 5))
        self.owner = str(d.get("owner", "unknown"))
        client = (os.environ.get("SSH_CLIENT") or "").split(" ")[0]
        self.operator = f"{os.environ.get('SUDO_USER') or pwd.getpwuid(os.getuid()).pw_name}" + (f" from {client}" if client else "")
        self.wheelhouse = d.get("wheelhouse") or None
        self.health_timeout = float(d.get("healthTimeout", 60))
        # staged: migrate a copy of the database while the old version serves (DESIGN.md §3 lever);
        # in-window: the runbook's way, dump and migrate the live database with the app stopped.
        self.strategy = d.get("migrationStrategy", "staged")
        if self.strategy not in ("staged", "in-window"):
            raise Refusal(f"spec.migrationStrategy must be staged or in-window (got {self.strategy!r})")
        self.env = {k: str(v) for k, v in (d.get("env") or {}).items()}
        self.secret_env = {k: str(v) for k, v in (d.get("secretEnv") or {}).items()}
        self.env_unset = [str(k) for k in (d.get("envUnset") or [])]
        if not all(ENV_NAME.match(k) for k in self.env_unset):
            raise Refusal(f"spec.envUnset is malformed ({self.env_unset!r})")
        for k, v in {**self.env, **self.secret_env}.items():
            if not ENV_NAME.match(k) or "\0" in v or "${" in v:  # newlines are written as \n escapes
                raise Refusal(f"spec env {k} is malformed")
        host = re.sub(r"^https?://", "", self.site_url).split("/")[0].split(":")[0]
        self.site_host = host

    def recipe(self, release: str) -> tuple[str, dict[str, str], str]:
        """(tag, pins, interpreter) a release is built with: the stack's for its own release; a tag as
        it is, with the server's python3, for any other (an adopted in-place install)."""
        if release == self.version:
            return tag_of(release), self.pins, self.python
        return tag_of(release), {}, DEFAULT_PYTHON

    def need_version(self) -> str:
        """The target version, for the steps that aim at one."""
        if not self.version:
            raise Refusal("spec.version is missing: this step aims at a version")
        return self.version

    # layout
    @property
    def releases(self) -> Path: return self.app_root / "releases"
    @property
    def current(self) -> Path: return self.app_root / "current"
    @property
    def repo(self) -> Path: return self.app_root / "repo.git"
    @property
    def meta(self) -> Path: return self.app_root / ".jhe-upgrade"
    @property
    def state_file(self) -> Path: return self.meta / "state.json"
    @property
    def lock_file(self) -> Path: return self.meta / "lock.json"
    @property
    def maintenance_dir(self) -> Path: return Path("/var/lib/jhe-upgrade") / self.service
    @property
    def maintenance_flag(self) -> Path: return self.maintenance_dir / "maintenance-on"
    @property
    def log_file(self) -> Path: return self.app_root / "UPGRADE_LOG.md"
    def release(self, tag: str) -> Path: return self.releases / tag
