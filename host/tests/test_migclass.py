"""Pending migrations classed from their files (no Django): the fixture app's own migrations, and one
operation of each kind against the fields as earlier migrations left them."""
from __future__ import annotations

from pathlib import Path

import pytest

from jhe_upgrade.migclass import classify, classify_pending, worst

FIXTURE = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "jhe-app"

INITIAL = '''
from django.db import migrations, models
class Migration(migrations.Migration):
    initial = True
    operations = [
        migrations.CreateModel(name="Study", fields=[
            ("id", models.BigAutoField(primary_key=True, serialize=False)),
            ("name", models.CharField(max_length=100, help_text="shown to patients")),
            ("status", models.CharField(max_length=20, choices=[("a", "A")], default="a")),
        ]),
    ]
'''


def mig(*ops: str) -> str:
    return "from django.db import migrations, models\nclass Migration(migrations.Migration):\n    operations = [\n" + \
        "".join(f"        {o},\n" for o in ops) + "    ]\n"


@pytest.mark.parametrize("op, cls, why", [
    ('migrations.AlterField(model_name="study", name="status", field=models.CharField(max_length=20, '
     'choices=[("a", "A"), ("b", "B")], default="b", help_text="new"))', "no-sql", "never reach the database"),
    ('migrations.AlterField(model_name="study", name="name", field=models.CharField(max_length=200))', "destructive", "may rewrite"),
    ('migrations.AlterField(model_name="study", name="name", field=models.CharField(max_length=100, null=True))', "additive", "nullable"),
    ('migrations.AlterField(model_name="study", name="gone", field=models.IntegerField())', "destructive",
     "earlier definition was not found"),
    ('migrations.AddField(model_name="study", name="x", field=models.IntegerField(null=True))', "additive", "nullable"),
    ('migrations.AddField(model_name="study", name="x", field=models.IntegerField(db_default=0))', "additive", "DB-defaulted"),
    ('migrations.AddField(model_name="study", name="x", field=models.IntegerField(default=0))', "destructive", "inserts would fail"),
    ('migrations.AddIndex(model_name="study", index=models.Index(fields=["name"], name="s_name"))', "blocking", "blocks writes"),
    ('AddIndexConcurrently(model_name="study", index=models.Index(fields=["name"], name="s_name"))', "additive", "without blocking"),
    ('migrations.AddField(model_name="study", name="k", field=models.CharField(max_length=9, null=True, db_index=True))', "blocking",
     "builds an index"),
    ('migrations.AddField(model_name="study", name="site", field=models.ForeignKey(null=True, on_delete=models.CASCADE, to="core.site"))',
     "blocking", "foreign key"),
    ('migrations.AddField(model_name="study", name="x", field=models.IntegerField(db_default=None))', "destructive", "inserts would fail"),
    ('migrations.CreateModel(name="Site", fields=[("id", models.BigAutoField(primary_key=True))])', "additive", "creates table"),
    ('migrations.RemoveField(model_name="study", name="name")', "destructive", "drops a column"),
    ('migrations.RenameField(model_name="study", old_name="name", new_name="title")', "destructive", "renames a column"),
    ('migrations.RunPython(forward, migrations.RunPython.noop)', "data", "runs Python"),
    ('migrations.AlterModelOptions(name="study", options={"ordering": ["name"]})', "no-sql", "options"),
    ('migrations.SeparateDatabaseAndState(state_operations=[migrations.RemoveField(model_name="study", name="name")])', "no-sql",
     "state only"),
    ('thirdparty.MagicOperation()', "destructive", "not an operation this tool knows"),
])
def test_each_kind_of_operation(op: str, cls: str, why: str) -> None:
    got = classify([INITIAL, mig(op)], 1)
    assert got["class"] == cls and why in got["operations"][0], got


def test_a_migration_is_its_worst_operation_judged_in_order() -> None:
    # the field is renamed, then altered under its new name: found, and only its help text changes
    m = mig('migrations.RenameField(model_name="study", old_name="name", new_name="title")',
            'migrations.AlterField(model_name="study", name="title", field=models.CharField(max_length=100, help_text="x"))',
            'migrations.AddField(model_name="study", name="x", field=models.IntegerField(null=True))')
    got = classify([INITIAL, m], 1)
    assert got["class"] == "destructive"
    assert [w.split(":")[0] for w in got["operations"]] == ["RenameField study.name", "AlterField study.title", "AddField study.x"]
    assert "never reach the database" in got["operations"][1]
    assert worst(["no-sql", "data", "additive"]) == "data" and worst([]) == "no-sql"


def test_the_fixture_v1_1_0_migrations() -> None:
    files = {"0001_initial": (FIXTURE / "base/core/migrations/0001_initial.py").read_text()}
    for f in sorted((FIXTURE / "tags/v1.1.0/files/core/migrations").glob("0*.py")):
        files[f.stem] = f.read_text()
    pending = [f"core.{n}" for n in files if n != "0001_initial"]
    got = classify_pending(pending + ["oauth2_provider.0014_alter_help_text"],
                           lambda app, n: files.get(n) if app == "core" else None,
                           lambda app: sorted(files) if app == "core" else [])
    assert {m: c["class"] for m, c in got.items()} == {
        "core.0002_observation_source": "additive", "core.0003_backfill_source": "data",
        "core.0004_study_title_patientidentifier": "destructive", "core.0005_drop_aux_cache": "data",
        "oauth2_provider.0014_alter_help_text": "destructive",
    }
    assert "its file was not found" in got["oauth2_provider.0014_alter_help_text"]["operations"][0]


def test_reversing_an_online_upgrade_goes_back_app_by_app() -> None:
    from jhe_upgrade.steps import unapply_targets
    before = ["core.0001_initial", "core.0005_drop_aux_cache", "oauth2_provider.0013_x", "auth.0012_alter_user_first_name_max_length"]
    applied = ["core.0006_observation_device_site", "core.0007_alter_observation_source",
               "oauth2_provider.0014_alter_help_text", "site.0001_initial"]
    assert unapply_targets(before, applied) == {"core": "0005_drop_aux_cache", "oauth2_provider": "0013_x", "site": "zero"}


@pytest.mark.parametrize("body", [
    "    operations = [migrations.RunSQL(s) for s in STATEMENTS]\n",  # built in code
    "    operations = [DROP]\n",  # a name for an operation
    "    pass\n",  # no list at all
])
def test_operations_that_cannot_be_read_are_destructive(body: str) -> None:
    src = "from django.db import migrations\nclass Migration(migrations.Migration):\n" + body
    got = classify([INITIAL, src], 1)
    assert got["class"] == "destructive" and "could not be read" in got["operations"][0], got
