"""Ed25519 signatures over canonical JSON, and the keys they use.

A statement is signed over its canonical JSON without the ``signature`` member: keys
sorted, no insignificant whitespace, UTF-8, numbers as Python's shortest round-trip form
(so a statement read back and written again has the same bytes). The key id is the first
16 hex digits of SHA-256 over the raw 32-byte public key.

Verifiers trust a :class:`Keyring`: one or more public keys, looked up by the key id a
statement or checkpoint names, so material signed before and after a key rotation verifies
in one run, and something signed by a key outside the ring fails naming that key's id.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
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
    return _parse_public_key(stripped)


def _parse_public_key(stripped: str) -> Ed25519PublicKey:
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


_PEM_BLOCK = re.compile(r"-----BEGIN [A-Z ]+-----.*?-----END [A-Z ]+-----", re.S)


@dataclass(frozen=True)
class Keyring:
    """Trusted public keys by key id (insertion order kept for messages)."""

    keys: dict[str, Ed25519PublicKey]

    @classmethod
    def of(cls, keys: Iterable[Ed25519PublicKey]) -> Keyring:
        return cls({key_id(k): k for k in keys})

    def get(self, kid: str) -> Ed25519PublicKey | None:
        return self.keys.get(kid)

    @property
    def ids(self) -> list[str]:
        return list(self.keys)

    def names(self) -> str:
        """The key ids for a message: ``a, b``."""
        return ", ".join(self.keys) or "none"


def keys_in_text(text: str, where: str) -> list[Ed25519PublicKey]:
    """The public keys of a keyring file's text: PEM blocks, or one key (base64 or hex) per
    line; blank lines and ``#`` comments are skipped. ValueError naming ``where``."""
    blocks = _PEM_BLOCK.findall(text)
    rest = _PEM_BLOCK.sub("", text)
    lines = [line.split("#", 1)[0].strip() for line in rest.splitlines()]
    keys = []
    for item in [*blocks, *(line for line in lines if line)]:
        try:
            keys.append(_parse_public_key(item))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from exc
    if not keys:
        raise ValueError(f"{where}: holds no public key")
    return keys


def load_keyring(sources: Iterable[str]) -> Keyring:
    """The keys of ``sources``, each a public key (PEM, base64 or hex of the raw 32 bytes),
    a keyring file (:func:`keys_in_text`), or a directory of keyring files (every regular
    file in it, hidden ones skipped). ValueError when a source holds no key."""
    keys: list[Ed25519PublicKey] = []
    for source in sources:
        stripped = source.strip()
        path = Path(stripped) if len(stripped) < 1000 and "\n" not in stripped else None
        if path is not None and path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not files:
                raise ValueError(f"{path}: a keyring directory without key files")
            for file in files:
                keys += keys_in_text(file.read_text(encoding="utf-8"), str(file))
        elif path is not None and not stripped.startswith("-----") and path.is_file():
            keys += keys_in_text(path.read_text(encoding="utf-8"), str(path))
        else:
            keys.append(load_public_key(stripped))
    return Keyring.of(keys)


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


def signature_problems(
    document: dict[str, Any], trusted: Ed25519PublicKey | Keyring | None
) -> list[str]:
    """Why the signature does not hold (empty: it does). ``trusted``: a key or a keyring,
    from which the key the signature names (its key id) is taken. Without one it is checked
    against the key the document carries, which proves integrity, not who signed."""
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
    ring = Keyring.of([trusted]) if isinstance(trusted, Ed25519PublicKey) else trusted
    key = carried
    if ring is not None:
        chosen = ring.get(key_id(carried))
        if chosen is None:
            plural = "s" if len(ring.ids) > 1 else ""
            problems.append(
                f"signature: signed with key {key_id(carried)}, not the trusted key{plural} "
                f"{ring.names()}"
            )
        key = chosen or next(iter(ring.keys.values()))
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
