"""Rotating the audit signing key, the way docs/audit.md tells an operator to (#17).

Checkpoints are signed with key 1; the operator keeps key 1's public half in a keyring
directory, switches ``audit_key_file`` to key 2, adds key 2's public half and keeps
appending. ``citystream audit verify`` trusting both keys (repeated ``--public-key``, or
the keyring directory) passes across the rotation; trusting only one fails, naming the
other key's id. Real Kafka, the real commands.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citystream.cli import main
from core.audit_append import AuditAppender, AuditEntry, ensure_audit_topics
from core.settings import Settings
from trust.audit.checkpoint import read_checkpoints
from trust.statements.signing import key_id, load_public_key

pytestmark = pytest.mark.integration


def append(settings: Settings, count: int) -> None:
    entries = [
        AuditEntry(role="public", action="read", endpoint="/v1/status"),
        AuditEntry(role="analyst", action="read", endpoint="/v1/kpis", key_id="ana"),
    ]
    appender = AuditAppender(settings)
    try:
        for i in range(count):
            appender.append(entries[i % 2])
    finally:
        appender.close()


def new_key_file(path: Path) -> Path:
    """What ``openssl genpkey -algorithm ed25519 -out PATH`` writes."""
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    return path


def test_verify_across_a_key_rotation(
    settings: Settings,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--topic-prefix", settings.topic_prefix, "--data-dir", str(settings.data_dir)]
    trusted = tmp_path / "trusted-audit-keys"
    trusted.mkdir()

    def cli(*command: str) -> tuple[int, str]:
        code = main([*command, *args])
        return code, capsys.readouterr().out

    ensure_audit_topics(settings)
    append(settings, 3)
    assert cli("audit", "checkpoint")[0] == 0  # key 1: created under data_dir/keys
    code, old_public = cli("audit", "public-key")
    (trusted / "audit-1.pub").write_text(old_public)
    append(settings, 2)
    assert cli("audit", "checkpoint")[0] == 0  # the old key's last checkpoint

    # rotate: a new key file, the setting pointed at it, its public half beside the old
    monkeypatch.setenv("CITYSTREAM_AUDIT_KEY_FILE", str(new_key_file(tmp_path / "audit-2.pem")))
    code, new_public = cli("audit", "public-key")
    (trusted / "audit-2.pub").write_text(new_public)
    old_id, new_id = key_id(load_public_key(old_public)), key_id(load_public_key(new_public))
    assert old_id != new_id
    append(settings, 4)
    assert cli("audit", "checkpoint")[0] == 0
    append(settings, 1)
    assert cli("audit", "checkpoint")[0] == 0
    assert [c.key_id for c in read_checkpoints(settings)] == [old_id, old_id, new_id, new_id]

    code, out = cli("audit", "verify", "--public-key", str(trusted))
    assert code == 0, out
    assert "10 records" in out and f"{old_id} (2)" in out and f"{new_id} (2)" in out
    code, out = cli("audit", "verify", "--public-key", old_public, "--public-key", new_public)
    assert code == 0, out

    code, out = cli("audit", "verify", "--public-key", old_public)
    assert code == 1
    assert f"signed by key {new_id}, not one of {old_id}" in out
    code, out = cli("audit", "verify")  # the operator's self-check: only the current key
    assert code == 1
    assert f"signed by key {old_id}, not one of {new_id}" in out

    # the setting takes the keyring directory too
    monkeypatch.setenv("CITYSTREAM_AUDIT_PUBLIC_KEY", str(trusted))
    assert cli("audit", "verify")[0] == 0
