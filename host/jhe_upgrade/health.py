"""Is it serving? The health gate (straight at gunicorn) and the smoke tests (through nginx)."""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from .spec import Spec
from .util import run


def health(spec: Spec, tag: str, timeout: float) -> dict:
    """/health (must report `tag` where it reports a version), else /admin/ 200/302, straight at
    gunicorn with the site's Host header (JHE derives ALLOWED_HOSTS from SITE_URL)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        for path in ("/health", "/admin/"):
            req = urllib.request.Request(f"http://127.0.0.1:8000{path}", headers={"Host": spec.site_host})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    body = r.read(4096).decode(errors="replace")
                    code = r.status
            except urllib.error.HTTPError as e:
                code, body = e.code, e.read(2048).decode(errors="replace")
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
                    if v and v != tag:
                        last = f"/health reports version {v}, expected {tag}"
                        break
                    return {"ok": True, "check": "/health", "status": code, "version": v}
                last = f"/health answered {code}"
                if code >= 500:
                    return {"ok": False, "check": "/health", "status": code, "detail": last}
                break
            if code in (200, 302):
                return {"ok": True, "check": "/admin/", "status": code}
            last = f"/admin/ answered {code}"
            break
        time.sleep(0.2)
    return {"ok": False, "detail": last}


def smoke_test(spec: Spec) -> dict:
    """Through nginx, as users reach it: /health and /admin/ with the site's Host header."""
    out = {}
    for path in ("/health", "/admin/"):
        args = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                "--resolve", f"{spec.site_host}:443:127.0.0.1", "--resolve", f"{spec.site_host}:80:127.0.0.1",
                f"{spec.site_url.rstrip('/')}{path}"]
        p = run(args, check=False, quiet=True)
        out[path] = p.stdout.strip() or f"error {p.returncode}"
    return out
