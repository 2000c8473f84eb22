"""The plan, read-only, for `pulumi preview`: facts read from the server, then a pure computation."""
from __future__ import annotations

from pathlib import Path

from .db import applied_migrations, db_exists, db_size
from .envfile import HINTS, env_added, env_missing, parse_env
from .estimate import estimate_for
from .gitrepo import tag_exists
from .migclass import worst
from .pgmajor import pg_plan
from .release import build_change, pending_classes, release_knows_all_migrations, release_migrations, venv_problem
from .spec import Spec
from .staging import choose_strategy
from .state import current_version, latest_backup_from, live_root, load_state
from .util import sha256_file, version_key


def migration_delta(to_migs: list[str], applied: list[str]) -> tuple[list[str], list[str]]:
    """(pending, to undo): the target's migrations the database lacks, and the migrations the database
    has of the target's apps that the target does not know (a rollback undoes those)."""
    apps = {m.split(".")[0] for m in to_migs}
    have = {m for m in applied if m.split(".")[0] in apps}
    return [m for m in to_migs if m not in have], sorted(have - set(to_migs))


def plan_from_facts(f: dict) -> dict:
    """The plan from what was read: from, to, pending, undo, backup (the newest taken when leaving
    `to`, or None), keptExists, strategy/why (when migrations are pending), envAdded (names new in the
    target's env example), configured (names the live .env or the stack sets), unset (jhe:envUnset)."""
    frm, to = f["from"], f["to"]
    out: dict = {"from": frm, "to": to, "pendingMigrations": f["pending"], "migrationsToUndo": f["undo"]}
    backwards = bool(f["undo"]) or version_key(to) < version_key(frm)
    out["action"] = ("rollback" if backwards else "upgrade") if frm else "install"
    if f["undo"]:
        b = f.get("backup")
        out["restoreFrom"] = b["id"] if b else None
        kept = b.get("keptDatabase") if b else None
        where = ((b.get("offsite") or {}).get("location") if b else None) if not f.get("backupLocal", True) else None
        how = (f"bring back the database kept when {to} was left ({kept}) by rename" if kept and f.get("keptExists")
               else f"restore backup {b['id']}" if b else "")
        if where and b:
            enc = "; decrypted with jhe:backupDecryptionKey" if (b.get("offsite") or {}).get("encryptedTo") else ""
            how = f"fetch backup {b['id']} from {where} (its local copy is gone{enc}), then {how}"
        out["summary"] = (f"rollback {frm} -> {to}: {how} and replay the rows written since"
                          if b else f"rollback {frm} -> {to} will be refused: no backup taken when leaving {to}")
    elif not frm and f.get("restoreFrom"):
        out["summary"] = (f"install {to} on this new server with the database of backup {f['restoreFrom']}, fetched from the "
                          f"bucket and decrypted at preflight (jhe:restoreFrom)")
    elif frm:
        out["summary"] = f"{out['action']} {frm} -> {to}" + ("" if f["pending"] else " (code only, the database stays as it is)")
        if f.get("strategy") == "online":
            out["migrationStrategy"] = "online"
            out["summary"] += ((": every pending migration is no-SQL or additive: applied while " if f["pending"] else ": ") +
                               f"{frm} serves, then {to} takes over through the hand-over unit - no maintenance window")
        elif f["pending"]:
            out["migrationStrategy"] = f["strategy"]
            out["summary"] += (f": backup and migrations on a copy while {frm} serves, then a rename swap in the window "
                               f"(in the window instead if anything is written meanwhile)" if f["strategy"] == "staged"
                               else f": backup and migrations in the window ({f['why']})")
    out["envAdded"] = f["envAdded"]
    out["envMissing"] = env_missing(f["envAdded"], f["configured"], f["unset"])
    out["envHints"] = {k: HINTS[k] for k in out["envMissing"] if k in HINTS}
    return out


INSTALLED = Path("/var/lib/jhe-upgrade/files")
SYSTEMD = Path("/etc/systemd/system")


def _sha(path: Path) -> str | None:
    try:
        return sha256_file(path)
    except OSError:
        return None


def detect_drift(spec: Spec, state: dict, frm: str | None) -> list[dict]:
    """What runs here that the stack did not deploy (a hand-made change): `current` moved to another
    release (or another tag checked out in place), the unit or the nginx site edited (against what the
    stack renders now: spec.expect), the live .env edited (against its sha256 when the stack last wrote
    it). Each with what `up` does about it."""
    out: list[dict] = []
    deployed = (state.get("deployed") or {}).get("version")
    # (only while the stack asks for what it deployed: a new jhe:version is a move from whatever serves, shown as such)
    if deployed and frm and frm != deployed and spec.version == deployed and not state.get("window") and not state.get("target"):
        out.append({"what": "current", "deployed": deployed, "found": frm,
                    "up": f"{spec.version} serves again: the versioned steps run (code only when the database is {spec.version}'s)"})
    for what, path in (("unit", SYSTEMD / f"{spec.service}.service"),
                       ("nginx site", Path(f"/etc/nginx/sites-available/{spec.service}"))):
        # (the sha256 of what the stack installed there last, recorded by its file resource)
        rec = INSTALLED / (str(path).replace("/", "_") + ".sha256")
        want, have = (rec.read_text().strip() if rec.exists() else None), _sha(path)
        if want and have != want:
            out.append({"what": what, "path": str(path), "found": "missing" if have is None else f"sha256 {have[:12]}…",
                        "deployed": f"sha256 {want[:12]}…", "up": f"the stack's {what} is installed again (and applied)"})
    dropins = SYSTEMD / f"{spec.service}.service.d"
    extra = sorted(p.name for p in dropins.glob("*.conf")) if dropins.is_dir() else []
    if extra:
        out.append({"what": "unit drop-in", "path": str(dropins), "found": ", ".join(extra), "deployed": "none", "repair": False,
                    "up": "leaves it: systemd applies it over the stack's unit - remove it, or put what it sets into the stack"})
    env_sha = (state.get("deployed") or {}).get("envSha256")
    root = live_root(spec)
    # An OS upgrade that moved python3 (Debian 12 -> 13: 3.11 -> 3.13) leaves a venv that no longer starts.
    broken = venv_problem(spec, root) if root and frm and spec.current.is_symlink() else None
    if broken and root and frm:
        fix = (f"releases/{frm}'s virtualenv is built again with {spec.recipe(frm)[2]} (same lock and pins), then the service "
               f"restarts on it" if frm == spec.version else f"releases/{spec.version} is built and serves instead")
        out.append({"what": "virtualenv", "path": str(root / "venv"), "found": f"broken: {broken}", "deployed": "a virtualenv that starts",
                    "repair": frm == spec.version, "up": fix})
    if env_sha and root and frm == deployed:
        have = _sha(root / ".env")
        if have != env_sha:
            out.append({"what": ".env", "path": str(root / ".env"), "found": "missing" if have is None else f"sha256 {have[:12]}…",
                        "deployed": f"sha256 {env_sha[:12]}…",
                        "up": "the .env is written again from the stack's config; the service restarts"})
    return out


def repair_key(state: dict, drift: list[dict]) -> str:
    """Part of the triggers of the steps and files that repair drift: unchanged while nothing drifts
    (so a clean server shows no changes), the next number when something did (so `up` runs them once);
    the repair's finish records that number."""
    n = int(state.get("repairs") or 0)
    if any(d.get("repair", True) for d in drift):
        n += 1
    return f"repair-{n}" if n else ""


def step_plan(spec: Spec) -> dict:
    """Read-only: what an upgrade to spec.version would do (for `pulumi preview`), and what drifted."""
    to = spec.need_version()
    frm = current_version(spec)
    state = load_state(spec)
    drift = detect_drift(spec, state, frm)
    key = repair_key(state, drift)
    found: dict = {**({"drift": drift} if drift else {}), **({"repairKey": key} if key else {})}  # (a clean server's plan as before)
    pg = pg_plan(spec)  # jhe:postgresMajor: the cluster's move, done first
    if pg:
        found["postgres"] = pg
    if frm == to:
        return {"from": frm, "to": to, "action": "none", **found}
    return {**_plan(spec, frm, to, state), **found}


def _plan(spec: Spec, frm: str | None, to: str, state: dict) -> dict:
    repo = spec.repo
    if not (repo / "HEAD").exists() or not tag_exists(repo, to):
        if spec.repo_url.startswith("/") and Path(spec.repo_url).exists():
            repo = Path(spec.repo_url)  # read the upstream path directly, fetching nothing
        else:
            return {"from": frm, "to": to, "action": "upgrade" if frm else "install",
                    "note": f"tag {to} not fetched yet; preflight fetches it and lists the migrations"}
    pending, undo = migration_delta(release_migrations(spec, repo, to), applied_migrations(spec) if frm else [])
    facts: dict = {"from": frm, "to": to, "pending": pending, "undo": undo, "restoreFrom": spec.raw.get("restoreFrom")}
    classes = pending_classes(spec, repo, to, pending) if pending else {}
    db_bytes = db_size(spec.db_name) if frm else 0
    if undo:
        b = latest_backup_from(state, to)
        facts.update(backup=b, keptExists=bool(b and b.get("keptDatabase") and db_exists(b["keptDatabase"])),
                     backupLocal=bool(b and (Path(b["path"]) / "db.dump").exists()))
    elif frm:
        facts["strategy"], facts["why"] = choose_strategy(spec, "upgrade", db_bytes, [c["class"] for c in classes.values()])
    root = live_root(spec)
    live = parse_env((root / ".env").read_text()) if root and (root / ".env").exists() else {}
    facts["configured"] = set(live) | set(spec.env) | set(spec.secret_env)  # (env_missing leaves out envUnset and TOOL_WRITTEN)
    facts["unset"] = spec.env_unset
    facts["envAdded"] = env_added(repo, frm, to)
    out = plan_from_facts(facts)
    change = build_change(spec, repo, frm, to)
    if change:  # jhe:pins / jhe:python: a release of the same tag built otherwise
        out["build"] = change
        said = [f"{n} {c['from']} -> {c['to']}" for n, c in change["pins"].items()]
        py = change["python"]
        if py["from"] != py["to"]:
            said.append(f"Python {py['from'] or '?'} -> {py['to'] or 'missing'} ({py['interpreter']})")
        if said and "summary" in out:
            out["summary"] += f"; releases/{to} is {change['tag']} built with " + ", ".join(said)
    est = estimate_for(spec, state, action=out["action"], strategy=facts.get("strategy"), pending=pending, classes=classes,
                       db_bytes=db_bytes)
    out["estimatedDowntimeSeconds"] = est["seconds"]
    out["estimate"] = {k: est[k] for k in ("path", "parts", "basis", "writesPerSecond") if k in est}
    if pending:
        out["migrationClasses"] = {m: {k: c[k] for k in ("class", "operations")} for m, c in classes.items()}
        out["migrationClass"] = worst([c["class"] for c in classes.values()])
    out["migrationsOf"] = ("every app (releases/" + to + " is built)" if release_knows_all_migrations(spec, to) else
                           "the project's own apps; installed packages' (e.g. oauth2_provider) are known once "
                           "prepare-release builds releases/" + to)
    return out
