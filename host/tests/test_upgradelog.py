"""UPGRADE_LOG.md entries, as the runbook's log template has them."""
from __future__ import annotations

from jhe_upgrade.upgradelog import finish_entry


def summary(**over: object) -> dict:
    s: dict = {"from": "v1.0.0", "to": "v1.1.0", "downtimeSeconds": 0.92, "migrationsApplied": ["core.0002_observation_source"],
               "backup": {"id": "b1", "path": "/backups/jhe/b1", "sha256": "9e1c", "rowCounts": {"core_patient": 100},
                          "keptDatabase": "jhe_production_was_v1_0_0_20261129"},
               "envAdded": ["JHE_FEATURE_X"], "smoke": {"/health": "200", "/admin/": "302"}, "kind": "upgrade",
               "rollback": None, "stagedFallback": None,
               "dependencies": {"installer": "pipenv", "requirements": 70, "exact": True, "hashesChecked": True,
                                "pipCheck": ["pyopenssl 24.2.1 has requirement cryptography<44, but you have cryptography 48.0.1."]}}
    s.update(over)
    return s


def test_upgrade_entry() -> None:
    e = finish_entry("admin from 10.0.0.1", "org/p/prod", summary(), {"migrated": {"staged": True}}, "2026-11-29T12:00:00Z")
    assert e.startswith("## Upgrade to v1.1.0 - 2026-11-29T12:00:00Z\n")
    for line in ["**Performed by:** admin from 10.0.0.1 (stack org/p/prod)", "**Downtime:** 0.92 s (maintenance page shown)",
                 "**Migration:** on a staged copy while the old version served; swapped in by rename",
                 "**Database before the upgrade:** kept as jhe_production_was_v1_0_0_20261129",
                 "- Migrations applied: core.0002_observation_source", "- Environment variables added by v1.1.0: JHE_FEATURE_X",
                 '- Backup: /backups/jhe/b1 (sha256 9e1c, rows {"core_patient": 100})',
                 "- Set jhe:version back to v1.0.0 and run `pulumi up`", "- /health: 200",
                 "- Dependencies: 70 from Pipfile.lock, installed exactly as pinned, hashes checked; pip check: "
                 "pyopenssl 24.2.1 has requirement cryptography<44, but you have cryptography 48.0.1."]:
        assert line in e.splitlines(), line


def test_fallback_rollback_and_install_entries() -> None:
    e = finish_entry("op", "o", summary(stagedFallback={"written": ["core_observation"]}), {}, "t")
    assert "**Migration:** in the window (written since the backup began: core_observation)" in e
    rb = {"restoredFrom": "b1", "keptDatabase": "jhe_production_replaced_1", "rowsReplayed": {"core_observation": 20},
          "rowsExported": {}, "exportDir": None,
          "tables": {"core_observation": {"key": "integer", "new": 20, "replayed": 20, "done": "20 new rows inserted"},
                     "django_session": {"key": "text", "new": 1, "replayed": 1, "done": "1 new rows inserted"}}}
    e = finish_entry("op", "o", summary(**{"from": "v1.1.0", "to": "v1.0.0"}, kind="rollback", rollback=rb),
                     {"target": {"undo": ["core.0002_observation_source"]}}, "t")
    assert e.startswith("## Rollback to v1.0.0 - t")
    assert "  - core_observation: 20 new rows inserted\n  - django_session: 1 new rows inserted" in e
    assert "- Migrations undone: core.0002_observation_source" in e and '- Rows written since, replayed: {"core_observation": 20}' in e
    e = finish_entry("op", "o", summary(**{"from": None}, backup=None), {}, "t")
    assert e.startswith("## Install of v1.1.0 - t") and "- Backup: none (sha256 -, rows {})" in e
