"""What a server ran and passed, and rolled back from (a staging stack's outputs carry it), and how
a prod move's relation to staging reads in UPGRADE_LOG.md."""
from __future__ import annotations

from jhe_upgrade.steps import rehearsed
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
