"""Prod's data on staging without its patients: the rules that replace protected health information
(names, birth dates, identifiers, e-mail addresses, phone numbers, free text in payloads) and the
credentials that came with it (password hashes, tokens, sessions), applied in one transaction to
every table of every app of a restored copy, before any app sees it. Row counts, keys and relations
stay as they were, so an upgrade is rehearsed on the real shape and size.

Every column of the copy is looked at: a rule replaces it, or it is known to hold no personal data
(codes, keys, flags, numbers, timestamps), or - a column the rules do not know that looks like
personal data by its name or type (free text, JSON, a date) - the clone stops, saying which column,
before the copy is used."""
from __future__ import annotations

import fnmatch
import re
import secrets
from dataclasses import dataclass

from .rowkeys import primary_key
from .util import Refusal, psql, quote_ident, sql_literal

# (table pattern, column, how it is replaced). The tables of JHE (the real app's and older versions'
# names), Django's, allauth's and django-oauth-toolkit's.
RULES: list[tuple[str, str, str]] = [
    # People: patients, practitioners, every user account.
    ("core_patient", "name_family", "family"),
    ("core_patient", "name_given", "given"),
    ("core_patient", "name_display", "full_name"),
    ("core_patient", "birth_date", "birth_date"),
    ("core_patient", "telecom_phone", "phone"),
    ("core_patient", "email", "email"),
    ("core_patient", "identifier", "identifier"),  # (older JHE versions' columns, as their migrations made them)
    ("core_patient", "telecom_cell", "phone"),
    ("core_patient", "aux_data", "payload"),
    ("core_patient", "aux_fhir_data", "payload"),
    ("core_observation", "aux_data", "payload"),
    ("core_observation", "aux_fhir_data", "payload"),
    ("core_practitioner", "telecom_phone", "phone"),
    ("core_practitioner", "birth_date", "birth_date"),
    ("core_practitioner", "name_family", "family"),
    ("core_practitioner", "name_given", "given"),
    ("core_practitioner", "identifier", "identifier"),
    ("core_jheuser", "email", "email"),
    ("core_jheuser", "username", "email"),
    ("core_jheuser", "first_name", "given"),
    ("core_jheuser", "last_name", "family"),
    ("core_jheuser", "identifier", "identifier"),
    ("core_jheuser", "password", "unusable_password"),
    ("account_emailaddress", "email", "email"),
    ("socialaccount_socialaccount", "uid", "identifier"),
    ("socialaccount_socialaccount", "extra_data", "payload"),
    # Identifiers of patients and of their observations and FHIR resources.
    ("core_patientidentifier", "value", "identifier"),
    ("core_observationidentifier", "value", "identifier"),
    ("core_fhirauxresource", "patient_fhir_id", "identifier"),
    ("core_fhirauxresource", "fhir_resource_id", "identifier"),
    ("core_observation", "device", "identifier"),  # a device's serial: an identifier under HIPAA
    # Payloads: every string that is not a code, a unit or a time goes (names, notes, narrative).
    ("core_observation", "value_attachment_data", "payload"),
    ("core_observation", "omh_data", "payload"),
    ("core_fhirauxresource", "data", "payload"),
    ("core_fhirauxresource", "fhir_data", "payload"),
    ("core_codeableconcept", "text", "keep"),  # a code's display text (LOINC's), not a patient's: kept
    # What the admin's history says about objects ("Jane Doe" changed), and credentials: prod's
    # sessions, tokens and secrets must not work (or be cracked) on staging.
    ("django_admin_log", "object_repr", "removed"),
    ("django_admin_log", "change_message", "empty"),
    ("django_session", "session_data", "empty"),
    ("oauth2_provider_accesstoken", "token", "token"),
    ("oauth2_provider_accesstoken", "token_checksum", "token"),
    ("oauth2_provider_refreshtoken", "token", "token"),
    ("oauth2_provider_grant", "code", "token"),
    ("oauth2_provider_grant", "nonce", "token"),
    ("oauth2_provider_grant", "code_challenge", "token"),
    ("oauth2_provider_grant", "claims", "empty"),
    ("oauth2_provider_application", "client_secret", "token"),
    ("oauth2_provider_devicegrant", "device_code", "token"),
    ("oauth2_provider_devicegrant", "user_code", "token"),
    ("socialaccount_socialtoken", "token", "token"),
    ("socialaccount_socialtoken", "token_secret", "token"),
    ("socialaccount_socialapp", "secret", "token"),
    ("account_emailconfirmation", "key", "token"),
    ("core_patientinvitation", "token_hash", "token"),
]

# Text columns known to hold no personal data: codes, choices, names of things (not people), URLs of
# services, keys kept as text. Any other text, JSON or date column stops the clone.
SAFE: list[tuple[str, str]] = [
    ("django_migrations", "*"), ("django_content_type", "*"), ("auth_permission", "*"), ("auth_group", "name"),
    ("django_admin_log", "object_id"), ("django_session", "session_key"),
    ("core_jheuser", "user_type"), ("core_patientidentifier", "system"), ("core_observationidentifier", "system"),
    ("core_observation", "code"), ("core_observation", "source"), ("core_observation", "status"), ("core_observation", "unit"),
    ("core_observation", "device_site"), ("core_observation", "ow_key"),
    ("core_fhirauxresource", "resource_type"), ("core_fhirauxresource", "kind"),
    ("core_site", "name"), ("core_study", "name"), ("core_study", "title"), ("core_study", "description"), ("core_study", "icon_url"),
    ("core_organization", "name"), ("core_organization", "type"), ("core_codeableconcept", "coding_system"),
    ("core_codeableconcept", "coding_code"), ("core_datasource", "name"), ("core_datasource", "type"),
    ("core_ehrbrand", "*"), ("core_ehrbrandlocation", "*"), ("core_fhirsource", "label"), ("core_fhirsource", "fhir_base_url"),
    ("core_jheclient", "invitation_url"), ("core_jheclient", "aux_data"), ("core_jhesetting", "*"),
    ("core_patientinvitation", "status"), ("core_practitionerorganization", "role"), ("core_practitionerclient", "label"),
    ("core_practitioner", "settings"), ("core_studypatientscopeconsent", "scope_actions"),
    ("core_studyscoperequest", "scope_actions"),
    ("account_emailconfirmation", "*"),
    ("oauth2_provider_application", "*"), ("oauth2_provider_accesstoken", "scope"), ("oauth2_provider_refreshtoken", "*"),
    ("oauth2_provider_grant", "*"), ("oauth2_provider_idtoken", "*"), ("oauth2_provider_devicegrant", "*"),
    ("socialaccount_socialapp", "*"), ("socialaccount_socialaccount", "provider"),
]

# A column name that says personal data, whatever its type.
PHI_NAME = re.compile(r"name|birth|dob|e_?mail|phone|telecom|fax|address|street|city|zip|postal|ssn|mrn|identifier|"
                      r"note|comment|text|message|contact|gender|race|ethnic|passport|licen[cs]e|insurance|uid", re.I)
# The types that cannot carry a name, a note or a birth date: a column the rules do not know is kept only
# when it has one of these (any other type - text, JSON, bytes, a date, an address, XML, arrays - stops the clone).
SAFE_TYPES = {"smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean", "uuid",
              "timestamp with time zone", "timestamp without time zone", "interval"}
KEY_TYPES = {"smallint", "integer", "bigint", "uuid"}

# In a payload: the keys whose strings are codes, units, schema names, times or ids of devices and
# datapoints (kept); every other string goes ("[removed]"), a date keeping its year only.
PAYLOAD_KEEP = [
    "resourceType", "schema_id", "namespace", "version", "unit", "code", "system", "status", "modality", "uuid",
    "body_posture", "measurement_location", "descriptive_statistic", "temporal_relationship_to_physical_activity",
    "temporal_relationship_to_sleep", "datasheet_type", "datasheet_reference", "date_time", "start_date_time",
    "end_date_time", "source_creation_date_time", "effectiveDateTime", "issued", "model", "firmware", "app_version",
    "uploader", "trace", "device", "n", "duration", "kind", "specimen_source", "activity_name",
    # Open mHealth's enumerations (the schemas' own words, not a person's)
    "measurement_method", "measurement_quality", "reported_activity_intensity", "meal", "sleep_stage_state", "end_status",
    "oxygen_therapy_mode_of_administration", "minute_volume_type", "temporal_relationship_to_meal", "body_location",
    "activity_type", "food_item_type",
    # FHIR's structure: where an extension or a profile is defined, how a value is used, references between resources
    "url", "profile", "use", "type", "reference", "valueCode", "valueBoolean", "valueDateTime", "lastUpdated", "versionId",
]
# (parent key, key): kept only under that parent (a schema's name, not a person's).
PAYLOAD_KEEP_UNDER = [("schema_id", "name")]
REMOVED = "[removed]"
DOMAIN = "deidentified.invalid"  # a reserved domain: no mail is ever sent to a real person


@dataclass
class Column:
    table: str
    column: str
    type: str
    key: bool  # part of a primary or foreign key


@dataclass
class Decision:
    column: Column
    action: str  # a RULES action, or "keep"
    why: str


def _match(patterns: list[tuple[str, str]], table: str, column: str) -> bool:
    return any(fnmatch.fnmatchcase(table, t) and (c == "*" or c == column) for t, c in patterns)


def classify(columns: list[Column], keep_extra: list[str] | None = None) -> tuple[list[Decision], list[str]]:
    """Every column's fate, and the columns that stop the clone (unknown, and personal by name or
    type). `keep_extra`: "table.column" the stack declares hold no personal data (jhe:cloneKeepColumns)."""
    extra = [tuple(x.split(".", 1)) for x in keep_extra or []]
    decisions: list[Decision] = []
    unknown: list[str] = []
    rules = {(t, c): a for t, c, a in RULES}
    for col in columns:
        action = next((a for (t, c), a in rules.items() if fnmatch.fnmatchcase(col.table, t) and c == col.column), None)
        if action:
            decisions.append(Decision(col, action, "rule"))
        elif _match(SAFE, col.table, col.column) or (col.table, col.column) in extra:
            decisions.append(Decision(col, "keep", "known to hold no personal data"))
        elif col.key and col.type in KEY_TYPES and not PHI_NAME.search(col.column):
            decisions.append(Decision(col, "keep", "a key"))
        elif (PHI_NAME.search(col.column) and col.type != "boolean") or col.type not in SAFE_TYPES:
            unknown.append(f"{col.table}.{col.column} ({col.type})")
        else:
            decisions.append(Decision(col, "keep", f"{col.type}: not personal by type"))
    return decisions, unknown


COLUMNS_SQL = """
SELECT c.table_name, c.column_name, c.data_type,
       EXISTS (SELECT 1 FROM pg_constraint k JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = ANY (k.conkey)
               WHERE k.conrelid = format('public.%I', c.table_name)::regclass AND k.contype IN ('p', 'f')
                 AND a.attname = c.column_name)
FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
ORDER BY c.table_name, c.ordinal_position"""


def columns_of(db: str) -> list[Column]:
    out = []
    for line in psql(db, COLUMNS_SQL).splitlines():
        if line:
            t, c, ty, k = line.split("|")
            out.append(Column(t, c, ty, k == "t"))
    return out


def _pk(db: str, table: str) -> str | None:
    """The table's single-column primary key (to make each replacement differ per row), or None."""
    cols = primary_key(db, table)
    return cols[0][0] if len(cols) == 1 else None


def _payload_function() -> str:
    """A function of this session only (pg_temp): a JSON value with every string replaced that is not
    under a key of PAYLOAD_KEEP; a date-like string keeps its year."""
    keep = "ARRAY[" + ", ".join(sql_literal(k) for k in PAYLOAD_KEEP) + "]::text[]"
    under = "ARRAY[" + ", ".join(sql_literal(f"{p}/{k}") for p, k in PAYLOAD_KEEP_UNDER) + "]::text[]"
    return f"""
CREATE FUNCTION pg_temp.jhe_deid(j jsonb, k text DEFAULT NULL, parent text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $f$
DECLARE out jsonb; e record; s text;
BEGIN
  CASE jsonb_typeof(j)
    WHEN 'object' THEN
      SELECT coalesce(jsonb_object_agg(x.key, pg_temp.jhe_deid(x.value, x.key, k)), '{{}}'::jsonb) INTO out FROM jsonb_each(j) x;
      RETURN out;
    WHEN 'array' THEN
      SELECT coalesce(jsonb_agg(pg_temp.jhe_deid(x.value, k, parent) ORDER BY x.n), '[]'::jsonb) INTO out
        FROM jsonb_array_elements(j) WITH ORDINALITY x(value, n);
      RETURN out;
    WHEN 'string' THEN
      IF k = ANY ({keep}) OR (parent || '/' || k) = ANY ({under}) THEN RETURN j; END IF;
      s := j #>> '{{}}';
      IF s ~ '^\\d{{4}}-\\d{{2}}-\\d{{2}}' THEN RETURN to_jsonb(substr(s, 1, 4) || '-01-01'); END IF;
      RETURN to_jsonb({sql_literal(REMOVED)}::text);
    ELSE RETURN j;
  END CASE;
END $f$;"""


def _expr(action: str, table: str, col: Column, pk: str | None, salt: str) -> str | None:
    """The SQL that replaces one column's value (None: kept)."""
    c = quote_ident(col.column)
    row = f"{quote_ident(pk)}::text" if pk else "ctid::text"
    h = f"md5({sql_literal(salt + table + '.')} || {row})"
    if action == "keep":
        return None
    if action in ("family", "given"):
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE {sql_literal(action.capitalize() + '-')} || substr({h}, 1, 10) END"
    if action == "full_name":
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE 'Given-' || substr({h}, 1, 10) || ' Family-' || substr({h}, 11, 10) END"
    if action == "birth_date":
        # The year kept (at most 90 years back, as HIPAA's Safe Harbor has it), the day of it made up,
        # never the real one.
        d = (f"(make_date(greatest(extract(year FROM {c})::int, extract(year FROM now())::int - 90), 1, 1) "
             f"+ ((('x' || substr({h}, 1, 8))::bit(32)::int & 2147483647) % 365))")
        return f"CASE WHEN {c} IS NULL THEN NULL WHEN {d} = {c} THEN {d} + 1 ELSE {d} END"
    if action == "phone":
        # 555-0100..0199: numbers reserved for fiction.
        return (f"CASE WHEN {c} IS NULL OR {c} = '' THEN {c} ELSE '+1-555-01' || "
                f"lpad(((('x' || substr({h}, 1, 8))::bit(32)::int & 2147483647) % 100)::text, 2, '0') END")
    # Per value, not per row: one address or identifier gets one replacement in every table (an account's
    # address in allauth's table stays its user's; one patient's FHIR resources stay grouped; duplicates
    # stay duplicates, as a migration meets them on prod), and distinct ones stay distinct (unique columns).
    v = f"md5({sql_literal(salt)} || {c})"
    if action == "email":
        return (f"CASE WHEN {c} IS NULL OR {c} = '' THEN {c} ELSE "
                f"'user-' || substr(md5({sql_literal(salt)} || lower({c})), 1, 16) || {sql_literal('@' + DOMAIN)} END")
    if action == "identifier":
        return f"CASE WHEN {c} IS NULL OR {c} = '' THEN {c} ELSE 'ID-' || substr({v}, 1, 16) END"
    if action == "unusable_password":
        return "'!' || md5(random()::text || clock_timestamp()::text)"  # Django's "no usable password" mark
    if action == "token":
        return f"CASE WHEN {c} IS NULL OR {c} = '' THEN {c} ELSE md5(random()::text || {h}) END"
    if action == "removed":
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE {sql_literal(REMOVED)} END"
    if action == "empty":
        return f"CASE WHEN {c} IS NULL THEN NULL ELSE '' END"
    if action == "payload":
        cast = "" if col.type == "jsonb" else f"::{col.type}"  # (json, or JSON kept in a text column)
        return f"pg_temp.jhe_deid({c}::jsonb){cast}"
    raise ValueError(f"unknown action {action}")


def deidentify_sql(decisions: list[Decision], salt: str, pks: dict[str, str | None]) -> str:
    """One transaction: the payload function, then one UPDATE per table that has columns to replace
    (`pks`: each such table's single-column primary key, or None)."""
    by_table: dict[str, list[Decision]] = {}
    for d in decisions:
        if d.action != "keep":
            by_table.setdefault(d.column.table, []).append(d)
    stmts = ["BEGIN;", _payload_function()]
    for table, ds in sorted(by_table.items()):
        pk = pks.get(table)
        sets = [f"{quote_ident(d.column.column)} = {_expr(d.action, table, d.column, pk, salt)}" for d in ds]
        stmts.append(f"UPDATE public.{quote_ident(table)} SET {', '.join(sets)};")
    stmts.append("COMMIT;")
    return "\n".join(stmts)


def deidentify(db: str, keep_extra: list[str] | None = None) -> dict:
    """De-identifies database `db` (a copy nothing uses yet) in place. Refuses, changing nothing, when a
    column the rules do not know looks like personal data. Returns what was replaced."""
    decisions, unknown = classify(columns_of(db), keep_extra)
    if unknown:
        raise Refusal(
            "the clone stopped before anything used the copy: these columns are not in the de-identification rules and "
            f"may hold personal data: {', '.join(unknown)}. If one holds none, list it in jhe:cloneKeepColumns "
            "(\"table.column\"); otherwise the program's rules (host/jhe_upgrade/deidentify.py) must learn how to replace it")
    salt = secrets.token_hex(16)  # per clone, never stored: a replacement cannot be traced back
    tables = {d.column.table for d in decisions if d.action != "keep"}
    psql(db, deidentify_sql(decisions, salt, {t: _pk(db, t) for t in tables}))
    # The old row versions (and their index entries) hold the real values until vacuumed, and the
    # planner's statistics (pg_stats: most common values, histograms) may have sampled them since the
    # restore: both rewritten now, so the copy holds no trace of them (and is its real size again,
    # which the rehearsal measures). Then a checkpoint, so the WAL that carried them can be recycled.
    if tables:
        psql(db, "VACUUM (FULL) " + ", ".join(f"public.{quote_ident(t)}" for t in sorted(tables)))
    psql(db, "ANALYZE")
    psql("postgres", "CHECKPOINT")
    replaced = sorted(f"{d.column.table}.{d.column.column}" for d in decisions if d.action != "keep")
    return {"columnsReplaced": replaced, "columnsKept": sum(1 for d in decisions if d.action == "keep")}
