"""Ed25519 signatures over canonical JSON, and the keys they use.

A statement is signed over its canonical JSON without the ``signature`` member: keys
sorted, no insignificant whitespace, UTF-8, numbers as Python's shortest round-trip form
(so a statement read back and written again has the same bytes). The key id is the first
16 hex digits of SHA-256 over the raw 32-byte public key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

ALGORITHM = "Ed25519"


def canonical(document: Any) -> bytes:
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def raw_public(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(raw_public(key)).hexdigest()[:16]


def load_private_key(pem: bytes, where: str) -> Ed25519PrivateKey:
    """An Ed25519 private key from PEM (PKCS #8); ValueError naming ``where`` otherwise."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: not an unencrypted PEM private key ({exc})") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{where}: not an Ed25519 key ({type(key).__name__})")
    return key


def signing_key(path: Path, create: bool) -> Ed25519PrivateKey:
    """The key in ``path``; with ``create`` a new one is written there (mode 0600) when the
    file does not exist yet."""
    if not path.exists() and create:
        path.parent.mkdir(parents=True, exist_ok=True)
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.touch(mode=0o600)
        path.write_bytes(pem)
        return key
    try:
        return load_private_key(path.read_bytes(), str(path))
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the signing key ({exc.strerror})") from exc


def public_key_text(key: Ed25519PublicKey) -> str:
    """The public key as base64 of its raw 32 bytes (what a verifier is given)."""
    return base64.b64encode(raw_public(key)).decode()


def load_public_key(text: str) -> Ed25519PublicKey:
    """A public key given as PEM (SubjectPublicKeyInfo), or base64 or hex of the raw 32
    bytes, or a file holding one of them."""
    stripped = text.strip()
    if not stripped.startswith("-----") and len(stripped) < 200 and Path(stripped).is_file():
        stripped = Path(stripped).read_text(encoding="utf-8").strip()
    if stripped.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(stripped.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise ValueError(f"not an Ed25519 public key ({type(key).__name__})")
        return key
    raw: bytes | None = None
    try:
        raw = (
            bytes.fromhex(stripped)
            if len(stripped) == 64
            else base64.b64decode(stripped, validate=True)
        )
    except (ValueError, binascii.Error):
        raw = None
    if raw is None or len(raw) != 32:
        raise ValueError("a public key is PEM, or base64 or hex of its raw 32 bytes")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(document: dict[str, Any], key: Ed25519PrivateKey) -> dict[str, Any]:
    """``document`` with its ``signature`` member (over everything else)."""
    body = {k: v for k, v in document.items() if k != "signature"}
    public = key.public_key()
    return {
        **body,
        "signature": {
            "algorithm": ALGORITHM,
            "key_id": key_id(public),
            "public_key": public_key_text(public),
            "value": base64.b64encode(key.sign(canonical(body))).decode(),
        },
    }


def signature_problems(document: dict[str, Any], trusted: Ed25519PublicKey | None) -> list[str]:
    """Why the signature does not hold (empty: it does). Without a ``trusted`` key it is
    checked against the key the document carries, which proves integrity, not who signed."""
    signature = document.get("signature")
    if not isinstance(signature, dict):
        return ["signature: missing"]
    if signature.get("algorithm") != ALGORITHM:
        return [f"signature: algorithm {signature.get('algorithm')!r} is not {ALGORITHM}"]
    try:
        carried = load_public_key(str(signature.get("public_key", "")))
        value = base64.b64decode(str(signature.get("value", "")), validate=True)
    except (ValueError, binascii.Error) as exc:
        return [f"signature: unreadable ({exc})"]
    problems = []
    key = trusted or carried
    if trusted is not None and raw_public(trusted) != raw_public(carried):
        problems.append(
            f"signature: signed with key {signature.get('key_id')}, not the trusted key "
            f"{key_id(trusted)}"
        )
    if signature.get("key_id") != key_id(carried):
        problems.append(f"signature: key_id {signature.get('key_id')!r} is not the carried key's")
    body = {k: v for k, v in document.items() if k != "signature"}
    try:
        key.verify(value, canonical(body))
    except InvalidSignature:
        problems.append(
            f"signature: does not match the statement (key {key_id(key)}): the statement "
            "was changed after it was signed, or the signature was"
        )
    return problems
