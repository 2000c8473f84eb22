#!/usr/bin/env python3
"""jhe-upgrade's host-side tool: runs ON the JHE server, one step per call.

Pulumi states the target (version, config); each step looks at what the server really is (current
release, applied migrations, backups, the host lock) and converges it to that target. A step that
finds its work done does nothing, so a failed or interrupted `pulumi up` is repaired by running it
again. Standard library only (the server has Python because JHE is Python).

    jhe_upgrade.py <step> < spec.json       steps: adopt preflight prepare backup migrate switch
                                                   health finish plan status unlock
Prints one JSON line (the step's result) on stdout; progress goes to stderr. Exit 0 on success,
1 on a refusal or failure (the message says what happened and what was restored), 2 on misuse.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python < 3.11: uv.lock/pyproject read by a small fallback below
    tomllib = None

TOOL_VERSION = 1
T0 = time.monotonic()
STEP = "?"


# ---- small helpers -----------------------------------------------------------------------------

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


def psql(db: str, sql: str, *, check: bool = True) -> str:
    return run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
               user="postgres", cwd="/", check=check, quiet=True).stdout.strip()


def sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


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


# ---- the spec (what Pulumi wants) and the layout ---------------------------------------------

NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
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
        self.version = need("version", TAG) if d.get("version") is not None else None
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
        for k, v in {**self.env, **self.secret_env}.items():
            if not ENV_NAME.match(k) or "\n" in v or "\r" in v or "\0" in v or "${" in v:
                raise Refusal(f"spec env {k} is malformed")
        host = re.sub(r"^https?://", "", self.site_url).split("/")[0].split(":")[0]
        self.site_host = host

    def need_version(self) -> None:
        if not self.version:
            raise Refusal("spec.version is missing: this step aims at a version")

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


def load_state(spec: Spec) -> dict:
    try:
        return json.loads(spec.state_file.read_text())
    except FileNotFoundError:
        return {}


def save_state(spec: Spec, state: dict) -> None:
    spec.meta.mkdir(parents=True, exist_ok=True)
    write_private(spec.state_file, json.dumps(state, indent=2, sort_keys=True) + "\n")


def current_version(spec: Spec) -> str | None:
    """The version serving now: `current`'s release, or an in-place (legacy) checkout's tag."""
    if spec.current.is_symlink():
        return os.readlink(spec.current).rstrip("/").split("/")[-1]
    if (spec.app_root / ".git").exists():
        p = run(["git", "-C", str(spec.app_root), "describe", "--tags", "--exact-match"], check=False, quiet=True)
        if p.returncode == 0:
            return p.stdout.strip()
        p = run(["git", "-C", str(spec.app_root), "describe", "--tags"], check=False, quiet=True)
        return p.stdout.strip() or None
    return None


def live_root(spec: Spec) -> Path | None:
    """Directory of the code serving now (current release, or the in-place checkout)."""
    if spec.current.is_symlink():
        return spec.current.resolve()
    if (spec.app_root / "manage.py").exists():
        return spec.app_root
    return None


# ---- the host lock -----------------------------------------------------------------------------

def take_lock(spec: Spec, purpose: str) -> None:
    """One upgrade at a time per server. The holder is the stack (org/project/stack); the same stack
    re-running after an interruption continues under its own lock."""
    spec.meta.mkdir(parents=True, exist_ok=True)
    os.chmod(spec.meta, 0o700)
    with open(spec.meta / ".lock.guard", "a") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            held = json.loads(spec.lock_file.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            held = None
        if held and held.get("owner") != spec.owner:
            raise Refusal(
                f"the server is locked by another upgrade: stack {held.get('owner')} "
                f"(operator {held.get('operator')}, {held.get('purpose')}, since {held.get('since')}). "
                f"Wait for it to finish; if it died, run `npm run jhe-host -- unlock` for that stack's server "
                f"after checking nobody is upgrading")
        if not held or held.get("purpose") != purpose:
            write_private(spec.lock_file, json.dumps({"owner": spec.owner, "operator": spec.operator,
                                                      "purpose": purpose, "since": now(), "pid": os.getpid()}))


def release_lock(spec: Spec) -> None:
    try:
        held = json.loads(spec.lock_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return
    if held.get("owner") == spec.owner:
        spec.lock_file.unlink()


# ---- the repository and a tag's facts ----------------------------------------------------------

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


def tag_exists(repo: Path, tag: str) -> bool:
    return run(["git", "-C", str(repo), "rev-parse", "-q", "--verify", f"refs/tags/{tag}^{{commit}}"],
               check=False, quiet=True).returncode == 0


def show(repo: Path, tag: str, path: str) -> str | None:
    p = run(["git", "-C", str(repo), "show", f"{tag}:{path}"], check=False, quiet=True)
    return p.stdout if p.returncode == 0 else None


def ls_tree(repo: Path, tag: str, path: str) -> list[str]:
    p = run(["git", "-C", str(repo), "ls-tree", "--name-only", f"{tag}:{path}"], check=False, quiet=True)
    return p.stdout.split() if p.returncode == 0 else []


def env_example(repo: Path, tag: str) -> tuple[str | None, dict[str, bool]]:
    """The tag's env example file and its variables: name -> required. A variable right after a
    '# optional' comment line may be left out; every other one is required."""
    for name in (".env.example", "dot_env_example.txt"):
        text = show(repo, tag, name)
        if text is not None:
            out: dict[str, bool] = {}
            optional = False
            for line in text.splitlines():
                s = line.strip()
                if s.startswith("#"):
                    optional = optional or bool(re.match(r"#\s*optional\b", s, re.I))
                    continue
                m = re.match(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=", s)
                if m:
                    out[m.group(1)] = not optional
                optional = False
            return name, out
    return None, {}


def env_added(repo: Path, frm: str | None, to: str) -> list[str]:
    """Variables in `to`'s env example that `frm`'s does not have."""
    _, wanted = env_example(repo, to)
    _, had = env_example(repo, frm) if frm and tag_exists(repo, frm) else (None, {})
    return [k for k in wanted if k not in had]


def tag_migrations(repo: Path, tag: str) -> list[str]:
    """app.name of every migration file in the tag (apps: top-level dirs with a migrations/)."""
    out = []
    for app in ls_tree(repo, tag, ""):
        for f in ls_tree(repo, tag, f"{app}/migrations"):
            if re.match(r"^\d{4}_\w+\.py$", f):
                out.append(f"{app}.{f[:-3]}")
    return sorted(out)


def applied_migrations(spec: Spec, db: str | None = None) -> list[str]:
    db = db or spec.db_name
    exists = psql(db, "SELECT to_regclass('public.django_migrations') IS NOT NULL", check=False)
    if exists != "t":
        return []
    rows = psql(db, "SELECT app || '.' || name FROM django_migrations ORDER BY app, name")
    return [r for r in rows.splitlines() if r]


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
    cur = None
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


def tag_tree(repo: Path, tag: str) -> dict[str, str]:
    files = {}
    for f in ("Pipfile", "Pipfile.lock", "uv.lock", "pyproject.toml", "requirements.txt"):
        t = show(repo, tag, f)
        if t is not None:
            files[f] = t
    return files


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


def pg_major() -> int:
    return int(psql("postgres", "SHOW server_version_num")) // 10000


# ---- .env --------------------------------------------------------------------------------------

def parse_env(text: str) -> dict[str, str]:
    """Reads a .env the way python-dotenv does for the forms found in practice: unquoted (a ' #'
    starts a comment), single-quoted (\\\\ and \\' escapes), double-quoted (\\\\ \\" \\n \\t escapes)."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$", line)
        if not m:
            continue
        k, v = m.group(1), m.group(2)
        if v[:1] == "'" and (q := re.match(r"^'((?:\\.|[^'\\])*)'", v)):
            v = re.sub(r"\\([\\'])", r"\1", q.group(1))
        elif v[:1] == '"' and (q := re.match(r'^"((?:\\.|[^"\\])*)"', v)):
            v = re.sub(r'\\([\\"nt])', lambda e: {"n": "\n", "t": "\t"}.get(e.group(1), e.group(1)), q.group(1))
        else:
            v = re.split(r"\s+#", v, maxsplit=1)[0].strip()
        out[k] = v
    return out


def render_env(env: dict[str, str]) -> str:
    lines = ["# Written by jhe-upgrade from the live .env and the stack's config; edit the stack, not this file."]
    for k in sorted(env):
        v = env[k]
        # python-dotenv reads single-quoted values literally, with \\ and \' as the only escapes.
        needs_quotes = v != v.strip() or not re.match(r"^[A-Za-z0-9_.,:/@+=%-]*$", v)
        lines.append(f"{k}=" + ("'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'" if needs_quotes else v))
    return "\n".join(lines) + "\n"


def target_env(spec: Spec, tag: str) -> dict[str, str]:
    """The .env the release `tag` runs with: that release's own .env if it was deployed before
    (a rollback gets its old config back), else the live .env; then the stack's config on top."""
    base_file = spec.release(tag) / ".env"
    if not base_file.exists():
        root = live_root(spec)
        base_file = root / ".env" if root else None
    base = parse_env(base_file.read_text()) if base_file and base_file.exists() else {}
    env = {**base, "SITE_URL": spec.site_url, **spec.env, **spec.secret_env}
    env.setdefault("DB_NAME", spec.db_name)
    env.setdefault("DB_USER", spec.db_user)
    if spec.raw.get("dbPassword"):
        env["DB_PASSWORD"] = spec.raw["dbPassword"]
    env.setdefault("DB_HOST", "localhost")
    env.setdefault("DB_PORT", "5432")
    return env


def env_problems(spec: Spec, tag: str, env: dict[str, str]) -> list[str]:
    problems = []
    example_name, wanted = env_example(spec.repo, tag)
    for k, required in wanted.items():
        if required and k not in env:
            problems.append(
                f"{tag} requires the environment variable {k} (see its {example_name}), which the server's .env "
                f"and the stack's config do not set: `pulumi config set --path 'jhe:env.{k}' <value>` "
                f"(or --secret --path 'jhe:secretEnv.{k}' for a secret)")
    if spec.stage == "prod" and env.get("DEBUG", "") != "":
        problems.append("DEBUG is set in the server's .env; JHE turns DEBUG on for any non-empty value "
                        "(even \"False\"); on a prod stack remove it (jhe:env.DEBUG = \"\")")
    if "SMTP_PORT" in env and not env["SMTP_PORT"].strip().isdigit():
        problems.append(f"SMTP_PORT={env['SMTP_PORT']!r} in the server's .env crashes every manage.py command; "
                        f"set jhe:env.SMTP_PORT to a port number or remove it")
    if not env.get("SECRET_KEY"):
        problems.append("SECRET_KEY is not set: without it every JHE worker invents its own and sessions break; "
                        "`pulumi config set --secret --path 'jhe:secretEnv.SECRET_KEY' <value>`")
    if not env.get("DB_NAME"):
        problems.append("DB_NAME is empty: JHE would silently use the 'postgres' database")
    if not env.get("DB_PASSWORD") and not env.get("DB_HOST", "").startswith("/"):
        problems.append("DB_PASSWORD is not set (neither in the server's .env nor in the stack): "
                        "`pulumi config set --secret jhe:dbPassword <password>`")
    return problems


# ---- the maintenance window --------------------------------------------------------------------

def service_active(spec: Spec) -> bool:
    return run(["systemctl", "is-active", "--quiet", spec.service], check=False, quiet=True).returncode == 0


def open_window(spec: Spec, state: dict) -> None:
    """Maintenance page on, app stopped, database connections drained. Idempotent."""
    take_lock(spec, f"upgrade to {spec.version}")
    if not state.get("window"):
        state["window"] = {"opened": now(), "openedAt": time.time(), "id": os.urandom(6).hex()}
        save_state(spec, state)
    spec.maintenance_dir.mkdir(parents=True, exist_ok=True)
    spec.maintenance_flag.touch()
    if service_active(spec):
        run(["systemctl", "stop", spec.service])
    psql("postgres", f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     f"WHERE datname = {sql_literal(spec.db_name)} AND pid <> pg_backend_pid()")


def close_window(spec: Spec, state: dict) -> float:
    """Maintenance page off; returns the window's length in seconds (0 if none was open)."""
    if spec.maintenance_flag.exists():
        spec.maintenance_flag.unlink()
    w = state.pop("window", None)
    save_state(spec, state)
    return round(time.time() - w["openedAt"], 2) if w else 0.0


def start_service(spec: Spec) -> None:
    run(["systemctl", "start", spec.service])


# ---- backups -------------------------------------------------------------------------------------

def row_counts(spec: Spec, db: str | None = None) -> dict[str, int]:
    db = db or spec.db_name
    out = {}
    for t in ("core_patient", "core_observation"):
        if psql(db, f"SELECT to_regclass('public.{t}') IS NOT NULL") == "t":
            out[t] = int(psql(db, f"SELECT count(*) FROM {t}"))
    return out


def take_backup(spec: Spec, frm: str, to: str, db: str | None = None) -> dict:
    """pg_dump -Fc of the database (the live one, or `db`: one kept by rename) + sha256 + the config
    files, in a 0700 directory."""
    db = db or spec.db_name
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    d = spec.backup_dir / f"{stamp}-{frm}-to-{to}"
    n = 1
    while d.exists():  # two backups in one second (a re-run): never reuse a directory
        n += 1
        d = spec.backup_dir / f"{stamp}-{frm}-to-{to}-{n}"
    # Only root and the database's owner (postgres, who writes and restores the dump) get in.
    spec.backup_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(spec.backup_dir, "root", "postgres")
    os.chmod(spec.backup_dir, 0o710)
    d.mkdir(mode=0o700)
    shutil.chown(d, "postgres", "postgres")
    t = time.monotonic()
    dump = d / "db.dump"
    p = run(["pg_dump", "-Fc", "-Z", "1", "-f", str(dump), db], user="postgres", cwd="/", check=False)
    if p.returncode != 0:
        raise RuntimeError(f"pg_dump failed: {p.stderr.strip()[-400:]}")
    os.chmod(dump, 0o600)
    digest = sha256_file(dump)
    write_private(d / "db.dump.sha256", f"{digest}  db.dump\n")
    listing = run(["pg_restore", "--list", str(dump)], quiet=True)
    entries = sum(1 for l in listing.stdout.splitlines() if l and not l.startswith(";"))
    root = live_root(spec)
    copied = []
    for src, name in ((root / ".env" if root else None, "env"),
                      (Path(f"/etc/nginx/sites-available/{spec.service}"), "nginx-site"),
                      (Path(f"/etc/systemd/system/{spec.service}.service"), "systemd-unit")):
        if src and src.exists():
            shutil.copy2(src, d / name)
            os.chmod(d / name, 0o600)
            copied.append(name)
    manifest = {
        "id": d.name, "path": str(d), "from": frm, "to": to, "created": now(),
        "database": db, "dump": "db.dump", "sha256": digest, "bytes": dump.stat().st_size,
        "tocEntries": entries, "rowCounts": row_counts(spec, db), "appliedMigrations": applied_migrations(spec, db),
        "files": copied, "seconds": round(time.monotonic() - t, 2), "owner": spec.owner,
    }
    write_private(d / "manifest.json", json.dumps(manifest, indent=2) + "\n")
    log(f"backup {d} ({manifest['bytes']} bytes, sha256 {digest[:12]}…, {manifest['seconds']} s)")
    return manifest


def verify_backup(manifest: dict) -> None:
    dump = Path(manifest["path"]) / manifest["dump"]
    if not dump.exists() or sha256_file(dump) != manifest["sha256"]:
        raise RuntimeError(f"backup {manifest['id']} fails its sha256 check: it changed after it was written")
    run(["pg_restore", "--list", str(dump)], quiet=True)


def db_exists(name: str) -> bool:
    return psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(name)}") == "1"


def db_size(name: str) -> int:
    """Bytes of a database, 0 if there is none of that name."""
    return int(psql("postgres", f"SELECT coalesce((SELECT pg_database_size(datname) FROM pg_database "
                                f"WHERE datname = {sql_literal(name)}), 0)") or 0)


def data_dir_free() -> tuple[str, int]:
    """PostgreSQL's data directory and its free bytes (where a copy of a database goes)."""
    data_dir = psql("postgres", "SHOW data_directory")
    return data_dir, shutil.disk_usage(data_dir).free


def stamp_name(base: str, what: str) -> str:
    """A database name for a kept copy: <base>_<what>_<UTC time>, unique, at most 63 bytes."""
    t = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d%H%M%S")
    name = f"{base}_{what}_{t}"[:63]
    n = 1
    while db_exists(name):
        n += 1
        name = f"{base}_{what}_{t}_{n}"[:63]
    return name


def backend_pids(db: str) -> list[int]:
    """Server processes of client sessions on `db`, from their process titles ("postgres: [cluster: ]user
    db ..."): a session leaves pg_stat_activity before its exit hooks have run, a process only after."""
    rx = re.compile(rb"^postgres: (?:\S+: )?\S+ " + re.escape(db.encode()) + rb" ")
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if rx.match((d / "cmdline").read_bytes()):
                    pids.append(int(d.name))
            except OSError:
                pass
    return pids


def drain(db: str, wait: float = 15.0) -> bool:
    """Ends every session on `db` and waits (bounded) until their processes are gone (their statistics
    are written by then). True when none is left."""
    deadline = time.monotonic() + wait
    while True:
        pids = backend_pids(db)
        if not pids:
            return True
        if time.monotonic() > deadline:
            return False
        psql("postgres", f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                         f"WHERE datname = {sql_literal(db)} AND pid <> pg_backend_pid()")
        time.sleep(0.05)


def copy_db_properties(src: str, dst: str) -> None:
    """What a dump does not carry but the database has: its privileges (GRANT CONNECT ...), connection
    limit and settings (ALTER DATABASE / ALTER ROLE ... IN DATABASE ... SET), copied as the catalogs
    hold them, so a database made from a dump can take the live one's place."""
    psql("postgres", f"""BEGIN;
UPDATE pg_database d SET datacl = s.datacl, datconnlimit = s.datconnlimit
  FROM pg_database s WHERE s.datname = {sql_literal(src)} AND d.datname = {sql_literal(dst)};
DELETE FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = {sql_literal(dst)});
INSERT INTO pg_db_role_setting (setdatabase, setrole, setconfig)
  SELECT (SELECT oid FROM pg_database WHERE datname = {sql_literal(dst)}), setrole, setconfig
  FROM pg_db_role_setting WHERE setdatabase = (SELECT oid FROM pg_database WHERE datname = {sql_literal(src)});
COMMIT;""")


def swap_in(spec: Spec, state: dict, new_db: str, keep_as: str) -> None:
    """The live database becomes `keep_as` and `new_db` takes its name: two renames, well under a
    second at any size. Recorded first, so recovery (and a re-run) can put the previous one back."""
    state["swap"] = {"previous": keep_as, "in": new_db, "at": now()}
    save_state(spec, state)
    drain(spec.db_name)
    psql("postgres", f'ALTER DATABASE "{spec.db_name}" RENAME TO "{keep_as}"')
    try:
        psql("postgres", f'ALTER DATABASE "{new_db}" RENAME TO "{spec.db_name}"')
    except Exception:
        psql("postgres", f'ALTER DATABASE "{keep_as}" RENAME TO "{spec.db_name}"')
        state.pop("swap", None)
        save_state(spec, state)
        raise
    log(f"database {new_db} is now {spec.db_name}; the previous one is kept as {keep_as}")


def swap_back(spec: Spec, state: dict) -> str | None:
    """Undoes this window's swap: the database it replaced serves again under the live name; the one
    that had taken its place is kept (renamed, never dropped). Returns that name, None if no swap."""
    sw = state.get("swap")
    if not sw or not db_exists(sw["previous"]):
        return None
    failed = stamp_name(spec.db_name, "failed")
    drain(spec.db_name)
    if db_exists(spec.db_name):
        psql("postgres", f'ALTER DATABASE "{spec.db_name}" RENAME TO "{failed}"')
    psql("postgres", f'ALTER DATABASE "{sw["previous"]}" RENAME TO "{spec.db_name}"')
    state.pop("swap", None)
    for b in [state.get("backup") or {}, *(state.get("backups") or {}).values()]:
        if b.get("keptDatabase") == sw["previous"]:
            b["keptDatabase"] = None  # it is the live database again
    save_state(spec, state)
    log(f"database {sw['previous']} is {spec.db_name} again; the replaced one is kept as {failed}")
    return failed


def restore_backup(spec: Spec, manifest: dict) -> str:
    """Puts the database back to the backup. The database being replaced is kept, renamed, never
    dropped. Returns the name it was kept under."""
    verify_backup(manifest)
    keep = f"{spec.db_name}_replaced_{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d%H%M%S')}"[:63]
    psql("postgres", f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     f"WHERE datname = {sql_literal(spec.db_name)} AND pid <> pg_backend_pid()")
    psql("postgres", f'ALTER DATABASE "{spec.db_name}" RENAME TO "{keep}"')
    try:
        psql("postgres", f'CREATE DATABASE "{spec.db_name}" OWNER "{spec.db_user}" TEMPLATE template0 ENCODING \'UTF8\'')
        copy_db_properties(keep, spec.db_name)
        p = run(["pg_restore", "-j", "2", "--no-owner", "--role", spec.db_user, "-d", spec.db_name,
                 str(Path(manifest["path"]) / manifest["dump"])], user="postgres", cwd="/", check=False)
        if p.returncode != 0:
            raise RuntimeError(f"pg_restore failed: {p.stderr.strip()[-400:]}")
    except Exception:
        # Put the database that was there back under its name; the half-restored one holds nothing
        # the backup does not, so it goes.
        psql("postgres", f'DROP DATABASE IF EXISTS "{spec.db_name}"', check=False)
        psql("postgres", f'ALTER DATABASE "{keep}" RENAME TO "{spec.db_name}"')
        raise
    log(f"database restored from {manifest['id']}; the replaced one is kept as {keep}")
    return keep


# ---- staged migration: a copy migrated while the old version serves -----------------------------
# The backup is taken before the window (a consistent pg_dump while the old version serves), restored
# into a copy, and the copy is migrated with the new code - all outside the window. In the window the
# program checks, from PostgreSQL's per-table counters, that nothing was written to the live database
# since the backup began; then the migrated copy takes the live name by rename and the old database is
# kept as it was. If anything was written, the copy is dropped and the window does the runbook's way
# (dump, migrate in place), so no write is ever lost. A migration that fails on the copy fails before
# any window: the old version never stops serving.

MARKS_SQL = """SELECT c.relname, coalesce(s.n_tup_ins, 0), coalesce(s.n_tup_upd, 0), coalesce(s.n_tup_del, 0),
  c.relfilenode, md5(coalesce((SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod) || ' '
    || a.attnotnull, ',' ORDER BY a.attnum) FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0
    AND NOT a.attisdropped), ''))
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid
WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1"""


def table_marks(db: str) -> dict[str, list[str]]:
    """Per table: rows inserted/updated/deleted so far (counted even for aborted transactions), the
    file node (changes on TRUNCATE and rewrites) and a digest of the columns."""
    out = {}
    for line in psql(db, MARKS_SQL).splitlines():
        if line:
            name, *rest = line.split("|")
            out[name] = rest
    return out


def tables_written(before: dict, after: dict) -> list[str]:
    return sorted(t for t in set(before) | set(after) if before.get(t) != after.get(t))


def kept_name(spec: Spec, frm: str | None) -> str:
    """A new name for the database as `frm` had it, kept when it is left: <db>_was_<version>_<time>."""
    return stamp_name(spec.db_name, "was_" + re.sub(r"[^a-z0-9]+", "_", (frm or "none").lower()))


def staged_db(spec: Spec) -> str:
    return f"{spec.db_name}_staged"[:63]


def drop_staged(spec: Spec, state: dict) -> None:
    """The staged copy holds nothing the live database or the backup does not: it may go."""
    sdb = staged_db(spec)
    if db_exists(sdb):
        drain(sdb)
        psql("postgres", f'DROP DATABASE "{sdb}"')
    state.pop("staged", None)
    save_state(spec, state)


def choose_strategy(spec: Spec, kind: str, db_bytes: int) -> tuple[str, str]:
    """staged or in-window, and why (shown by preview and in the outputs)."""
    if spec.strategy != "staged":
        return "in-window", "jhe:migrationStrategy is in-window"
    if kind != "upgrade":
        return "in-window", f"a {kind} runs in the window"
    if psql("postgres", "SHOW track_counts") != "on":
        return "in-window", "track_counts is off: writes made during staging could not be detected"
    if psql("postgres", "SELECT count(*) FROM pg_prepared_xacts") != "0":
        return "in-window", "prepared transactions exist"
    data_dir, free = data_dir_free()
    need = 2 * db_bytes + 300 * 2**20
    if free < need:
        return "in-window", (f"the staged copy needs about {need // 2**20} MiB in {data_dir}, "
                             f"{free // 2**20} MiB are free")
    return "staged", "backup and migration on a copy while the old version serves; a rename swap in the window"


def ensure_backup_ahead(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """The backup taken before the window, with the table counters read just before it began."""
    b = state.get("backup")
    if (b and b.get("ahead") and b.get("from") == (frm or "none") and b.get("to") == to
            and (Path(b["path"]) / b["dump"]).exists()):
        verify_ahead(spec, state, frm, to, b)
        return b
    marks = table_marks(spec.db_name)
    b = take_backup(spec, frm or "none", to)
    b.update(window=None, ahead=True, marks=marks)
    verify_backup(b)
    state["backup"] = b
    register_backup(state, frm, to, b)
    save_state(spec, state)
    return b


def verify_ahead(spec: Spec, state: dict, frm: str | None, to: str, b: dict) -> None:
    """A backup taken before the window that no longer verifies is set aside (never used, kept on
    disk for a look) and the move refused; the next `pulumi up` takes a new one."""
    try:
        verify_backup(b)
    except (RuntimeError, subprocess.CalledProcessError) as e:
        state.pop("backup", None)
        key = f"{frm}->{to}"
        if (state.get("backups") or {}).get(key, {}).get("id") == b["id"]:
            del state["backups"][key]
        drop_staged(spec, state)
        raise refuse_unchanged(spec, state, frm, f"{e}; it is set aside, and `pulumi up` again takes a new one")


def register_backup(state: dict, frm: str | None, to: str, b: dict) -> None:
    state.setdefault("backups", {})[f"{frm}->{to}"] = {
        k: b.get(k) for k in ("id", "path", "dump", "sha256", "bytes", "created", "rowCounts", "appliedMigrations", "keptDatabase",
                              "liveSince")}


def migrate_copy(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """Restores the backup taken before the window into the staged copy and migrates the copy with
    the new release, while the old version serves. Refuses (nothing on the server changed) if the
    migration fails."""
    b = state["backup"]
    sdb = staged_db(spec)
    st = state.get("staged") or {}
    if st.get("to") == to and st.get("backup") == b["id"] and st.get("phase") == "migrated" and db_exists(sdb):
        return st
    drop_staged(spec, state)  # left over from an interrupted run: a copy, made again
    verify_ahead(spec, state, frm, to, b)
    st = {"to": to, "backup": b["id"], "db": sdb, "phase": "restoring"}
    state["staged"] = st
    save_state(spec, state)
    t = time.monotonic()
    enc = psql("postgres", f"SELECT pg_encoding_to_char(encoding) || '|' || datcollate || '|' || datctype "
                           f"FROM pg_database WHERE datname = {sql_literal(spec.db_name)}").split("|")
    psql("postgres", f'CREATE DATABASE "{sdb}" OWNER "{spec.db_user}" TEMPLATE template0 ENCODING {sql_literal(enc[0])} '
                     f"LC_COLLATE {sql_literal(enc[1])} LC_CTYPE {sql_literal(enc[2])}")
    copy_db_properties(spec.db_name, sdb)
    p = run(["pg_restore", "-j", "2", "--no-owner", "--role", spec.db_user, "-d", sdb, str(Path(b["path"]) / b["dump"])],
            user="postgres", cwd="/", check=False)
    if p.returncode != 0:
        drop_staged(spec, state)
        raise RuntimeError(f"pg_restore into the staged copy failed: {p.stderr.strip()[-400:]}")
    st["restoreSeconds"] = round(time.monotonic() - t, 2)
    before = set(applied_migrations(spec, sdb))
    st["phase"] = "migrating"
    save_state(spec, state)
    t = time.monotonic()
    rel = spec.release(to)
    # Through `manage.py shell` so the settings are the release's own, with DB_NAME pointing at the
    # copy (JHE's settings read the environment first); it refuses unless they really do.
    code = ("import os, sys; from django.conf import settings; from django.core.management import call_command; "
            "name = settings.DATABASES['default']['NAME']; "
            "sys.exit(f'the settings use database {name}, not the staged copy') if name != os.environ['DB_NAME'] "
            "else call_command('migrate', interactive=False, verbosity=1)")
    p = run([str(rel / "venv/bin/python"), "manage.py", "shell", "-c", code], user=spec.app_user, cwd=rel,
            env={**os.environ, "DB_NAME": sdb}, check=False, timeout=7200)
    applied = [m for m in applied_migrations(spec, sdb) if m not in before]
    if p.returncode != 0:
        err = error_summary(p.stderr)
        drop_staged(spec, state)
        raise refuse_unchanged(spec, state, frm, f"`manage.py migrate` of {to} failed on a staged copy of the database: {err}")
    st.update(phase="migrated", applied=applied, migrateSeconds=round(time.monotonic() - t, 2))
    save_state(spec, state)
    log(f"staged copy {sdb} migrated ({len(applied)} migrations, {st['migrateSeconds']} s) while {frm} serves")
    return st


def refuse_unchanged(spec: Spec, state: dict, frm: str | None, reason: str) -> Refusal:
    """A failure before the window: bookkeeping as after a recovery, though there was nothing to undo."""
    append_log(spec, f"## Refused: {(state.get('target') or {}).get('kind', 'upgrade')} {frm} -> {spec.version} - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**Downtime:** none\n\n"
                     f"**What failed:** {reason}\n\n**What was restored:** nothing needed it: {frm} served throughout\n")
    end_failed_move(spec, state, frm, reason, [])
    return Refusal(f"{reason}. Nothing on the server changed: {frm} kept serving throughout (no window was opened; "
                   f"the staged copy was dropped)")


def written_since_backup(spec: Spec, state: dict) -> tuple[list[str], dict | None]:
    """In the window: the tables written since the backup taken before it began (every session ended
    first), and the counters read. None written: the backup is exact as of this window, marked so."""
    b = state["backup"]
    marks = table_marks(spec.db_name) if drain(spec.db_name) else None
    written = tables_written(b["marks"], marks) if marks is not None else ["(sessions that did not end)"]
    if not written:
        b["window"] = state["window"]["id"]
        save_state(spec, state)
    return written, marks


def use_staged(spec: Spec, state: dict, frm: str | None, to: str) -> bool:
    """In the window, after a staged migration: True when the migrated copy took the live name;
    False when something was written since the backup began (the copy is dropped, the window then
    backs up and migrates the live database in place)."""
    b = state.get("backup") or {}
    st = state.get("staged") or {}
    sw = state.get("swap") or {}
    if st and sw.get("in") == st.get("db"):  # a re-run after an interruption around the renames
        if db_exists(sw["previous"]) and not db_exists(spec.db_name):
            psql("postgres", f'ALTER DATABASE "{sw["in"]}" RENAME TO "{spec.db_name}"')
        if db_exists(sw["previous"]) and not db_exists(sw["in"]):
            return _staged_swapped(spec, state, frm, to, sw["previous"])
        state.pop("swap", None)
    if not b.get("ahead") or st.get("phase") != "migrated" or not db_exists(st.get("db", "")):
        return False
    written, marks = written_since_backup(spec, state)
    if not written:
        state["dbTouched"] = True
        save_state(spec, state)
        kept = kept_name(spec, frm)
        swap_in(spec, state, st["db"], kept)
        # A client other than the app (stopped) could have written between the check and the rename:
        # the counters of the database kept, read again now that nobody can reach it, say so.
        written = tables_written(marks, table_marks(kept))
        if not written:
            return _staged_swapped(spec, state, frm, to, kept)
        b["window"] = None
        swap_back(spec, state)  # the copy stays, renamed: it was the live database for a moment
        state.pop("staged", None)
        save_state(spec, state)
    log(f"written since the backup began: {', '.join(written)}; the staged copy is dropped and the "
        f"window backs up and migrates the live database instead")
    state["stagedFallback"] = {"written": written, "at": now()}
    drop_staged(spec, state)
    return False


def _staged_swapped(spec: Spec, state: dict, frm: str | None, to: str, kept: str) -> bool:
    b, st = state["backup"], state["staged"]
    b["keptDatabase"] = kept
    register_backup(state, frm, to, b)
    st["phase"] = "swapped"
    state["dbTouched"] = True
    state["migrated"] = {"to": to, "applied": st.get("applied", []), "seconds": st.get("migrateSeconds"), "staged": True}
    save_state(spec, state)
    return True


# ---- releases ------------------------------------------------------------------------------------

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


def health(spec: Spec, tag: str, timeout: float) -> dict:
    """/health (must report `tag` where it reports a version), else /admin/ 200/302, straight at
    gunicorn with the site's Host header (JHE derives ALLOWED_HOSTS from SITE_URL)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for path in ("/health", "/admin/"):
            req = urllib.request.Request(f"http://127.0.0.1:8000{path}", headers={"Host": spec.site_host})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = r.read(4096).decode(errors="replace")
                    code = r.status
            except urllib.error.HTTPError as e:
                code, body = e.code, e.read(2048).decode(errors="replace")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = f"{path}: {e}"
                break  # not listening yet
            if path == "/health":
                if code == 404:
                    continue  # older releases have no /health: fall back to /admin/
                if code == 200:
                    try:
                        v = json.loads(body).get("version")
                    except (ValueError, AttributeError):
                        v = None
                    if v and v != tag:
                        last = f"/health reports version {v}, expected {tag}"
                        break
                    return {"ok": True, "check": "/health", "status": code, "version": v}
                last = f"/health answered {code}"
                if code >= 500:
                    return {"ok": False, "check": "/health", "status": code, "detail": last}
                break
            if code in (200, 302):
                return {"ok": True, "check": "/admin/", "status": code}
            last = f"/admin/ answered {code}"
            break
        time.sleep(0.2)
    return {"ok": False, "detail": last}


def append_log(spec: Spec, entry: str) -> None:
    new = not spec.log_file.exists()
    with open(spec.log_file, "a") as f:
        if new:
            f.write("# JupyterHealth Exchange upgrade log\n\nWritten by jhe-upgrade, one entry per upgrade, rollback or recovery.\n")
        f.write("\n" + entry)


# ---- steps -----------------------------------------------------------------------------------------

def ensure_postgres() -> None:
    if run(["pg_isready", "-q"], check=False, quiet=True).returncode != 0:
        raise Refusal("PostgreSQL is not running on the server (pg_isready failed): start it "
                      "(systemctl start postgresql), then run `pulumi up` again; nothing was changed")


def step_status(spec: Spec) -> dict:
    return {"current": current_version(spec), "layout": "releases" if spec.current.is_symlink() else
            ("in-place" if (spec.app_root / ".git").exists() else "none"), "state": load_state(spec)}


def step_plan(spec: Spec) -> dict:
    """Read-only: what an upgrade to spec.version would do (for `pulumi preview`)."""
    spec.need_version()
    frm = current_version(spec)
    to = spec.version
    out = {"from": frm, "to": to}
    if frm == to:
        out["action"] = "none"
        return out
    repo = spec.repo
    if not (repo / "HEAD").exists() or not tag_exists(repo, to):
        if spec.repo_url.startswith("/") and Path(spec.repo_url).exists():
            repo = Path(spec.repo_url)  # read the upstream path directly, fetching nothing
        else:
            out["action"] = "upgrade" if frm else "install"
            out["note"] = f"tag {to} not fetched yet; preflight fetches it and lists the migrations"
            return out
    to_migs = tag_migrations(repo, to)
    apps = {m.split(".")[0] for m in to_migs}
    applied = {m for m in applied_migrations(spec) if m.split(".")[0] in apps} if frm else set()
    out["pendingMigrations"] = [m for m in to_migs if m not in applied]
    out["migrationsToUndo"] = sorted(applied - set(to_migs))
    backwards = bool(out["migrationsToUndo"]) or version_key(to) < version_key(frm)
    out["action"] = ("rollback" if backwards else "upgrade") if frm else "install"
    if out["migrationsToUndo"]:
        b = latest_backup_from(load_state(spec), to)
        out["restoreFrom"] = b["id"] if b else None
        kept = b.get("keptDatabase") if b else None
        how = (f"bring back the database kept when {to} was left ({kept}) by rename" if kept and db_exists(kept)
               else f"restore backup {b['id']}" if b else "")
        out["summary"] = (f"rollback {frm} -> {to}: {how} and replay the rows written since"
                          if b else f"rollback {frm} -> {to} will be refused: no backup taken when leaving {to}")
    elif frm:
        out["summary"] = f"{out['action']} {frm} -> {to}" + ("" if out["pendingMigrations"] else " (code only, the database stays as it is)")
        if out["pendingMigrations"]:
            strategy, why = choose_strategy(spec, "upgrade", db_size(spec.db_name))
            out["migrationStrategy"] = strategy
            out["summary"] += (f": backup and migrations on a copy while {frm} serves, then a rename swap in the window "
                               f"(in the window instead if anything is written meanwhile)" if strategy == "staged"
                               else f": backup and migrations in the window ({why})")
    _, wanted = env_example(repo, to)
    root = live_root(spec)
    live = parse_env((root / ".env").read_text()) if root and (root / ".env").exists() else {}
    configured = set(live) | set(spec.env) | set(spec.secret_env) | {"SITE_URL"}
    out["envAdded"] = env_added(repo, frm, to)
    out["envMissingRequired"] = [k for k, req in wanted.items() if req and k not in configured]
    return out


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


def ensure_database(spec: Spec) -> list[str]:
    """The database role and the database it owns (a password, if configured, is set by `prepare`)."""
    done = []
    if psql("postgres", f"SELECT 1 FROM pg_roles WHERE rolname = {sql_literal(spec.db_user)}") != "1":
        psql("postgres", f'CREATE ROLE "{spec.db_user}" LOGIN')
        done.append(f"role {spec.db_user}")
    if psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = {sql_literal(spec.db_name)}") != "1":
        psql("postgres", f'CREATE DATABASE "{spec.db_name}" OWNER "{spec.db_user}" TEMPLATE template0 ENCODING \'UTF8\'')
        done.append(f"database {spec.db_name}")
    return done


def set_db_password(spec: Spec) -> None:
    """Sets the role's password from the stack's secret, over stdin (never on a command line)."""
    pw = spec.raw.get("dbPassword")
    if not pw:
        return
    run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "postgres"], user="postgres", cwd="/", quiet=True,
        input=f'ALTER ROLE "{spec.db_user}" PASSWORD {sql_literal(pw)};\n')


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


def version_key(tag: str | None) -> tuple:
    return tuple(int(x) for x in re.findall(r"\d+", tag or ""))


def is_noop(spec: Spec, state: dict) -> bool:
    """The target already serves, nothing is under way: the versioned steps have nothing to do."""
    t = state.get("target") or {}
    if t.get("recovered") and t.get("to") != spec.version:
        t = {}  # a move that failed and was undone, towards another version: not under way
    return (current_version(spec) == spec.version and spec.current.is_symlink() and not state.get("window")
            and t.get("to") in (None, spec.version) and not (t.get("to") == spec.version and t.get("from") != spec.version)
            and service_active(spec))


def latest_backup_from(state: dict, tag: str) -> dict | None:
    """The newest backup taken when leaving `tag` (the database as `tag` had it), if still on disk."""
    cands = [b for k, b in (state.get("backups") or {}).items() if k.split("->")[0] == tag]
    cands = [b for b in cands if (Path(b["path"]) / "db.dump").exists()]
    return max(cands, key=lambda b: b["created"]) if cands else None


def step_preflight(spec: Spec) -> dict:
    """Every refusal happens here, before any window opens; nothing serving is touched."""
    spec.need_version()
    if is_noop(spec, load_state(spec)):
        return {"from": spec.version, "to": spec.version, "noop": True}
    take_lock(spec, f"upgrade to {spec.version}")
    try:
        return _preflight(spec)
    except Exception:
        state = load_state(spec)
        if not state.get("window") and not state.get("target"):
            release_lock(spec)  # refused before anything started: the server is free again
        raise


def _preflight(spec: Spec) -> dict:
    ensure_postgres()
    frm = current_version(spec)
    to = spec.version
    problems: list[str] = []
    fetch_tags(spec)
    if not tag_exists(spec.repo, to):
        tags = run(["git", "-C", str(spec.repo), "tag", "--sort=-v:refname"], quiet=True).stdout.split()[:8]
        raise Refusal(f"jhe:version {to} is not a tag of {spec.repo_url} (newest tags: {', '.join(tags) or 'none'})")
    tree = tag_tree(spec.repo, to)
    tool, reqs, py_req = requirements_of(tree)
    have = python_version()
    if not version_ok(have, py_req):
        problems.append(f"{to} needs Python {py_req}; the server has {have[0]}.{have[1]} "
                        f"(install it and set up the release with it, or choose another version)")
    django = next((r.split("==", 1)[1] for r in reqs if r.lower().startswith("django==")), None)
    if django and not re.match(r"^(4\.2|5\.\d+|6\.\d+)(\.|$)", django):
        problems.append(f"{to} pins Django {django}; this program supports Django 4.2 and 5.x")
    pg = pg_major()
    if pg < 13:
        problems.append(f"PostgreSQL {pg} is too old for JHE (13 or newer); upgrade PostgreSQL first")
    if django and re.match(r"^(5\.|6\.)", django) and pg < 14:
        problems.append(f"Django {django} needs PostgreSQL 14 or newer; the server has {pg}")
    env = target_env(spec, to)
    problems += env_problems(spec, to, env)
    # Disk: the backup (about the database's size, compressed) plus a release, with headroom.
    db_bytes = db_size(spec.db_name)
    need = db_bytes + 300 * 1024 * 1024
    spec.backup_dir.mkdir(parents=True, exist_ok=True)
    free_backup = shutil.disk_usage(spec.backup_dir).free
    free_app = shutil.disk_usage(spec.app_root).free
    if min(free_backup, free_app) < need:
        problems.append(f"not enough free disk: the backup and the release need about {need // 2**20} MiB, "
                        f"{spec.backup_dir} has {free_backup // 2**20} MiB and {spec.app_root} {free_app // 2**20} MiB free")
    if problems:
        raise Refusal("preflight refused the upgrade " + f"{frm} -> {to}" + " before any change:\n  - " + "\n  - ".join(problems))
    applied = set(applied_migrations(spec))
    to_migs = tag_migrations(spec.repo, to)
    apps = {m.split(".")[0] for m in to_migs}
    pending = [m for m in to_migs if m not in applied]
    extra = sorted(m for m in applied if m.split(".")[0] in apps and m not in set(to_migs))
    state = load_state(spec)
    prior = state.get("target") or {}
    if prior.get("to") == to and prior.get("from") not in (None, to):
        frm = prior["from"]  # a re-run after an interruption continues the same move
        kind = prior.get("kind", "upgrade")
        restore_from = prior.get("restoreFrom")
    elif extra and pending:
        raise Refusal(f"{frm} -> {to} is a move across branches: the database has migrations {to} does not know "
                      f"({', '.join(extra)}) and lacks some it needs ({', '.join(pending)}). Roll back to a version "
                      f"both descend from first, then upgrade")
    elif extra:
        kind = "rollback"
        b = latest_backup_from(state, to)
        if not b:
            known = sorted({k.split('->')[0] for k in (state.get('backups') or {})})
            raise Refusal(f"rolling back {frm} -> {to} needs the database as {to} had it, and this server has no backup "
                          f"taken when leaving {to}. Versions that can be rolled back to here: {', '.join(known) or 'none'}; "
                          f"go through one of them, or restore by hand")
        verify_backup(b)
        restore_from = b
    else:
        kind = "upgrade" if frm else "install"
        restore_from = None
    strategy, why = choose_strategy(spec, kind, db_bytes)
    state["target"] = {"from": frm, "to": to, "kind": kind, "preflight": now(), "pending": pending,
                       "undo": extra, "restoreFrom": restore_from, "strategy": strategy}
    save_state(spec, state)
    return {"from": frm, "to": to, "kind": kind, "pendingMigrations": pending, "migrationsToUndo": extra,
            "strategy": strategy, "strategyWhy": why,
            "restoreFrom": restore_from["id"] if restore_from else None, "pythonRequired": py_req,
            "python": f"{have[0]}.{have[1]}", "postgres": pg, "django": django, "installer": tool,
            "databaseBytes": db_bytes}


def _target(spec: Spec) -> tuple[dict, str | None, str]:
    spec.need_version()
    state = load_state(spec)
    t = state.get("target") or {}
    if t.get("to") != spec.version and not is_noop(spec, state):
        raise Refusal(f"no preflight recorded for {spec.version}; run `pulumi up` again (preflight runs first)")
    return state, t.get("from", spec.version), spec.version


def step_prepare(spec: Spec) -> dict:
    state, frm, to = _target(spec)
    if is_noop(spec, state):
        # Same version: only the .env can have changed (config); apply it with a restart if it did.
        env_file = spec.release(to) / ".env"
        old = env_file.read_text() if env_file.exists() else None
        build_release(spec, to, target_env(spec, to))
        if old == env_file.read_text():
            return {"release": str(spec.release(to)), "configChanged": False}
        t = time.monotonic()
        run(["systemctl", "restart", spec.service])
        h = health(spec, to, spec.health_timeout)
        if not h["ok"]:
            write_private(env_file, old or "", spec.app_user, spec.app_group)
            run(["systemctl", "restart", spec.service])
            raise Refusal(f"{to} failed its health check with the new settings ({h.get('detail')}); "
                          f"the previous .env is back and {to} restarted with it")
        append_log(spec, f"## Settings changed for {to} - {now()}\n\n**Performed by:** {spec.operator} (stack {spec.owner})\n"
                         f"**Downtime:** restart, {round(time.monotonic() - t, 2)} s\n")
        return {"release": str(spec.release(to)), "configChanged": True, "seconds": round(time.monotonic() - t, 2)}
    set_db_password(spec)
    info = build_release(spec, to, target_env(spec, to))
    return {"release": str(spec.release(to)), **info}


def _upgrade_done(spec: Spec, state: dict, to: str) -> bool:
    """The target already serves and no window is open: the upgrade steps have nothing to do."""
    return is_noop(spec, state) or (current_version(spec) == to and not state.get("window") and service_active(spec)
                                    and ((state.get("target") or {}).get("from") == to
                                         or (state.get("cutover") or {}).get("to") == to))


def ensure_backup(spec: Spec, state: dict, frm: str, to: str) -> dict:
    """The database as it is in this window (writes are stopped), kept: a snapshot copy by template
    (file speed; a rename brings it back; dumped after the window), or without room for one, a
    verified pg_dump now."""
    w = state["window"]["id"]
    b = state.get("backup")
    if b and b.get("window") == w and b.get("from") == (frm or "none") and b.get("to") == to:
        if not b.get("ahead") and not b.get("snapshot"):  # one taken before the window was verified then
            verify_backup(b)
        return b
    snap = take_snapshot(spec, state, frm, to)
    if snap:
        return snap
    b = take_backup(spec, frm or "none", to)
    b["window"] = w
    verify_backup(b)
    state["backup"] = b
    register_backup(state, frm, to, b)
    save_state(spec, state)
    return b


def take_snapshot(spec: Spec, state: dict, frm: str | None, to: str) -> dict | None:
    """CREATE DATABASE ... TEMPLATE the live one: a copy at file speed, taken with nobody connected.
    Recorded as this window's swap, so recovery brings it back by rename. None without room for it."""
    db_bytes = db_size(spec.db_name)
    data_dir, free = data_dir_free()
    if free < db_bytes + 300 * 2**20:
        log(f"no room in {data_dir} for a snapshot copy of {db_bytes // 2**20} MiB: the backup is a pg_dump in the window")
        return None
    t = time.monotonic()
    name = kept_name(spec, frm)
    drain(spec.db_name)
    strategy = " STRATEGY FILE_COPY" if pg_major() >= 15 else ""
    psql("postgres", f'CREATE DATABASE "{name}" OWNER "{spec.db_user}" TEMPLATE "{spec.db_name}"{strategy}')
    copy_db_properties(spec.db_name, name)
    b = {"id": name, "snapshot": name, "keptDatabase": name, "window": state["window"]["id"], "from": frm or "none",
         "to": to, "created": now(), "rowCounts": row_counts(spec, name), "appliedMigrations": applied_migrations(spec, name),
         "seconds": round(time.monotonic() - t, 2)}
    state["backup"] = b
    state["swap"] = {"previous": name, "in": None, "at": now(), "snapshot": True}
    save_state(spec, state)
    log(f"snapshot {name} of {spec.db_name} ({db_bytes // 2**20} MiB, {b['seconds']} s); its dump is written after the window")
    return b


def step_backup(spec: Spec) -> dict:
    state, frm, to = _target(spec)
    if _upgrade_done(spec, state, to):
        return {"skipped": f"{to} already serving"}
    t = time.monotonic()
    if state["target"].get("kind") == "rollback":
        return {"deferred": True, "beforeWindow": True,
                "note": f"{frm}'s database is kept whole, by rename, in the window; its dump is written after the window"}
    if state["target"].get("strategy") == "staged" and not state.get("window"):
        b = ensure_backup_ahead(spec, state, frm, to)  # while the old version serves
        return {"backup": b["path"], "sha256": b["sha256"], "rowCounts": b["rowCounts"], "beforeWindow": True,
                "seconds": round(time.monotonic() - t, 2)}
    open_window(spec, state)
    b = ensure_backup(spec, state, frm, to)
    if b.get("snapshot"):
        return {"snapshot": b["snapshot"], "rowCounts": b["rowCounts"], "beforeWindow": False,
                "note": "the dump of the snapshot is written after the window", "seconds": round(time.monotonic() - t, 2)}
    return {"backup": b["path"], "sha256": b["sha256"], "rowCounts": b["rowCounts"], "beforeWindow": False,
            "seconds": round(time.monotonic() - t, 2)}


def recover(spec: Spec, state: dict, frm: str | None, reason: str, restore_db: bool) -> str:
    """Puts the old version back serving: code (`current`), database (from this window's backup when
    migrations ran), service, maintenance off. Returns what was done, for the error message."""
    done = []
    failed_db = swap_back(spec, state) if restore_db else None
    if failed_db:
        done.append(f"database {spec.db_name} as it was before the window, by rename (the replaced one kept as {failed_db})")
    elif restore_db and state.get("backup"):
        kept = restore_backup(spec, state["backup"])
        done.append(f"database restored from backup {state['backup']['id']} (the failed one kept as {kept})")
    if frm and release_ready(spec, frm):
        if current_version(spec) != frm:
            switch_current(spec, frm)
            done.append(f"current -> releases/{frm}")
        if service_active(spec):
            run(["systemctl", "stop", spec.service])
        start_service(spec)
        h = health(spec, frm, spec.health_timeout)
        done.append(f"{frm} serving again ({h.get('check')} {h.get('status')})" if h["ok"] else f"{frm} restarted but unhealthy: {h.get('detail')}")
    seconds = close_window(spec, state)
    done.append("maintenance page lifted")
    kind = (state.get("target") or {}).get("kind", "upgrade")
    append_log(spec, f"## Recovery: {kind} {frm} -> {spec.version} failed - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**Downtime:** {seconds} s\n\n"
                     f"**What failed:** {reason}\n\n**What was restored:**\n" + "".join(f"- {d}\n" for d in done))
    end_failed_move(spec, state, frm, reason, done)
    return "; ".join(done)


# What one move (upgrade, rollback) records while it runs; gone when it finishes or fails.
MOVE_KEYS = ("migrated", "rollback", "dbTouched", "swap", "staged", "cutover", "stagedFallback")


def end_failed_move(spec: Spec, state: dict, frm: str | None, reason: str, restored: list[str]) -> None:
    """After a failure (recovered, or before any window): the record of it, the lock released. The
    move's preflight stays valid (same version and settings; Pulumi re-runs preflight when either
    changes), so a later `pulumi up` that only re-runs the remaining steps can go on."""
    state["lastRecovery"] = {"from": frm, "to": spec.version, "reason": reason, "restored": restored, "at": now()}
    if state.get("target"):
        state["target"]["recovered"] = now()
    for k in MOVE_KEYS:
        state.pop(k, None)
    save_state(spec, state)
    release_lock(spec)


def step_migrate(spec: Spec) -> dict:
    """Migrates (on the staged copy before the window, or in place in it), then cuts over: `current`
    to the new release, restart, health gate, maintenance off - in one process, one window."""
    state, frm, to = _target(spec)
    if _upgrade_done(spec, state, to):
        return {"skipped": f"{to} already serving", "applied": []}
    tgt = state["target"]
    staged = tgt.get("strategy") == "staged" and bool(tgt.get("pending"))
    if staged and not state.get("window") and (state.get("staged") or {}).get("phase") != "swapped":
        if not (state.get("backup") or {}).get("ahead"):
            ensure_backup_ahead(spec, state, frm, to)
        migrate_copy(spec, state, frm, to)
    open_window(spec, state)
    result: dict = {"strategy": tgt.get("strategy", "in-window")}
    if tgt.get("strategy") == "staged":
        if staged and use_staged(spec, state, frm, to):
            result["staged"] = {k: state["staged"].get(k) for k in ("restoreSeconds", "migrateSeconds")}
            result["keptDatabase"] = state["backup"]["keptDatabase"]
        elif (state.get("backup") or {}).get("ahead") and not state["backup"].get("window"):
            # Code-only, or the staged copy was dropped (use_staged found the writes then): the backup
            # must be exact as of the window, else ensure_backup below takes one in it.
            written = (state.get("stagedFallback") or {}).get("written") or written_since_backup(spec, state)[0]
            if written:
                result["writtenSinceBackup"] = written
    if tgt.get("kind") == "rollback":
        result.update(rollback_database(spec, state, frm, to))
    elif not state.get("migrated"):  # (a swapped-in staged copy is migrated already)
        ensure_backup(spec, state, frm, to)
        result.update(migrate_in_place(spec, state, frm, to))
    result["keptDatabase"] = (state.get("backup") or {}).get("keptDatabase")
    result["applied"] = state["migrated"].get("applied", [])
    result["migrateSeconds"] = state["migrated"].get("seconds")
    result["cutover"] = cutover(spec, state, frm, to)
    return result


def migrate_in_place(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    before = set(applied_migrations(spec))
    rel = spec.release(to)
    t = time.monotonic()
    state["dbTouched"] = True
    save_state(spec, state)
    p = run([str(rel / "venv/bin/python"), "manage.py", "migrate", "--no-input"], user=spec.app_user, cwd=rel,
            check=False, timeout=7200)
    after = applied_migrations(spec)
    applied = [m for m in after if m not in before]
    if p.returncode != 0:
        err = error_summary(p.stderr)
        what = recover(spec, state, frm, f"`manage.py migrate` of {to} failed: {err}", restore_db=True)
        raise Refusal(f"the migration of {to} failed ({err}); nothing was lost: {what}")
    state["migrated"] = {"to": to, "applied": applied, "seconds": round(time.monotonic() - t, 2)}
    save_state(spec, state)
    return {}


def cutover(spec: Spec, state: dict, frm: str | None, to: str) -> dict:
    """`current` -> the new release, restart, health gate, maintenance off. On a failed health check
    the old version comes back (code, database if it changed, config) and the step fails."""
    t = time.monotonic()
    switch_current(spec, to)
    if service_active(spec):
        run(["systemctl", "stop", spec.service])
    since = live_marker(spec.db_name)  # rows written from here on are the new version's
    start_service(spec)
    h = health(spec, to, spec.health_timeout)
    if not h["ok"]:
        fail_health(spec, state, frm, to, h)
    seconds = close_window(spec, state)
    state["cutover"] = {"to": to, "windowSeconds": seconds, "health": h, "seconds": round(time.monotonic() - t, 2), "at": now(),
                        "since": since}
    save_state(spec, state)
    return {"current": to, "health": h, "windowSeconds": seconds, "seconds": state["cutover"]["seconds"]}


def fail_health(spec: Spec, state: dict, frm: str | None, to: str, h: dict) -> None:
    journal = run(["journalctl", "-u", spec.service, "-n", "5", "--no-pager", "-o", "cat"], check=False, quiet=True).stdout.strip()
    migrated = bool((state.get("migrated") or {}).get("applied")) or bool(state.get("rollback")) or bool(state.get("swap"))
    reason = f"{to} failed its health check ({h.get('detail')})"
    if not state.get("window"):
        open_window(spec, state)
    else:
        run(["systemctl", "stop", spec.service], check=False)
    what = recover(spec, state, frm, reason, restore_db=migrated)
    raise Refusal(f"{reason}; reverted automatically: {what}" + (f"\nlast log lines of {spec.service}:\n{journal}" if journal else ""))


SKIP_REPLAY = {"django_migrations", "django_content_type", "auth_permission", "django_session"}


def _q(name: str) -> str:
    if not re.match(r"^[a-z_][a-z0-9_]*$", name):
        raise RuntimeError(f"unexpected identifier {name!r}")
    return f'"{name}"'


def _copy(src_db: str, query: str, dst_db: str | None = None, table: str | None = None, cols: str | None = None,
          to_file: Path | None = None) -> None:
    """COPY rows of `query` in src_db into dst_db.table(cols), or as CSV into to_file."""
    out = subprocess.Popen(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", src_db,
                            "-c", f"\\copy ({query}) TO STDOUT" + (" WITH CSV HEADER" if to_file else "")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    if to_file:
        fd = os.open(to_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            shutil.copyfileobj(out.stdout, f)
        rc_in = 0
        err_in = b""
    else:
        p = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", dst_db,
                            "-c", f"\\copy {table} ({cols}) FROM STDIN"], stdin=out.stdout, capture_output=True, cwd="/")
        rc_in, err_in = p.returncode, p.stderr
    out.stdout.close()
    err_out = out.stderr.read()
    if out.wait() != 0 or rc_in != 0:
        raise RuntimeError((err_in or err_out).decode(errors="replace").strip()[-400:])


def live_marker(db: str) -> dict:
    """Where "written since" starts: a transaction id taken just before a release starts serving (every
    row written after has a newer xmin), with the cluster it belongs to."""
    xid, sysid = psql(db, "SELECT txid_current() % 4294967296, (SELECT system_identifier FROM pg_control_system())").split("|")
    return {"xid": int(xid), "cluster": sysid}


def _ids(db: str, t: str, pk: str, where: str = "true") -> set[str]:
    return set(psql(db, f"SELECT {_q(pk)}::text FROM {_q(t)} WHERE {where}").splitlines())


def _hashes(db: str, t: str, pk: str, collist: str, where: str) -> dict[str, str]:
    return dict(l.split("|", 1) for l in psql(db, f"SELECT {_q(pk)}, md5(ROW({collist})::text) FROM {_q(t)} WHERE {where}").splitlines() if l)


def _in_list(pk: str, ids: list[str]) -> str:
    return f"{_q(pk)}::text IN ({','.join(sql_literal(k) for k in ids)})"


def replay_rows(spec: Spec, src_db: str, dst_db: str, export_dir: Path, since: dict | None = None) -> dict:
    """Rows written to src_db (the newer version's database) after dst_db's state was kept are
    inserted into dst_db where its schema allows; what cannot be inserted, and rows changed or deleted
    since, are exported as CSV to export_dir. Never silently dropped. `since` (a live_marker of when
    the newer version began serving) narrows the search for changed rows to those written after it."""
    tables = [t for t in psql(dst_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").splitlines()
              if t and t not in SKIP_REPLAY]
    src_tables = set(psql(src_db, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'").splitlines())
    # Parents before children (foreign keys).
    edges = [l.split("|") for l in psql(dst_db, "SELECT conrelid::regclass::text, confrelid::regclass::text FROM pg_constraint "
                                                 "WHERE contype = 'f' AND connamespace = 'public'::regnamespace").splitlines() if l]
    order: list[str] = []
    pending_t = set(tables)
    while pending_t:
        ready = sorted(t for t in pending_t if not any(c == t and p in pending_t and p != t for c, p in edges))
        if not ready:
            ready = sorted(pending_t)  # a cycle: take them as they come, failures are exported
        for t in ready:
            order.append(t)
            pending_t.discard(t)
    # The marker is usable while it is of this cluster and recent (xids are compared modulo 2^32).
    newer = None
    if since and psql(src_db, "SELECT system_identifier FROM pg_control_system()") == str(since.get("cluster")) \
            and int(psql(src_db, f"SELECT age('{int(since['xid'])}'::xid)")) < 1_000_000_000:
        newer = f"age(xmin) <= age('{int(since['xid'])}'::xid)"
    replayed: dict[str, int] = {}
    exported: dict[str, int] = {}
    notes: list[str] = []
    for t in order:
        if t not in src_tables:
            continue
        pk = psql(dst_db, f"SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                          f"AND a.attnum = ANY(i.indkey) WHERE i.indrelid = 'public.{t}'::regclass AND i.indisprimary")
        if not pk or "\n" in pk:
            notes.append(f"{t}: no single-column primary key, not compared")
            continue
        cols_of = lambda db: psql(db, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                                      f"AND table_name = '{t}' AND is_generated = 'NEVER' ORDER BY ordinal_position").splitlines()
        dst_cols, src_cols = cols_of(dst_db), set(cols_of(src_db))
        common = [c for c in dst_cols if c in src_cols]
        required = set(psql(dst_db, f"SELECT column_name FROM information_schema.columns WHERE table_schema = 'public' "
                                    f"AND table_name = '{t}' AND is_nullable = 'NO' AND column_default IS NULL "
                                    f"AND is_identity = 'NO'").splitlines())
        collist = ",".join(_q(c) for c in common)
        maxid = psql(dst_db, f"SELECT coalesce(max({_q(pk)})::text, '') FROM {_q(t)}")
        below = f"{_q(pk)} <= {sql_literal(maxid)}" if maxid else "false"
        dst_ids = _ids(dst_db, t, pk) if maxid else set()
        src_below = _ids(src_db, t, pk, below) if maxid else set()
        # New rows: above dst's highest key (sequences), and any below it that dst never had.
        gaps = sorted(src_below - dst_ids)
        conds = [f"NOT ({below})"] + [_in_list(pk, gaps[i:i + 5000]) for i in range(0, len(gaps), 5000)]
        n_new = int(psql(src_db, f"SELECT count(*) FROM {_q(t)} WHERE NOT ({below})")) + len(gaps)
        if n_new:
            export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            missing = sorted(required - set(common))
            done = 0
            try:
                if missing:
                    raise RuntimeError(f"{t} in the older schema requires {', '.join(missing)}, which the newer rows lack")
                for c in conds:
                    _copy(src_db, f"SELECT {collist} FROM {_q(t)} WHERE {c} ORDER BY {_q(pk)}", dst_db, _q(t), collist)
                    done += 1
                replayed[t] = n_new
                psql(dst_db, f"SELECT setval(s, m) FROM (SELECT pg_get_serial_sequence('public.{t}', '{pk}') AS s, "
                             f"max({_q(pk)}) AS m FROM {_q(t)}) x WHERE s IS NOT NULL AND m IS NOT NULL")
            except RuntimeError as e:
                _copy(src_db, f"SELECT * FROM {_q(t)} WHERE {conds[0]} ORDER BY {_q(pk)}", to_file=export_dir / f"{t}.new-rows.csv")
                for i, c in enumerate(conds[1:]):
                    _copy(src_db, f"SELECT * FROM {_q(t)} WHERE {c} ORDER BY {_q(pk)}", to_file=export_dir / f"{t}.new-rows-{i + 1}.csv")
                exported[f"{t}.new-rows"] = n_new
                notes.append(f"{t}: {n_new} newer rows exported" + (" (some inserted before the failure)" if done else ", not inserted")
                             + f" ({e})")
        if maxid:
            # Rows that existed before and were changed or deleted since: exported, for a person to judge.
            # With a marker only rows written after it can differ (the rest were never touched since).
            cand = f"({below}) AND {newer}" if newer else below
            new_h = _hashes(src_db, t, pk, collist, cand)
            if not newer or len(new_h) > 20000:
                old_h = _hashes(dst_db, t, pk, collist, "true")
            else:
                keys = [k for k in new_h if k in dst_ids]
                old_h = {}
                for i in range(0, len(keys), 5000):
                    old_h.update(_hashes(dst_db, t, pk, collist, _in_list(pk, keys[i:i + 5000])))
            changed = [k for k, v in new_h.items() if k in old_h and old_h[k] != v]
            deleted = sorted(dst_ids - src_below)
            if changed or deleted:
                export_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            if changed:
                _copy(src_db, f"SELECT * FROM {_q(t)} WHERE {_in_list(pk, changed)}", to_file=export_dir / f"{t}.changed-rows.csv")
                exported[f"{t}.changed-rows"] = len(changed)
            if deleted:
                _copy(dst_db, f"SELECT * FROM {_q(t)} WHERE {_in_list(pk, deleted)}", to_file=export_dir / f"{t}.deleted-since.csv")
                exported[f"{t}.deleted-since"] = len(deleted)
    return {"rowsReplayed": replayed, "rowsExported": exported, "exportDir": str(export_dir) if exported else None,
            "notes": notes, "comparedSince": "marker" if newer else "all rows"}


def rollback_database(spec: Spec, state: dict, frm: str, to: str) -> dict:
    """B -> A: the database back to A's as it was when A was left - the database kept then, by rename,
    while it is still there and unchanged; else A's pre-upgrade backup, restored - then the rows
    written since replayed. B's database is kept (renamed) and dumped; nothing is deleted."""
    t0 = time.monotonic()
    pre = state["target"]["restoreFrom"]
    # The registered record (preflight's copy predates changes to it, e.g. a kept database put back).
    entry = next((b for b in (state.get("backups") or {}).values() if b.get("id") == pre["id"]), {})
    kept_a = entry.get("keptDatabase")
    how = "backup"
    if (state.get("swap") or {}).get("in") and db_exists(state["swap"]["previous"]):
        kept, how = state["swap"]["previous"], "rename"  # a re-run: the swap happened already
    elif kept_a and db_exists(kept_a) and sorted(applied_migrations(spec, kept_a)) == sorted(pre.get("appliedMigrations") or []) \
            and row_counts(spec, kept_a) == pre.get("rowCounts"):
        kept, how = stamp_name(spec.db_name, "replaced"), "rename"
        swap_in(spec, state, kept_a, kept)
        entry["keptDatabase"] = None  # it is the live database now
    else:
        kept = restore_backup(spec, pre)
        state["swap"] = {"previous": kept, "in": None, "at": now()}
    try:
        state["dbTouched"] = True
        save_state(spec, state)
        export = spec.backup_dir / f"{dt.datetime.now(dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}-{frm}-to-{to}-rows-not-replayed"
        stats = replay_rows(spec, kept, spec.db_name, export, entry.get("liveSince"))
    except Exception as e:  # put B's database back as it was, then B serves again
        what = recover(spec, state, frm, f"replaying rows into {to}'s database failed: {e}", restore_db=True)
        raise Refusal(f"rolling back {frm} -> {to} failed while replaying rows ({e}); {frm}'s database is back unchanged: {what}")
    state["rollback"] = {"restoredFrom": pre["id"], "restoredBy": how, "keptDatabase": kept, **stats,
                         "seconds": round(time.monotonic() - t0, 2)}
    state["migrated"] = {"to": to, "applied": [], "undone": state["target"].get("undo", [])}
    save_state(spec, state)
    return {"rollback": state["rollback"]}


def error_summary(stderr: str) -> str:
    """The exception line of a Python traceback (plus PostgreSQL's DETAIL), else the last line."""
    lines = [l.strip() for l in stderr.strip().splitlines() if l.strip()]
    exc = [l for l in lines if re.match(r"^[\w.]+(Error|Exception|Warning)\b.*:", l)]
    detail = [l for l in lines if l.startswith("DETAIL:")]
    if exc:
        return exc[-1] + (f" {detail[-1]}" if detail and detail[-1] not in exc[-1] else "")
    return lines[-1] if lines else "(no output)"


def step_switch(spec: Spec) -> dict:
    state, frm, to = _target(spec)
    if (state.get("cutover") or {}).get("to") == to and current_version(spec) == to:
        return {"current": to, "switchedBy": "migrate (the cutover runs in the migration's window)", **state["cutover"]}
    if _upgrade_done(spec, state, to):
        return {"skipped": f"{to} already serving"}
    if not state.get("window"):
        open_window(spec, state)
    t = time.monotonic()
    switch_current(spec, to)
    if service_active(spec):
        run(["systemctl", "stop", spec.service])
    start_service(spec)
    return {"current": to, "seconds": round(time.monotonic() - t, 2)}


def step_health(spec: Spec) -> dict:
    """The gate again, after the cutover (or the gate itself when a re-run switched in step_switch)."""
    state, frm, to = _target(spec)
    h = health(spec, to, spec.health_timeout)
    if not h["ok"]:
        fail_health(spec, state, frm, to, h)
    return h


def step_finish(spec: Spec) -> dict:
    spec.need_version()
    state = load_state(spec)
    t = state.get("target") or {}
    to = spec.version
    frm = t.get("from")
    if t.get("to") != to:
        return {"skipped": f"{to} already finished", "current": current_version(spec)}
    seconds = close_window(spec, state) or (state.get("cutover") or {}).get("windowSeconds", 0.0)
    smoke = smoke_test(spec)
    if frm == to:  # nothing was upgraded (e.g. the first run on an adopted server)
        state["deployed"] = {"version": to, "previous": (state.get("deployed") or {}).get("previous"), "at": now()}
        for k in ("target", "dbTouched", "cutover"):
            state.pop(k, None)
        save_state(spec, state)
        release_lock(spec)
        return {"from": frm, "to": to, "noop": True, "downtimeSeconds": 0, "migrationsApplied": [], "smoke": smoke}
    kind = (state.get("target") or {}).get("kind", "upgrade")
    rb = state.get("rollback")
    b = state.get("backup") or {}
    # Dumps written now that the new version serves (in the window the database was only copied or
    # renamed): a rollback's backup of the newer database, or the portable dump of the snapshot.
    src = (rb["keptDatabase"] if rb and b.get("to") != to else
           b["snapshot"] if b.get("snapshot") and not b.get("dump") else None)
    if src and db_exists(src):
        b = take_backup(spec, frm or "none", to, db=src)
        verify_backup(b)
        if not rb:
            b["keptDatabase"] = src
        state["backup"] = b
    if b.get("path"):
        if (state.get("cutover") or {}).get("since"):
            b["liveSince"] = state["cutover"]["since"]  # a later rollback compares only rows written after it
        register_backup(state, frm, to, b)
        save_state(spec, state)
    migrated = (state.get("migrated") or {}).get("applied", [])
    removed = prune_releases(spec, {to, frm} if frm else {to})
    dropped = prune_kept_databases(spec, state)
    added = env_added(spec.repo, frm, to)
    strategy = (state.get("target") or {}).get("strategy", "in-window")
    fallback = state.get("stagedFallback")
    summary = {
        "from": frm, "to": to, "downtimeSeconds": seconds, "migrationsApplied": migrated,
        "backup": {k: b.get(k) for k in ("id", "path", "sha256", "rowCounts", "bytes", "seconds", "keptDatabase")} if b else None,
        "envAdded": added, "smoke": smoke, "releasesRemoved": removed, "finished": now(), "kind": kind,
        "rollback": rb, "strategy": strategy, "stagedFallback": fallback, "keptDatabasesDropped": dropped,
    }
    rb_lines = [] if not rb else [
        "**Rollback:**",
        f"- Database restored from {rb['restoredFrom']} (taken when leaving {to}); {frm}'s database kept as {rb['keptDatabase']}",
        f"- Migrations undone: {', '.join(state['target'].get('undo') or []) or 'none'}",
        f"- Rows written since, replayed: {json.dumps(rb['rowsReplayed'])}",
        f"- Rows exported for review (not replayable): {json.dumps(rb['rowsExported'])}" + (f" in {rb['exportDir']}" if rb.get("exportDir") else ""),
        "",
    ]
    append_log(spec, "\n".join([
        f"## {'Install' if not frm else 'Rollback' if kind == 'rollback' or version_key(to) < version_key(frm) else 'Upgrade'} "
        f"{'of' if not frm else 'to'} {to} - {now()}", "",
        f"**Performed by:** {spec.operator} (stack {spec.owner})",
        f"**From:** {frm or 'nothing'}  **To:** {to}",
        f"**Downtime:** {seconds} s (maintenance page shown)",
        "**Migration:** " + ("on a staged copy while the old version served; swapped in by rename" if (state.get("migrated") or {}).get("staged")
                              else "in the window" + (f" (written since the backup began: {', '.join(fallback['written'])})" if fallback else "")),
        *([f"**Database before the upgrade:** kept as {b['keptDatabase']}"] if b.get("keptDatabase") else []), "",
        *rb_lines,
        "**Changes:**",
        f"- Migrations applied: {', '.join(migrated) if migrated else 'none'}",
        f"- Environment variables added by {to}: {', '.join(added) if added else 'none'}", "",
        "**Rollback plan:**",
        f"- Backup: {b.get('path', 'none')} (sha256 {b.get('sha256', '-')}, rows {json.dumps(b.get('rowCounts', {}))})",
        f"- Set jhe:version back to {frm} and run `pulumi up`", "",
        "**Verification:**",
        *[f"- {k}: {v}" for k, v in smoke.items()], "",
    ]))
    state.setdefault("history", []).append({k: summary[k] for k in ("from", "to", "downtimeSeconds", "finished")})
    state["deployed"] = {"version": to, "previous": frm, "at": now()}
    for k in ("target", "backup", *MOVE_KEYS):
        state.pop(k, None)
    save_state(spec, state)
    release_lock(spec)
    return summary


def prune_kept_databases(spec: Spec, state: dict, keep: int = 2) -> list[str]:
    """Databases kept by staged upgrades beyond the newest `keep` go, each only when its backup (taken
    with nothing written until the swap, so it holds the same rows) verifies; their dumps stay."""
    entries = sorted((b for b in (state.get("backups") or {}).values() if b.get("keptDatabase")),
                     key=lambda b: b.get("created", ""), reverse=True)
    dropped = []
    for b in entries[keep:]:
        try:
            verify_backup(b)
        except Exception as e:  # noqa: BLE001 - then the kept database is the good copy: it stays
            log(f"keeping {b['keptDatabase']}: its backup {b['id']} does not verify ({e})")
            continue
        if db_exists(b["keptDatabase"]):
            drain(b["keptDatabase"])
            psql("postgres", f'DROP DATABASE "{b["keptDatabase"]}"')
            dropped.append(b["keptDatabase"])
        b["keptDatabase"] = None
    return dropped


def smoke_test(spec: Spec) -> dict:
    """Through nginx, as users reach it: /health and /admin/ with the site's Host header."""
    out = {}
    for path in ("/health", "/admin/"):
        args = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                "--resolve", f"{spec.site_host}:443:127.0.0.1", "--resolve", f"{spec.site_host}:80:127.0.0.1",
                f"{spec.site_url.rstrip('/')}{path}"]
        p = run(args, check=False, quiet=True)
        out[path] = p.stdout.strip() or f"error {p.returncode}"
    return out


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
    p = run(["runuser", "-u", spec.app_user, "--preserve-environment", "--", str(rel / "venv/bin/python"), "manage.py", "shell", "-c", code],
            cwd=rel, env=env, quiet=True)
    return {"superuser": user, "result": p.stdout.strip().splitlines()[-1] if p.stdout.strip() else "?"}


def step_unlock(spec: Spec) -> dict:
    try:
        held = json.loads(spec.lock_file.read_text())
    except FileNotFoundError:
        return {"unlocked": False, "note": "no lock held"}
    spec.lock_file.unlink()
    return {"unlocked": True, "was": held}


class run_lock:
    """One step at a time per server: a re-run waits (bounded) for a step still running from an
    interrupted `pulumi up` (it runs detached from SSH and finishes on its own), then converges."""
    def __init__(self, spec: Spec, timeout: float = 3 * 3600):
        self.path = Path(f"/run/lock/jhe-upgrade-{spec.service}.lock")
        self.timeout = timeout
        self.f = None

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(self.path, "a+")
        deadline = time.monotonic() + self.timeout
        said = False
        while True:
            try:
                fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not said:
                    self.f.seek(0)
                    log(f"waiting for a step still running on this server ({self.f.read().strip() or 'unknown'})")
                    said = True
                if time.monotonic() > deadline:
                    raise Refusal("another jhe-upgrade step has been running on this server for too long; check it")
                time.sleep(0.5)
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"step {STEP}, pid {os.getpid()}, since {now()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.f, fcntl.LOCK_UN)
        self.f.close()
        return False


def safety_net(spec: Spec, reason: str) -> str:
    """After an unforeseen failure inside a window: the old version serves again (a known version
    always serves), the database restored if this window changed it."""
    state = load_state(spec)
    if not state.get("window"):
        return ""
    frm = (state.get("target") or {}).get("from")
    try:
        return "Recovered: " + recover(spec, state, frm, reason, restore_db=bool(state.get("dbTouched")))
    except Exception as e:  # noqa: BLE001 - report, never mask the first failure
        return f"Automatic recovery failed too ({type(e).__name__}: {e}); the maintenance page stays up."


STEPS = {"status": step_status, "plan": step_plan, "adopt": step_adopt, "preflight": step_preflight,
         "prepare": step_prepare, "backup": step_backup, "migrate": step_migrate, "switch": step_switch,
         "health": step_health, "finish": step_finish, "unlock": step_unlock, "superuser": step_superuser}


def main(argv: list[str]) -> int:
    global STEP
    if len(argv) < 2 or argv[1] not in STEPS:
        print(f"usage: {argv[0]} {{{'|'.join(STEPS)}}} < spec.json", file=sys.stderr)
        return 2
    STEP = argv[1]
    if os.geteuid() != 0:
        print(json.dumps({"ok": False, "error": "run as root (the program uses sudo when its SSH user is not root)"}))
        return 1
    spec = None
    try:
        if "--spec-b64" in argv:  # `plan` only: the tool itself arrives on stdin, the spec (no secrets) here
            import base64
            spec = Spec(json.loads(base64.b64decode(argv[argv.index("--spec-b64") + 1])))
        else:
            spec = Spec(json.loads(sys.stdin.read() or "{}"))
        if STEP in ("plan", "status"):  # read-only: never waits for a running step
            result = STEPS[STEP](spec)
        else:
            with run_lock(spec):
                result = STEPS[STEP](spec)
        print(json.dumps({"ok": True, "step": STEP, "seconds": round(time.monotonic() - T0, 2), **(result or {})}, sort_keys=True))
        return 0
    except Refusal as e:
        log(f"refused: {e}")
        print(json.dumps({"ok": False, "step": STEP, "error": str(e)}))
        print(f"\njhe-upgrade {STEP}: {e}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as e:
        msg = f"{' '.join(map(str, e.cmd))} exited {e.returncode}: {(e.stderr or '').strip()[-800:]}"
        log(msg)
        print(json.dumps({"ok": False, "step": STEP, "error": msg}))
        print(f"\njhe-upgrade {STEP} failed: {msg}", file=sys.stderr)
        return 1
    except Exception as e:  # a bug or an unforeseen server state: say so plainly, with the trace
        import traceback
        traceback.print_exc(file=sys.stderr)
        msg = f"unexpected {type(e).__name__}: {e}."
        if spec is not None and STEP in ("backup", "migrate", "switch", "health", "finish"):
            msg += " " + safety_net(spec, f"{STEP} failed: {type(e).__name__}: {e}")
        msg += " Run `pulumi up` again after checking the message above (the steps converge from whatever state the server is in)"
        print(json.dumps({"ok": False, "step": STEP, "error": msg}))
        print(f"\njhe-upgrade {STEP} failed: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
