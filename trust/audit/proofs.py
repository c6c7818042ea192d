"""Inclusion and consistency proofs over the audit log, as ``GET /v1/audit/proof`` serves them.

:class:`LogView` keeps the log's leaf hashes in memory and reads only the records appended
since its last look (the topic has one partition, offsets are leaf indexes), so a proof
costs one short Kafka read and O(n) hashing of subtrees, not a re-read of the log.
"""

from __future__ import annotations

import threading
from typing import Any

from core.settings import Settings
from trust.audit.checkpoint import Checkpoint, read_checkpoints
from trust.audit.log import read_log
from trust.merkle import MerkleLog, ProofError, leaf_hash


class LogView:
    """The audit log's Merkle tree, brought up to date on demand."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.tree = MerkleLog()
        self.records: list[dict[str, Any] | None] = []  # by leaf index (None: undecodable)
        self._next_offset = 0
        self._lock = threading.Lock()

    def refresh(self) -> MerkleLog:
        """Read the records appended since the last refresh; returns the tree."""
        with self._lock:
            for record in read_log(self.settings, start=self._next_offset):
                self.tree.append_hash(leaf_hash(record.leaf))
                self.records.append(record.record)
                self._next_offset = record.offset + 1
            return self.tree

    def checkpoints(self) -> list[Checkpoint]:
        return read_checkpoints(self.settings)


def inclusion(tree: MerkleLog, leaf: int, tree_size: int) -> dict[str, Any]:
    """The RFC 9162 inclusion proof of leaf ``leaf`` in the tree of ``tree_size`` records."""
    if tree_size > len(tree):
        raise ProofError(f"tree_size {tree_size} exceeds the log's {len(tree)} records")
    path = tree.inclusion_proof(leaf, tree_size)
    return {
        "leaf_index": leaf,
        "tree_size": tree_size,
        "leaf_hash": tree.hashes[leaf].hex(),
        "root_hash": tree.root(tree_size).hex(),
        "audit_path": [h.hex() for h in path],
    }


def consistency(tree: MerkleLog, first: int, second: int) -> dict[str, Any]:
    """The RFC 9162 consistency proof from the tree of ``first`` to that of ``second``."""
    if first > second:
        raise ProofError(f"first {first} is larger than second {second}")
    if second > len(tree):
        raise ProofError(f"second {second} exceeds the log's {len(tree)} records")
    proof = tree.consistency_proof(first, second)
    return {
        "first": first,
        "second": second,
        "first_root": tree.root(first).hex(),
        "second_root": tree.root(second).hex(),
        "consistency_path": [h.hex() for h in proof],
    }
