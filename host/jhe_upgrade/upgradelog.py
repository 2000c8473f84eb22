"""UPGRADE_LOG.md: one entry per upgrade, rollback, recovery or refusal."""
from __future__ import annotations

import json

from .report import report_lines
from .requirements import LOCK_FILES
from .spec import Spec, tag_of
from .util import version_key


def append_log(spec: Spec, entry: str) -> None:
    new = not spec.log_file.exists()
    with open(spec.log_file, "a") as f:
        if new:
            f.write("# JupyterHealth Exchange upgrade log\n\nWritten by jhe-upgrade, one entry per upgrade, rollback or recovery.\n")
        f.write("\n" + entry)


def _dependencies_line(d: dict) -> str:
    lock = LOCK_FILES.get(d.get("installer") or "", "requirements")
    how = "installed exactly as pinned" if d.get("exact") else "resolved by pip"
    checks = "hashes checked" if d.get("hashesChecked") else "no hashes in the lock"
    problems = d.get("pipCheck") or []
    pins = ", ".join(f"{n} {p.get('from')} -> {p.get('to')}" for n, p in (d.get("pins") or {}).items())
    rebuilt = d.get("rebuilt") or {}
    return (f"- Dependencies: {d.get('requirements')} from {lock}, {how}, {checks}; pip check: "
            + ("; ".join(problems) if problems else "no problems")
            + (f"; Python {d['python']}" if d.get("python") else "")
            + (f"; jhe:pins over the lock: {pins}" if pins else "")
            + (f"\n- Virtualenv built again {rebuilt.get('at')}: the server's Python changed under the release ({rebuilt.get('why')})"
               if rebuilt else ""))


def finish_entry(operator: str, owner: str, summary: dict, state: dict, stamp: str) -> str:
    """The entry of a finished install, upgrade or rollback, from finish's summary and the move's state."""
    frm, to, rb = summary["from"], summary["to"], summary.get("rollback")
    b = summary.get("backup") or {}
    fallback = summary.get("stagedFallback")
    migrated = summary["migrationsApplied"]
    added = summary["envAdded"]
    kind = "Install" if not frm else "Rollback" if summary["kind"] == "rollback" or version_key(to) < version_key(frm) else "Upgrade"
    rb_lines = [] if not rb else [
        "**Rollback:**",
        f"- Database restored from {rb['restoredFrom']} (taken when leaving {to}); {frm}'s database kept as {rb['keptDatabase']}",
        f"- Migrations undone: {', '.join((state.get('target') or {}).get('undo') or []) or 'none'}",
        f"- Rows written since, replayed: {json.dumps(rb['rowsReplayed'])}",
        f"- Rows exported for review (not replayable): {json.dumps(rb['rowsExported'])}"
        + (f" in {rb['exportDir']}" if rb.get("exportDir") else ""),
        "- Tables written since the cutover, and what was done:",
        *[f"  - {t}: {e.get('done', '-')}" for t, e in sorted((rb.get("tables") or {}).items())],
        "",
    ]
    staged = (state.get("migrated") or {}).get("staged")
    online = (state.get("migrated") or {}).get("online")
    caught = (state.get("migrated") or {}).get("caughtUp") or {}
    return "\n".join([
        f"## {kind} {'of' if not frm else 'to'} {to} - {stamp}", "",
        f"**Performed by:** {operator} (stack {owner})",
        f"**From:** {frm or 'nothing'}  **To:** {to}",
        f"**Downtime:** {summary['downtimeSeconds']} s (maintenance page shown)"
        + (f"; estimated {est} s at preflight" if (est := summary.get("estimatedDowntimeSeconds")) is not None else ""),
        "**Migration:** " + ("applied while the old version served; no window (hand-over)" if online else
                             "on a staged copy while the old version served; swapped in by rename"
                             + ("; rows written meanwhile caught up in it: " + ", ".join(f"{t} {n}" for t, n in caught.items())
                                if caught else "") if staged
                              else "in the window" + (f" (written since the backup began: {', '.join(fallback['written'])})"
                                                      if fallback else "")),
        *([f"**Database before the upgrade:** kept as {b['keptDatabase']}"] if b.get("keptDatabase") else []),
        *_staging_line(summary.get("stagingOverride")), "",
        *rb_lines,
        "**Changes:**",
        f"- Migrations applied: {', '.join(migrated) if migrated else 'none'}",
        f"- Environment variables added by {to}: {', '.join(added) if added else 'none'}",
        *([_dependencies_line(summary["dependencies"])] if summary.get("dependencies") else []), "",
        "**Rollback plan:**",
        f"- Backup: {b.get('path') or 'none'} (sha256 {b.get('sha256') or '-'}, rows {json.dumps(b.get('rowCounts') or {})})",
        f"- Set jhe:version back to {tag_of(frm) if frm else frm}"
        + (f" (with jhe:pins/jhe:python as they were: release {frm})" if frm and "+" in frm else "") + " and run `pulumi up`", "",
        "**Verification:**",
        *_smoke_lines(summary["smoke"]), "",
        *_report(summary.get("report")),
    ])


def _smoke_lines(smoke: dict) -> list[str]:
    """Through nginx after the window (`/health`: 200 ...), and the gate's smoke tests, one line each."""
    lines = [f"- {k}: {v}" for k, v in smoke.items() if k != "gate"]
    for name, c in ((smoke.get("gate") or {}).get("checks") or {}).items():
        said = c.get("skipped") and f"skipped ({c['skipped']})" or ("passed" if c.get("ok") else f"FAILED ({c.get('detail')})")
        lines.append(f"- smoke test {name}: {said}" + (f", {c['status']}" if c.get("ok") and c.get("status") else ""))
    cleanup = (smoke.get("gate") or {}).get("cleanup")
    if cleanup:
        problem = f" ({cleanup['problem']})" if cleanup.get("problem") else ""
        lines.append(f"- smoke tests' own rows removed: {cleanup.get('deleted', 0)}{problem}")
    return lines


def _report(r: dict | None) -> list[str]:
    """The report's lines; a report that cannot be written says so (it never fails the move)."""
    if not r:
        return []
    try:
        return report_lines(r)
    except Exception as e:  # noqa: BLE001 - a report, not a gate
        return [f"**After the upgrade:** the report could not be written ({e})", ""]


def _staging_line(override: dict | None) -> list[str]:
    """A prod move made without following the staging stack's rehearsals (jhe:stagingOverride): why."""
    if not override:
        return []
    return [f"**Staging override:** {override.get('reason')} (staging stack {override.get('stack') or '-'} not followed)"]
