"""A small S3 client (AWS Signature Version 4) on the standard library: put, get, head, list, multipart.

The server needs nothing installed for it, and the credentials stay in this process: never in a
command line, a file or a log line. Works with AWS S3 and S3-compatible servers (path-style
addressing for endpoints other than AWS's)."""
from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import os
import re
import ssl
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable

# Single PUTs up to this size; larger files go up in parts of PART_BYTES. S3 allows 5 GiB per PUT and
# 10,000 parts of at least 5 MiB; S3-compatible servers that check a signed payload's sha256 hold each
# request in memory first and cap it (S3Proxy: 32 MiB), so parts stay well below that (10,000 x 16 MiB
# is 156 GiB, far beyond a JHE dump), and a failed part is retried alone.
SINGLE_PUT_MAX = 16 * 2**20
PART_BYTES = 16 * 2**20
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class S3Error(RuntimeError):
    def __init__(self, status: int, code: str, message: str, what: str):
        self.status, self.code = status, code
        super().__init__(f"{what}: HTTP {status} {code}{': ' + message if message else ''}")


@dataclass
class Creds:
    access_key: str
    secret_key: str
    session_token: str | None = None

    def __repr__(self) -> str:  # never printed, even in a traceback's locals
        return "Creds(<hidden>)"


def _sign(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str = "s3") -> bytes:
    k = _sign(("AWS4" + secret).encode(), date)
    k = _sign(k, region)
    k = _sign(k, service)
    return _sign(k, "aws4_request")


def _uri_encode(s: str, keep_slash: bool) -> str:
    return urllib.parse.quote(s, safe="/-_.~" if keep_slash else "-_.~")


def sign_request(method: str, host: str, path: str, query: dict[str, str], headers: dict[str, str], payload_sha256: str,
                 creds: Creds, region: str, when: dt.datetime) -> dict[str, str]:
    """The headers of a SigV4-signed request (the given ones plus x-amz-date, x-amz-content-sha256,
    the session token and Authorization). `path` is already URI-encoded."""
    amz_date = when.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    h = {k.lower(): v.strip() for k, v in headers.items()}
    h["host"] = host
    h["x-amz-date"] = amz_date
    h["x-amz-content-sha256"] = payload_sha256
    if creds.session_token:
        h["x-amz-security-token"] = creds.session_token
    names = sorted(h)
    canonical_query = "&".join(f"{_uri_encode(k, False)}={_uri_encode(v, False)}" for k, v in sorted(query.items()))
    canonical = "\n".join([method, path, canonical_query, "".join(f"{n}:{h[n]}\n" for n in names), ";".join(names), payload_sha256])
    scope = f"{date}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    sig = hmac.new(signing_key(creds.secret_key, date, region), to_sign.encode(), hashlib.sha256).hexdigest()
    h["authorization"] = f"AWS4-HMAC-SHA256 Credential={creds.access_key}/{scope}, SignedHeaders={';'.join(names)}, Signature={sig}"
    return h


class Bucket:
    """One bucket at one endpoint. Every call retries transient failures (connection errors, 5xx)
    a few times; a 4xx is an answer and raises S3Error at once."""

    def __init__(self, endpoint: str, region: str, bucket: str, creds: Creds, timeout: float = 60.0, cafile: str | None = None):
        u = urllib.parse.urlsplit(endpoint)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"the S3 endpoint must be an http(s) URL (got {endpoint!r})")
        self.scheme, self.netloc, self.region, self.name, self.creds = u.scheme, u.netloc, region, bucket, creds
        self.base = u.path.rstrip("/")
        self.timeout = timeout
        self.context = ssl.create_default_context(cafile=cafile) if u.scheme == "https" else None
        # AWS's own endpoints take the bucket as a host name; other servers as the first path segment.
        self.virtual = bool(re.search(r"(^|\.)amazonaws\.com(\.cn)?$", u.hostname)) and "." not in bucket

    def __repr__(self) -> str:
        return f"Bucket({self.scheme}://{self.netloc}/{self.name})"

    def url(self, key: str) -> str:
        return f"s3://{self.name}/{key}"

    def _target(self, key: str) -> tuple[str, str]:
        host = f"{self.name}.{self.netloc}" if self.virtual else self.netloc
        raw = f"{self.base}/{key}" if self.virtual else f"{self.base}/{self.name}" + (f"/{key}" if key else "")
        return host, _uri_encode(raw or "/", True)

    def _connect(self, host: str) -> http.client.HTTPConnection:
        if self.scheme == "https":
            return http.client.HTTPSConnection(host, timeout=self.timeout, context=self.context)
        return http.client.HTTPConnection(host, timeout=self.timeout)

    def request(self, method: str, key: str, what: str, query: dict[str, str] | None = None, headers: dict[str, str] | None = None,
                body: bytes | Callable[[], BinaryIO] | None = None, length: int | None = None, payload_sha256: str | None = None,
                sink: Callable[[http.client.HTTPResponse], object] | None = None, ok: tuple[int, ...] = (200,),
                attempts: int = 4) -> tuple[int, dict[str, str], bytes | object]:
        """One signed request. `body` is bytes, or a function that opens the payload afresh (each
        attempt); `sink` reads a successful response's body (a download); else it is returned."""
        query = query or {}
        host, path = self._target(key)
        if isinstance(body, bytes):
            payload_sha256 = payload_sha256 or hashlib.sha256(body).hexdigest()
            length = len(body)
        elif body is None:
            payload_sha256 = EMPTY_SHA256
        assert payload_sha256 is not None, "a streamed body needs its sha256"
        qs = "&".join(f"{_uri_encode(k, False)}={_uri_encode(v, False)}" for k, v in sorted(query.items()))
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(min(8.0, 0.5 * 2 ** attempt))
            h = dict(headers or {})
            if length is not None or body is not None:
                h["Content-Length"] = str(length or 0)
            signed = sign_request(method, host, path, query, h, payload_sha256, self.creds, self.region, dt.datetime.now(dt.timezone.utc))
            conn = self._connect(host)
            stream: BinaryIO | None = None
            try:
                data: BinaryIO | bytes | None = body() if callable(body) else body
                stream = data if callable(body) else None  # type: ignore[assignment]
                conn.request(method, path + (f"?{qs}" if qs else ""), body=data, headers=signed)
                resp = conn.getresponse()
                rh = {k.lower(): v for k, v in resp.getheaders()}
                if resp.status in ok:
                    out = sink(resp) if sink else resp.read()
                    return resp.status, rh, out
                text = resp.read().decode(errors="replace")
                code = _xml_text(text, "Code") or resp.reason
                err = S3Error(resp.status, code, _xml_text(text, "Message"), f"{what} ({self.url(key) if key else self.name})")
                if resp.status < 500 and resp.status != 429:
                    raise err
                last = err
            except (OSError, http.client.HTTPException) as e:
                last = e
            finally:
                if stream is not None:
                    stream.close()
                conn.close()
        assert last is not None
        raise last

    # ---- operations ----------------------------------------------------------------------------

    def check(self) -> None:
        """The bucket exists and these credentials may list it (HEAD bucket)."""
        self.request("HEAD", "", "checking the bucket", attempts=2)

    def head(self, key: str) -> dict[str, str] | None:
        try:
            _, h, _ = self.request("HEAD", key, "reading an object's metadata")
        except S3Error as e:
            if e.status == 404:
                return None
            raise
        return h

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.request("PUT", key, "uploading", headers={"Content-Type": content_type}, body=data)

    def get_bytes(self, key: str) -> bytes:
        _, _, data = self.request("GET", key, "downloading")
        assert isinstance(data, bytes)
        return data

    def put_file(self, key: str, path: Path, sha256: str, metadata: dict[str, str] | None = None) -> None:
        """Uploads a file: one PUT up to SINGLE_PUT_MAX, else a multipart upload (aborted on failure)."""
        size = path.stat().st_size
        meta = {f"x-amz-meta-{k}": v for k, v in (metadata or {}).items()}
        if size <= SINGLE_PUT_MAX:
            self.request("PUT", key, "uploading", headers={"Content-Type": "application/octet-stream", **meta},
                         body=lambda: open(path, "rb"), length=size, payload_sha256=sha256)
            return
        _, _, body = self.request("POST", key, "starting a multipart upload", query={"uploads": ""},
                                  headers={"Content-Type": "application/octet-stream", **meta})
        upload_id = _xml_text(body.decode() if isinstance(body, bytes) else "", "UploadId")
        if not upload_id:
            raise S3Error(0, "NoUploadId", "the server gave no UploadId", f"uploading {self.url(key)}")
        try:
            parts = []
            with open(path, "rb") as f:
                n = 0
                while True:
                    chunk = f.read(PART_BYTES)
                    if not chunk:
                        break
                    n += 1
                    q = {"partNumber": str(n), "uploadId": upload_id}
                    _, h, _ = self.request("PUT", key, f"uploading part {n}", query=q, body=chunk)
                    parts.append((n, h.get("etag", "")))
            xml = "<CompleteMultipartUpload>" + "".join(
                f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>" for n, e in parts) + "</CompleteMultipartUpload>"
            _, _, body = self.request("POST", key, "completing a multipart upload", query={"uploadId": upload_id}, body=xml.encode())
            text = body.decode(errors="replace") if isinstance(body, bytes) else ""
            if "<Error>" in text:  # S3 may answer 200 and put the error in the body
                raise S3Error(200, _xml_text(text, "Code"), _xml_text(text, "Message"), f"completing the upload of {self.url(key)}")
        except BaseException:
            try:
                self.request("DELETE", key, "aborting a multipart upload", query={"uploadId": upload_id}, ok=(200, 204), attempts=1)
            except Exception:  # noqa: BLE001 - the lifecycle rule aborts it later
                pass
            raise

    def get_file(self, key: str, path: Path) -> tuple[str, int]:
        """Downloads to `path` (0600); returns its sha256 and size."""
        return self._read(key, "downloading", path)

    def hash_object(self, key: str) -> tuple[str, int]:
        """Reads an object through and returns its sha256 and size, writing nothing (verification)."""
        return self._read(key, "reading back", None)

    def _read(self, key: str, what: str, path: Path | None) -> tuple[str, int]:
        """GETs an object, hashing it as it comes (and writing it to `path`, 0600, when given)."""
        def sink(resp: http.client.HTTPResponse) -> tuple[str, int]:
            h = hashlib.sha256()
            n = 0
            fd = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") if path else None
            try:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    h.update(chunk)
                    n += len(chunk)
                    if fd:
                        fd.write(chunk)
            finally:
                if fd:
                    fd.close()
            return h.hexdigest(), n
        _, _, out = self.request("GET", key, what, sink=sink)
        assert isinstance(out, tuple)
        return out

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        token = None
        for _ in range(1000):
            q = {"list-type": "2", "prefix": prefix}
            if token:
                q["continuation-token"] = token
            _, _, body = self.request("GET", "", "listing the bucket", query=q)
            text = body.decode() if isinstance(body, bytes) else ""
            root = ET.fromstring(text)
            ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
            keys += [e.text or "" for e in root.iter(f"{ns}Key")]
            if (root.findtext(f"{ns}IsTruncated") or "false") != "true":
                break
            token = root.findtext(f"{ns}NextContinuationToken")
        return keys


def _xml_text(text: str, tag: str) -> str:
    m = re.search(rf"<{tag}>(.*?)</{tag}>", text, re.S)
    return m.group(1).strip() if m else ""
