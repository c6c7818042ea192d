"""Merkle trees as RFC 9162 (Certificate Transparency 2.0) defines them, with their proofs.

Why this RFC: its hashing is domain-separated (a leaf is ``SHA-256(0x00 || leaf)``, an
interior node ``SHA-256(0x01 || left || right)``), so a leaf can never pass for a node,
and its tree over *n* leaves splits at the largest power of two smaller than *n*, so a tree
is a prefix of every larger tree: the log only grows, and two signed roots can be shown
to be consistent (the larger log extends the smaller) with O(log n) hashes. Any RFC 6962 /
9162 implementation (Go's ``transparency-dev/merkle``, ``certificate-transparency``)
computes the same roots and accepts the same proofs; tests/unit/test_merkle.py checks the
known vectors of ``transparency-dev/merkle`` and a naive recomputation.

Sections of RFC 9162 implemented here:

- §2.1.1 Merkle Tree Hash: :func:`merkle_root` (leaf data), :func:`root_from_hashes`;
  the empty tree's hash is SHA-256 of the empty string.
- §2.1.3.1 inclusion proof (``PATH``): :func:`inclusion_proof`;
  §2.1.3.2 its verification: :func:`verify_inclusion` / :func:`root_from_inclusion`.
- §2.1.4.1 consistency proof (``PROOF`` / ``SUBPROOF``): :func:`consistency_proof`;
  §2.1.4.2 its verification: :func:`verify_consistency`.

:class:`MerkleLog` keeps a growing log's leaf hashes and its current root in O(log n) per
append (the stack of perfect subtrees), for the audit log and its verifier.

Hashes are raw 32-byte ``bytes`` throughout; callers hex-encode them for JSON.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof was asked for a leaf or size the tree does not have."""


def leaf_hash(data: bytes) -> bytes:
    """RFC 9162 leaf hash: SHA-256(0x00 || data)."""
    return hashlib.sha256(LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 9162 interior node hash: SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1): where RFC 9162 splits a tree."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(hashes: Sequence[bytes], lo: int, hi: int) -> bytes:
    """Merkle Tree Hash of the leaf hashes ``hashes[lo:hi]`` (hi > lo)."""
    n = hi - lo
    if n == 1:
        return hashes[lo]
    k = _split(n)
    return node_hash(_mth(hashes, lo, lo + k), _mth(hashes, lo + k, hi))


def root_from_hashes(hashes: Sequence[bytes]) -> bytes:
    """Merkle Tree Hash over leaves given by their leaf hashes (RFC 9162 §2.1.1)."""
    if not hashes:
        return EMPTY_ROOT
    return _mth(hashes, 0, len(hashes))


def merkle_root(leaves: Iterable[bytes]) -> bytes:
    """Merkle Tree Hash over the leaf data ``leaves`` (RFC 9162 §2.1.1), in their order."""
    return root_from_hashes([leaf_hash(d) for d in leaves])


def inclusion_proof(hashes: Sequence[bytes], index: int, size: int | None = None) -> list[bytes]:
    """The audit path of leaf ``index`` in the tree of the first ``size`` leaf hashes.

    RFC 9162 §2.1.3.1 ``PATH(m, D[n])``, listed from the leaf's sibling up to the root's
    child. ``size`` defaults to ``len(hashes)``.
    """
    n = len(hashes) if size is None else size
    if not 0 <= index < n <= len(hashes):
        raise ProofError(f"no leaf {index} in a tree of size {n} (log size {len(hashes)})")
    path: list[bytes] = []
    lo, hi, m = 0, n, index
    # Walk down from the root, collecting the sibling subtree at each level; reversed at the
    # end so the path runs leaf to root as the RFC lists it.
    while hi - lo > 1:
        k = _split(hi - lo)
        if m < k:
            path.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            path.append(_mth(hashes, lo, lo + k))
            lo, m = lo + k, m - k
    path.reverse()
    return path


def consistency_proof(
    hashes: Sequence[bytes], first: int, second: int | None = None
) -> list[bytes]:
    """The proof that the tree of size ``first`` is a prefix of the tree of size ``second``.

    RFC 9162 §2.1.4.1 ``PROOF(m, D[n])`` for 0 < first < second; empty when first == second
    or first == 0 (every tree extends the empty one). ``second`` defaults to ``len(hashes)``.
    """
    n = len(hashes) if second is None else second
    if not 0 <= first <= n <= len(hashes):
        raise ProofError(f"no consistency proof from size {first} to {n} (log size {len(hashes)})")
    if first in (0, n):
        return []
    proof: list[bytes] = []
    lo, hi, m, whole = 0, n, first, True
    # SUBPROOF(m, D[lo:hi], whole), unrolled; the collected hashes are reversed at the end
    # because the recursion appends each level's sibling after the deeper part of the proof.
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            proof.append(_mth(hashes, lo + k, hi))
            hi = lo + k
        else:
            proof.append(_mth(hashes, lo, lo + k))
            lo, m, whole = lo + k, m - k, False
    if not whole:
        proof.append(_mth(hashes, lo, hi))
    proof.reverse()
    return proof


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 §2.1.3.2 steps 1-4).

    Raises :class:`ProofError` when the proof has the wrong length for (index, size).
    """
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of size {size}")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> bool:
    """Whether ``proof`` puts leaf hash ``leaf`` at ``index`` in the tree (size, root)."""
    try:
        return root_from_inclusion(index, size, leaf, proof) == root
    except ProofError:
        return False


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> bool:
    """Whether ``proof`` shows the tree (first, first_root) is a prefix of (second, second_root).

    RFC 9162 §2.1.4.2. Its algorithm covers 0 < first < second; the edge cases follow the
    RFC's definitions: equal sizes need equal roots and an empty proof, and the empty tree
    is a prefix of every tree (empty proof).
    """
    if not 0 <= first <= second:
        return False
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof
    if not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:  # an exact power of two: the first tree is a subtree
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == first_root and sr == second_root


class MerkleLog:
    """An append-only log's leaf hashes, its current root kept up to date as it grows.

    The stack holds the roots of the perfect subtrees the log decomposes into (sizes are
    the set bits of the log size, largest first), so an append costs amortised O(1) hashes
    and :meth:`root` O(log n); roots of earlier sizes and proofs recompute from the hashes.
    """

    def __init__(self) -> None:
        self.hashes: list[bytes] = []
        self._stack: list[tuple[int, bytes]] = []  # (subtree size, subtree hash)

    def __len__(self) -> int:
        return len(self.hashes)

    def append(self, data: bytes) -> int:
        """Add a leaf by its data; returns its index."""
        return self.append_hash(leaf_hash(data))

    def append_hash(self, h: bytes) -> int:
        """Add a leaf by its leaf hash; returns its index."""
        self.hashes.append(h)
        size, top = 1, h
        while self._stack and self._stack[-1][0] == size:
            _, left = self._stack.pop()
            size, top = size * 2, node_hash(left, top)
        self._stack.append((size, top))
        return len(self.hashes) - 1

    def root(self, size: int | None = None) -> bytes:
        """The Merkle Tree Hash of the first ``size`` leaves (default: all of them)."""
        if size is None or size == len(self.hashes):
            if not self._stack:
                return EMPTY_ROOT
            r = self._stack[-1][1]
            for _, h in reversed(self._stack[:-1]):
                r = node_hash(h, r)
            return r
        if not 0 <= size <= len(self.hashes):
            raise ProofError(f"no tree of size {size} in a log of {len(self.hashes)} leaves")
        return root_from_hashes(self.hashes[:size])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """RFC 9162 inclusion proof of leaf ``index`` in the tree of ``size`` leaves."""
        return inclusion_proof(self.hashes, index, len(self.hashes) if size is None else size)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        """RFC 9162 consistency proof from size ``first`` to ``second`` (default: all)."""
        return consistency_proof(self.hashes, first, len(self.hashes) if second is None else second)
