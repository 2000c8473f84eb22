"""The smoke tests without a server: the paths read from a release's URL configuration (Django's
resolver faked), the admin login as a browser fills it in, the API checks and what they refuse, the
cleanup that never reaches another patient's rows, and their lines in UPGRADE_LOG.md."""
from __future__ import annotations

import io
import json
import sys
import types
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from jhe_upgrade import smoke
from jhe_upgrade.spec import Spec
from jhe_upgrade.upgradelog import _smoke_lines

SITE = "https://t.jhe.test"


class Pattern:
    def __init__(self, route: str):
        self.route = route

    def __str__(self) -> str:
        return self.route


def fake_django(monkeypatch: pytest.MonkeyPatch, tree: list) -> None:
    """django.urls with a resolver over `tree`: strings are views' routes, (prefix, [...]) an include."""
    urls = types.ModuleType("django.urls")

    class URLResolver:
        def __init__(self, prefix: str, children: list):
            self.pattern = Pattern(prefix)
            self.url_patterns = [build(c) for c in children]

    class URLPattern:
        def __init__(self, route: str):
            self.pattern = Pattern(route)

    def build(node):
        return URLResolver(node[0], node[1]) if isinstance(node, tuple) else URLPattern(node)

    root = URLResolver("", tree)
    vars(urls).update(URLResolver=URLResolver, get_resolver=lambda: root,
                      reverse=lambda name: {"admin:index": "/admin/", "admin:login": "/admin/login/",
                                            "admin:logout": "/admin/logout/"}[name])
    django = types.ModuleType("django")
    vars(django)["urls"] = urls
    monkeypatch.setitem(sys.modules, "django", django)
    monkeypatch.setitem(sys.modules, "django.urls", urls)


def routes_of(monkeypatch: pytest.MonkeyPatch, tree: list) -> dict:
    fake_django(monkeypatch, tree)
    out = io.StringIO()
    with redirect_stdout(out):
        exec(smoke.ROUTES_CODE, {})  # noqa: S102 - the code the release's `manage.py shell` runs
    return json.loads(out.getvalue())


def test_paths_are_read_from_each_release_not_assumed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The fixture's v1: /fhir/r5/Observation, a GET per patient for the link.
    v1 = routes_of(monkeypatch, [("admin/", ["", "login/"]), "health", ("api/v1/", ["patients"]),
                                 ("", ["fhir/r5/Observation", "api/v1/patients/<int:patient_id>/invitation_link"])])
    assert v1["fhirObservation"] == "/fhir/r5/Observation"
    assert v1["invitation"] == {"method": "GET", "path": "/api/v1/patients/{patient}/invitation_link"}
    assert (v1["admin"], v1["adminLogin"], v1["adminLogout"]) == ("/admin/", "/admin/login/", "/admin/logout/")
    # v2: /FHIR/R5/ and a POST; JHE today: one route for every resource, a DRF router's regex routes.
    v2 = routes_of(monkeypatch, [("", ["FHIR/R5/Observation", "api/v1/invitation"])])
    assert v2["fhirObservation"] == "/FHIR/R5/Observation"
    assert v2["invitation"] == {"method": "POST", "path": "/api/v1/invitation"}
    now = routes_of(monkeypatch, [("", ["FHIR/R5/metadata", "FHIR/R5/<str:resource>", "FHIR/R5/<str:resource>/<str:id>"]),
                                  ("api/v1/", ["^invitation$", "^invitation\\.(?P<format>[a-z0-9]+)/?$", "^invitation/(?P<pk>[^/.]+)$"])])
    assert now["fhirObservation"] == "/FHIR/R5/Observation"
    assert now["invitation"] == {"method": "POST", "path": "/api/v1/invitation"}
    # JHE's first releases (v0.0.10): a DRF router's regex routes, the link an @action on the patient.
    old = routes_of(monkeypatch, [("", ["fhir/r5/^Observation$"]), ("api/v1/", ["^patients/(?P<pk>[^/.]+)/invitation_link$",
                                                                                "^patients/(?P<pk>[^/.]+)/invitation_link\\.(?P<format>[a-z0-9]+)/?$"])])
    assert old["fhirObservation"] == "/fhir/r5/Observation"
    assert old["invitation"] == {"method": "GET", "path": "/api/v1/patients/{patient}/invitation_link"}
    # A release without them: nothing made up.
    none = routes_of(monkeypatch, [("admin/", ["login/"]), "health"])
    assert none["fhirObservation"] is None and none["invitation"] is None


class FakeSite:
    """The Site's interface over canned answers: (method, path) -> (status, headers, body); requests recorded."""

    def __init__(self, answers: dict):
        self.base, self.host, self.key = SITE, "t.jhe.test", "k" * 32
        self.answers = answers
        self.sent: list[tuple[str, str, bytes | None, dict]] = []
        self.cookies: dict[str, str] = {}

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        self.sent.append((method, path, body, headers or {}))
        a = self.answers.get((method, path.split("?")[0]))
        if callable(a):
            return a(body, headers or {})
        return a if a else (404, {}, "<h1>Not Found</h1>")

    def get(self, path: str, headers: dict | None = None, follow: int = 3):
        code, _, body = self.request("GET", path, headers=headers)
        return code, path, body


LOGIN_PAGE = '<form method="post"><input type="hidden" name="csrfmiddlewaretoken" value="tok123"><input name="username"></form>'


def test_admin_login_as_a_browser_and_the_dashboard(monkeypatch: pytest.MonkeyPatch) -> None:
    def post(body: bytes, headers: dict):
        form = dict(p.split("=", 1) for p in body.decode().split("&"))
        assert headers["Origin"] == SITE and headers["Referer"] == f"{SITE}/admin/login/"
        if form["csrfmiddlewaretoken"] == "tok123" and form["password"] == "right":
            return 302, {"location": "/admin/"}, ""
        return 200, {}, LOGIN_PAGE + "Please enter the correct email and password"
    site = FakeSite({("GET", "/admin/login/"): (200, {}, LOGIN_PAGE), ("POST", "/admin/login/"): post,
                     ("GET", "/admin/"): (200, {}, '<form id="logout-form" method="post" action="/admin/logout/">')})
    site.answers[("POST", "/admin/logout/")] = (200, {}, "Logged out")
    ok = smoke.admin_login(site, {}, "smoke@example.org", "right")  # type: ignore[arg-type]
    assert ok["ok"] and ok["status"] == 200 and ok["loggedOut"], ok
    assert site.sent[-1][:2] == ("POST", "/admin/logout/"), "the session the login made is ended"
    bad = smoke.admin_login(site, {}, "smoke@example.org", "wrong")  # type: ignore[arg-type]
    assert not bad["ok"] and bad["refused"] and "the password or the account was refused" in bad["detail"]
    # Logged in, but the dashboard does not load (e.g. a template error after the upgrade).
    site.answers[("GET", "/admin/")] = (500, {}, "Server Error")
    broken = smoke.admin_login(site, {}, "smoke@example.org", "right")  # type: ignore[arg-type]
    assert not broken["ok"] and "/admin/ answered 500" in broken["detail"]


def test_upload_read_back_and_invitation(monkeypatch: pytest.MonkeyPatch) -> None:
    auth = {"Authorization": "Bearer abc"}
    stored: list[dict] = []

    def post(body: bytes, headers: dict):
        assert headers["Authorization"] == "Bearer abc"
        stored.append(json.loads(body))
        return 201, {}, json.dumps({"resourceType": "Observation", "id": "41"})
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"id": "40"}}, {"resource": {"id": "41"}}]}
    site = FakeSite({("POST", "/fhir/r5/Observation"): post, ("GET", "/fhir/r5/Observation"): (200, {}, json.dumps(bundle)),
                     ("GET", "/api/v1/patients/7/invitation_link"): (200, {}, json.dumps({"invitationLink": f"{SITE}/invite/7/x"}))})
    sample = {"resourceType": "Observation", "code": {"coding": [{"code": "8867-4"}]}, "subject": {"reference": "Patient/10001"}}
    up = smoke.upload(site, "/fhir/r5/Observation", 7, auth, sample)  # type: ignore[arg-type]
    assert up == {"ok": True, "status": 201, "path": "/fhir/r5/Observation", "id": "41"}
    assert stored[0]["subject"] == {"reference": "Patient/7"}, "the runbook's test observation, for the smoke patient"
    assert stored[0]["code"] == sample["code"]
    assert smoke.read_back(site, "/fhir/r5/Observation", 7, auth, "41")["ok"]  # type: ignore[arg-type]
    missing = smoke.read_back(site, "/fhir/r5/Observation", 7, auth, "42")  # type: ignore[arg-type]
    assert not missing["ok"] and "no Bundle with the uploaded observation 42" in missing["detail"]
    get_link = {"method": "GET", "path": "/api/v1/patients/{patient}/invitation_link"}
    assert smoke.invitation_link(site, get_link, 7, auth, {})["ok"]  # type: ignore[arg-type]
    # An answer without a link is no invitation.
    site.answers[("GET", "/api/v1/patients/7/invitation_link")] = (200, {}, json.dumps({"invitationLink": ""}))
    assert not smoke.invitation_link(site, get_link, 7, auth, {})["ok"]  # type: ignore[arg-type]
    # JHE today: a POST with the client's id (jhe:smokeTestInvitation), 201, a link on the client's own site.
    sent_body: list[dict] = []

    def invite(body: bytes, headers: dict):
        sent_body.append(json.loads(body))
        return 201, {}, json.dumps({"invitationLink": "https://app.example.org/invite?code=x"})
    site.answers[("POST", "/api/v1/invitation")] = invite
    assert smoke.invitation_link(site, {"method": "POST", "path": "/api/v1/invitation"}, 7, auth, {"clientId": 3})["ok"]  # type: ignore[arg-type]
    assert sent_body == [{"patient_id": 7, "clientId": 3}]
    # The answers that make the gate fail, and those that mean the token or the account was refused.
    site.answers[("POST", "/fhir/r5/Observation")] = (500, {}, "Server Error")
    broken = smoke.upload(site, "/fhir/r5/Observation", 7, auth, sample)  # type: ignore[arg-type]
    assert broken["detail"] == "POST /fhir/r5/Observation answered 500, not 201" and not broken["refused"]
    site.answers[("POST", "/fhir/r5/Observation")] = (401, {}, '{"detail": "Invalid token."}')
    assert smoke.upload(site, "/fhir/r5/Observation", 7, auth, sample)["refused"]  # type: ignore[arg-type]
    # A request that cannot be made is a failed check, not an error of the gate.
    site.answers[("POST", "/fhir/r5/Observation")] = lambda b, h: (_ for _ in ()).throw(ConnectionResetError("reset by peer"))
    failed = smoke.guarded(lambda: smoke.upload(site, "/fhir/r5/Observation", 7, auth, sample))  # type: ignore[arg-type]
    assert failed == {"ok": False, "detail": "ConnectionResetError: reset by peer"}


def test_session_retries_once_with_a_token_made_by_the_serving_code(spec: Spec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A database the window restored may not hold the token made before it: made again, tried once more."""
    monkeypatch.setattr(type(spec), "maintenance_dir", property(lambda s: tmp_path))
    smoke.account_file(spec).write_text(json.dumps({"user": "s@example.org", "password": "pw", "create": True, "patient": 7, "ownedId": 5,
                                                    "token": {"id": 1, "value": "old"}, "tokenExpires": 4e9,
                                                    "observation": {"resourceType": "Observation"}}))
    paths = {"admin": "/admin/", "adminLogin": "/admin/login/", "fhirObservation": "/fhir/r5/Observation", "invitation": None}
    monkeypatch.setattr(smoke, "routes", lambda s, t: paths)
    made: list[str] = []

    def account(s: Spec, tag: str, a: dict) -> dict:
        made.append(tag)
        return {"account": "exists", "userId": 5, "patient": 7, "token": {"id": 2, "value": "new"}}
    monkeypatch.setattr(smoke, "_account", account)
    monkeypatch.setattr(smoke, "write_private", lambda p, text, *a: Path(p).write_text(text))
    monkeypatch.setattr(smoke, "anonymous_checks", lambda site, paths: {"health": {"ok": True, "status": 200}})
    monkeypatch.setattr(smoke, "admin_login", lambda *a: {"ok": True, "status": 200})
    tokens: list[str] = []

    def upload(site, fhir, patient, auth, observation):
        tokens.append(auth["Authorization"])
        return {"ok": True, "status": 201, "id": "9"} if auth["Authorization"] == "Bearer new" else \
            {"ok": False, "refused": True, "detail": "POST answered 401, not 201"}
    monkeypatch.setattr(smoke, "upload", upload)
    monkeypatch.setattr(smoke, "read_back", lambda *a: {"ok": True, "status": 200})
    sent: list[dict] = []

    def shell(s: Spec, tag: str, code: str, data: dict) -> dict:
        sent.append(data)
        return {"deleted": 2}
    monkeypatch.setattr(smoke, "_shell", shell)  # (no command runs in a unit test)
    (spec.releases / "v1.2.0").mkdir(parents=True)
    s = smoke.Session(spec, "v1.2.0")
    r = s.check()
    assert r["ok"], r
    assert tokens == ["Bearer old", "Bearer new"] and made == ["v1.2.0"]
    assert s.written == ["9"]
    assert not list(tmp_path.glob("smoke-[0-9a-f]*")), "the file that passes the maintenance page is gone"
    # Before the new token, the old one went (by id, value and owner); then the cleanup: the smoke patient's
    # observations by id, and the token; after a revert only the token.
    assert sent[0] == {"observations": [], "patient": 7, "token": {"id": 1, "value": "old"}, "user": "s@example.org"}
    s.end("v1.2.0", rows=False)
    new = {"id": 2, "value": "new"}
    assert sent[-1] == {"observations": [], "token": new, "patient": 7, "user": "s@example.org"}
    s.acct = {**(s.acct or {}), "token": new}
    s.end("v1.2.0")
    assert sent[-1] == {"observations": ["9"], "token": new, "patient": 7, "user": "s@example.org"}


def test_upgrade_log_lines() -> None:
    lines = _smoke_lines({"health": 200, "adminPage": 200, "gate": {
        "checks": {"adminLogin": {"ok": True, "status": 200}, "observationUpload": {"ok": False, "detail": "POST /x answered 500, not 201"},
                   "api": {"ok": True, "skipped": "no bearer token"}},
        "cleanup": {"deleted": 2}}})
    assert lines == ["- health: 200", "- adminPage: 200", "- smoke test adminLogin: passed, 200",
                     "- smoke test observationUpload: FAILED (POST /x answered 500, not 201)",
                     "- smoke test api: skipped (no bearer token)",
                     "- smoke tests' own rows removed: 2"]
