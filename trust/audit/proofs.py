"""Inclusion and consistency proofs over the audit log, as ``GET /v1/audit/proof`` serves them.

The tree comes from a :class:`trust.audit.log.LogView`, which reads only the records
appended since its last look, so a proof costs one short Kafka read and O(n) hashing of
subtrees, not a re-read of the log.
"""

from __future__ import annotations

from typing import Any

from trust.merkle import MerkleLog, ProofError


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
