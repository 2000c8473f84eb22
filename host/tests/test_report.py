"""The post-upgrade report: the journal's errors and warnings since the cutover, memory, the database's
growth and index hints as read from PostgreSQL's statistics, and the UPGRADE_LOG.md lines."""
from __future__ import annotations

import subprocess

import pytest

from jhe_upgrade import report
from jhe_upgrade.spec import Spec


def test_journal_since_the_cutover_counts_errors_and_warnings(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []
    journal = ("[INFO] Booting worker with pid: 812\n"
               "Internal Server Error: /api/v1/observations\n"
               "Traceback (most recent call last):\n"
               "[WARNING] Worker with pid 812 was terminated due to signal 15\n"
               "RuntimeWarning: DateTimeField received a naive datetime\n"
               "[INFO] Listening at: http://127.0.0.1:8000\n")

    def fake_run(args: list[str], **_: object) -> subprocess.CompletedProcess:
        seen.append(args)
        return subprocess.CompletedProcess(args, 0, journal, "")

    monkeypatch.setattr(report, "run", fake_run)
    j = report.journal_report(spec, "2026-11-30T10:15:02Z")
    assert seen[0][:5] == ["journalctl", "-u", spec.service, "-u", f"{spec.service}-next@*"]
    assert seen[0][-2:] == ["--since", "2026-11-30 10:15:02 UTC"]
    assert (j["lines"], j["errors"], j["warnings"]) == (6, 2, 2)
    assert j["firstErrors"] == ["Internal Server Error: /api/v1/observations", "Traceback (most recent call last):"]
    # "RuntimeWarning" is one word: the runbook's `grep -i warning` counts it, and so does this.
    assert j["firstWarnings"][1].startswith("RuntimeWarning")


def test_memory_from_proc_meminfo() -> None:
    m = report._meminfo("MemTotal: 2048000 kB\nMemFree: 100 kB\nMemAvailable: 1024000 kB\nSwapTotal: 1000 kB\nSwapFree: 400 kB\n")
    assert m == {"totalBytes": 2048000 * 1024, "availableBytes": 1024000 * 1024, "swapUsedBytes": 600 * 1024}


def test_database_growth_busiest_tables_and_index_hints(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "db_size", lambda name: 30 * 2**20)
    monkeypatch.setattr(report, "row_counts", lambda s, db, limits: {"core_patient": 10, "core_observation": 120, "core_study": 1}
                        if limits == report.LIMITS else {})
    answers = {report.BUSIEST_SQL: "core_observation|20|0|0|3|900|120\ncore_patient|0|10|0|1|40|10",
               report.SEQ_SCAN_SQL: "core_observation|5000|2|1000000",
               report.UNINDEXED_SQL: "core_observation|ow_key|-1"}
    # (the limits go first; psql -q prints no command tags for them)
    monkeypatch.setattr(report, "psql", lambda db, sql: answers[sql.removeprefix(report.LIMITS)])
    d = report.database_report(spec, 28 * 2**20, {"core_patient": 10, "core_observation": 100, "core_study": 1})
    assert d["growthBytes"] == 2 * 2**20
    assert d["rowsChanged"] == {"core_observation": 20}
    assert d["busiestTables"][0] == {"table": "core_observation", "inserted": 20, "updated": 0, "deleted": 0}
    assert d["indexHints"] == [
        "core_observation: 5000 sequential scans against 2 index scans over 1000000 rows - an index may be missing",
        "core_observation.ow_key is nearly unique (n_distinct -1) and leads no index: a lookup by it reads the whole table"]
    lines = report.report_lines({"database": d, "journal": {"errors": 1, "warnings": 0, "lines": 40, "firstErrors": ["boom"]},
                                 "system": {"disk": {"app": {"path": "/opt/jupyterhealth-exchange", "freeBytes": 5 * 2**30}},
                                            "memory": {"availableBytes": 2**30, "totalBytes": 2**31}, "load": [0.1, 0.2, 0.3]},
                                 "scheduled": {"timers": [{}], "failedUnits": [], "celery": [], "crontab": ["0 3 * * * x"]}})
    text = "\n".join(lines)
    assert "- Database: 30.0 MiB (+2.0 MiB since preflight); rows: core_observation 120, core_patient 10, core_study 1" in text
    assert "- Journal since the move began: 1 error line(s), 0 warning line(s) of 40\n  - boom" in text
    # The outputs (plaintext state) get counts, never the lines themselves.
    pub = report.public_report({"journal": {"errors": 1, "firstErrors": ["boom"]}, "scheduled": {"crontab": ["0 3 * * * TOKEN=x y"]}})
    assert pub == {"journal": {"errors": 1}, "scheduled": {"crontab": 1}}
    assert "- Disk free: app 5120.0 MiB (/opt/jupyterhealth-exchange)" in text
    assert "failed units: none" in text and "crontab of the app user: 1 line(s)" in text


def test_a_part_that_cannot_be_read_is_said_and_the_rest_reported(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_: object) -> dict:
        raise RuntimeError("psql: connection refused")

    monkeypatch.setattr(report, "database_report", broken)
    monkeypatch.setattr(report, "journal_report", lambda s, since: {"lines": 0, "errors": 0, "warnings": 0})
    monkeypatch.setattr(report, "scheduled_report", lambda s: {"timers": []})
    monkeypatch.setattr(report, "data_dir_free", lambda: ("/var/lib/postgresql/15/main", 123))
    r = report.post_upgrade_report(spec, None, None, None)
    assert r["database"] == {"error": "psql: connection refused"}
    assert r["journal"]["errors"] == 0 and r["system"]["disk"]["database"] == {"path": "/var/lib/postgresql/15/main", "freeBytes": 123}
    lines = report.report_lines(r)
    assert not any(line.startswith("- Database") for line in lines) and any(line.startswith("- Journal") for line in lines)


def test_scheduled_tasks_without_cron_installed(spec: Spec, monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_run(args: list[str], **_: object) -> subprocess.CompletedProcess:
        if args[0] == "crontab":
            raise FileNotFoundError("crontab")
        out = "Mon 2026-11-30 00:00:00 UTC 11h left Sun 2026-11-29 00:00:00 UTC 12h ago logrotate.timer logrotate.service\n"
        return subprocess.CompletedProcess(args, 0, out if "list-timers" in args else "", "")

    monkeypatch.setattr(report, "run", fake_run)
    monkeypatch.setattr(report.shutil, "which", lambda name: None)
    s = report.scheduled_report(spec)
    assert s["cron"] is False and s["crontab"] == []
    assert [t["timer"] for t in s["timers"]] == ["logrotate.timer"] and s["failedUnits"] == []
