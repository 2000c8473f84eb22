"""How a rollback's replay compares each table: order by foreign keys, and the plan per key type."""
from __future__ import annotations

import pytest

from jhe_upgrade.replay import key_kind, replay_order, table_plan


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


@pytest.mark.parametrize("pk,kind,mode", [
    ([("id", "bigint")], "integer", "ordered"),
    ([("id", "integer")], "integer", "ordered"),
    ([("id", "uuid")], "uuid", "set"),                       # core_fhirauxresource: PostgreSQL has no max(uuid)
    ([("session_key", "character varying(40)")], "text", "set"),
    ([("code", "text")], "text", "set"),
    ([("at", "timestamp with time zone")], "other", "set"),
    ([("patient_id", "bigint"), ("organization_id", "bigint")], "composite", None),
    ([], "none", None),
])
def test_plan_per_key_type(pk: list[tuple[str, str]], kind: str, mode: str | None) -> None:
    assert key_kind(pk) == kind
    p = table_plan("t", pk, ["id", "a", "b"], ["id", "a", "c"], set())
    assert p["key"] == kind and p["mode"] == mode
    assert p["pk"] == (pk[0][0] if len(pk) == 1 else None)
    assert (p["note"] is None) == (mode is not None)


def test_columns_compared_and_required_columns_the_newer_rows_lack() -> None:
    p = table_plan("core_observation", [("id", "bigint")], ["id", "subject_id", "value", "legacy"], ["id", "value", "subject_id", "source"],
                   {"id", "legacy"})
    assert p["common"] == ["id", "subject_id", "value"]  # the older table's column order
    assert p["missing"] == ["legacy"]
