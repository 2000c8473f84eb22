"""De-identification rules: every column of every table is replaced, known to hold no personal data,
or stops the clone; the real JHE's schema (and the fixture's, every version) passes without one stop."""
from __future__ import annotations

import re

from jhe_upgrade.deidentify import Column, classify, deidentify_sql


def cols(table: str, spec: str) -> list[Column]:
    """'name:type' pairs; a leading * marks a key column."""
    out = []
    for item in spec.split():
        name, ty = item.split(":")
        key = name.startswith("*")
        out.append(Column(table, name.lstrip("*"), {"t": "text", "v": "character varying", "j": "jsonb", "d": "date", "i": "bigint",
                                                     "b": "boolean", "ts": "timestamp with time zone", "f": "double precision",
                                                     "u": "uuid", "s": "smallint"}[ty], key))
    return out


# The real JHE (jupyterhealth-exchange, core/models/*.py on main, with Django's, allauth's and
# django-oauth-toolkit's tables), as its migrations make them: every column a clone meets.
REAL_JHE = [
    # (JheUser sets username = None: no such column; its groups and permissions tables were dropped by 0011)
    *cols("core_jheuser", "*id:i password:v last_login:ts is_superuser:b first_name:v last_name:v email:v is_staff:b "
                          "is_active:b date_joined:ts email_is_verified:b identifier:v user_type:t"),
    *cols("core_datasourcesupportedscope", "*id:i *data_source_id:i *scope_code_id:i"),
    *cols("core_clientdatasource", "*id:i *client_id:i *data_source_id:i"),
    *cols("core_studydatasource", "*id:i *study_id:i *data_source_id:i"),
    *cols("core_studyclient", "*id:i *study_id:i *client_id:i"),
    *cols("auth_group_permissions", "*id:i *group_id:i *permission_id:i"),
    *cols("oauth2_provider_devicegrant", "*id:i device_code:v user_code:v scope:v interval:i expires:ts status:v client_id:v "
                                         "last_checked:ts *user_id:i"),
    *cols("core_patient", "*id:i *jhe_user_id:i name_family:v name_given:v birth_date:d telecom_phone:v last_updated:ts"),
    *cols("core_patientorganization", "*id:i *patient_id:i *organization_id:i"),
    *cols("core_patientidentifier", "*id:i *patient_id:i system:v value:v"),
    *cols("core_practitioner", "*id:i *jhe_user_id:i identifier:v name_family:v name_given:v last_updated:ts settings:j"),
    *cols("core_practitionerorganization", "*id:i *practitioner_id:i *organization_id:i role:t"),
    *cols("core_practitionerclient", "*id:i *application_id:i *practitioner_id:i label:t"),
    *cols("core_observation", "*id:i *subject_patient_id:i *codeable_concept_id:i *data_source_id:i omh_data:j last_updated:ts ow_key:t "
                              "effective_date_time:ts effective_period_start:ts effective_period_end:ts status:v"),
    *cols("core_observationidentifier", "*id:i *observation_id:i system:v value:v"),
    *cols("core_organization", "*id:i name:v type:v *part_of_id:i last_updated:ts"),
    *cols("core_codeableconcept", "*id:i coding_system:v coding_code:v text:v"),
    *cols("core_datasource", "*id:i name:v type:v last_updated:ts"),
    *cols("core_ehrbrand", "*id:i name:t vendor:v fhir_base_url:t fhir_version:v npi:v logo_url:t created_at:ts updated_at:ts"),
    *cols("core_ehrbrandlocation", "*id:i *brand_id:i name:t address_text:t city:v state:v postal_code:v country:v"),
    *cols("core_fhirsource", "*id:i *patient_id:i *data_source_id:i label:v fhir_base_url:v last_updated:ts"),
    *cols("core_fhirauxresource", "*id:u *fhir_source_id:i resource_type:v patient_fhir_id:v fhir_resource_id:v fhir_data:j "
                                  "ref_indexed:b last_updated:ts"),
    *cols("core_jheclient", "*id:i *application_id:i invitation_url:t aux_data:j"),
    *cols("core_jhesetting", "*id:i key:v value_type:t value_string:t value_int:i value_bool:b value_float:f value_json:j last_updated:ts"),
    *cols("core_patientinvitation", "*id:i *patient_id:i *client_id:i token_hash:v status:t last_updated:ts"),
    *cols("core_study", "*id:i name:v description:t *organization_id:i icon_url:t last_updated:ts"),
    *cols("core_studypatient", "*id:i *study_id:i *patient_id:i"),
    *cols("core_studypatientscopeconsent", "*id:i *study_patient_id:i scope_actions:v *scope_code_id:i consented:b consented_time:ts"),
    *cols("core_studyscoperequest", "*id:i *study_id:i scope_actions:v *scope_code_id:i"),
    *cols("django_admin_log", "*id:i action_time:ts object_id:t object_repr:v action_flag:s change_message:t *content_type_id:i "
                              "*user_id:i"),
    *cols("django_session", "*session_key:v session_data:t expire_date:ts"),
    *cols("django_migrations", "*id:i app:v name:v applied:ts"),
    *cols("django_content_type", "*id:i app_label:v model:v"),
    *cols("auth_permission", "*id:i name:v *content_type_id:i codename:v"),
    *cols("auth_group", "*id:i name:v"),
    *cols("account_emailaddress", "*id:i email:v verified:b primary:b *user_id:i"),
    *cols("account_emailconfirmation", "*id:i created:ts sent:ts key:v *email_address_id:i"),
    *cols("socialaccount_socialaccount", "*id:i provider:v uid:v last_login:ts date_joined:ts extra_data:j *user_id:i"),
    *cols("socialaccount_socialapp", "*id:i provider:v name:v client_id:v secret:v key:v settings:j provider_id:v"),
    *cols("socialaccount_socialtoken", "*id:i token:t token_secret:t expires_at:ts *account_id:i *app_id:i"),
    *cols("oauth2_provider_application", "*id:i client_id:v redirect_uris:t client_type:v authorization_grant_type:v client_secret:v "
                                         "name:v *user_id:i skip_authorization:b created:ts updated:ts algorithm:v "
                                         "post_logout_redirect_uris:t hash_client_secret:b allowed_origins:t"),
    *cols("oauth2_provider_accesstoken", "*id:i token:t expires:ts scope:t *application_id:i *user_id:i created:ts updated:ts "
                                         "*source_refresh_token_id:i *id_token_id:i token_checksum:v"),
    *cols("oauth2_provider_refreshtoken", "*id:i token:v *access_token_id:i *application_id:i *user_id:i created:ts updated:ts "
                                          "revoked:ts token_family:u"),
    *cols("oauth2_provider_grant", "*id:i code:v expires:ts redirect_uri:t scope:t *application_id:i *user_id:i created:ts updated:ts "
                                   "code_challenge:v code_challenge_method:v nonce:v claims:t"),
    *cols("oauth2_provider_idtoken", "*id:i jti:u expires:ts scope:t created:ts updated:ts *application_id:i *user_id:i"),
]

# The fixture's columns of every tag (the e2e tests clone it for real).
FIXTURE = [
    *cols("core_jheuser", "*id:i password:v last_login:ts is_superuser:b email:v identifier:v user_type:v is_staff:b is_active:b "
                          "date_joined:ts"),
    *cols("core_patient", "*id:i name_family:v name_given:v birth_date:d telecom_phone:v created:ts email:v name_display:v"),
    *cols("core_observation", "*id:i *subject_patient_id:i code:v value:f value_attachment_data:j created:ts source:v unit:v device:v"),
    *cols("core_study", "*id:i name:v created:ts title:v"),
    *cols("core_studypatient", "*study_id:i *patient_id:i joined:ts"),
    *cols("core_fhirauxresource", "*id:u *patient_id:i resource_type:v kind:v data:j created:ts"),
    *cols("core_site", "*id:i name:v created:ts"),
    # django-oauth-toolkit 3's device authorization grant (the fixture's lock pins 3.2.0).
    *cols("oauth2_provider_devicegrant", "*id:i device_code:v user_code:v scope:v interval:i expires:ts status:v client_id:v "
                                         "last_checked:ts *user_id:i"),
]


def test_the_real_jhe_and_the_fixture_clone_without_a_stop() -> None:
    for schema in (REAL_JHE, FIXTURE):
        decisions, unknown = classify(schema)
        assert unknown == []
        assert len(decisions) == len(schema)


def test_the_issues_personal_data_is_replaced() -> None:
    decisions, _ = classify(REAL_JHE + FIXTURE)
    act = {(d.column.table, d.column.column): d.action for d in decisions}
    for col in ("name_family", "name_given", "birth_date", "telecom_phone"):
        assert act[("core_patient", col)] != "keep"
    for t, c in (("core_jheuser", "email"), ("account_emailaddress", "email"), ("core_patientidentifier", "value"),
                 ("core_jheuser", "identifier"), ("core_observation", "omh_data"), ("core_observation", "value_attachment_data"),
                 ("core_jheuser", "password"), ("oauth2_provider_accesstoken", "token"), ("django_session", "session_data")):
        assert act[(t, c)] != "keep", (t, c)
    assert act[("core_observation", "code")] == "keep" and act[("core_patient", "id")] == "keep"


def test_an_unknown_column_that_looks_personal_stops_the_clone_naming_it() -> None:
    extra = [Column("core_patient", "nickname", "integer", False),  # by name, whatever its type
             Column("core_study", "notes_json", "jsonb", False),  # by name and type
             Column("core_newthing", "memo", "text", False),  # free text: by type
             Column("core_newthing", "visited_on", "date", False),  # a date: by type
             Column("core_newthing", "score", "integer", False),  # a number: kept
             Column("core_newthing", "phone_verified", "boolean", False),  # a flag: kept, whatever its name
             Column("core_newthing", "patient_ref_id", "bigint", True),  # a key: kept
             Column("core_newthing", "seen_from", "inet", False),  # any type not known to be safe: stops
             Column("core_newthing", "slug", "character varying", True)]  # a text key: not kept as "a key"
    _, unknown = classify(FIXTURE + extra)
    assert unknown == ["core_patient.nickname (integer)", "core_study.notes_json (jsonb)", "core_newthing.memo (text)",
                       "core_newthing.visited_on (date)", "core_newthing.seen_from (inet)", "core_newthing.slug (character varying)"]
    # The stack may say a column holds none (jhe:cloneKeepColumns).
    _, unknown = classify(FIXTURE + extra, ["core_newthing.memo", "core_newthing.visited_on", "core_newthing.seen_from",
                                            "core_newthing.slug"])
    assert unknown == ["core_patient.nickname (integer)", "core_study.notes_json (jsonb)"]


def test_the_sql_replaces_each_rule_column_in_one_transaction_and_nothing_else() -> None:
    decisions, _ = classify(FIXTURE)
    sql = deidentify_sql(decisions, "s4lt", {"core_patient": "id", "core_jheuser": "id", "core_observation": "id",
                                             "core_fhirauxresource": "id", "core_studypatient": None})
    assert sql.startswith("BEGIN;") and sql.rstrip().endswith("COMMIT;")
    updates = re.findall(r'^UPDATE public\."?(\w+)"? SET (.*);$', sql, re.M)
    assert [t for t, _ in updates] == ["core_fhirauxresource", "core_jheuser", "core_observation", "core_patient",
                                       "oauth2_provider_devicegrant"]
    sets = dict(updates)
    for c in ("name_family", "name_given", "birth_date", "telecom_phone", "email", "name_display"):
        assert re.search(rf'(^|, )"?{c}"? = ', sets["core_patient"]), c
    assert "created" not in sets["core_patient"] and "code =" not in sets["core_observation"]
    assert "pg_temp.jhe_deid(value_attachment_data::jsonb)" in sets["core_observation"].replace('"', "")
    assert "@deidentified.invalid" in sets["core_jheuser"]
    # The salt makes each replacement differ per row and per clone; it is never stored.
    assert "s4lt" in sets["core_patient"]


def test_an_address_or_identifier_is_replaced_by_value_so_relations_between_tables_stay() -> None:
    decisions, _ = classify(REAL_JHE)
    pks: dict[str, str | None] = {t: "id" for t in {d.column.table for d in decisions}}
    sql = deidentify_sql(decisions, "s4lt", pks)
    sets = dict(re.findall(r'^UPDATE public\."?(\w+)"? SET (.*);$', sql, re.M))
    email = re.search(r'"?email"? = (CASE .*? END)', sets["core_jheuser"])
    assert email and 'id"' not in email.group(1) and "lower(" in email.group(1)
    # The same expression in allauth's table: an account's address stays its user's.
    assert email.group(1) == re.search(r'"?email"? = (CASE .*? END)', sets["account_emailaddress"]).group(1)  # type: ignore[union-attr]
    fhir_id = re.search(r'"?patient_fhir_id"? = (CASE .*? END)', sets["core_fhirauxresource"])
    assert fhir_id and "md5('s4lt' || " in fhir_id.group(1) and '"id"' not in fhir_id.group(1)
