"""The read API audits every access to the real audit log, and publishes its checkpoints and
proofs: a client checks them with nothing but the public key, SHA-256 and the records.

The app is ``create_app`` over ``build_context`` with the real recorder
(``trust.audit.recorder.LogRecorder``) on the test's own topics; ``/v1/kpis`` (the
catalogue, which needs no ClickHouse) is the audited data route.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api.app import create_app
from api.config import build_context
from citystream.cli import main
from core.settings import Settings
from tests.conftest import free_port
from trust.audit.log import read_log
from trust.audit.recorder import LogRecorder
from trust.merkle import verify_consistency, verify_inclusion

pytestmark = pytest.mark.integration

KEYS = {"ana": ("k-analyst", "analyst"), "aud": ("k-auditor", "auditor")}


def headers(who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[who][0]}"}


@pytest.fixture
def api(settings: Settings) -> Iterator[tuple[Settings, TestClient]]:
    keys = {kid: {"key": key, "role": role} for kid, (key, role) in KEYS.items()}
    configured = settings.model_copy(update={"api_keys": SecretStr(json.dumps(keys))})
    recorder = LogRecorder(configured)
    client = TestClient(create_app(build_context(configured, audit=recorder)))
    yield configured, client
    recorder.close()


def checkpoint(settings: Settings) -> None:
    args = ["--topic-prefix", settings.topic_prefix, "--data-dir", str(settings.data_dir)]
    assert main(["audit", "checkpoint", *args]) == 0


def independent_leaf_hash(record: dict[str, object]) -> bytes:
    """RFC 9162 leaf hash of a record's canonical JSON, as docs/audit.md tells an auditor."""
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(b"\x00" + text.encode()).digest()


def test_accesses_are_logged_and_proven(api: tuple[Settings, TestClient]) -> None:
    settings, client = api
    assert client.get("/v1/audit/checkpoint").status_code == 404  # nothing signed yet
    for who in ("ana", "ana", "aud"):
        assert client.get("/v1/kpis", headers=headers(who)).status_code == 200
    answer = client.get("/v1/kpis")  # the public, without a key
    assert answer.status_code == 200
    records = [r.record for r in read_log(settings)]
    assert [(r["key_id"], r["role"], r["endpoint"]) for r in records if r] == [
        ("ana", "analyst", "/v1/kpis"),
        ("ana", "analyst", "/v1/kpis"),
        ("aud", "auditor", "/v1/kpis"),
        (None, "public", "/v1/kpis"),
    ]
    assert all(r and r["rows"] == len(answer.json()["kpis"]) for r in records)

    checkpoint(settings)
    published = client.get("/v1/audit/checkpoint").json()
    signed, key = published["checkpoint"], published["key"]
    assert signed["tree_size"] == 4
    public = Ed25519PublicKey.from_public_bytes(base64.b64decode(key["public_key"]))
    public.verify(bytes.fromhex(signed["signature"]), signed["signed"].encode())  # raises if not
    assert json.loads(signed["signed"]) == {
        "origin": "citystream-audit-log",
        "tree_size": 4,
        "root_hash": signed["root_hash"],
        "at_ms": signed["at_ms"],
    }
    root4 = bytes.fromhex(signed["root_hash"])

    # proofs are for auditors; the analyst is refused, and the refusal is not a data access
    assert client.get("/v1/audit/proof?leaf=1", headers=headers("ana")).status_code == 403
    proof = client.get("/v1/audit/proof?leaf=1&tree_size=4", headers=headers("aud")).json()
    leaf = independent_leaf_hash(read_log(settings)[1].record or {})
    assert proof["leaf_hash"] == leaf.hex() and proof["checkpoint"]["tree_size"] == 4
    path = [bytes.fromhex(h) for h in proof["audit_path"]]
    assert verify_inclusion(1, 4, leaf, path, root4)
    assert not verify_inclusion(2, 4, leaf, path, root4)

    # the log grew (the proof request itself was audited): consistent with what was signed
    checkpoint(settings)
    later = client.get("/v1/audit/checkpoint").json()["checkpoint"]
    assert later["tree_size"] == 6  # + the first checkpoint read and the proof
    answer = client.get("/v1/audit/proof?first=4&second=6", headers=headers("aud"))
    body = answer.json()
    assert body["checkpoints"][0]["tree_size"] == 4 and body["checkpoints"][1]["tree_size"] == 6
    path = [bytes.fromhex(h) for h in body["consistency_path"]]
    assert verify_consistency(4, 6, root4, bytes.fromhex(later["root_hash"]), path)
    assert client.get("/v1/audit/proof?leaf=99", headers=headers("aud")).status_code == 400


def test_an_access_that_cannot_be_audited_fails(settings: Settings) -> None:
    dead = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "audit_write_timeout_s": 1}
    )
    recorder = LogRecorder(dead)
    client = TestClient(create_app(build_context(dead, audit=recorder)))
    answer = client.get("/v1/kpis")
    assert answer.status_code == 503
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert "could not be audited" in answer.json()["detail"]
