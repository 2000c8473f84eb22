"""How a rollback's replay compares each table: order by foreign keys, and the plan per key type."""
from __future__ import annotations

from pathlib import Path

import pytest

from jhe_upgrade.replay import replay_order, table_plan
from jhe_upgrade.rowkeys import column_renames, key_kind, renames_in


def test_parents_before_children() -> None:
    tables = ["core_observation", "core_patient", "core_organization", "core_patient_organizations"]
    edges = [("core_observation", "core_patient"), ("core_patient_organizations", "core_patient"),
             ("core_patient_organizations", "core_organization"), ("core_patient", "core_patient")]  # self-reference
    order = replay_order(tables, edges)
    assert sorted(order) == sorted(tables)
    for child, parent in edges:
        assert order.index(parent) <= order.index(child)


def test_a_cycle_is_taken_as_it_comes() -> None:
    order = replay_order(["a", "b", "c"], [("a", "b"), ("b", "a"), ("c", "a")])
    assert sorted(order) == ["a", "b", "c"]


@pytest.mark.parametrize("pk,kind,key", [
    ([("id", "bigint")], "integer", '"id"::text'),
    ([("id", "integer")], "integer", '"id"::text'),
    ([("id", "uuid")], "uuid", '"id"::text'),                # core_fhirauxresource: PostgreSQL has no max(uuid)
    # any other key hex-encoded: one token per line, whatever it holds (a newline, '|')
    ([("session_key", "character varying(40)")], "text", """encode(convert_to("session_key"::text, 'UTF8'), 'hex')"""),
    ([("code", "text")], "text", """encode(convert_to("code"::text, 'UTF8'), 'hex')"""),
    ([("at", "timestamp with time zone")], "other", """encode(convert_to("at"::text, 'UTF8'), 'hex')"""),
    ([("study_id", "bigint"), ("patient_id", "bigint")], "composite",
     """encode(convert_to(ROW("study_id","patient_id")::text, 'UTF8'), 'hex')"""),
    ([], "none", 'md5(ROW("a","b")::text)'),                 # no key: the row itself, in the shared column order
])
def test_every_key_type_is_compared(pk: list[tuple[str, str]], kind: str, key: str) -> None:
    cols = [c for c, _ in pk] + ["a", "b"]
    assert key_kind(pk) == kind
    p = table_plan("t", pk, cols, cols + ["c"], set())
    assert p["key"] == kind and p["mode"] == ("ordered" if kind == "integer" else "set")
    assert p["dstKey"] == key
    assert p["srcKey"] == p["dstKey"]
    assert (p["note"] is None) == (kind != "none")


def test_columns_compared_and_required_columns_the_newer_rows_lack() -> None:
    p = table_plan("core_observation", [("id", "bigint")], ["id", "subject_id", "value", "legacy"], ["id", "value", "subject_id", "source"],
                   {"id", "legacy"})
    assert p["common"] == ["id", "subject_id", "value"]  # the older table's column order
    assert p["missing"] == ["legacy"]


def test_a_renamed_column_is_paired_with_its_older_name() -> None:
    # v1.1.0 renamed core_study.name to title: the newer rows' title goes into the older name column
    p = table_plan("core_study", [("id", "bigint")], ["id", "name", "created"], ["id", "title", "created"], {"name"}, {"name": "title"})
    assert (p["common"], p["srcCommon"], p["missing"]) == (["id", "name", "created"], ["id", "title", "created"], [])
    # a renamed column of a composite key: both sides still name the same rows
    p = table_plan("j", [("a_id", "bigint"), ("b_id", "bigint")], ["a_id", "b_id"], ["a_id", "bee_id"], set(), {"b": "bee"})
    assert 'ROW("a_id","b_id")' in p["dstKey"] and 'ROW("a_id","bee_id")' in p["srcKey"]
    # a renamed foreign key: RenameField names the field, the column is <field>_id
    p = table_plan("core_fhirauxresource", [("id", "uuid")], ["id", "patient_id", "kind"], ["id", "subject_patient_id", "kind", "extra"],
                   set(), {"patient": "subject_patient"})
    assert (p["common"], p["srcCommon"], p["newerOnly"]) == (["id", "patient_id", "kind"], ["id", "subject_patient_id", "kind"], ["extra"])


def test_odd_names_are_quoted_not_refused() -> None:
    p = table_plan('Weird"Table', [("Key Col", "text")], ["Key Col", "a"], ["Key Col", "a"], set())
    assert p["dstKey"] == """encode(convert_to("Key Col"::text, 'UTF8'), 'hex')"""


def test_a_key_the_newer_table_lacks_is_not_compared() -> None:
    p = table_plan("t", [("code", "text")], ["code", "a"], ["a"], set())
    assert p["mode"] is None and "its key (code) is not in the newer table" in p["note"]


def test_renames_read_from_the_migrations_undone(tmp_path: Path) -> None:
    mig = tmp_path / "core" / "migrations"
    mig.mkdir(parents=True)
    (mig / "0004_study_title.py").write_text(
        'operations = [\n    migrations.RenameField(model_name="study", old_name="name", new_name="title"),\n'
        "    migrations.RenameField(\n        model_name='Patient',\n        new_name='given',\n"
        "        old_name='name_given',\n    ),\n]\n")
    (mig / "0005_again.py").write_text('migrations.RenameField(model_name="study", old_name="title", new_name="label")\n')
    assert renames_in("core", (mig / "0004_study_title.py").read_text()) == [
        ("core_study", "name", "title"), ("core_patient", "name_given", "given")]
    got = column_renames(tmp_path, ["core.0005_again", "core.0004_study_title", "oauth2_provider.0014_x"])
    assert got == {"core_study": {"name": "label"}, "core_patient": {"name_given": "given"}}
