"""Per-subject encryption keys for crypto-shredding, kept apart from Kafka and ClickHouse.

A Kafka log cannot delete one record (a topic deletes whole segments at retention), so what
identifies a person in a raw event (the raw 311 case id, needed to answer that person's
access request) is encrypted with a key of that subject alone (AES-256-GCM, the subject's
pseudonym as associated data). Erasure destroys the key: every copy of the events (topic
replicas, consumers' caches, backups) becomes unreadable at once.

Where the keys live: a directory (``privacy_subject_key_dir``, default
``<data_dir>/privacy/subject-keys``) of 256 shard files, ``<xx>.keys``, one line per subject
(``<pseudonym> <base64 key>``), chosen by the pseudonym's first two hex digits. Why not a
compacted Kafka topic: compaction removes an old value only when the log cleaner gets to
a segment that is no longer active, which can take days and is not guaranteed by any
deadline, and until then every replica and any consumer that read it keeps the key. A
file can be rewritten without the key, fsync'd and renamed over the old one: the key is
gone from the store when ``destroy`` returns. (Put the directory on an encrypted volume
and out of backups, or a deleted block may survive on disk; with several hosts, on a
shared volume.)

New keys are appended under a per-shard lock (``<xx>.lock``, flock) and fsync'd by
``flush``, which a source calls before it flushes the events encrypted with them: a key
is durable before its ciphertext. ``destroy`` rewrites a shard under the same lock.
"""

from __future__ import annotations

import base64
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

TOKEN_PREFIX = "v1."
NONCE_BYTES = 12


class KeyDestroyed(LookupError):
    """The subject's key is not in the store (erased, or never made here)."""


class SubjectKeyStore:
    """Keys by subject (a pseudonym); no I/O until first used."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: dict[str, dict[str, bytes]] = {}  # shard -> subject -> key
        self._pending: dict[str, dict[str, bytes]] = {}  # shard -> new keys not yet written

    # --- encryption ------------------------------------------------------------------

    def encrypt(self, subject: str, plaintext: str) -> str:
        """``plaintext`` under ``subject``'s key (made when it has none yet)."""
        cipher = self._cipher(subject, create=True)
        nonce = os.urandom(NONCE_BYTES)
        sealed = cipher.encrypt(nonce, plaintext.encode(), subject.encode())
        return TOKEN_PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()

    def decrypt(self, subject: str, token: str) -> str:
        """The plaintext; KeyDestroyed when the key is gone, ValueError when tampered."""
        if not token.startswith(TOKEN_PREFIX):
            raise ValueError("not a subject token")
        raw = base64.urlsafe_b64decode(token[len(TOKEN_PREFIX) :])
        cipher = self._cipher(subject, create=False)
        try:
            return cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], subject.encode()).decode()
        except InvalidTag as exc:
            raise ValueError("the token was not made with this subject's key") from exc

    def has(self, subject: str) -> bool:
        shard = _shard(subject)
        return subject in self._loaded(shard) or subject in self._pending.get(shard, {})

    # --- durability ------------------------------------------------------------------

    def flush(self) -> int:
        """Append every new key to its shard and fsync it; returns how many were written."""
        written = 0
        for shard, keys in list(self._pending.items()):
            if not keys:
                continue
            with self._locked(shard):
                path = self._path(shard)
                lines = "".join(f"{s} {base64.b64encode(k).decode()}\n" for s, k in keys.items())
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                try:
                    os.write(fd, lines.encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
            self._loaded(shard).update(keys)
            written += len(keys)
            del self._pending[shard]
        return written

    def destroy(self, subject: str) -> bool:
        """Remove ``subject``'s key from the store, durably; False if it had none."""
        shard = _shard(subject)
        self._pending.get(shard, {}).pop(subject, None)
        with self._locked(shard):
            path = self._path(shard)
            lines = path.read_text().splitlines() if path.exists() else []
            kept = [line for line in lines if line.split(" ", 1)[0] != subject]
            found = len(kept) != len(lines)
            if found:
                temp = path.with_suffix(".tmp")
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                try:
                    os.write(fd, "".join(f"{line}\n" for line in kept).encode())
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.replace(temp, path)
                _fsync_dir(self.directory)
        self._keys.pop(shard, None)  # re-read: another process may have appended
        return found

    # --- internals -------------------------------------------------------------------

    def _cipher(self, subject: str, create: bool) -> AESGCM:
        shard = _shard(subject)
        key = self._pending.get(shard, {}).get(subject) or self._loaded(shard).get(subject)
        if key is None:
            if not create:
                raise KeyDestroyed(f"no key for subject {subject}")
            key = AESGCM.generate_key(bit_length=256)
            self._pending.setdefault(shard, {})[subject] = key
        return AESGCM(key)

    def _loaded(self, shard: str) -> dict[str, bytes]:
        keys = self._keys.get(shard)
        if keys is None:
            keys = self._keys[shard] = {}
            path = self._path(shard)
            if path.exists():
                for line in path.read_text().splitlines():
                    subject, _, key = line.partition(" ")
                    keys.setdefault(subject, base64.b64decode(key))  # the first one wins
        return keys

    def _path(self, shard: str) -> Path:
        return self.directory / f"{shard}.keys"

    @contextmanager
    def _locked(self, shard: str) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.directory / f"{shard}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _shard(subject: str) -> str:
    """The first two hex digits of the pseudonym's digest (``k1:ab…`` → ``ab``)."""
    head = subject.rpartition(":")[2][:2].lower()
    return head if len(head) == 2 and all(c in "0123456789abcdef" for c in head) else "00"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
