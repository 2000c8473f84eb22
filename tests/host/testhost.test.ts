// The test server itself (testhost/): boot, isolation, clean teardown, and the fixture app's tags
// behaving as specified when upgraded by hand the runbook's way.
import * as assert from "assert";
import { down, HostInfo, leftovers, query, request, ssh, sshOk, tableFingerprint, up } from "../helpers/testhost";

const APP = "/opt/jupyterhealth-exchange";

describe("test server: boot and teardown", function () {
    this.timeout(300_000);

    it("boots two servers at once, each with its own address and pinned host key, and `down` leaves nothing", async function () {
        const [a, b] = await Promise.all([up("tstaging"), up("tprod")]);
        try {
            assert.notStrictEqual(a.address, b.address);
            assert.notStrictEqual(a.hostKey, b.hostKey);
            for (const h of [a, b]) {
                const out = await sshOk(h, "hostname; systemctl is-system-running --wait; pg_isready -q && echo pg-ok; nginx -v 2>&1; python3 --version; git --version");
                assert.match(out, new RegExp(`^jhe-${h.name}\\n`));
                assert.match(out, /\nrunning\n/);
                assert.match(out, /pg-ok/);
                assert.match(out, /Python 3\.\d+/);
            }
            // Host-key checking is real: b's key does not pass for a's address.
            const wrong = { ...a, knownHostsPath: b.knownHostsPath };
            const r = await ssh(wrong, "true");
            assert.notStrictEqual(r.code, 0, "ssh with another server's pinned key must fail");
            // Bare: no JHE yet.
            assert.strictEqual((await ssh(a, `test -e ${APP}`)).code, 1);
        } finally {
            await Promise.all([down(a.name), down(b.name)]);
        }
        assert.deepStrictEqual(await leftovers(a), []);
        assert.deepStrictEqual(await leftovers(b), []);
    });
});

describe("test server: legacy v1.0.0 install and the fixture's tags by hand", function () {
    this.timeout(600_000);
    const PATIENTS = 20;
    const OBSERVATIONS = 400;
    let h: HostInfo;
    let atV120: { rows: number; checksum: string };

    before(async function () {
        h = await up("tlegacy", { legacy: "v1.0.0", patients: PATIENTS, observations: OBSERVATIONS });
    });
    after(async function () {
        if (!h) return;
        await down(h.name);
        assert.deepStrictEqual(await leftovers(h), []);
    });

    /** The runbook's manual upgrade steps: checkout, dependencies, migrate. */
    async function handUpgrade(tag: string) {
        return ssh(
            h,
            `set -e; cd ${APP}
             sudo -u jheapp git fetch -q --tags origin
             sudo -u jheapp git -c advice.detachedHead=false checkout -q ${tag}
             python3 /srv/testhost/lock-requirements.py . > /tmp/req.txt
             sudo -u jheapp venv/bin/pip install -q --no-index --find-links /srv/wheelhouse --no-deps -r /tmp/req.txt
             sudo -u jheapp venv/bin/python manage.py migrate --no-input`,
        );
    }
    const restart = () => sshOk(h, "systemctl restart jhe");
    /** A short-lived OAuth2 access token (django-oauth-toolkit's, as JHE issues them) for the first user. */
    async function bearer(): Promise<Record<string, string>> {
        const out = await sshOk(h, `cd ${APP} && sudo -u jheapp venv/bin/python manage.py shell -c "import datetime, secrets; ` +
            "from django.utils import timezone; from oauth2_provider.models import AccessToken; from core.models import JheUser; " +
            "t = AccessToken.objects.create(user=JheUser.objects.order_by('id').first(), token=secrets.token_urlsafe(24), " +
            "expires=timezone.now() + datetime.timedelta(minutes=10), scope='read'); print(t.token)\"");
        return { Authorization: `Bearer ${out.trim().split("\n").pop()}` };
    }
    async function healthVersion(): Promise<{ status: number; version?: string }> {
        for (let i = 0; i < 100; i++) {
            const r = await request(h, "GET", "/health").catch(() => undefined);
            if (r && r.status !== 502) {
                return { status: r.status, version: r.status === 200 ? JSON.parse(r.body).version : undefined };
            }
            await new Promise((res) => setTimeout(res, 100));
        }
        throw new Error("the app never answered /health");
    }
    const applied = async () =>
        (await query<{ name: string }>(h, "SELECT name FROM django_migrations WHERE app = 'core' ORDER BY name")).map((r) => r.name);

    it("is laid out as the runbook's operator has it", async function () {
        const out = await sshOk(
            h,
            `cd ${APP} && git describe --tags && stat -c '%U:%G' . .env && test -x venv/bin/gunicorn && echo venv-ok
             systemctl is-active jhe; readlink -f /etc/nginx/sites-enabled/jhe
             sudo -u postgres psql -tAc "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'jhe_production'"`,
        );
        assert.match(out, /^v1\.0\.0\njheapp:www-data\njheapp:www-data\nvenv-ok\nactive\n\/etc\/nginx\/sites-available\/jhe\njheuser\n$/);
    });

    it("serves v1.0.0 through nginx: /health, /admin/, FHIR observations, invitation link", async function () {
        assert.deepStrictEqual(JSON.parse((await request(h, "GET", "/health")).body), { status: "ok", version: "v1.0.0" });
        const admin = await request(h, "GET", "/admin/");
        assert.strictEqual(admin.status, 302);
        assert.match(String(admin.headers.location), /\/admin\/login\//);
        const posted = await request(h, "POST", "/fhir/r5/Observation", {
            resourceType: "Observation",
            subject: { reference: "Patient/1" },
            code: { coding: [{ code: "8867-4" }] },
            valueQuantity: { value: 72 },
        });
        assert.strictEqual(posted.status, 201, posted.body);
        // (as JHE's parsers: no application/fhir+json)
        assert.strictEqual((await request(h, "POST", "/fhir/r5/Observation", "{}", 10_000, { "Content-Type": "application/fhir+json" })).status, 415);
        const bundle = JSON.parse((await request(h, "GET", "/fhir/r5/Observation?patient=1")).body);
        assert.strictEqual(bundle.resourceType, "Bundle");
        assert.ok(bundle.entry.some((e: { resource: { id: string } }) => e.resource.id === JSON.parse(posted.body).id));
        // The API as JHE's: the invitation link needs a valid OAuth2 bearer token; a bad token is refused anywhere.
        assert.strictEqual((await request(h, "GET", "/api/v1/patients/1/invitation_link")).status, 401);
        assert.strictEqual((await request(h, "GET", "/fhir/r5/Observation?patient=1", undefined, 10_000, { Authorization: "Bearer nope" })).status, 401);
        const inv = await request(h, "GET", "/api/v1/patients/1/invitation_link", undefined, 10_000, await bearer());
        assert.match(JSON.parse(inv.body).invitationLink, /^https:\/\/tlegacy\.jhe\.test\/invite\/1\//);
    });

    it("is seeded with the requested rows (read with pg over the namespace link)", async function () {
        assert.strictEqual((await tableFingerprint(h, "core_patient")).rows, PATIENTS);
        assert.strictEqual((await tableFingerprint(h, "core_observation")).rows, OBSERVATIONS + 1);
    });

    it("v1.1.0: a schema migration and a data migration; the new env var (in an example like JHE's) is optional at run time", async function () {
        const r = await handUpgrade("v1.1.0");
        assert.strictEqual(r.code, 0, r.stderr);
        assert.deepStrictEqual(await applied(), ["0001_initial", "0002_observation_source", "0003_backfill_source", "0004_study_title_patientidentifier", "0005_drop_aux_cache"]);
        const [{ n }] = await query<{ n: string }>(h, "SELECT count(*) AS n FROM core_observation WHERE source IS DISTINCT FROM 'device'");
        assert.strictEqual(Number(n), 0);
        // as JHE writes its example: placeholders, inline comments, DEBUG=True, no optional/required markers
        const example = await sshOk(h, `cat ${APP}/dot_env_example.txt`);
        assert.match(example, /^DEBUG=True # /m);
        assert.match(example, /^JHE_FEATURE_X="on"$/m);
        assert.doesNotMatch(example, /#\s*optional/i);
        await restart();
        assert.deepStrictEqual(await healthVersion(), { status: 200, version: "v1.1.0" });
    });

    it("v1.2.0: refuses to run without its new required env var, runs with it", async function () {
        const r = await handUpgrade("v1.2.0");
        assert.notStrictEqual(r.code, 0);
        assert.match(r.stderr, /JHE_INSTANCE_NAME is required/);
        await sshOk(h, `echo 'JHE_INSTANCE_NAME=Test Hospital' >> ${APP}/.env`);
        const again = await handUpgrade("v1.2.0");
        assert.strictEqual(again.code, 0, again.stderr);
        await restart();
        assert.deepStrictEqual(await healthVersion(), { status: 200, version: "v1.2.0" });
        await sshOk(h, "cd /tmp && sudo -u postgres pg_dump -Fc jhe_production > /root/v1.2.0.dump");
        atV120 = await tableFingerprint(h, "core_observation");
    });

    it("v1.3.0: its migration fails part-way and leaves the database half-migrated", async function () {
        const before = await tableFingerprint(h, "core_observation");
        const r = await handUpgrade("v1.3.0");
        assert.notStrictEqual(r.code, 0);
        assert.match(r.stderr, /IntegrityError|could not create unique index/);
        const cols = await query<{ column_name: string }>(
            h, "SELECT column_name FROM information_schema.columns WHERE table_name = 'core_observation' AND column_name = 'unit'");
        assert.strictEqual(cols.length, 1, "the first operation of the failed migration stays applied");
        assert.ok(!(await applied()).includes("0006_observation_unit"), "the failed migration is not recorded");
        assert.notStrictEqual((await tableFingerprint(h, "core_observation")).checksum, before.checksum, "rows were changed");
    });

    it("restoring the pre-upgrade dump (the runbook's way) brings the tables back exactly", async function () {
        await sshOk(h, "systemctl stop jhe");
        await sshOk(
            h,
            `cd /tmp && sudo -u postgres psql -q -c 'DROP DATABASE jhe_production' -c 'CREATE DATABASE jhe_production OWNER jheuser'
             sudo -u postgres pg_restore -d jhe_production < /root/v1.2.0.dump
             cd ${APP} && sudo -u jheapp git checkout -q v1.2.0`,
        );
        assert.deepStrictEqual(await applied(), ["0001_initial", "0002_observation_source", "0003_backfill_source", "0004_study_title_patientidentifier", "0005_drop_aux_cache"]);
        assert.deepStrictEqual(await tableFingerprint(h, "core_observation"), atV120);
        await sshOk(h, "systemctl start jhe");
        assert.deepStrictEqual(await healthVersion(), { status: 200, version: "v1.2.0" });
    });

    it("v1.4.0: migrations succeed but /health fails (while /admin/ still answers)", async function () {
        const r = await handUpgrade("v1.4.0");
        assert.strictEqual(r.code, 0, r.stderr);
        assert.ok((await applied()).includes("0006_patient_email"));
        await restart();
        assert.strictEqual((await healthVersion()).status, 500);
        assert.strictEqual((await request(h, "GET", "/admin/")).status, 302);
    });

    it("v2.0.0: env example renamed, Pipfile replaced by pyproject + uv.lock, FHIR path and invitation API moved", async function () {
        await sshOk(
            h,
            `systemctl stop jhe; cd /tmp
             sudo -u postgres psql -q -c 'DROP DATABASE jhe_production' -c 'CREATE DATABASE jhe_production OWNER jheuser'
             sudo -u postgres pg_restore -d jhe_production < /root/v1.2.0.dump`,
        );
        const r = await handUpgrade("v2.0.0");
        assert.strictEqual(r.code, 0, r.stderr);
        const files = await sshOk(h, `cd ${APP} && ls -A | sort | tr '\\n' ' '`);
        assert.match(files, / \.env\.example /);
        assert.match(files, / pyproject\.toml /);
        assert.match(files, / uv\.lock /);
        assert.doesNotMatch(files, /dot_env_example\.txt|Pipfile/);
        assert.match(await sshOk(h, `${APP}/venv/bin/python -c 'import django; print(django.get_version())'`), /^5\.2\.19/);
        await restart();
        assert.deepStrictEqual(await healthVersion(), { status: 200, version: "v2.0.0" });
        const obs = { subject: { reference: "Patient/2" }, code: { coding: [{ code: "8480-6" }] }, valueQuantity: { value: 120 } };
        assert.strictEqual((await request(h, "POST", "/FHIR/R5/Observation", obs)).status, 201);
        assert.strictEqual((await request(h, "POST", "/fhir/r5/Observation", obs)).status, 404);
        const auth = await bearer();
        assert.strictEqual((await request(h, "POST", "/api/v1/invitation", { patient_id: 2 }, 10_000, auth)).status, 400, "a client is required");
        const inv = await request(h, "POST", "/api/v1/invitation", { patient_id: 2, client_id: 1 }, 10_000, auth);
        assert.strictEqual(inv.status, 201, inv.body);
        assert.strictEqual((await request(h, "GET", "/api/v1/patients/2/invitation_link")).status, 404);
    });
});
