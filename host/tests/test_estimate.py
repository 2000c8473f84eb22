"""The downtime estimate: which tables the pending migrations rewrite, the rates (this server's earlier
moves first, then the probe, then the defaults), the path each strategy takes, and what finish records."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from jhe_upgrade.estimate import KEEP_TIMINGS, estimate, observed, rates, record, rewrite_bytes, tables_of
from jhe_upgrade.migclass import classify

MiB = 2**20


def mig(*ops: str) -> str:
    return "from django.db import migrations, models\nclass Migration(migrations.Migration):\n    operations = [\n" + \
        "".join(f"        {o},\n" for o in ops) + "    ]\n"


def test_rewrites_name_the_model_or_the_whole_app() -> None:
    assert classify([mig('migrations.RunPython(f)')], 0)["rewrites"] == ["*"]
    index = 'migrations.AddIndex(model_name="Observation", index=models.Index(fields=["x"]))'
    assert classify([mig(index)], 0)["rewrites"] == ["observation"]
    two = mig('migrations.RemoveField(model_name="patient", name="x")',
              'migrations.AddField(model_name="study", name="x", field=models.IntegerField(null=True))')
    assert classify([two], 0)["rewrites"] == ["patient"]
    assert classify([mig('migrations.AlterModelOptions(name="study", options={})')], 0)["rewrites"] == []
    assert classify(["operations = build()"], 0)["rewrites"] == ["*"]


def test_changes_name_every_table_a_migration_reaches() -> None:
    add = 'migrations.AddField(model_name="observation", name="x", field=models.IntegerField(null=True))'
    opts = 'migrations.AlterModelOptions(name="study", options={})'
    c = classify([mig(add, opts)], 0)
    assert (c["rewrites"], c["changes"]) == ([], ["observation"])
    assert tables_of({"core.0002": c}, ["core_observation", "core_study"], "changes") == {"core_observation"}


def test_a_data_migration_works_on_the_models_its_function_gets() -> None:
    src = ("from django.db import migrations\n"
           "def fill(apps, schema_editor):\n    P = apps.get_model('core', 'Patient')\n    P.objects.update(x=1)\n"
           "def dyn(apps, schema_editor):\n    for m in ('Patient', 'Study'):\n        apps.get_model('core', m).objects.all()\n"
           "def calls(apps, schema_editor):\n    fill(apps, schema_editor)\n"
           "class Migration(migrations.Migration):\n    operations = [migrations.RunPython(%s)]\n")
    assert classify([src % "fill"], 0)["rewrites"] == ["core.patient"]
    assert classify([src % "fill"], 0)["changes"] == ["core.patient"]
    assert classify([src % "dyn"], 0)["rewrites"] == ["*"]
    assert classify([src % "calls"], 0)["rewrites"] == ["*"]
    assert tables_of({"core.0008": {"rewrites": ["core.patient", "auth.user"]}}, ["core_patient", "auth_user", "core_study"]) == \
        {"core_patient", "auth_user"}


def test_the_fixture_release_that_leaves_observations_alone() -> None:
    """v2.3.0: not additive, but none of it reaches observations (what devices write meanwhile)."""
    mig = Path(__file__).resolve().parents[2] / "tests/fixtures/jhe-app/tags/v2.3.0/files/core/migrations"
    c = classify([(mig / "0008_patient_name_display_study_title.py").read_text()], 0)
    assert c["class"] == "destructive"
    assert c["changes"] == ["core.patient", "patient", "study"]
    assert tables_of({"core.0008": c}, ["core_patient", "core_study", "core_observation"], "changes") == {"core_patient", "core_study"}


def test_rewrite_bytes_counts_each_table_once() -> None:
    tables = {"core_observation": 900 * MiB, "core_patient": 10 * MiB, "other_thing": 50 * MiB}
    classes = {"core.0002": {"rewrites": ["observation"]}, "core.0003": {"rewrites": ["*"]},
               "other.0002": {"rewrites": ["gone"]}, "core.0004": {"rewrites": []}}
    assert rewrite_bytes(classes, tables) == 910 * MiB
    assert rewrite_bytes({"core.0002": {"rewrites": ["observation"]}}, tables) == 900 * MiB
    assert rewrite_bytes({}, tables) == 0


def test_rates_come_from_earlier_moves_then_the_probe_then_defaults() -> None:
    r = rates([], None)
    assert r["basis"] == {"switch": "default", "rollback": "default", "snapshot": "default", "migration": "default"}
    r = rates([], {"writeBytesPerSecond": 100 * MiB, "copyBytesPerSecond": 60 * MiB})
    assert r["basis"]["snapshot"] == "probe" and r["basis"]["migration"] == "probe"
    assert r["copyBytesPerSecond"] > 0 and r["rewriteBytesPerSecond"] < 60 * MiB
    timings = [
        {"path": "in-window", "windowSeconds": 9.0, "switchSeconds": 1.2, "snapshotSeconds": 2.0, "snapshotBytes": 400 * MiB,
         "migrateSeconds": 5.8, "rewriteBytes": 380 * MiB},
        {"path": "online", "windowSeconds": 0.0, "switchSeconds": 0.0, "migrateSeconds": 1.8, "rewriteBytes": 0},
        {"path": "rollback", "windowSeconds": 2.2},
    ]
    r = rates(timings, {"writeBytesPerSecond": 1, "copyBytesPerSecond": 1})
    assert r["basis"] == {"switch": "earlier moves", "rollback": "earlier rollbacks", "snapshot": "earlier snapshots",
                          "migration": "earlier migrations"}
    assert r["switchSeconds"] == 1.2 and r["rollbackSeconds"] == 2.2
    assert r["copyBytesPerSecond"] == 200 * MiB and r["migrateOverheadSeconds"] == 1.8
    assert abs(r["rewriteBytesPerSecond"] - 380 * MiB / 4.0) < 1


R = {"switchSeconds": 1.0, "rollbackSeconds": 2.5, "copyBytesPerSecond": 100 * MiB, "migrateOverheadSeconds": 2.0,
     "rewriteBytesPerSecond": 50 * MiB, "basis": {}}


def test_each_path_and_what_its_window_holds() -> None:
    kw: dict[str, Any] = {"pending": ["core.0002"], "db_bytes": 500 * MiB, "rewrite": 400 * MiB, "r": R}
    assert estimate(action="upgrade", strategy="online", writes_per_second=None, **kw)["seconds"] == 0
    quiet = estimate(action="upgrade", strategy="staged", writes_per_second=0.0, **kw)
    assert quiet["seconds"] == 1.0 and "swapped in by rename" in quiet["path"]
    busy = estimate(action="upgrade", strategy="staged", writes_per_second=10.0, **kw)
    assert busy["seconds"] == 5 + 2 + 8 + 1 and "written to now (10.0 transactions/s)" in busy["path"]
    assert busy["parts"] == {"snapshot": 5.0, "migrate": 10.0, "switch": 1.0}
    changed = estimate(action="upgrade", strategy="staged", writes_per_second=10.0, written_changed=["core_observation"], **kw)
    assert changed["seconds"] == 16.0 and "to tables the migrations change (core_observation)" in changed["path"]
    other = estimate(action="upgrade", strategy="staged", writes_per_second=10.0, written_changed=[], **kw)
    assert other["seconds"] == 1.0 and "caught up in the copy" in other["path"]
    assert estimate(action="upgrade", strategy="in-window", writes_per_second=None, **kw)["seconds"] == 16.0
    assert estimate(action="upgrade", strategy="staged", writes_per_second=None, **{**kw, "pending": []})["path"].startswith("code only")
    assert estimate(action="rollback", strategy=None, writes_per_second=None, **kw)["seconds"] == 2.5
    assert estimate(action="install", strategy=None, writes_per_second=None, **kw)["seconds"] == 0


def test_observed_splits_the_window_and_record_keeps_the_last_few() -> None:
    state = {"target": {"kind": "upgrade", "estimate": {"seconds": 9.0, "rewriteBytes": 300}},
             "backup": {"snapshot": "jhe_kept", "window": "w1", "seconds": 2.4, "copySeconds": 2.0, "bytes": 500},
             "migrated": {"seconds": 4.0}}
    t = observed(state, 7.5)
    assert t == {"path": "in-window", "windowSeconds": 7.5, "migrateSeconds": 4.0, "rewriteBytes": 300, "estimatedSeconds": 9.0,
                 "switchSeconds": 1.5, "snapshotSeconds": 2.0, "snapshotBytes": 500}
    staged = observed({"target": {"kind": "upgrade"}, "backup": {"window": None, "seconds": 3.0},
                       "migrated": {"seconds": 4.0, "staged": True}}, 0.9)
    assert staged["path"] == "staged" and staged["switchSeconds"] == 0.9
    assert observed({"target": {"kind": "rollback"}}, 2.0)["path"] == "rollback"
    s: dict = {}
    for i in range(KEEP_TIMINGS + 3):
        record(s, {"i": i})
    assert [t["i"] for t in s["timings"]] == list(range(3, KEEP_TIMINGS + 3))


def test_a_refusal_after_a_failed_reversal_says_what_the_database_keeps(monkeypatch: Any) -> None:
    """(Not an estimate: the online path's refusal, whose reversal can fail.) A refusal never says
    "nothing changed" when additive migrations stayed applied."""
    from types import SimpleNamespace

    import jhe_upgrade.staging as st
    logged: list[str] = []
    monkeypatch.setattr(st, "append_log", lambda spec, text: logged.append(text))
    monkeypatch.setattr(st, "end_failed_move", lambda *a: None)
    spec = SimpleNamespace(operator="op", owner="o/p/s", version="v2.1.0")
    state = {"target": {"kind": "upgrade", "strategy": "online"}}
    r = str(st.refuse_unchanged(spec, state, "v2.0.0", "boom", ["core.0006_observation_device_site"]))  # type: ignore[arg-type]
    assert "Nothing on the server changed" not in r and "keeps the tables, columns or indexes that core.0006" in r
    assert "keeps what migrations core.0006_observation_device_site added" in logged[-1]
    r = str(st.refuse_unchanged(spec, state, "v2.0.0", "boom"))  # type: ignore[arg-type]
    assert "Nothing on the server changed: v2.0.0 kept serving throughout" in r
    assert "nothing needed it" in logged[-1]
