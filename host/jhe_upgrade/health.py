"""Is it serving? The health gate, straight at gunicorn (the smoke tests, through nginx, are smoke.py's)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from .envfile import parse_env
from .spec import Spec, tag_of

OIDC_KEYS = "/o/.well-known/jwks.json"
MAIN_PORT = 8000  # the service's gunicorn (the unit's --bind)
NEXT_PORT = 8001  # the hand-over unit's (components/systemd.ts HANDOVER_BIND)


def _get(spec: Spec, path: str, port: int = MAIN_PORT) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"Host": spec.site_host})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, r.read(4096).decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read(2048).decode(errors="replace")


def oidc_keys(spec: Spec, expect_key: bool = False, port: int = MAIN_PORT) -> dict:
    """JHE's OIDC signing keys (django-oauth-toolkit): a 5xx means the OIDC_RSA_PRIVATE_KEY the app read
    is unusable, no key (while its .env sets one) that the app did not get it - either way every OIDC
    login fails while /health stays green. 404: this version serves no OIDC."""
    try:
        code, body = _get(spec, OIDC_KEYS, port)
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        return {"ok": False, "detail": f"{OIDC_KEYS}: {e}"}
    if code == 404:
        return {"ok": True, "status": 404, "served": False}
    if code != 200:
        return {"ok": False, "status": code, "detail": f"{OIDC_KEYS} answered {code}: JHE cannot read its OIDC_RSA_PRIVATE_KEY "
                                                      f"(every OIDC login would fail)"}
    try:
        n = len(json.loads(body).get("keys") or [])
    except (ValueError, AttributeError):
        n = 0
    if expect_key and n == 0:
        return {"ok": False, "status": 200, "keys": 0,
                "detail": f"{OIDC_KEYS} serves no key although the release's .env sets OIDC_RSA_PRIVATE_KEY (every OIDC login would fail)"}
    return {"ok": True, "status": 200, "keys": n}


def health(spec: Spec, tag: str, timeout: float, port: int = MAIN_PORT) -> dict:
    """/health (must report `tag` where it reports a version), else /admin/ 200/302, straight at
    gunicorn with the site's Host header (JHE derives ALLOWED_HOSTS from SITE_URL); then the OIDC
    signing keys, where the version serves them."""
    env_file = spec.release(tag) / ".env"
    expect_key = env_file.is_file() and bool(parse_env(env_file.read_text()).get("OIDC_RSA_PRIVATE_KEY", "").strip())
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for path in ("/health", "/admin/"):
            try:
                code, body = _get(spec, path, port)
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
                last = f"{path}: {e}"
                break  # not listening yet
            if path == "/health":
                if code == 404:
                    continue  # older releases have no /health: fall back to /admin/
                if code == 200:
                    try:
                        v = json.loads(body).get("version")
                    except (ValueError, AttributeError):
                        v = None
                    if v and v != tag_of(tag):  # (a release of the tag built otherwise, jhe:pins/jhe:python, reports its tag)
                        last = f"/health reports version {v}, expected {tag_of(tag)}"
                        break
                    return _with_oidc(spec, expect_key, {"ok": True, "check": "/health", "status": code, "version": v}, port)
                last = f"/health answered {code}"
                if code >= 500:
                    return {"ok": False, "check": "/health", "status": code, "detail": last}
                break
            if code in (200, 302):
                return _with_oidc(spec, expect_key, {"ok": True, "check": "/admin/", "status": code}, port)
            last = f"/admin/ answered {code}"
            break
        time.sleep(0.2)
    return {"ok": False, "detail": last}


def _with_oidc(spec: Spec, expect_key: bool, h: dict, port: int) -> dict:
    o = oidc_keys(spec, expect_key, port)
    h["oidc"] = {k: v for k, v in o.items() if k != "ok"}
    if not o["ok"]:
        h.update(ok=False, detail=o["detail"])
    return h
