#!/usr/bin/env bash
# The runbook's upgrade (../shared/seed/upgrading-jhe.md), command by command and in its order, for
# the benchmark: run ON the test server as root. Usage: runbook-upgrade.sh <new tag>
# Prints one line per runbook section with its duration, so the report can show where time goes.
set -euo pipefail
TAG=${1:?usage: runbook-upgrade.sh <tag>}
APP=/opt/jupyterhealth-exchange
BACKUP_DIR="/backups/jhe"
TIMESTAMP=$(date +%Y%m%d-%H%M%S)
BACKUP_FILE="$BACKUP_DIR/jhe-pre-upgrade-$TIMESTAMP.sql"
cd /tmp
t=$(date +%s.%N)
lap() { local n; n=$(date +%s.%N); awk -v a="$t" -v b="$n" -v what="$1" 'BEGIN { printf "runbook: %-34s %6.2f s\n", what, b - a }'; t=$n; }

# Backup Production Data (before the window)
mkdir -p $BACKUP_DIR
sudo -u postgres pg_dump jhe_production > $BACKUP_FILE
gzip $BACKUP_FILE
ls -lh $BACKUP_FILE.gz >/dev/null
cp $APP/.env $BACKUP_DIR/.env-pre-upgrade-$TIMESTAMP
cp /etc/nginx/sites-available/jhe $BACKUP_DIR/nginx-jhe-$TIMESTAMP
cp /etc/systemd/system/jhe.service $BACKUP_DIR/jhe.service-$TIMESTAMP
tar -czf $BACKUP_DIR/staticfiles-$TIMESTAMP.tar.gz -C $APP staticfiles
lap "backup (db, config, static)"
# Test Backup Restoration
sudo -u postgres createdb jhe_test
gunzip < $BACKUP_FILE.gz | sudo -u postgres psql -q jhe_test >/dev/null
sudo -u postgres psql -tAc "SELECT COUNT(*) FROM core_observation;" jhe_test >/dev/null
sudo -u postgres psql -tAc "SELECT COUNT(*) FROM core_patient;" jhe_test >/dev/null
sudo -u postgres dropdb jhe_test
lap "test restore"

# Stop Production Services: maintenance mode (the window opens here)
echo "runbook: window opens $(date +%s.%N)"
cp /etc/nginx/sites-available/jhe /tmp/jhe-site.orig
python3 - <<'PY'
import re
p = "/etc/nginx/sites-available/jhe"
s = open(p).read()
block = ("    location / {\n        return 503;\n    }\n    error_page 503 @maintenance;\n"
         "    location @maintenance {\n        root /usr/share/nginx/html;\n        rewrite ^(.*)$ /maintenance.html break;\n    }\n")
# "Add before existing location blocks" of the TLS server; the old `location /` goes (one per server).
head, tls = s.split("listen 443 ssl;", 1)
tls = re.sub(r"    location / \{.*?\n    \}\n", "", tls, flags=re.S)
tls = tls.replace("    location /static/", block + "    location /static/", 1)
open(p, "w").write(head + "listen 443 ssl;" + tls)
PY
echo "<h1>Maintenance</h1>" > /usr/share/nginx/html/maintenance.html
nginx -t -q
systemctl reload nginx
systemctl stop jhe
sudo -u postgres psql -q -c "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'jhe_production' AND pid <> pg_backend_pid();" >/dev/null
lap "maintenance on, stop, connections"

# Update Application Code
cd $APP
sudo -u jheapp git fetch -q --all --tags
sudo -u jheapp git -c advice.detachedHead=false checkout -q "$TAG"
python3 /srv/testhost/lock-requirements.py . > /tmp/requirements.txt
sudo -u jheapp venv/bin/pip install -q --no-index --find-links /srv/wheelhouse -r /tmp/requirements.txt
venv/bin/python -c "import django; print(f'Django: {django.VERSION}')" >/dev/null
example=dot_env_example.txt; [[ -f $example ]] || example=.env.example
grep -v "^#" $example | grep -v "^$" | while read -r line; do
  var_name=$(echo "$line" | cut -d= -f1)
  grep -q "^$var_name=" $APP/.env || echo "Missing variable: $var_name" >/dev/null
done
lap "checkout, dependencies, env diff"

# Run Database Migrations
sudo -u jheapp venv/bin/python manage.py showmigrations --plan >/dev/null
cd /tmp
sudo -u postgres pg_dump jhe_production | gzip > $BACKUP_DIR/jhe-pre-migration-$TIMESTAMP.sql.gz
lap "second backup (pre-migration)"
cd $APP
sudo -u jheapp venv/bin/python manage.py migrate --no-input >/dev/null
lap "migrate"
sudo -u jheapp venv/bin/python manage.py collectstatic --no-input -v 0
chown -R jheapp:www-data staticfiles/
chmod -R 755 staticfiles/
lap "collectstatic"

# Restart Services
systemctl start jhe
sleep 5
systemctl status jhe --no-pager >/dev/null
curl -s -o /dev/null -I http://localhost:8000/admin/ || true
lap "start, wait, verify"
# Disable Maintenance Mode
cp /tmp/jhe-site.orig /etc/nginx/sites-available/jhe
nginx -t -q
systemctl reload nginx
echo "runbook: window closes $(date +%s.%N)"
lap "maintenance off"
