"""PostgreSQL major upgrades (jhe:postgresMajor), as the runbook's special case does them by hand - back
up, install the new major, stop the old cluster, pg_upgrade, start, settings - with Debian's
pg_upgradecluster (pg_upgrade, copying: the old cluster's files are never changed). The old cluster is
kept, stopped, until the stack moves again; the new one must pass the health gate and the smoke tests
or the old one serves again. Setting jhe:postgresMajor back brings the old cluster back, with the rows
written on the new one since replayed into it (or exported, never dropped).

Every move is recorded (state "postgres.moving") before its window opens, and its result before the
window closes: no user can write to a cluster that is not recorded as serving, so a run killed
half-way is undone by the next one (the cluster it left serves again, as it was) and then tried anew."""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import NoReturn

from .backup import take_backup, verify_backup
from .db import live_marker
from .gitrepo import fetch_tags, tag_exists, tag_tree
from .health import MAIN_PORT
from .replay import replay_rows
from .requirements import python_requirement, python_version
from .smoke import Session, provision
from .spec import Spec
from .state import current_version, load_state, register_backup, release_lock, save_state, take_lock
from .upgradelog import append_log
from .util import Refusal, error_summary, log, now, psql, run, write_private
from .window import close_window, open_window, start_service, stop_now

# Where Debian's PostgreSQL keeps each major's programs and clusters.
LIB = Path("/usr/lib/postgresql")
ETC = Path("/etc/postgresql")


def clusters() -> list[dict]:
    """pg_lsclusters: every cluster with its major, name, port, status and data directory."""
    out = run(["pg_lsclusters", "-h"], quiet=True).stdout
    found = []
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 6 and f[0].isdigit():
            found.append({"major": int(f[0]), "name": f[1], "port": int(f[2]), "online": f[3].startswith("online"), "datadir": f[5]})
    return found


def serving() -> dict:
    """The cluster the app and this tool reach (the default port's), from the server itself."""
    p = run(["psql", "-X", "-q", "-t", "-A", "-d", "postgres", "-c",
             "SELECT current_setting('server_version_num')::int / 10000, current_setting('port'), current_setting('data_directory')"],
            user="postgres", cwd="/", check=False, quiet=True)
    if p.returncode != 0:
        raise Refusal(f"PostgreSQL does not answer on its default port ({error_summary(p.stderr)}); pg_lsclusters shows "
                      f"{clusters()}: start the cluster JHE uses (pg_ctlcluster <major> main start), then run again")
    major, port, datadir = p.stdout.strip().split("|")
    return {"major": int(major), "port": int(port), "datadir": datadir,
            "name": next((c["name"] for c in clusters() if c["datadir"] == datadir), "main")}


def find(major: int, name: str) -> dict | None:
    return next((c for c in clusters() if c["major"] == major and c["name"] == name), None)


def problems(spec: Spec, state: dict, cur: dict, want: int) -> list[str]:
    """Everything that refuses a move from cur's major to `want`, read without changing anything (the
    plan shows them; the step refuses with them before its lock)."""
    out = []
    version = current_version(spec)
    if not version:
        out.append("JHE is not installed on this server yet: install it first, then set jhe:postgresMajor")
    st = state.get("postgres") or {}
    if want > cur["major"]:
        if not (LIB / str(want) / "bin" / "pg_upgrade").exists():
            out.append(f"PostgreSQL {want} is not installed on the server (apt-get install postgresql-{want}), or set "
                       f"jhe:postgresMajor {cur['major']}")
        stale = st.get("stale") or {}
        there = find(want, cur["name"])
        if there and not (stale.get("major") == want and stale.get("name") == cur["name"]):
            out.append(f"a PostgreSQL {want} cluster {cur['name']} already exists on the server (port {there['port']}) and this "
                       f"program did not make it: check what it holds, then remove it (pg_dropcluster --stop {want} {cur['name']}) "
                       f"and run again, or set jhe:postgresMajor {cur['major']}")
        base = Path(cur["datadir"]).parent.parent
        used = int(run(["du", "-sb", cur["datadir"]], quiet=True).stdout.split()[0])
        free = shutil.disk_usage(base).free
        if free < used * 1.2 + 200 * 2**20:
            out.append(f"not enough free disk for pg_upgrade's copy: the {cur['major']} cluster holds {used // 2**20} MiB, "
                       f"{free // 2**20} MiB are free under {base}")
    else:
        prev = st.get("previous") or {}
        if not (prev.get("major") == want and find(want, prev.get("name", ""))):
            out.append(f"jhe:postgresMajor {want} is older than the PostgreSQL {cur['major']} the server runs, and no {want} cluster "
                       f"kept by an upgrade of this program is there: a major cannot be downgraded in place. Set jhe:postgresMajor "
                       f"{cur['major']}, or restore a backup into a {want} cluster by hand")
        elif version and prev.get("jhe") and prev["jhe"] != version:
            out.append(f"the PostgreSQL {want} cluster holds the database as JHE {prev['jhe']} had it, and {version} serves now: "
                       f"set jhe:version back to {prev['jhe']} first (a JHE rollback), then jhe:postgresMajor {want}")
    return out


def pg_plan(spec: Spec) -> dict | None:
    """For the plan (read-only): what jhe:postgresMajor will do, or None when it is not set."""
    want = spec.raw.get("postgresMajor")
    if want is None:
        return None
    cur = serving()
    state = load_state(spec)
    st = state.get("postgres") or {}
    out: dict = {"from": cur["major"], "to": int(want)}
    if cur["major"] == int(want):
        out["action"] = "none"
        prev = st.get("previous")
        if prev and find(prev["major"], prev["name"]):
            out["kept"] = (f"PostgreSQL {prev['major']} cluster {prev['name']} (stopped, port {prev['port']}): set jhe:postgresMajor "
                           f"{prev['major']} to go back to it")
        return out
    up = int(want) > cur["major"]
    out["action"] = "upgrade" if up else "rollback"
    out["summary"] = (f"PostgreSQL {cur['major']} -> {want}: a verified backup, then in a window pg_upgradecluster {cur['major']} "
                      f"{cur['name']} (pg_upgrade, copying; the {cur['major']} cluster is kept, stopped), the health gate and smoke "
                      f"tests on {want} (else {cur['major']} serves again)" if up else
                      f"PostgreSQL {cur['major']} -> {want}: the {want} cluster kept by the upgrade serves again, with the rows written "
                      f"on {cur['major']} since replayed into it")
    refused = problems(spec, state, cur, int(want))
    if refused:
        out["refused"] = refused
    return out


def step_postgres(spec: Spec) -> dict:
    """jhe:postgresMajor: nothing when the server runs it; else the upgrade, or the way back."""
    want = spec.raw.get("postgresMajor")
    if not isinstance(want, int) or not 10 <= want <= 99:
        raise Refusal(f"spec.postgresMajor must be a PostgreSQL major version such as 17 (got {want!r})")
    state = load_state(spec)
    st = state.get("postgres") or {}
    if st.get("moving"):  # a run killed inside its window: what it left serves again as it was, then anew
        _undo(spec, st["moving"])
        state = load_state(spec)
        state["postgres"].pop("moving", None)
        close_window(spec, state)
        release_lock(spec)
    elif st.get("closing"):  # killed after it recorded its result: only the window is left to close
        close_window(spec, state)
        state = load_state(spec)
        state["postgres"].pop("closing", None)
        save_state(spec, state)
        release_lock(spec)
    cur = serving()
    if cur["major"] == want:
        return {"postgres": {"major": want, "port": cur["port"], "noop": True}}
    if state.get("window"):
        raise Refusal(f"a window of an interrupted JHE upgrade is still open on this server, and the PostgreSQL move runs before the "
                      f"upgrade steps: set jhe:postgresMajor {cur['major']} (what the server runs), run `pulumi up` to finish that "
                      f"upgrade, then set jhe:postgresMajor {want} again")
    refused = problems(spec, state, cur, want) + _target_problems(spec)
    if refused:
        raise Refusal(f"PostgreSQL {cur['major']} -> {want} refused before any change:\n  - " + "\n  - ".join(refused))
    return _back(spec, state, cur, want) if want < cur["major"] else _up(spec, state, cur, want)


def _target_problems(spec: Spec) -> list[str]:
    """What preflight would refuse of the stack's JHE release (an `up` that changes both moves PostgreSQL
    first): checked now, so a wrong jhe:version, jhe:pins or jhe:python stops it before anything changes."""
    if not spec.version or spec.version == current_version(spec):
        return []
    from .steps import build_problems  # (steps imports most modules)
    fetch_tags(spec)
    if not tag_exists(spec.repo, spec.version):
        return [f"jhe:version {spec.tag} is not a tag of {spec.repo_url}"]
    tree = tag_tree(spec.repo, spec.version)
    return build_problems(spec, tree, python_requirement(tree), python_version(spec.python))[0]


def _gate(spec: Spec, version: str, session: Session) -> dict:
    from .steps import gate  # (steps imports most modules; imported here to keep this one light)
    return gate(spec, version, MAIN_PORT, session)


def _try(what: str, args: list[str], errors: list[str]) -> None:
    """An undo's command: its failure is noted and the undo goes on (each undo step on its own)."""
    p = run(args, check=False, quiet=True, timeout=600)
    if p.returncode != 0:
        errors.append(f"{what}: {error_summary(p.stderr or p.stdout)}")


def _set_port(major: int, name: str, port: int, errors: list[str] | None = None) -> None:
    args = ["pg_conftool", str(major), name, "set", "port", str(port)]
    if errors is None:
        run(args, quiet=True)
    else:
        _try(f"port {port} for {major}/{name}", args, errors)


def _read_start_conf(major: int, name: str) -> str:
    """auto, manual or disabled: the file's setting line (the rest is comments)."""
    try:
        lines = (ETC / str(major) / name / "start.conf").read_text().splitlines()
    except OSError:
        return "auto"
    return next((ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")), "auto")


def _start_conf(major: int, name: str, mode: str) -> None:
    """auto (started with the server) or manual; systemd's generator reads it, so a daemon-reload follows."""
    f = ETC / str(major) / name / "start.conf"
    if f.parent.is_dir():
        f.write_text(f"{mode}\n")
        run(["systemctl", "daemon-reload"], check=False, quiet=True)


def _ctl(major: int, name: str, action: str, errors: list[str] | None = None) -> None:
    args = ["pg_ctlcluster", str(major), name, action]
    if errors is None:
        run(args, timeout=300)
    else:
        _try(f"{action} {major}/{name}", args, errors)


def _collation(spec: Spec) -> dict:
    """After pg_upgrade (Debian's hook has analyzed every database): when the C library's collation changed
    under the database (Debian 12 -> 13), its indexes rebuilt and the recorded version refreshed."""
    t = time.monotonic()
    stale = psql(spec.db_name, "SELECT datcollversion IS DISTINCT FROM pg_database_collation_actual_version(oid) "
                               "FROM pg_database WHERE datname = current_database()") == "t"
    out: dict = {}
    if stale:
        run(["reindexdb", "-q", "-d", spec.db_name], user="postgres", cwd="/", timeout=3600)
        psql(spec.db_name, f'ALTER DATABASE "{spec.db_name}" REFRESH COLLATION VERSION')
        out["reindexed"] = "the C library's collation version changed: every index rebuilt, the version refreshed"
    if not Path("/etc/postgresql-common/pg_upgradecluster.d/analyze").exists():
        run(["vacuumdb", "-q", "--analyze-only", "-d", spec.db_name], user="postgres", cwd="/", timeout=3600)
        out["analyzed"] = True
    out["afterSeconds"] = round(time.monotonic() - t, 2)
    return out


def _before_window(spec: Spec, state: dict, cur: dict, want: int) -> tuple[str, dict, Session, dict]:
    """Lock, the smoke tests' account and session, a verified backup (the database, and the cluster's roles
    as the runbook's pg_dumpall has them), all while JHE serves."""
    version = current_version(spec) or ""
    take_lock(spec, f"PostgreSQL {cur['major']} -> {want}")
    smoke = provision(spec, version)
    session = Session(spec, version)
    b = take_backup(spec, f"postgres{cur['major']}", f"postgres{want}", name=f"postgres-{cur['major']}-to-{want}")
    verify_backup(b)
    roles = run(["pg_dumpall", "--globals-only"], user="postgres", cwd="/", quiet=True).stdout
    write_private(Path(b["path"]) / "globals.sql", roles, "postgres", "postgres")
    register_backup(state, None, "", b, key=f"postgres {cur['major']}->{want}")
    save_state(spec, state)
    return version, smoke, session, b


def _record(spec: Spec, key: str, value: dict | None) -> None:
    state = load_state(spec)
    pg = state.setdefault("postgres", {})
    if value is None:
        pg.pop(key, None)
    else:
        pg[key] = value
    save_state(spec, state)


def _up(spec: Spec, state: dict, cur: dict, want: int) -> dict:
    t0 = time.monotonic()
    version, smoke, session, b = _before_window(spec, state, cur, want)
    start = _read_start_conf(cur["major"], cur["name"])
    moving = {"kind": "upgrade", "from": {**cur, "startConf": start}, "to": want}
    _record(spec, "moving", moving)
    there = find(want, cur["name"])
    if there:  # the cluster a rollback left (its rows were replayed then)
        run(["pg_dropcluster", "--stop", str(want), cur["name"]], timeout=600)
        log(f"dropped the PostgreSQL {want} cluster {cur['name']} a rollback had left (its rows were replayed then)")
    state = load_state(spec)
    open_window(spec, state)
    tw = time.monotonic()
    try:
        p = run(["pg_upgradecluster", "-v", str(want), "-m", "upgrade", str(cur["major"]), cur["name"]], check=False, timeout=7200)
        if p.returncode != 0:
            raise Refusal(f"pg_upgradecluster {cur['major']} {cur['name']} failed: {error_summary(p.stderr or p.stdout)}")
        old, new = find(cur["major"], cur["name"]) or {}, find(want, cur["name"]) or {}
        if new.get("port") != cur["port"] or not new.get("online"):
            raise Refusal(f"after pg_upgradecluster the {want} cluster is not serving on port {cur['port']} ({new})")
        tuned = _collation(spec)
        since = live_marker(spec.db_name)  # rows written from here on are the new cluster's (a rollback replays them)
        h = _serve_and_gate(spec, version, session, want)
    except BaseException as e:
        _failed(spec, moving, session, version, cur, want, b, e,
                f"unchanged (pg_upgrade copied its files, never wrote them); the {want} cluster was removed")
    # The result recorded before the window closes (a kill from here on leaves only the window to close).
    _start_conf(cur["major"], cur["name"], "manual")  # kept for a way back, never started on boot
    state = load_state(spec)
    state["postgres"] = {"major": want, "name": cur["name"], "port": new["port"], "at": now(), "closing": True,
                         "previous": {"major": cur["major"], "name": cur["name"], "port": old.get("port"), "datadir": cur["datadir"],
                                      "startConf": start, "liveSince": since, "backup": b["id"], "jhe": version}}
    save_state(spec, state)
    return _finished(spec, cur, want, b, t0, tw, session, version,
                     {"port": new["port"], "kept": {"major": cur["major"], "name": cur["name"], "port": old.get("port")}, **tuned,
                      "gate": {"ok": True, "smoke": h.get("smoke")}, "smokeTest": smoke},
                     f"**Kept:** the {cur['major']} cluster {cur['name']}, stopped, on port {old.get('port')} (set jhe:postgresMajor "
                     f"{cur['major']} to go back; pg_dropcluster {cur['major']} {cur['name']} once sure)\n")


def _back(spec: Spec, state: dict, cur: dict, want: int) -> dict:
    """The cluster the upgrade kept serves again; the rows written on the newer one since it took over are
    replayed into it (or exported); the newer cluster is kept, stopped, until the next upgrade drops it."""
    prev = state["postgres"]["previous"]
    kept = find(want, prev["name"]) or {}
    t0 = time.monotonic()
    version, smoke, session, b = _before_window(spec, state, cur, want)
    moving = {"kind": "rollback", "from": {**cur, "startConf": "auto"}, "to": want,
              "kept": {"major": want, "name": kept["name"], "port": kept["port"], "startConf": prev.get("startConf", "auto")}}
    _record(spec, "moving", moving)
    state = load_state(spec)
    open_window(spec, state)
    tw = time.monotonic()
    try:
        if not kept["online"]:
            _ctl(want, kept["name"], "start")
        export = spec.backup_dir / f"{b['id']}-replay"
        export.mkdir(mode=0o700, exist_ok=True)
        shutil.chown(export, "postgres", "postgres")
        replayed = replay_rows(spec, spec.db_name, f"{spec.db_name}@{kept['port']}", export, prev.get("liveSince"))
        _ctl(cur["major"], cur["name"], "stop")
        _set_port(cur["major"], cur["name"], kept["port"])
        _set_port(want, kept["name"], cur["port"])
        _start_conf(cur["major"], cur["name"], "manual")
        _start_conf(want, kept["name"], prev.get("startConf", "auto"))
        _ctl(want, kept["name"], "restart")
        h = _serve_and_gate(spec, version, session, want)
    except BaseException as e:
        _failed(spec, moving, session, version, cur, want, b, e, "as it was (the rows replayed into the kept cluster stay there)")
    state = load_state(spec)
    state["postgres"] = {"major": want, "name": kept["name"], "port": cur["port"], "at": now(), "closing": True,
                         "stale": {"major": cur["major"], "name": cur["name"], "port": kept["port"]}}
    save_state(spec, state)
    exported = replayed["rowsExported"]
    said = (f"**Rows replayed:** {sum(replayed['rowsReplayed'].values())}"
            + (f"; exported, not replayed, to {replayed['exportDir']}: {exported}" if exported else "") + "\n"
            + f"**Kept:** the {cur['major']} cluster, stopped, on port {kept['port']} (the next upgrade replaces it)\n")
    return _finished(spec, cur, want, b, t0, tw, session, version,
                     {"port": cur["port"], "replay": replayed, "kept": {"major": cur["major"], "name": cur["name"], "port": kept["port"]},
                      "gate": {"ok": True, "smoke": h.get("smoke")}, "smokeTest": smoke}, said)


def _finished(spec: Spec, cur: dict, want: int, b: dict, t0: float, tw: float, session: Session, version: str, out: dict,
              said: str) -> dict:
    window = close_window(spec, load_state(spec))
    cleanup = session.end(version)
    _record(spec, "closing", None)
    release_lock(spec)
    append_log(spec, f"## PostgreSQL {cur['major']} -> {want}{' (rollback)' if want < cur['major'] else ''} - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**JHE:** {version}, unchanged\n"
                     f"**Backup:** {b['path']} (verified; the roles in globals.sql)\n**Downtime:** {window} s\n" + said)
    return {"postgres": {"from": cur["major"], "to": want, "backup": b["path"], "downtimeSeconds": window,
                         "windowSeconds": round(time.monotonic() - tw, 2), "seconds": round(time.monotonic() - t0, 2),
                         **out, "smokeCleanup": cleanup}}


def _serve_and_gate(spec: Spec, version: str, session: Session, want: int) -> dict:
    """JHE started on the new cluster, inside the window: the health gate and the smoke tests must pass."""
    start_service(spec)
    h = _gate(spec, version, session)
    if not h["ok"]:
        raise Refusal(f"the health gate failed on PostgreSQL {want}: {h.get('detail') or (h.get('smoke') or {}).get('detail')}")
    return h


def _failed(spec: Spec, moving: dict, session: Session, version: str, cur: dict, want: int, b: dict, e: BaseException,
            how: str) -> NoReturn:
    """A move that failed inside its window: undone, logged, refused with what the undo could not do."""
    why = str(e) if isinstance(e, Refusal) else f"{type(e).__name__}: {e}"
    errors = _undo(spec, moving)
    session.end(version)
    _finish_failed(spec, cur, want, why, b, errors)
    undo = f". The undo reported: {'; '.join(errors)}" if errors else ""
    raise Refusal(f"{why}. PostgreSQL {cur['major']} serves again, {how}{undo}") from e


def _finish_failed(spec: Spec, cur: dict, want: int, why: str, b: dict, errors: list[str]) -> None:
    state = load_state(spec)
    state.setdefault("postgres", {}).pop("moving", None)
    save_state(spec, state)
    close_window(spec, state)
    release_lock(spec)
    append_log(spec, f"## PostgreSQL {cur['major']} -> {want} failed, {cur['major']} serves again - {now()}\n\n"
                     f"**Performed by:** {spec.operator} (stack {spec.owner})\n**Why:** {why}\n**Backup:** {b['path']}\n"
                     + (f"**The undo reported:** {'; '.join(errors)}\n" if errors else ""))


def _undo(spec: Spec, moving: dict) -> list[str]:
    """What a move left, put back: the cluster it moved from serves again on its port, with its start
    setting; an upgrade's new cluster is dropped (it served nothing but the gate, inside the window); a
    rollback's older cluster goes back to its port, stopped. Each part on its own: a failure is reported,
    the rest still runs. Returns what failed."""
    errors: list[str] = []
    try:
        stop_now(spec)
    except Exception as e:  # (the app is stopped again at the end anyway)
        errors.append(f"stop {spec.service}: {e}")
    src = moving["from"]
    if moving["kind"] == "upgrade":
        if find(moving["to"], src["name"]):
            _try(f"drop {moving['to']}/{src['name']}", ["pg_dropcluster", "--stop", str(moving["to"]), src["name"]], errors)
    else:
        k = moving["kept"]
        if (find(k["major"], k["name"]) or {}).get("online"):
            _ctl(k["major"], k["name"], "stop", errors)
        _set_port(k["major"], k["name"], k["port"], errors)
        _start_conf(k["major"], k["name"], "manual")
    if (find(src["major"], src["name"]) or {}).get("port") != src["port"]:
        _set_port(src["major"], src["name"], src["port"], errors)
    _start_conf(src["major"], src["name"], src.get("startConf") or "auto")
    if not (find(src["major"], src["name"]) or {}).get("online"):
        _ctl(src["major"], src["name"], "start", errors)
    _try(f"start {spec.service}", ["systemctl", "start", spec.service], errors)
    return errors
