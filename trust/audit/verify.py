"""``citystream audit verify``: rebuild the tree from the log and hold it to every checkpoint.

Checks, in order of the checkpoint topic:

1. each checkpoint's Ed25519 signature, with the trusted public key its key id names
   (a :class:`~trust.statements.signing.Keyring`: several keys verify a log signed across
   a key rotation; a key id outside the ring is named), and its origin;
2. its leaf hashes (the records it added, as the checkpointer saw them) with the hashes of
   the checkpoints before it give its signed root: the checkpoint topic is intact;
3. the log (rebuilt from the audit topic) has at least ``tree_size`` records, and its
   first ``tree_size`` records give the signed root;
4. the RFC 9162 consistency proof between the previous checkpoint and this one (smaller
   tree to larger: two checkpointers may publish out of order), computed from the log,
   verifies against both signed roots: the log only grew between them.

The first bad record is the first position where the log's leaf hash differs from the
signed one (or where the log ends before the signed size); :func:`describe` tells a
modified, missing, inserted or swapped record apart by looking one position ahead.
Records after the last checkpoint are reported as not yet covered (not an error: sign a
checkpoint to cover them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from trust.audit.checkpoint import ORIGIN, Checkpoint, signature_valid
from trust.audit.log import LogRecord, build_tree
from trust.merkle import consistency_proof, root_from_hashes, verify_consistency
from trust.statements.signing import Keyring


@dataclass
class Verdict:
    """What verify found: ``problems`` empty means the log holds to every checkpoint."""

    records: int
    checkpoints: int
    signed_size: int
    problems: list[str] = field(default_factory=list)
    first_bad: int | None = None  # position (leaf index) of the first bad record
    first_bad_text: str | None = None
    signers: dict[str, int] = field(default_factory=dict)  # trusted key id: checkpoints

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(
    records: list[LogRecord],
    checkpoints: list[Checkpoint],
    trusted: Ed25519PublicKey | Keyring,
) -> Verdict:
    """Hold ``records`` (the audit topic, in order) to ``checkpoints``; see the module doc."""
    ring = Keyring.of([trusted]) if isinstance(trusted, Ed25519PublicKey) else trusted
    tree = build_tree(records)
    hashes = tree.hashes
    signed: list[bytes] = []  # leaf hashes as the checkpoints signed them
    verdict = Verdict(len(records), len(checkpoints), 0)
    previous: Checkpoint | None = None
    for cp in checkpoints:
        where = f"checkpoint at offset {cp.offset} (tree size {cp.tree_size})"
        key = ring.get(cp.key_id)
        if key is None:
            verdict.problems.append(
                f"{where}: signature does not verify with the trusted keys: it is signed by "
                f"key {cp.key_id}, not one of {ring.names()}"
            )
            continue
        verdict.signers[cp.key_id] = verdict.signers.get(cp.key_id, 0) + 1
        if cp.origin != ORIGIN or not signature_valid(cp, key):
            verdict.problems.append(
                f"{where}: signature does not verify with the trusted key {cp.key_id}"
            )
            continue
        if not _merge(signed, cp):
            verdict.problems.append(f"{where}: its leaf hashes disagree with earlier checkpoints")
        elif root_from_hashes(signed[: cp.tree_size]) != cp.root_hash:
            verdict.problems.append(f"{where}: its leaf hashes do not give its signed root")
        if cp.tree_size > len(hashes):
            verdict.problems.append(
                f"{where}: the log has only {len(hashes)} records: truncated or records deleted"
            )
        elif tree.root(cp.tree_size) != cp.root_hash:
            verdict.problems.append(f"{where}: the log's first {cp.tree_size} records give "
                                    "another root")  # fmt: skip
        if previous is not None:
            problem = _consistency(previous, cp, hashes)
            if problem:
                verdict.problems.append(f"{where}: {problem}")
        previous = cp
        verdict.signed_size = max(verdict.signed_size, cp.tree_size)
    _first_bad(verdict, records, hashes, signed)
    return verdict


def _merge(signed: list[bytes], cp: Checkpoint) -> bool:
    """Add a checkpoint's leaf hashes to ``signed``; False if they overlap differently or
    leave a gap."""
    added = cp.added_hashes()
    if cp.previous_size + len(added) != cp.tree_size or cp.previous_size > len(signed):
        return False
    for i, h in enumerate(added, start=cp.previous_size):
        if i < len(signed):
            if signed[i] != h:
                return False
        else:
            signed.append(h)
    return True


def _consistency(previous: Checkpoint, cp: Checkpoint, hashes: list[bytes]) -> str | None:
    """Why ``cp`` is not an extension of ``previous`` (None: it is)."""
    smaller, larger = sorted((previous, cp), key=lambda c: c.tree_size)
    first, second = smaller.tree_size, larger.tree_size
    if second > len(hashes):
        return None  # reported as truncation; no proof can be computed from the log
    # two checkpointers (API replicas) may publish out of order: a smaller tree after a
    # larger one is fine as long as it is a prefix of it
    proof = consistency_proof(hashes, first, second)
    if not verify_consistency(first, second, smaller.root_hash, larger.root_hash, proof):
        return f"not consistent with the checkpoint of tree size {previous.tree_size} before it"
    return None


def _first_bad(
    verdict: Verdict, records: list[LogRecord], hashes: list[bytes], signed: list[bytes]
) -> None:
    """The first position where the log and the signed leaf hashes part, or an undecodable
    record, whichever comes first."""
    candidates = [i for i, r in enumerate(records) if r.error]
    for i in range(min(len(hashes), len(signed))):
        if hashes[i] != signed[i]:
            candidates.append(i)
            break
    else:
        if len(hashes) < len(signed):
            candidates.append(len(hashes))
    if not candidates:
        return
    first = min(candidates)
    verdict.first_bad = first
    verdict.first_bad_text = describe(first, records, hashes, signed)
    if not verdict.problems:  # e.g. an undecodable record after the last checkpoint
        verdict.problems.append(f"first bad record: {verdict.first_bad_text}")


def describe(i: int, records: list[LogRecord], hashes: list[bytes], signed: list[bytes]) -> str:
    """The bad record at position ``i`` in words, with what probably happened to it."""
    if i >= len(records):
        return (
            f"position {i}: the log ends after {len(records)} records but {len(signed)} were "
            "signed (truncated)"
        )
    record = records[i]
    what = f"position {i} (offset {record.offset}, {summary(record)})"
    if record.error:
        return f"{what}: {record.error}"

    def at(seq: list[bytes], j: int) -> bytes | None:
        return seq[j] if j < len(seq) else None

    if at(hashes, i) == at(signed, i + 1) and at(hashes, i + 1) == at(signed, i):
        return f"{what}: swapped with the record after it (reordered)"
    if at(hashes, i) == at(signed, i + 1):
        return f"{what}: the signed record before it at this position is missing (deleted)"
    if at(hashes, i + 1) == at(signed, i):
        return f"{what}: not in the signed log (inserted)"
    return f"{what}: differs from the signed record (modified)"


def summary(record: LogRecord) -> str:
    """A record in one line: when, who, what."""
    r = record.record
    if r is None:
        return "undecodable"
    at = datetime.fromtimestamp(int(r["at_ms"]) / 1000, UTC).isoformat(timespec="milliseconds")
    who = r.get("key_id") or "no key"
    return f"{at} {who} ({r['role']}) {r['action']} {r['endpoint']}"
