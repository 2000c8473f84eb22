"""What a server ran and passed, and rolled back from (a staging stack's outputs carry it), and how
a prod move's relation to staging reads in UPGRADE_LOG.md."""
from __future__ import annotations

from jhe_upgrade.rehearsal import migration_times, move_report, rehearsed
from jhe_upgrade.upgradelog import _staging_line


def test_passed_then_rolled_back_then_passed_again() -> None:
    state: dict = {}
    rehearsed(state, "v1.0.0", "v1.0.0", "adopted", [])
    assert state["rehearsals"]["v1.0.0"]["status"] == "passed"
    rehearsed(state, "v1.0.0", "v1.1.0", "upgrade", ["core.0002_observation_source"])
    assert state["rehearsals"]["v1.1.0"]["status"] == "passed"
    assert state["rehearsals"]["v1.1.0"]["migrationsApplied"] == ["core.0002_observation_source"]
    r = rehearsed(state, "v1.1.0", "v1.0.0", "rollback", [])
    assert r["v1.1.0"]["status"] == "rolled back" and r["v1.1.0"]["to"] == "v1.0.0"
    assert r["v1.0.0"]["status"] == "passed"
    assert rehearsed(state, "v1.0.0", "v1.1.0", "upgrade", [])["v1.1.0"]["status"] == "passed"
    # A finish after a reverted health gate (the old version serves): failed, never passed.
    assert rehearsed(state, "v1.1.0", "v1.2.0", "upgrade", [], served=False)["v1.2.0"]["status"] == "failed"


def test_log_line_says_why_staging_was_not_followed() -> None:
    assert _staging_line(None) == []
    line = _staging_line({"stack": "organization/jhe/staging", "reason": "hotfix for an outage"})
    assert line == ["**Staging override:** hotfix for an outage (staging stack organization/jhe/staging not followed)"]


def test_each_migrations_time_is_read_from_migrates_verbose_output() -> None:
    out = ("Operations to perform:\n  Apply all migrations: admin, auth, core\nRunning migrations:\n"
           "  Applying core.0002_observation_source... OK (0.041s)\n"
           "  Applying core.0003_backfill_source...\x1b[32;1m OK (12.500s)\x1b[0m\n"
           "  Applying core.0004_study_title_patientidentifier... OK (0.007s)\n"
           "Running post-migrate handlers for application core\n")
    assert migration_times(out) == {"core.0002_observation_source": 0.041, "core.0003_backfill_source": 12.5,
                                    "core.0004_study_title_patientidentifier": 0.007}
    # A run that failed part-way: the migration that failed has no time (no "OK").
    assert migration_times("  Applying core.0002_x... OK (0.010s)\n  Applying core.0003_y...Traceback") == {"core.0002_x": 0.01}
    assert migration_times("") == {}


def test_a_passed_move_keeps_what_it_cost_for_prod_to_read() -> None:
    m = "core.0002_observation_source"
    state: dict = {"target": {"pending": [m], "undo": [], "classes": {m: "additive"}},
                   "migrated": {"seconds": 0.9, "times": {"core.0002_observation_source": 0.04}},
                   "backup": {"rowCounts": {"core_patient": 10, "core_observation": 90}},
                   "clonedFrom": {"backup": "20260101-120000-v1.0.0-to-v1.1.0", "deidentified": True}}
    timing = {"path": "in-window", "windowSeconds": 1.5, "estimatedSeconds": 2.0}
    report = move_report(state, timing, "in-window", 12 * 2**20)
    r = rehearsed(state, "v1.0.0", "v1.1.0", "upgrade", ["core.0002_observation_source"], report=report)["v1.1.0"]
    assert r["status"] == "passed"
    assert r["report"]["downtimeSeconds"] == 1.5 and r["report"]["estimatedDowntimeSeconds"] == 2.0
    assert r["report"]["migrationSeconds"] == {"core.0002_observation_source": 0.04}
    assert r["report"]["plan"]["pending"] == ["core.0002_observation_source"]
    assert r["report"]["data"] == {"databaseBytes": 12 * 2**20, "rows": 100, "clonedFrom": state["clonedFrom"]}
    # A failed move keeps no report: nothing of it is to be followed.
    assert "report" not in rehearsed(state, "v1.1.0", "v1.2.0", "upgrade", [], served=False, report=report)["v1.2.0"]
