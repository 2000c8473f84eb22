"""The runbook's smoke tests, through nginx with the site's name, as users reach it: admin login with
the stack's smoke-test account, an invitation link, an observation upload (201) and its read-back
(a FHIR Bundle with it); then the smoke test's own rows removed. Part of the health gate: a failure
reverts like a failed /health.

The paths are the release's own (read from its URL configuration, not hard-coded: JHE moved FHIR
from /fhir/r5/ to /FHIR/R5/ and the invitation from a GET per patient to a POST). The account's
token and its patient record are made before the window, with the code that serves then, so the
window only pays for the requests; the smoke tests pass the maintenance page by a header naming a
file only they know (components/nginx.ts)."""
from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
import ssl
import time
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

from .spec import Spec
from .util import Refusal, error_summary, log, run, write_private

TOKEN_SECONDS = 6 * 3600  # the token minted before the window; deleted by the gate (or it expires)

# Run by `manage.py shell` with a release's settings, no database: the release's own paths.
ROUTES_CODE = r"""
import json, re
from django.urls import URLResolver, get_resolver, reverse

def walk(patterns, prefix=""):
    for p in patterns:
        if isinstance(p, URLResolver):
            yield from walk(p.url_patterns, prefix + str(p.pattern))
        else:
            yield prefix + str(p.pattern)

def plain(route):  # a regex route as a path ("^invitation$" -> "invitation", DRF's (?P<pk>...) -> <pk>); None if not plain
    r = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"<\1>", route).replace("^", "").replace("$", "").replace("\\.", ".")
    return None if re.search(r"[()\[\]*+?\\|]", r) else r

out = {"admin": reverse("admin:index"), "adminLogin": reverse("admin:login"), "adminLogout": reverse("admin:logout"),
       "fhirObservation": None, "invitation": None}
for route in walk(get_resolver().url_patterns):
    r = plain(route)
    if r is None:
        continue
    m = re.fullmatch(r"(.*\bfhir/r\d+/)(Observation|<(?:str:)?resource(?:_type)?>)", r, re.I)
    if m and not out["fhirObservation"]:
        out["fhirObservation"] = "/" + m.group(1) + "Observation"
    if "invitation" in r.lower():
        params = re.findall(r"<(?:\w+:)?(\w+)>", r)
        if len(params) == 1 and ("patient" in params[0] or "patients/" in r):  # GET .../patients/<id>/invitation_link
            out["invitation"] = {"method": "GET", "path": "/" + re.sub(r"<[^>]+>", "{patient}", r)}
        elif not params and not out["invitation"]:  # POST .../invitation {"patient_id": id}
            out["invitation"] = {"method": "POST", "path": "/" + r}
print(json.dumps(out))
"""

# With the database: the account (made or checked), its patient record, a short-lived bearer token. Its
# input (the password among it) arrives on stdin, never in an environment or on a command line.
ACCOUNT_CODE = r"""
import datetime, json, secrets, sys
from django.apps import apps
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone
a = json.loads(sys.stdin.read())
U = get_user_model()
field = U.USERNAME_FIELD
login, password, create, owned = a["user"], a["password"], a["create"], a.get("ownedId")
with transaction.atomic():
    u = U._default_manager.filter(**{field: login}).first()
    result = "exists"
    if u is None:
        if not create:
            sys.exit(f"the smoke-test account {login} does not exist: make it, or let the program (jhe:smokeTestCreate true)")
        u = U._default_manager.create_user(**{field: login}, password=password)
        result = "created"
    elif create and str(u.pk) != str(owned):
        # (never take over an account someone else made: its password, its rights, its records stay theirs)
        sys.exit(f"jhe:smokeTestUser {login} is an account this program did not make"
                 + (" (a superuser)" if u.is_superuser else "")
                 + ": give the smoke tests a login of their own, or use this one as it is (jhe:smokeTestCreate false, its password)")
    if not create:
        if not u.check_password(password):
            sys.exit(f"jhe:smokeTestPassword is not the password of {login} on this server: "
                     "set the right one, or let the program keep it (jhe:smokeTestCreate true)")
        if not (u.is_active and u.is_staff):
            sys.exit(f"{login} cannot log in to the admin (it is not an active staff account): "
                     "make it staff, or let the program (jhe:smokeTestCreate true)")
    if create and (not u.check_password(password) or not u.is_staff or not u.is_active or u.is_superuser):
        u.set_password(password)
        u.is_staff, u.is_active, u.is_superuser = True, True, False  # the admin's front page, no permission
        u.save()
        result = "updated" if result == "exists" else result
    patient = None
    try:
        P = apps.get_model("core", "Patient")
    except LookupError:
        P = None
    if P is not None and any(f.name == "jhe_user" for f in P._meta.get_fields()):
        p = P.objects.filter(jhe_user=u).first()
        if p is None and create:
            extra = {}
            bd = next((f for f in P._meta.get_fields() if f.name == "birth_date"), None)
            if bd is not None and not bd.null:  # (JHE's first releases require a birth date)
                extra["birth_date"] = datetime.date(1970, 1, 1)
            p = P.objects.create(jhe_user=u, name_family="Smoke test", name_given="jhe-upgrade", **extra)
        patient = p.id if p else None
    token = None
    try:
        from oauth2_provider.models import get_access_token_model
    except ImportError:
        get_access_token_model = None  # (an app without django-oauth-toolkit: no API token to make)
    if get_access_token_model:
        T = get_access_token_model()
        if create:  # (the program's own account: its earlier tokens go, e.g. one a rollback's replay brought back)
            T.objects.filter(user=u).delete()
        t = T.objects.create(user=u, token=secrets.token_urlsafe(32), scope="openid read write",
                             expires=timezone.now() + datetime.timedelta(seconds=int(a["tokenSeconds"])))
        token = {"id": t.id, "value": t.token}
print(json.dumps({"account": result, "userId": u.pk, "patient": patient, "token": token, "staff": u.is_staff}))
"""

# Afterwards: what the smoke tests wrote goes - the observations, by id and only the smoke patient's; the
# token, by id, value and owner (so a restored database whose ids moved never loses another user's).
CLEANUP_CODE = r"""
import json, sys
from django.apps import apps
from django.contrib.auth import get_user_model
ids = json.loads(sys.stdin.read())
n = 0
if ids["observations"] and ids.get("patient"):
    O = apps.get_model("core", "Observation")
    n += O.objects.filter(id__in=ids["observations"], subject_patient_id=ids["patient"]).delete()[0]
if ids.get("token"):
    from oauth2_provider.models import get_access_token_model
    U = get_user_model()
    n += get_access_token_model().objects.filter(id=ids["token"]["id"], token=ids["token"]["value"],
                                                 **{f"user__{U.USERNAME_FIELD}": ids["user"]}).delete()[0]
print(json.dumps({"deleted": n}))
"""


def _shell(spec: Spec, tag: str, code: str, data: dict | None = None, timeout: float = 120) -> dict:
    """`manage.py shell -c code` with release `tag`'s code, as the app user; `data` as JSON on stdin."""
    rel = spec.release(tag)
    p = run(["runuser", "-u", spec.app_user, "--preserve-environment", "--", str(rel / "venv/bin/python"), "manage.py", "shell",
             "-c", code], cwd=rel, input=json.dumps(data or {}), quiet=True, check=False, timeout=timeout)
    if p.returncode != 0:
        raise RuntimeError(error_summary(p.stderr) or f"exit {p.returncode}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def account_file(spec: Spec) -> Path:
    """The stack's smoke-test account, for the steps whose spec holds no secret: root-only, beside the
    maintenance flag (like .env, it holds a secret the server needs)."""
    return spec.maintenance_dir / "smoke-test.json"


def routes(spec: Spec, tag: str) -> dict:
    """Release `tag`'s admin, FHIR Observation and invitation paths (no database needed)."""
    return _shell(spec, tag, ROUTES_CODE)


def provision(spec: Spec, serving: str | None) -> dict:
    """prepare: keeps the stack's smoke-test account for the gate and, with the code that serves now,
    makes (jhe:smokeTestCreate) or checks it, its patient record and a token - before the window, so
    they are in every copy of the database the window may serve. Without one in the stack: nothing
    kept (the account stays on the server). Returns what the plan shows."""
    acct = spec.raw.get("smokeTest")
    f = account_file(spec)
    if not isinstance(acct, dict) or not acct.get("user"):
        f.unlink(missing_ok=True)
        return {"account": None}
    old = _read(f)
    kept = {"user": str(acct["user"]), "password": str(acct.get("password") or ""), "create": bool(acct.get("create")),
            # the account the program made (by id): with jhe:smokeTestCreate it manages that one only
            **({"ownedId": old["ownedId"]} if old and old.get("ownedId") and old.get("user") == acct["user"] else {}),
            **{k: acct[k] for k in ("observation", "invitation") if acct.get(k) is not None}}
    spec.maintenance_dir.mkdir(parents=True, exist_ok=True)
    _drop_token(spec, serving, old)
    result: dict = {"account": kept["user"]}
    if serving and spec.release(serving).is_dir():
        try:
            made = _account(spec, serving, kept)
            kept.update(patient=made["patient"], token=made["token"], tokenExpires=time.time() + TOKEN_SECONDS - 600,
                        **({"ownedId": made["userId"]} if kept["create"] else {}))
            result.update(result=made["account"], patient=made["patient"], token=bool(made["token"]))
        except (RuntimeError, ValueError) as e:
            if not kept["create"] or "did not make" in str(e):  # the stack's account is wrong: said now, before any window
                raise Refusal(f"the smoke-test account jhe:smokeTestUser {kept['user']}: {e}") from e
            result["problem"] = f"the smoke-test account could not be made ready with {serving}: {e} (the gate tries again)"
            log(f"warning: {result['problem']}")
    _keep(spec, kept)
    return result


def _keep(spec: Spec, acct: dict) -> None:
    """The account file written back (root only)."""
    write_private(account_file(spec), json.dumps(acct), "root", "root")


def _read(f: Path) -> dict | None:
    try:
        return json.loads(f.read_text())
    except (FileNotFoundError, ValueError):
        return None


def _account(spec: Spec, tag: str, acct: dict) -> dict:
    return _shell(spec, tag, ACCOUNT_CODE, {"user": acct["user"], "password": acct["password"], "create": bool(acct.get("create")),
                                            "ownedId": acct.get("ownedId"), "tokenSeconds": TOKEN_SECONDS})


def _cleanup(spec: Spec, tag: str, acct: dict, observations: list[str]) -> dict:
    return _shell(spec, tag, CLEANUP_CODE, {"observations": observations, "patient": acct.get("patient"),
                                            "token": acct.get("token"), "user": acct.get("user")})


def drop_token(spec: Spec, tag: str) -> None:
    """finish: a token no gate used (a run that changed only settings) goes now, with `tag`'s code."""
    f = account_file(spec)
    acct = _read(f)
    if acct and acct.get("token"):
        _drop_token(spec, tag, acct)
        acct.pop("token", None)
        _keep(spec, acct)


def _drop_token(spec: Spec, tag: str | None, acct: dict | None) -> None:
    if acct and acct.get("token") and tag and spec.release(tag).is_dir():
        try:
            _cleanup(spec, tag, acct, [])
        except (RuntimeError, ValueError) as e:
            log(f"warning: the smoke tests' earlier token was not deleted ({e}); it expires by itself")


class Session:
    """One gate's smoke tests: the account kept by prepare, the target's paths, the key that passes the
    maintenance page. Made before the window; `check` in it; `end` once it is closed."""

    def __init__(self, spec: Spec, to: str, serving: str | None = None):
        self.spec, self.to, self.serving = spec, to, serving  # serving: makes the token now if prepare could not
        self.acct = _read(account_file(spec))
        self.key = secrets.token_hex(16)
        self.paths: dict = {}
        self.problem: str | None = None
        self.written: list[str] = []
        if self.acct:  # (the paths the account's checks use; without one, the anonymous checks need none)
            try:
                self.paths = routes(spec, to)
            except (RuntimeError, ValueError) as e:
                self.problem = f"the paths of {to} could not be read: {e}"

    def _ready(self, serving: str, again: bool = False) -> None:
        """The account's token and patient, made now (by `serving`'s code) when prepare could not."""
        a = self.acct
        if not a or (not again and a.get("token") and a.get("tokenExpires", 0) > time.time() and a.get("patient")):
            return
        if a.get("token"):
            _drop_token(self.spec, serving, a)
        made = _account(self.spec, serving, a)
        a.update(patient=made["patient"], token=made["token"], tokenExpires=time.time() + TOKEN_SECONDS - 600,
                 **({"ownedId": made["userId"]} if a.get("create") else {}))
        _keep(self.spec, a)

    def check(self) -> dict:
        """The smoke tests, through nginx; {"ok", "detail" (the first failure), "checks": {...}}. What
        cannot be reached or read is a failed check, never an error of the gate itself."""
        t = time.monotonic()
        flag = self.spec.maintenance_dir / f"smoke-{self.key}"
        checks: dict = {}
        try:
            if self.serving:
                try:
                    self._ready(self.serving)
                except (RuntimeError, ValueError) as e:
                    checks["account"] = {"ok": False, "detail": f"the smoke-test account could not be made ready: {e}"}
            flag.touch()
            site = Site(self.spec, self.key)
            checks.update(anonymous_checks(site, self.paths))
            if not self.acct:
                checks["account"] = {"ok": True, "skipped": "no smoke-test account in the stack (jhe:smokeTestUser, jhe:smokeTestPassword)"}
            elif self.problem:
                checks["paths"] = {"ok": False, "detail": self.problem}
            elif "account" not in checks:
                got = self._as_account(site)
                if any(c.get("refused") for c in got.values()):
                    # The account or its token is not in the database that serves now (e.g. a restored one):
                    # made again with the code that serves it, and tried once more.
                    try:
                        self._ready(self.to, again=True)
                        got = self._as_account(site)
                    except (RuntimeError, ValueError) as e:
                        got["account"] = {"ok": False, "detail": f"the smoke-test account could not be made ready: {e}"}
                checks.update(got)
        finally:
            flag.unlink(missing_ok=True)
        failed = [f"{k}: {v['detail']}" for k, v in checks.items() if not v.get("ok")]
        return {"ok": not failed, "detail": "smoke test " + "; ".join(failed) if failed else None, "checks": checks,
                "seconds": round(time.monotonic() - t, 2)}

    def _as_account(self, site: Site) -> dict:
        """As the runbook: admin login; with a token, the patient's observations read back as a FHIR Bundle;
        the invitation link and the upload when the stack gives what they need on this JHE (the runbook's
        test-observation.json: jhe:smokeTestObservation; the invitation's fields: jhe:smokeTestInvitation)."""
        a = self.acct or {}
        out = {"adminLogin": guarded(lambda: admin_login(site, self.paths, a["user"], a["password"]))}
        token = (a.get("token") or {}).get("value")
        if not token:
            out["api"] = {"ok": True, "skipped": "no bearer token (the app has no django-oauth-toolkit)"}
            return out
        auth = {"Authorization": f"Bearer {token}"}
        patient = a.get("patient")
        if not patient:
            out["api"] = {"ok": True, "skipped": "the account has no patient record to act on (jhe:smokeTestCreate makes one)"}
            return out
        inv = self.paths.get("invitation")
        if a.get("invitation") is not None:
            out["invitationLink"] = guarded(lambda: invitation_link(site, inv, patient, auth, a["invitation"])) if inv else \
                {"ok": False, "detail": f"{self.to} serves no invitation endpoint this program knows"}
        fhir = self.paths.get("fhirObservation")
        if not fhir:
            out["observationReadBack"] = {"ok": False, "detail": f"{self.to} serves no FHIR Observation endpoint"}
            return out
        oid = None
        if a.get("observation") is not None:
            up = guarded(lambda: upload(site, fhir, patient, auth, a["observation"]))
            out["observationUpload"] = up
            if up.get("id") is not None:
                oid = str(up["id"])
                self.written.append(oid)
                self._keep_written()
            if not up.get("ok"):
                return out
        out["observationReadBack"] = guarded(lambda: read_back(site, fhir, patient, auth, oid))
        return out

    def _keep_written(self) -> None:
        """What the smoke tests wrote, kept on disk too (a run that dies before `end` leaves it findable)."""
        if self.acct is not None:
            self.acct["written"] = self.written
            _keep(self.spec, self.acct)

    def end(self, tag: str, rows: bool = True) -> dict:
        """The smoke tests' rows removed (with `tag`'s code, the one that serves now; `rows` False: only
        the token, when the database they were written to no longer serves) and the token gone."""
        a = self.acct or {}
        written = self.written if rows else []
        if not written and not a.get("token"):
            return {"deleted": 0}
        try:
            r = _cleanup(self.spec, tag, a, written)
        except (RuntimeError, ValueError) as e:
            log(f"warning: the smoke tests' rows were not removed ({e}): observations {self.written}")
            return {"deleted": 0, "problem": str(e), "observations": self.written}
        if a:
            a.pop("token", None)
            a.pop("written", None)
            _keep(self.spec, a)
        return r


def guarded(check) -> dict:
    """A check whose request fails (no answer, a broken TLS or HTTP exchange, an unreadable answer) fails as a check."""
    try:
        return check()
    except (OSError, http.client.HTTPException, ValueError) as e:
        return _fail(f"{type(e).__name__}: {e}")


class Site:
    """HTTPS to this server's nginx (127.0.0.1) with the site's name (SNI and Host), cookies kept, no
    redirect followed by itself; the certificate is not checked (it is this server's own)."""

    def __init__(self, spec: Spec, key: str):
        self.host = spec.site_host
        self.base = f"https://{self.host}"
        self.key = key
        self.cookies: dict[str, str] = {}
        self.ctx = ssl.create_default_context()
        self.ctx.check_hostname = False
        self.ctx.verify_mode = ssl.CERT_NONE

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, dict, str]:
        sock = socket.create_connection(("127.0.0.1", 443), timeout=15)
        conn = http.client.HTTPSConnection(self.host, 443, timeout=15, context=self.ctx)
        conn.sock = self.ctx.wrap_socket(sock, server_hostname=self.host)
        h = {"Host": self.host, "User-Agent": "jhe-upgrade smoke test", **(headers or {})}
        if self.key:
            h["X-JHE-Smoke-Test"] = self.key
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=h)
            r = conn.getresponse()
            text = r.read(1 << 20).decode(errors="replace")
            for c in r.headers.get_all("Set-Cookie") or []:
                name, _, rest = c.partition("=")
                self.cookies[name.strip()] = rest.split(";", 1)[0]
            return r.status, {k.lower(): v for k, v in r.getheaders()}, text
        finally:
            conn.close()

    def get(self, path: str, headers: dict | None = None, follow: int = 3) -> tuple[int, str, str]:
        """GET, following redirects on the site; (status, final path, body)."""
        for _ in range(follow + 1):
            code, hdrs, body = self.request("GET", path, headers=headers)
            loc = hdrs.get("location")
            if code in (301, 302, 303, 307, 308) and loc:
                u = urlsplit(urljoin(self.base + path, loc))
                if u.hostname != self.host:
                    return code, path, body
                path = u.path + (f"?{u.query}" if u.query else "")
                continue
            return code, path, body
        return code, path, body


def _fail(detail: str, **kw) -> dict:
    return {"ok": False, "detail": detail, **kw}


OIDC_KEYS = "/o/.well-known/jwks.json"
ADMIN_CSS = "/static/admin/css/base.css"  # (JHE's own smoke test checks the static files are served)


def anonymous(spec: Spec) -> dict:
    """What anyone gets through nginx, outside a window (finish; an adopted server): path -> status."""
    out: dict = {}
    site = Site(spec, "")
    for path in ("/health", "/admin/", OIDC_KEYS, ADMIN_CSS):
        try:
            out[path] = str(site.request("GET", path)[0])
        except (OSError, http.client.HTTPException) as e:
            out[path] = f"no answer: {e}"
    return out


def anonymous_checks(site: Site, paths: dict) -> dict:
    """In the gate, as anyone: /health (the tag's, where served) and the admin's login page, through nginx."""
    out = {}
    def health() -> dict:
        code = site.request("GET", "/health")[0]
        return {"ok": code in (200, 404), "status": code, **({} if code in (200, 404) else {"detail": f"/health answered {code}"})}
    out["health"] = guarded(health)
    login = paths.get("adminLogin") or "/admin/login/"

    def page() -> dict:
        code, _, body = site.request("GET", login)
        ok = code == 200 and "csrfmiddlewaretoken" in body
        why = f"{login} answered {code}" + ("" if code != 200 else " without a login form")
        return {"ok": ok, "status": code, **({} if ok else {"detail": why})}
    out["adminPage"] = guarded(page)
    return out


class _Form(HTMLParser):
    def __init__(self):
        super().__init__()
        self.csrf: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("name") == "csrfmiddlewaretoken":
            self.csrf = a.get("value")


def admin_login(site: Site, paths: dict, user: str, password: str) -> dict:
    """The admin's login form, as a browser fills it in (CSRF token, Origin, Referer); then the
    dashboard must load for the account (a page with the log-out)."""
    login, index = paths.get("adminLogin") or "/admin/login/", paths.get("admin") or "/admin/"
    t = time.monotonic()
    code, _, page = site.request("GET", f"{login}?{urlencode({'next': index})}")
    form = _Form()
    form.feed(page)
    if code != 200 or not form.csrf:
        return _fail(f"the login page {login} answered {code}" + ("" if code != 200 else " without a CSRF token"))
    body = urlencode({"csrfmiddlewaretoken": form.csrf, "username": user, "password": password, "next": index}).encode()
    code, hdrs, page = site.request("POST", login, body, {"Content-Type": "application/x-www-form-urlencoded",
                                                          "Origin": site.base, "Referer": f"{site.base}{login}"})
    if code not in (302, 303):
        why = "the password or the account was refused" if code == 200 else f"it answered {code}"
        return _fail(f"admin login as {user} failed: {why}", refused=code == 200)
    code, final, page = site.get(urlsplit(hdrs.get("location", index)).path or index)
    if code != 200 or final.rstrip("/") != index.rstrip("/") or not re.search(r"log\s*out|logout", page, re.I):
        return _fail(f"after logging in, {index} answered {code} at {final} (the dashboard did not load)")
    # Logged out again (a POST, as Django 5 wants): the session the login made is not left in the database.
    logout = paths.get("adminLogout") or f"{index.rstrip('/')}/logout/"
    out, _, _ = site.request("POST", logout, urlencode({"csrfmiddlewaretoken": site.cookies.get("csrftoken", "")}).encode(),
                             {"Content-Type": "application/x-www-form-urlencoded", "Origin": site.base, "Referer": f"{site.base}{index}"})
    return {"ok": True, "status": code, "loggedOut": out in (200, 302), "seconds": round(time.monotonic() - t, 2)}


def invitation_link(site: Site, inv: dict, patient: int, auth: dict, fields: dict) -> dict:
    """The runbook's "generate test invitation link": a GET per patient (JHE's first API), or a POST with
    the patient and the fields this JHE wants (jhe:smokeTestInvitation, e.g. its client's id); 200 or 201,
    and a link in the answer."""
    path = inv["path"].replace("{patient}", str(patient))
    if inv["method"] == "GET":
        code, _, body = site.request("GET", path, headers=auth)
    else:
        code, _, body = site.request("POST", path, json.dumps({"patient_id": patient, **fields}).encode(),
                                     {**auth, "Content-Type": "application/json"})
    if code not in (200, 201):
        return _fail(f"{inv['method']} {path} answered {code}", refused=code in (401, 403))
    doc = json.loads(body)
    links = [v for v in (doc.values() if isinstance(doc, dict) else []) if isinstance(v, str) and re.match(r"https?://[^\s/]+/", v)]
    if not links:
        return _fail(f"{inv['method']} {path} gave no link")
    return {"ok": True, "status": code, "path": path}


def upload(site: Site, fhir: str, patient: int, auth: dict, observation: dict) -> dict:
    """The runbook's test observation (jhe:smokeTestObservation), for the smoke patient; 201 with the new id."""
    obs = {**observation, "subject": {"reference": f"Patient/{patient}"}}
    code, _, body = site.request("POST", fhir, json.dumps(obs).encode(), {**auth, "Content-Type": "application/json"})
    if code != 201:
        return _fail(f"POST {fhir} answered {code}, not 201", status=code, refused=code in (401, 403))
    try:
        oid = json.loads(body).get("id")
    except (ValueError, AttributeError):
        oid = None
    if oid is None:
        return _fail(f"POST {fhir} answered 201 without the new resource's id", status=code)
    return {"ok": True, "status": code, "path": fhir, "id": str(oid)}


def read_back(site: Site, fhir: str, patient: int, auth: dict, oid: str | None) -> dict:
    """The runbook's "retrieve observations": the patient's, a FHIR Bundle (holding the upload, when there was one)."""
    path = f"{fhir}?{urlencode({'patient': patient})}"
    code, _, body = site.request("GET", path, headers=auth)
    if code != 200:
        return _fail(f"GET {path} answered {code}", refused=code in (401, 403))
    doc = json.loads(body)
    ids = [str((e.get("resource") or {}).get("id")) for e in doc.get("entry") or [] if isinstance(e, dict)]
    if doc.get("resourceType") != "Bundle":
        return _fail(f"GET {path} gave no FHIR Bundle")
    if oid is not None and oid not in ids:
        return _fail(f"GET {path} gave no Bundle with the uploaded observation {oid}")
    return {"ok": True, "status": code, "path": fhir, "entries": len(ids)}
