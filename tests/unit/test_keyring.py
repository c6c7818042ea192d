"""Keyrings of trusted Ed25519 public keys (#17): statements signed before and after a key
rotation verify with a ring holding both keys, picked by the key id the signature names;
a ring without the signer's key fails naming it. Rings load from keys, keyring files
(one key a line, or PEM blocks) and directories."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from citystream.cli import parser as cli_parser
from trust.statements.signing import (
    Keyring,
    key_id,
    load_keyring,
    public_key_text,
    sign,
    signature_problems,
)

OLD, NEW = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
OLD_ID, NEW_ID = key_id(OLD.public_key()), key_id(NEW.public_key())


def pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def test_statements_verify_across_a_rotation_with_both_keys() -> None:
    before = sign({"period": "2015-01", "value": 1.5}, OLD)
    after = sign({"period": "2015-02", "value": 2.5}, NEW)
    both = Keyring.of([OLD.public_key(), NEW.public_key()])
    assert signature_problems(before, both) == [] and signature_problems(after, both) == []

    problems = signature_problems(after, Keyring.of([OLD.public_key()]))
    assert problems[0] == f"signature: signed with key {NEW_ID}, not the trusted key {OLD_ID}"
    problems = signature_problems(sign(after, Ed25519PrivateKey.generate()), both)
    assert f"not the trusted keys {OLD_ID}, {NEW_ID}" in problems[0]
    changed = {**before, "value": 9.0}
    assert signature_problems(changed, both)[0].startswith("signature: does not match")


def test_keyrings_load_from_keys_files_and_directories(tmp_path: Path) -> None:
    ring = tmp_path / "ring"
    ring.mkdir()
    (ring / "old.pub").write_text(f"# issued 2026-01\n{public_key_text(OLD.public_key())}\n")
    (ring / "new.pem").write_text(pem(NEW))
    (ring / ".hidden").write_text("not a key")
    assert load_keyring([str(ring)]).ids == [NEW_ID, OLD_ID]  # files in name order
    both = tmp_path / "both.keys"
    both.write_text(pem(OLD) + "\n" + OLD.public_key().public_bytes_raw().hex() + "\n" + pem(NEW))
    assert load_keyring([str(both)]).ids == [OLD_ID, NEW_ID]
    assert load_keyring([public_key_text(NEW.public_key()), pem(OLD)]).ids == [NEW_ID, OLD_ID]

    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="without key files"):
        load_keyring([str(tmp_path / "empty")])
    bad = tmp_path / "bad.keys"
    bad.write_text(f"{public_key_text(OLD.public_key())}\nnot-a-key\n")
    with pytest.raises(ValueError, match=r"bad\.keys"):
        load_keyring([str(bad)])


def test_verify_commands_take_several_keys() -> None:
    parser = cli_parser()
    audit = parser.parse_args(["audit", "verify", "--public-key", "a", "--public-key", "b"])
    assert audit.public_key == ["a", "b"]
    statement = parser.parse_args(
        ["statement", "verify", "s.json", "--public-key", "a", "--public-key", "dir/"]
    )
    assert statement.public_key == ["a", "dir/"]
