"""Signed checkpoints of the audit log: tree size, root hash, time, Ed25519.

A checkpoint commits the operator to the first ``tree_size`` records: the signature covers
the canonical JSON (``trust.statements.signing.canonical``) of

    {"origin": "citystream-audit-log", "tree_size": N, "root_hash": "<hex>", "at_ms": T}

and anyone holding the public key checks it, and the consistency of two checkpoints
(RFC 9162 §2.1.4), without trusting the operator. Checkpoints go to their own topic
(``city.audit.checkpoints.v1``, one partition, kept forever), each with the leaf hashes
of the records it adds (``leaf_hashes``: authenticated by its signed root), so that
``verify`` can name the first record that changed, not only the first checkpoint that no
longer matches. A checkpoint adds at most :data:`MAX_LEAVES` records (a Kafka message
stays well under 1 MB); a larger step is signed as several checkpoints.

The key: the ``audit_signing_key`` secret, else the PEM file ``audit_key_file`` (default
``data_dir/keys/audit-ed25519.pem``, created by the first checkpoint). The checkpointer
refuses to sign a log that no longer matches its last checkpoint.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.audit_append import CHECKPOINT_TOPIC
from core.kafka import Publisher
from core.settings import Settings
from schemas.catalog import CORE_TOPICS, load_schema
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde
from trust.audit.log import LogView, build_tree, decoder, read_log, read_values
from trust.merkle import HASH_SIZE, MerkleLog
from trust.statements.signing import (
    Keyring,
    canonical,
    key_id,
    load_keyring,
    load_private_key,
    public_key_text,
    signing_key,
)

ORIGIN = "citystream-audit-log"
MAX_LEAVES = 16_384  # 512 KiB of leaf hashes per checkpoint message
DEFAULT_KEY_FILE = Path("keys") / "audit-ed25519.pem"


class AuditLogError(RuntimeError):
    """The log cannot be checkpointed: it no longer matches what was signed."""


@dataclass(frozen=True)
class Checkpoint:
    """One signed checkpoint (``offset``: its place in the checkpoint topic, -1 unsent)."""

    tree_size: int
    root_hash: bytes
    at_ms: int
    previous_size: int
    leaf_hashes: bytes
    key_id: str
    signature: bytes
    origin: str = ORIGIN
    offset: int = -1

    def signed_bytes(self) -> bytes:
        return signed_body(self.origin, self.tree_size, self.root_hash, self.at_ms)

    def added_hashes(self) -> list[bytes]:
        """The leaf hashes of records previous_size .. tree_size-1."""
        raw = self.leaf_hashes
        return [raw[i : i + HASH_SIZE] for i in range(0, len(raw), HASH_SIZE)]

    def record(self) -> dict[str, Any]:
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash,
            "at_ms": self.at_ms,
            "previous_size": self.previous_size,
            "leaf_hashes": self.leaf_hashes,
            "key_id": self.key_id,
            "signature": self.signature,
        }

    @classmethod
    def from_record(cls, record: dict[str, Any], offset: int) -> Checkpoint:
        return cls(
            tree_size=int(record["tree_size"]),
            root_hash=bytes(record["root_hash"]),
            at_ms=int(record["at_ms"]),
            previous_size=int(record["previous_size"]),
            leaf_hashes=bytes(record["leaf_hashes"]),
            key_id=str(record["key_id"]),
            signature=bytes(record["signature"]),
            origin=str(record["origin"]),
            offset=offset,
        )

    def public(self) -> dict[str, Any]:
        """What ``GET /v1/audit/checkpoint`` publishes (no leaf hashes)."""
        return {
            "origin": self.origin,
            "tree_size": self.tree_size,
            "root_hash": self.root_hash.hex(),
            "at_ms": self.at_ms,
            "time": datetime.fromtimestamp(self.at_ms / 1000, UTC).isoformat(),
            "key_id": self.key_id,
            "algorithm": "Ed25519",
            "signature": self.signature.hex(),
            "signed": self.signed_bytes().decode(),
        }


def signed_body(origin: str, tree_size: int, root_hash: bytes, at_ms: int) -> bytes:
    """The bytes a checkpoint's signature covers."""
    return canonical(
        {"origin": origin, "tree_size": tree_size, "root_hash": root_hash.hex(), "at_ms": at_ms}
    )


def sign_checkpoint(
    key: Ed25519PrivateKey, tree: MerkleLog, previous_size: int, tree_size: int, at_ms: int
) -> Checkpoint:
    root = tree.root(tree_size)
    added = b"".join(tree.hashes[previous_size:tree_size])
    return Checkpoint(
        tree_size=tree_size,
        root_hash=root,
        at_ms=at_ms,
        previous_size=previous_size,
        leaf_hashes=added,
        key_id=key_id(key.public_key()),
        signature=key.sign(signed_body(ORIGIN, tree_size, root, at_ms)),
    )


def signature_valid(checkpoint: Checkpoint, trusted: Ed25519PublicKey) -> bool:
    try:
        trusted.verify(checkpoint.signature, checkpoint.signed_bytes())
    except InvalidSignature:
        return False
    return checkpoint.key_id == key_id(trusted)


# --- keys -----------------------------------------------------------------------------------


def key_file(settings: Settings) -> Path:
    return settings.audit_key_file or settings.data_dir / DEFAULT_KEY_FILE


def audit_signing_key(settings: Settings, create: bool = False) -> Ed25519PrivateKey:
    """The checkpoint signing key: the secret setting, else the key file (``create``: a new
    one is written, mode 0600, when the file does not exist)."""
    if settings.audit_signing_key is not None:
        pem = settings.audit_signing_key.get_secret_value().encode()
        return load_private_key(pem, "audit_signing_key")
    path = key_file(settings)
    if not path.exists() and not create:
        raise ValueError(
            f"no audit signing key: set audit_signing_key, or run `citystream audit "
            f"checkpoint` once to create {path}"
        )
    return signing_key(path, create)


def trusted_keys(settings: Settings, given: list[str] | None = None) -> Keyring:
    """The public keys checkpoints are checked with, each checkpoint by the key its key id
    names: ``given`` (--public-key, repeatable: keys, keyring files or directories), else
    the ``audit_public_key`` setting (the same forms), else the signing key's own (an
    operator's self-check)."""
    sources = given or ([settings.audit_public_key] if settings.audit_public_key else [])
    if sources:
        return load_keyring(sources)
    return Keyring.of([audit_signing_key(settings).public_key()])


def trusted_key(
    settings: Settings, given: str | None = None, kid: str | None = None
) -> Ed25519PublicKey:
    """One trusted key (what the API publishes beside a checkpoint): the one with key id
    ``kid`` if given and trusted, else the only one, else the signing key's own when it is
    trusted (the current key after a rotation), else the last one listed."""
    ring = trusted_keys(settings, [given] if given else None)
    if kid is not None and (found := ring.get(kid)) is not None:
        return found
    keys = list(ring.keys.values())
    if len(keys) > 1:
        try:
            own = audit_signing_key(settings).public_key()
        except ValueError:
            own = None
        if own is not None and ring.get(key_id(own)) is not None:
            return own
    return keys[-1]


def public_key_info(key: Ed25519PublicKey) -> dict[str, str]:
    return {"algorithm": "Ed25519", "key_id": key_id(key), "public_key": public_key_text(key)}


# --- the checkpoint topic -------------------------------------------------------------------


def read_checkpoints(settings: Settings, timeout: float = 60.0) -> list[Checkpoint]:
    """Every checkpoint of the topic (``settings``' prefix), in order."""
    serde = decoder(settings, CHECKPOINT_TOPIC)
    topic = settings.topic(CHECKPOINT_TOPIC)
    return [
        Checkpoint.from_record(serde.decode(value), offset)
        for offset, value in read_values(settings, topic, timeout)
    ]


def publish(settings: Settings, checkpoints: list[Checkpoint]) -> list[Checkpoint]:
    """Append ``checkpoints`` to the checkpoint topic and wait until Kafka has them."""
    if not checkpoints:
        return []
    topic = settings.topic(CHECKPOINT_TOPIC)
    registry = SchemaRegistry(settings.registry_config())
    schema = load_schema(CORE_TOPICS[CHECKPOINT_TOPIC].schema_file)
    serde = AvroSerde(schema, registry.register(topic, schema), registry.writer_schema)
    publisher = Publisher.create(settings, **{"message.max.bytes": 2_000_000})
    for checkpoint in checkpoints:
        publisher.send(topic, None, serde.encode(checkpoint.record()), partition=0)
    publisher.flush(settings.audit_write_timeout_s * 3)
    return checkpoints


def checkpoint_now(
    settings: Settings,
    key: Ed25519PrivateKey | None = None,
    at_ms: int | None = None,
    view: LogView | None = None,
) -> list[Checkpoint]:
    """Sign and publish checkpoints up to the log's current size (none if it did not grow).

    ``view``: a tree kept from earlier calls (the interval checkpointer), so only new records
    are read; without it the whole log is read. Refuses (:class:`AuditLogError`) when the
    log is shorter than, or differs from, what the last checkpoint signed: an operator must
    not sign over a tampered log.
    """
    key = key or audit_signing_key(settings, create=True)
    tree = view.refresh() if view is not None else build_tree(read_log(settings))
    previous = read_checkpoints(settings)
    done = previous[-1].tree_size if previous else 0
    if done > len(tree):
        raise AuditLogError(
            f"the log has {len(tree)} records but checkpoint {previous[-1].offset} signed "
            f"{done}: records were removed; run citystream audit verify"
        )
    if previous and tree.root(done) != previous[-1].root_hash:
        raise AuditLogError(
            f"the log's first {done} records no longer give the root of checkpoint "
            f"{previous[-1].offset}: run citystream audit verify"
        )
    now = at_ms if at_ms is not None else int(time.time() * 1000)
    made = []
    while done < len(tree):
        size = min(len(tree), done + MAX_LEAVES)
        made.append(sign_checkpoint(key, tree, done, size, now))
        done = size
    return publish(settings, made)


class CheckpointTimer:
    """Signs a checkpoint every ``audit_checkpoint_interval_s`` in a background thread
    (``citystream serve``); a failure is logged and retried at the next tick."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.interval = settings.audit_checkpoint_interval_s
        self.view = LogView(settings)  # read incrementally, tick after tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self) -> None:
        if self.interval <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._run, name="citystream-audit-checkpoints", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        import logging

        log = logging.getLogger(__name__)
        while not self._stop.wait(self.interval):
            try:
                made = checkpoint_now(self.settings, view=self.view)
            except Exception:
                self.failures += 1
                log.exception("audit checkpoint failed; retrying in %.0fs", self.interval)
                continue
            if made:
                log.info("audit checkpoint: tree size %d", made[-1].tree_size)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
