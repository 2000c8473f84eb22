#!/usr/bin/env bash
# Runs ON the test server (as root): installs the fixture JHE at $JHE_TAG the way the runbook's
# operator has it (../shared/seed/upgrading-jhe.md) - a git checkout in /opt/jupyterhealth-exchange,
# a venv inside it, .env beside it, user jheapp, database jhe_production owned by jheuser, unit `jhe`,
# nginx site /etc/nginx/sites-available/jhe with TLS - then seeds patients and observations.
# Inputs (environment): JHE_TAG, JHE_SITE_URL, JHE_PATIENTS, JHE_OBSERVATIONS.
set -euo pipefail
: "${JHE_TAG:?}" "${JHE_SITE_URL:?}" "${JHE_PATIENTS:?}" "${JHE_OBSERVATIONS:?}"
APP=/opt/jupyterhealth-exchange
UPSTREAM=/srv/jhe-upstream.git
WHEELS=/srv/wheelhouse
host=${JHE_SITE_URL#https://}

id jheapp >/dev/null 2>&1 || useradd --system --create-home --home-dir /home/jheapp --gid www-data --shell /bin/bash jheapp
install -d -o jheapp -g www-data -m 0755 "$APP"
git config --system --add safe.directory '*'
sudo -u jheapp git clone -q "$UPSTREAM" "$APP"
sudo -u jheapp git -C "$APP" -c advice.detachedHead=false checkout -q "$JHE_TAG"

# Dependencies, offline, from the wheelhouse (the operator's "pip with venv" path).
sudo -u jheapp python3 -m venv "$APP/venv"
python3 /srv/testhost/lock-requirements.py "$APP" > /tmp/requirements.txt
# As `pipenv sync` installs a lock: its pins as they are, no resolution (JHE v0.0.13's own lock is
# inconsistent - pyopenssl wants an older cryptography - and pip's resolver would refuse it).
sudo -u jheapp "$APP/venv/bin/pip" install -q --no-index --find-links "$WHEELS" --no-deps -r /tmp/requirements.txt

# Database and role.
db_password=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
secret_key=$(head -c 36 /dev/urandom | base64 | tr -d '/+=')
sudo -u postgres psql -q -v ON_ERROR_STOP=1 <<SQL
CREATE ROLE jheuser LOGIN PASSWORD '$db_password';
CREATE DATABASE jhe_production OWNER jheuser ENCODING 'UTF8';
SQL

# .env in the app root, as JHE's docs have operators write it: the OIDC key (made here, never
# committed) on one line with \n escapes in double quotes, comments, quotes, `export`, an empty value,
# a value with '#', '=', '$', spaces and non-ASCII letters - all of which python-dotenv reads.
umask 077
oidc_key=$(openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | awk 'BEGIN{ORS=""} {print sep $0; sep="\\n"}')
cat > "$APP/.env" <<ENV
# JupyterHealth Exchange settings (from dot_env_example.txt)
export SITE_URL=$JHE_SITE_URL
SECRET_KEY='$secret_key'
DB_NAME="jhe_production"
DB_USER=jheuser
DB_PASSWORD=$db_password
DB_HOST="localhost" # the local PostgreSQL
DB_PORT=5432

OIDC_RSA_PRIVATE_KEY="$oidc_key"
JHE_SUPPORT_CONTACT="Ünïcode Clinic <help@example.org> # not a comment, a=b \$5"
JHE_EMPTY_SETTING=
ENV
chown jheapp:www-data "$APP/.env"
umask 022

cd "$APP"
sudo -u jheapp venv/bin/python manage.py migrate --no-input -v 0
sudo -u jheapp venv/bin/python manage.py collectstatic --no-input -v 0

# Seed: N patients, M observations (several of the same code per patient, as real data has).
sudo -u postgres psql -q -v ON_ERROR_STOP=1 -d jhe_production <<SQL
INSERT INTO core_patient (name_family, name_given, birth_date, telecom_phone, created)
  SELECT 'Family' || g, 'Given' || g, date '1940-01-01' + (g::bigint * 37 % 25000)::int,
         '+1 206 ' || lpad((g::bigint * 7919 % 10000000)::text, 7, '0'), now() - make_interval(mins => g)
  FROM generate_series(1, $JHE_PATIENTS) g;
-- Each with its payload as JHE stores it: an Open mHealth datapoint of about 1 KB (1M rows ~ 1 GB).
INSERT INTO core_observation (subject_patient_id, code, value, value_attachment_data, created)
  SELECT p.min_id + (g % $JHE_PATIENTS), (ARRAY['8867-4','8480-6','8462-4','2708-6'])[1 + g % 4],
         40 + (g::bigint * 7919 % 120),
         jsonb_build_object(
           'header', jsonb_build_object(
             'uuid', md5(g::text), 'schema_id', jsonb_build_object('namespace', 'omh', 'name', 'blood-pressure', 'version', '4.0'),
             'source_creation_date_time', to_char(now() - make_interval(secs => g), 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
             'modality', 'sensed', 'external_datasheets', jsonb_build_array(jsonb_build_object(
               'datasheet_type', 'manufacturer', 'datasheet_reference', 'https://devices.example.org/bp/' || (g % 97)))),
           'body', jsonb_build_object(
             'systolic_blood_pressure', jsonb_build_object('value', 100 + g % 60, 'unit', 'mmHg'),
             'diastolic_blood_pressure', jsonb_build_object('value', 60 + g % 40, 'unit', 'mmHg'),
             'body_posture', 'sitting', 'measurement_location', 'left upper arm',
             'effective_time_frame', jsonb_build_object('date_time', to_char(now() - make_interval(secs => g), 'YYYY-MM-DD"T"HH24:MI:SS"Z"')),
             'descriptive_statistic', 'average', 'temporal_relationship_to_physical_activity', 'at rest'),
           'device', jsonb_build_object('id', md5((g % 5000)::text), 'model', 'BP-' || (g % 7), 'firmware', '2.' || (g % 13)),
           'provenance', jsonb_build_object('uploader', 'jhe-companion-app', 'app_version', '1.' || (g % 9) || '.0',
             'trace', md5(g::text || 'a') || md5(g::text || 'b'))),
         now() - make_interval(secs => g)
  FROM generate_series(1, $JHE_OBSERVATIONS) g, (SELECT min(id) AS min_id FROM core_patient) p;
-- The other kinds of table JHE has: practitioners (its custom user model), a study and its patients
-- (a join table keyed by both sides), FHIR resources keyed by UUID - some "cache" copies a later
-- version's data migration deletes.
INSERT INTO core_jheuser (password, is_superuser, email, identifier, user_type, is_staff, is_active, date_joined)
  SELECT '!', false, 'practitioner' || g || '@example.org', 'P' || g, 'practitioner', false, true, now() FROM generate_series(1, 3) g;
-- Patients log in too (JHE's patient accounts, by e-mail): some of them have one.
INSERT INTO core_jheuser (password, is_superuser, email, identifier, user_type, is_staff, is_active, date_joined)
  SELECT 'pbkdf2_sha256\$1000000\$salt\$' || md5(p.name_family), false, lower(p.name_given || '.' || p.name_family) || '@example.net',
         'MRN-' || lpad(p.id::text, 8, '0'), 'patient', false, true, now()
  FROM (SELECT * FROM core_patient ORDER BY id LIMIT 20) p;
UPDATE core_patient p SET jhe_user_id = u.id FROM core_jheuser u WHERE u.identifier = 'MRN-' || lpad(p.id::text, 8, '0');
INSERT INTO core_study (name, created) VALUES ('Blood pressure study', now());
INSERT INTO core_studypatient (study_id, patient_id, joined)
  SELECT s.id, p.id, now() FROM core_study s, (SELECT id FROM core_patient ORDER BY id LIMIT 10) p;
INSERT INTO core_fhirauxresource (id, patient_id, resource_type, kind, data, created)
  SELECT gen_random_uuid(), p.id, 'Device', CASE WHEN p.rn % 2 = 0 THEN 'cache' ELSE 'record' END,
         jsonb_build_object('resourceType', 'Device', 'n', p.rn), now()
  FROM (SELECT id, row_number() OVER (ORDER BY id) AS rn FROM core_patient ORDER BY id LIMIT 6) p;
ANALYZE;
SQL

cat > /etc/systemd/system/jhe.service <<UNIT
[Unit]
Description=JupyterHealth Exchange
After=network.target postgresql.service

[Service]
User=jheapp
Group=www-data
WorkingDirectory=$APP
ExecStart=$APP/venv/bin/gunicorn jhe.wsgi:application --bind 127.0.0.1:8000 --workers 2
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT

install -d -m 0755 /etc/ssl/jhe
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=$host" -addext "subjectAltName=DNS:$host" \
  -keyout /etc/ssl/jhe/jhe.key -out /etc/ssl/jhe/jhe.crt 2>/dev/null
chmod 0600 /etc/ssl/jhe/jhe.key
cat > /etc/nginx/sites-available/jhe <<SITE
server {
    listen 80;
    server_name $host;
    return 301 https://\$host\$request_uri;
}
server {
    listen 443 ssl;
    server_name $host;
    ssl_certificate /etc/ssl/jhe/jhe.crt;
    ssl_certificate_key /etc/ssl/jhe/jhe.key;
    client_max_body_size 10m;
    location /static/ {
        alias $APP/staticfiles/;
    }
    location / {
        proxy_pass http://127.0.0.1:8000;
        proxy_set_header Host \$host;
        proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto \$scheme;
    }
}
SITE
ln -sf /etc/nginx/sites-available/jhe /etc/nginx/sites-enabled/jhe
nginx -t -q
systemctl daemon-reload
systemctl enable -q --now jhe
systemctl reload nginx
for _ in $(seq 1 100); do
  code=$(curl -sk -o /dev/null -w '%{http_code}' --resolve "$host:443:127.0.0.1" "https://$host/health" || true)
  [[ $code == 200 ]] && break
  sleep 0.1
done
[[ $code == 200 ]] || { journalctl -u jhe -n 30 --no-pager; echo "legacy install: /health answered $code" >&2; exit 1; }
echo "legacy install: $JHE_TAG serving at $JHE_SITE_URL"
