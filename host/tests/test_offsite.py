"""Backups off the server: the S3 client (SigV4) and gpg encryption against real parts - an S3Proxy
server on loopback and keys made by gpg - and the upload / fetch / prune logic on top."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import make_spec
from offsite_servers import KeyPair, S3Server, make_keys, start_s3, stop_s3

from jhe_upgrade import offsite, s3
from jhe_upgrade.crypt import check_public_key, decrypt_file, encrypt_file
from jhe_upgrade.state import load_state, register_backup, save_state
from jhe_upgrade.util import Refusal, sha256_file

BUCKET = "jhe-backups-test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = start_s3(tmp_path_factory.mktemp("s3"))
    srv.make_bucket(BUCKET)
    yield srv
    stop_s3(srv)


@pytest.fixture(scope="module")
def keys() -> KeyPair:
    return make_keys("jhe-backup")


def bucket(srv: S3Server, secret: str | None = None) -> s3.Bucket:
    return s3.Bucket(srv.endpoint, "us-east-1", BUCKET, s3.Creds(srv.access_key, secret or srv.secret_key))


# ---- the S3 client ---------------------------------------------------------------------------------

def test_sigv4_signs_as_aws_documents_it() -> None:
    # The "GET Object" example of AWS's Signature Version 4 documentation (example credentials).
    creds = s3.Creds("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
    h = s3.sign_request("GET", "examplebucket.s3.amazonaws.com", "/test.txt", {}, {"Range": "bytes=0-9"}, s3.EMPTY_SHA256, creds,
                        "us-east-1", dt.datetime(2013, 5, 24, tzinfo=dt.timezone.utc))
    assert h["authorization"].endswith("Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")
    assert "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date" in h["authorization"]


def test_credentials_never_shown() -> None:
    creds = s3.Creds("AKIDSHOWN", "very-secret-value")
    b = s3.Bucket("https://s3.eu-central-1.amazonaws.com", "eu-central-1", "b-1", creds)
    assert "very-secret" not in repr(creds) + repr(b) + str(b.__dict__.get("creds"))
    assert b.virtual and b.url("a/b") == "s3://b-1/a/b"


def test_round_trip_and_errors(server: S3Server, tmp_path: Path) -> None:
    b = bucket(server)
    b.check()
    b.put_bytes("t/one.txt", b"hello")
    assert b.get_bytes("t/one.txt") == b"hello"
    assert (b.head("t/one.txt") or {}).get("content-length") == "5"
    assert b.head("t/missing") is None
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(300_000))
    b.put_file("t/f bin+x", f, sha256_file(f), {"sha256": "x"})  # a key that needs encoding
    assert b.hash_object("t/f bin+x") == (sha256_file(f), 300_000)
    assert (server.basedir / BUCKET / "t" / "f bin+x").read_bytes() == f.read_bytes()
    assert sorted(b.list("t/")) == ["t/f bin+x", "t/one.txt"]
    with pytest.raises(s3.S3Error) as e:
        bucket(server, secret="not-the-secret").get_bytes("t/one.txt")
    assert e.value.status == 403
    assert "not-the-secret" not in str(e.value)
    with pytest.raises(s3.S3Error) as e:
        s3.Bucket(server.endpoint, "us-east-1", "no-such-bucket", s3.Creds(server.access_key, server.secret_key)).check()
    assert e.value.status == 404


def test_multipart_upload(server: S3Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(s3, "SINGLE_PUT_MAX", 2**20)
    monkeypatch.setattr(s3, "PART_BYTES", 5 * 2**20)
    f = tmp_path / "big.bin"
    f.write_bytes(os.urandom(12 * 2**20 + 17))
    b = bucket(server)
    b.put_file("mp/big.bin", f, sha256_file(f))
    assert b.hash_object("mp/big.bin") == (sha256_file(f), f.stat().st_size)


# ---- gpg -------------------------------------------------------------------------------------------

def test_public_key_checks(keys: KeyPair) -> None:
    assert check_public_key(keys.public) == keys.fingerprint
    with pytest.raises(Refusal, match="holds a private key"):
        check_public_key(keys.private)
    with pytest.raises(Refusal, match="no valid encryption key"):
        check_public_key(make_keys("signer", usage="sign").public)
    with pytest.raises(Refusal, match="not an OpenPGP key"):
        check_public_key("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nbm90IGEga2V5\n-----END PGP PUBLIC KEY BLOCK-----\n")


def test_encrypt_then_decrypt(keys: KeyPair, tmp_path: Path) -> None:
    src = tmp_path / "db.dump"
    marker = b"PATIENT-ROW-jane-doe-1970-01-01"
    src.write_bytes(b"PGDMP" + marker * 1000)
    enc = encrypt_file(keys.public, src, tmp_path / "db.dump.gpg")
    cipher = (tmp_path / "db.dump.gpg").read_bytes()
    assert marker not in cipher and b"PGDMP" not in cipher
    assert enc["fingerprint"] == keys.fingerprint and enc["plainSha256"] == sha256_file(src)
    assert enc["sha256"] == hashlib.sha256(cipher).hexdigest()
    assert decrypt_file(keys.private, tmp_path / "db.dump.gpg", tmp_path / "back") == sha256_file(src)
    assert (tmp_path / "back").read_bytes() == src.read_bytes()
    with pytest.raises(Refusal, match="cannot be decrypted"):
        decrypt_file(make_keys("someone-else").private, tmp_path / "db.dump.gpg", tmp_path / "no")
    assert not (tmp_path / "no").exists()
    assert not list(Path("/run").glob("jhe-upgrade-gpg.*")), "a temporary keyring was left behind"


# ---- upload, fetch, prune --------------------------------------------------------------------------

def offsite_spec(tmp: Path, srv: S3Server, keys: KeyPair | None, private: bool = False, keep: int = 3):
    o = {"endpoint": srv.endpoint, "region": "us-east-1", "bucket": BUCKET, "prefix": "jhe/test/", "accessKeyId": srv.access_key,
         "secretAccessKey": srv.secret_key, "publicKey": keys.public if keys else None, "encryption": "gpg" if keys else "none",
         "privateKey": keys.private if keys and private else None, "keepLocal": keep}
    return make_spec(tmp, offsite=o)


def fake_backup(spec, name: str, created: str, marker: bytes) -> dict:
    d = spec.backup_dir / name
    d.mkdir(parents=True)
    (d / "db.dump").write_bytes(b"PGDMP" + marker * 500)
    (d / "env").write_text("SECRET_KEY=do-not-leak\n")
    manifest = {"id": name, "path": str(d), "dump": "db.dump", "sha256": sha256_file(d / "db.dump"), "created": created,
                "from": "v1.0.0", "to": "v1.1.0", "rowCounts": {"core_patient": 3}, "appliedMigrations": ["core.0001_initial"],
                "database": "jhe_production", "bytes": 1, "seconds": 0.1}
    state: dict = {}
    register_backup(state, "v1.0.0", "v1.1.0", manifest)  # as the state keeps it: what step_offsite uploads
    return state["backups"]["v1.0.0->v1.1.0"]


@pytest.fixture
def no_pg(monkeypatch: pytest.MonkeyPatch):
    """verify_backup's pg_restore --list and the chown to postgres need a PostgreSQL server's tools and
    user: here the sha256 check alone, and no chown (the e2e tests run the real ones)."""
    def verify(m: dict) -> None:
        p = Path(m["path"]) / m["dump"]
        if not p.exists() or sha256_file(p) != m["sha256"]:
            raise RuntimeError(f"backup {m['id']} fails its sha256 check")
    monkeypatch.setattr(offsite, "verify_backup", verify)
    monkeypatch.setattr(offsite.shutil, "chown", lambda *a, **k: None)


def test_upload_encrypts_checks_and_fetches_back(server: S3Server, keys: KeyPair, tmp_path: Path, no_pg: None) -> None:
    spec = offsite_spec(tmp_path, server, keys)
    e = fake_backup(spec, "20260101-000000-v1.0.0-to-v1.1.0", "2026-01-01T00:00:00Z", b"ROW-MARKER-42")
    o = offsite.settings(spec)
    assert o is not None and "secret" not in repr(o).lower() and server.secret_key not in repr(o)
    rec = offsite.upload_backup(o, e)
    assert rec["location"] == f"s3://{BUCKET}/jhe/test/{e['id']}/" and rec["encryptedTo"] == keys.fingerprint
    stored = server.basedir / BUCKET / "jhe" / "test" / e["id"]
    assert sorted(p.name for p in stored.iterdir()) == ["db.dump.gpg", "env.gpg", "manifest.json"]
    for p in stored.iterdir():  # nothing readable without the private key
        data = p.read_bytes()
        assert b"ROW-MARKER-42" not in data and b"do-not-leak" not in data
    manifest = json.loads((stored / "manifest.json").read_text())
    assert manifest["sha256"] == e["sha256"] and manifest["objects"]["db.dump"]["plainSha256"] == e["sha256"]
    assert manifest["objects"]["db.dump"]["sha256"] == sha256_file(stored / "db.dump.gpg")
    assert manifest["encryption"] == {"tool": "gpg", "fingerprint": keys.fingerprint}
    assert not (Path(e["path"]) / ".offsite").exists()

    # The server loses its backups: a restore without the private key is refused, naming the setting...
    shutil.rmtree(spec.backup_dir)
    e["offsite"] = rec
    with pytest.raises(Refusal, match="jhe:backupDecryptionKey"):
        offsite.ensure_local(spec, e)
    # ... and with it, the backup comes back, checked against the manifest.
    spec2 = offsite_spec(tmp_path, server, keys, private=True)
    assert offsite.ensure_local(spec2, e) == "bucket"
    assert sha256_file(Path(e["path"]) / "db.dump") == e["sha256"]
    assert (Path(e["path"]) / "env").read_text() == "SECRET_KEY=do-not-leak\n"
    assert offsite.ensure_local(spec2, e) == "local"


def test_a_copy_that_reads_back_wrong_fails(server: S3Server, keys: KeyPair, tmp_path: Path, no_pg: None,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    spec = offsite_spec(tmp_path, server, keys)
    e = fake_backup(spec, "b-corrupt", "2026-01-01T00:00:00Z", b"X")
    monkeypatch.setattr(s3.Bucket, "hash_object", lambda self, key: ("0" * 64, 1))
    with pytest.raises(RuntimeError, match="does not match what was sent"):
        offsite.upload_backup(offsite.settings(spec), e)  # type: ignore[arg-type]


def test_fetch_refuses_a_tampered_copy(server: S3Server, keys: KeyPair, tmp_path: Path, no_pg: None) -> None:
    spec = offsite_spec(tmp_path, server, keys, private=True)
    e = fake_backup(spec, "b-tampered", "2026-01-01T00:00:00Z", b"Y")
    e["offsite"] = offsite.upload_backup(offsite.settings(spec), e)  # type: ignore[arg-type]
    obj = server.basedir / BUCKET / "jhe" / "test" / "b-tampered" / "db.dump.gpg"
    data = bytearray(obj.read_bytes())
    data[-5] ^= 0xFF
    obj.write_bytes(bytes(data))
    shutil.rmtree(e["path"])
    with pytest.raises(RuntimeError, match="manifest says"):
        offsite.ensure_local(spec, e)
    assert not Path(e["path"]).exists() and not list(spec.backup_dir.glob("*.fetching"))


def test_step_copies_each_backup_once_and_prunes_only_verified(server: S3Server, keys: KeyPair, tmp_path: Path, no_pg: None,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    spec = offsite_spec(tmp_path, server, keys, keep=1)
    entries = {f"v1.{i}.0->v1.{i + 1}.0": fake_backup(spec, f"b{i}", f"2026-01-0{i + 1}T00:00:00Z", b"Z%d" % i) for i in range(4)}
    b = {e["id"]: e for e in entries.values()}
    # b0 changed on disk after it was written: it is neither copied nor pruned.
    (Path(b["b0"]["path"]) / "db.dump").write_bytes(b"changed")
    # b1's database is still kept (finish drops it only against a dump that verifies here): its dump stays.
    b["b1"]["keptDatabase"] = "jhe_production_was_v1_1_0_1"
    kept = {"jhe_production_was_v1_1_0_1"}
    monkeypatch.setattr(offsite, "db_exists", lambda name: name in kept)
    save_state(spec, {"backups": entries})
    out = offsite.step_offsite(spec)["offsite"]
    assert out["copied"] == ["b3", "b2", "b1"] and out["notCopied"] == ["b0"]
    assert out["prunedLocal"] == ["b2"]  # b3 is the newest; b1 keeps its database; b0 has no copy
    assert Path(b["b0"]["path"]).exists() and Path(b["b1"]["path"]).exists() and not Path(b["b2"]["path"]).exists()
    state = load_state(spec)
    assert all(state["backups"][k]["offsite"]["verified"] for k in ("v1.1.0->v1.2.0", "v1.2.0->v1.3.0", "v1.3.0->v1.4.0"))
    # b1's copy is lost from the bucket (deleted, expired) after it was verified: the next run sends it
    # again rather than prune its only copy; once its database is gone, the dump goes.
    (server.basedir / BUCKET / "jhe" / "test" / "b1" / "db.dump.gpg").unlink()
    kept.clear()
    again = offsite.step_offsite(spec)["offsite"]
    assert again["copied"] == ["b1"] and again["prunedLocal"] == ["b1"]
    assert (server.basedir / BUCKET / "jhe" / "test" / "b1" / "db.dump.gpg").exists()
    assert offsite.step_offsite(spec)["offsite"]["copied"] == []  # converged
    assert server.secret_key not in spec.state_file.read_text()


def test_unencrypted_only_when_said(server: S3Server, tmp_path: Path, no_pg: None) -> None:
    spec = offsite_spec(tmp_path, server, None)
    e = fake_backup(spec, "b-plain", "2026-01-01T00:00:00Z", b"P")
    rec = offsite.upload_backup(offsite.settings(spec), e)  # type: ignore[arg-type]
    assert rec["encryptedTo"] is None and sorted(rec["objects"]) == ["db.dump", "env"]
    bad = make_spec(tmp_path, offsite={**spec.raw["offsite"], "encryption": "gpg"})
    with pytest.raises(Refusal, match="no public key"):
        offsite.settings(bad)


def test_settings_refuse_bad_input(tmp_path: Path) -> None:
    base = {"endpoint": "http://127.0.0.1:1", "region": "us-east-1", "bucket": "b-1", "prefix": "p/", "accessKeyId": "a",
            "secretAccessKey": "s", "publicKey": None, "encryption": "none"}
    assert offsite.settings(make_spec(tmp_path)) is None
    with pytest.raises(Refusal, match="secretAccessKey"):
        offsite.settings(make_spec(tmp_path, offsite={**base, "secretAccessKey": ""}))
    with pytest.raises(Refusal, match="jhe:backupPrefix"):
        offsite.settings(make_spec(tmp_path, offsite={**base, "prefix": "../x"}))
    e = {"id": "gone", "path": str(tmp_path / "gone"), "dump": "db.dump", "sha256": "0" * 64}
    with pytest.raises(Refusal, match="never copied off the server"):
        offsite.ensure_local(make_spec(tmp_path), e)


def test_unreachable_endpoint_is_a_refusal(tmp_path: Path) -> None:
    o = offsite.settings(make_spec(tmp_path, offsite={
        "endpoint": "http://127.0.0.1:9", "region": "us-east-1", "bucket": "b-1", "prefix": "", "accessKeyId": "a",
        "secretAccessKey": "s", "publicKey": None, "encryption": "none"}))
    assert o is not None
    o.client = lambda: s3.Bucket(o.endpoint, o.region, o.bucket, o.creds, timeout=2)  # type: ignore[method-assign]
    with pytest.raises(Refusal, match="jhe:backupEndpoint"):
        offsite.check_offsite(o)


def test_restore_onto_a_new_server_fetches_and_checks_first(server: S3Server, keys: KeyPair, tmp_path: Path, no_pg: None) -> None:
    spec = offsite_spec(tmp_path / "old", server, keys)
    e = fake_backup(spec, "20260102-000000-v1.0.0-to-v1.1.0", "2026-01-02T00:00:00Z", b"DR")
    offsite.upload_backup(offsite.settings(spec), e)  # type: ignore[arg-type]
    new = tmp_path / "new"
    with_restore = lambda rf, private=True: make_spec(new, offsite={**offsite_spec(new, server, keys, private=private).raw["offsite"]},  # noqa: E731
                                                      restoreFrom=rf)
    assert offsite.fetch_for_restore(make_spec(new, offsite=spec.raw["offsite"]), {}, "v1.0.0", True) is None
    with pytest.raises(Refusal, match="names bucket other-bucket"):
        offsite.fetch_for_restore(with_restore("s3://other-bucket/jhe/test/x/"), {}, "v1.0.0", True)
    with pytest.raises(Refusal, match="must be a backup id"):
        offsite.fetch_for_restore(with_restore("../etc"), {}, "v1.0.0", True)
    with pytest.raises(Refusal, match="already has JHE's tables: nothing was restored"):
        offsite.fetch_for_restore(with_restore(e["id"]), {}, "v1.0.0", False)
    with pytest.raises(Refusal, match="no backup nope"):
        offsite.fetch_for_restore(with_restore("nope"), {}, "v1.0.0", True)
    with pytest.raises(Refusal, match="holds the database of v1.0.0 .*set jhe:version to v1.0.0"):
        offsite.fetch_for_restore(with_restore(e["id"]), {}, "v1.1.0", True)
    assert not (new / "backups" / e["id"]).exists(), "nothing was downloaded for the wrong version"
    # A re-run after this server's database was restored from it goes on with that data.
    assert offsite.fetch_for_restore(with_restore(e["id"]), {"restoredFrom": {"id": e["id"]}}, "v1.0.0", False) is None
    with pytest.raises(Refusal, match="jhe:backupDecryptionKey"):
        offsite.fetch_for_restore(with_restore(e["id"], private=False), {}, "v1.0.0", True)
    got = offsite.fetch_for_restore(with_restore(f"s3://{BUCKET}/jhe/test/{e['id']}/"), {}, "v1.0.0", True)
    assert got is not None and got["sha256"] == e["sha256"] and got["fetchedFrom"] == f"s3://{BUCKET}/jhe/test/{e['id']}/"
    assert sha256_file(Path(got["path"]) / "db.dump") == e["sha256"] and Path(got["path"]).parent == new / "backups"
