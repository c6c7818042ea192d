"""trust.audit.verify on in-memory logs: each kind of tampering named at its position, and
checkpoints published out of order (two API replicas) still verify."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from core.audit_append import AuditEntry, leaf_bytes
from trust.audit.checkpoint import Checkpoint, sign_checkpoint
from trust.audit.log import LogRecord, build_tree
from trust.audit.verify import verify

KEY = Ed25519PrivateKey.generate()


def records(n: int) -> list[LogRecord]:
    out = []
    for i in range(n):
        record = AuditEntry("analyst", "read", "/v1/kpis", {"i": i}, "k1", None, i, 1 + i).record()
        out.append(LogRecord(i, record, leaf_bytes(record)))
    return out


def signed(log: list[LogRecord], *sizes: int) -> list[Checkpoint]:
    tree, previous, out = build_tree(log), 0, []
    for size in sizes:
        out.append(sign_checkpoint(KEY, tree, min(previous, size), size, 1000 + size))
        previous = max(previous, size)
    return out


def renumbered(log: list[LogRecord]) -> list[LogRecord]:
    return [LogRecord(i, r.record, r.leaf) for i, r in enumerate(log)]


def test_intact_and_tampered_logs() -> None:
    log = records(12)
    checkpoints = signed(log, 5, 10)
    verdict = verify(log, checkpoints, KEY.public_key())
    assert verdict.ok and verdict.signed_size == 10 and verdict.first_bad is None
    changed = dict(log[3].record or {}, rows=99)
    cases = {
        "modified": [*log[:3], LogRecord(3, changed, leaf_bytes(changed)), *log[4:]],
        "deleted": [*log[:3], *log[4:]],
        "reordered": [*log[:3], log[4], log[3], *log[5:]],
        "inserted": [*log[:3], log[7], *log[3:]],
    }
    for kind, tampered in cases.items():
        verdict = verify(renumbered(tampered), checkpoints, KEY.public_key())
        assert not verdict.ok and verdict.first_bad == 3, kind
        assert f"({kind})" in (verdict.first_bad_text or ""), verdict.first_bad_text
    verdict = verify(log[:7], checkpoints, KEY.public_key())
    assert verdict.first_bad == 7 and "(truncated)" in (verdict.first_bad_text or "")
    # a change after the last checkpoint is not covered by any signature: not detectable
    assert verify([*log[:11], cases["modified"][3]], checkpoints, KEY.public_key()).ok


def test_checkpoints_out_of_order_still_verify() -> None:
    """Two checkpointers both saw size 3 signed; one signs 8, the other 6, published late."""
    log = records(9)
    tree = build_tree(log)
    first = sign_checkpoint(KEY, tree, 0, 3, 1)
    larger, smaller = sign_checkpoint(KEY, tree, 3, 8, 2), sign_checkpoint(KEY, tree, 3, 6, 2)
    assert verify(log, [first, larger, smaller], KEY.public_key()).ok
    assert verify(log[:7], [first, larger, smaller], KEY.public_key()).first_bad == 7


def test_another_key_fails_every_checkpoint() -> None:
    log = records(4)
    verdict = verify(log, signed(log, 4), Ed25519PrivateKey.generate().public_key())
    assert not verdict.ok and "signature does not verify" in verdict.problems[0]
