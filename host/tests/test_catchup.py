"""The staged copy's catch-up: which written tables can be caught up exactly, and the transaction that
does it (the real thing runs in e2e: rollback.test, "caught up")."""
from __future__ import annotations

from jhe_upgrade.catchup import catch_up_plan, catch_up_script


def marks(ins: int = 0, upd: int = 0, dele: int = 0, node: str = "100", cols: str = "c1") -> list[str]:
    return [str(ins), str(upd), str(dele), node, cols]


BACKUP = {"core_patient": marks(10), "core_observation": marks(100), "core_study": marks(1), "django_session": marks(3)}
BEFORE = {"core_patient": marks(10), "core_observation": marks(100), "core_study": marks(1), "django_session": marks(3)}
# the migration: a data migration over observations, a renamed column of studies, a new table
AFTER = {"core_patient": marks(10), "core_observation": marks(100, 100), "core_study": marks(1, cols="c2"),
         "django_session": marks(3), "core_patientidentifier": marks()}
KEYED = {"core_patient": True, "core_observation": True, "core_study": True, "django_session": True}


def test_tables_the_migration_left_alone_are_caught_up_when_only_inserted_or_updated() -> None:
    live = {**BACKUP, "core_patient": marks(14, 1), "django_session": marks(5, 2)}
    assert catch_up_plan(["core_patient", "django_session"], BACKUP, live, BEFORE, AFTER, KEYED) is None


def test_a_table_the_migrations_code_reaches_is_not_caught_up() -> None:
    live = {**BACKUP, "core_patient": marks(11)}
    assert catch_up_plan(["core_patient"], BACKUP, live, BEFORE, AFTER, KEYED, ["core_patient"]) == \
        "core_patient was written meanwhile and the migrations' code reaches it"


def test_a_table_the_migration_changed_is_never_caught_up() -> None:
    live = {**BACKUP, "core_observation": marks(101)}
    assert catch_up_plan(["core_observation"], BACKUP, live, BEFORE, AFTER, KEYED) == \
        "core_observation was written meanwhile and the migration changes it"
    live = {**BACKUP, "core_study": marks(2)}
    assert "core_study was written meanwhile" in str(catch_up_plan(["core_study"], BACKUP, live, BEFORE, AFTER, KEYED))


def test_deletes_truncates_other_columns_and_tables_without_a_key_are_refused() -> None:
    p = ["core_patient"]
    assert catch_up_plan(p, BACKUP, {**BACKUP, "core_patient": marks(10, 0, 1)}, BEFORE, AFTER, KEYED) == \
        "rows of core_patient were deleted meanwhile"
    assert catch_up_plan(p, BACKUP, {**BACKUP, "core_patient": marks(11, node="200")}, BEFORE, AFTER, KEYED) == \
        "core_patient was truncated or rewritten meanwhile"
    assert catch_up_plan(p, BACKUP, {**BACKUP, "core_patient": marks(11, cols="other")}, BEFORE, AFTER, KEYED) == \
        "core_patient has other columns in the migrated copy"
    assert catch_up_plan(p, BACKUP, {**BACKUP, "core_patient": marks(11)}, BEFORE, AFTER, {**KEYED, "core_patient": False}) == \
        "core_patient has no primary key"
    assert catch_up_plan(["core_new"], BACKUP, {**BACKUP, "core_new": marks(1)}, BEFORE, AFTER, KEYED) == \
        "core_new is not on both sides (new or dropped since the backup)"


def test_the_script_is_one_transaction_replacing_rows_by_key_and_moving_the_sequence() -> None:
    s = catch_up_script(["core_patient", "core_studypatient", "django_session"],
                        {"core_patient": ["id", "name"], "core_studypatient": ["study_id", "patient_id"],
                         "django_session": ["session_key", "session_data"]},
                        {"core_patient": ["id"], "core_studypatient": ["study_id", "patient_id"], "django_session": ["session_key"]},
                        {"core_patient": "7\tAda\n8\tBo\n", "core_studypatient": "1\t7\n", "django_session": "k\tv\n"},
                        {"core_patient": True, "core_studypatient": False, "django_session": False})
    lines = s.splitlines()
    assert lines[0] == "BEGIN;" and lines[-1] == "COMMIT;"
    assert 'COPY jhe_upgrade_catchup_0 ("id", "name") FROM STDIN;\n7\tAda\n8\tBo\n\\.' in s
    assert ('INSERT INTO public."core_patient" ("id", "name") SELECT "id", "name" FROM jhe_upgrade_catchup_0 '
            'ON CONFLICT ("id") DO UPDATE SET "name" = EXCLUDED."name";') in s
    assert 'ON CONFLICT ("study_id", "patient_id") DO NOTHING;' in s  # (every column is the key)
    assert "DELETE" not in s  # rows are updated in place: no foreign key action can fire
    # only an integer key has a sequence to move (a uuid or text key has none, and max() of it may not exist)
    assert s.count("setval") == 1 and "pg_get_serial_sequence('public.\"core_patient\"', 'id')" in s


def test_statistics_reset_meanwhile_is_refused() -> None:
    live = {**BACKUP, "core_patient": marks(2)}
    assert "statistics of core_patient were reset" in str(catch_up_plan(["core_patient"], BACKUP, live, BEFORE, AFTER, KEYED))
