"""trust.merkle against RFC 9162's definitions, known vectors and a naive recomputation.

The vectors (leaves, roots of sizes 1..8, inclusion and consistency proofs) are those of
Go's transparency-dev/merkle (proof/verify_test.go), the RFC 6962 reference data every CT
implementation checks. The naive recomputation below follows the RFC's recursive
definitions literally (list slicing, no shared code with trust.merkle) for every size up
to 40 and every index / pair of sizes.
"""

from __future__ import annotations

import hashlib

import pytest

from trust import merkle

VECTOR_LEAVES = [
    bytes.fromhex(h)
    for h in (
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    )
]
VECTOR_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (leaf index, tree size, proof)
VECTOR_INCLUSION = [
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (0, 1, []),
]
# (first size, second size, proof)
VECTOR_CONSISTENCY = [
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
    (
        6,
        7,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
]


# --- the RFC's recursive definitions, written out literally -------------------------------


def naive_mth(data: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1 over leaf data."""
    n = len(data)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + data[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + naive_mth(data[:k]) + naive_mth(data[k:])).digest()


def naive_path(m: int, data: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of RFC 9162 §2.1.3.1."""
    n = len(data)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*naive_path(m, data[:k]), naive_mth(data[k:])]
    return [*naive_path(m - k, data[k:]), naive_mth(data[:k])]


def naive_subproof(m: int, data: list[bytes], whole: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of RFC 9162 §2.1.4.1."""
    n = len(data)
    if m == n:
        return [] if whole else [naive_mth(data)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*naive_subproof(m, data[:k], whole), naive_mth(data[k:])]
    return [*naive_subproof(m - k, data[k:], False), naive_mth(data[:k])]


def data_leaves(n: int) -> list[bytes]:
    return [f"record {i}".encode() for i in range(n)]


# --- known vectors -----------------------------------------------------------------------


def test_hashes_are_domain_separated() -> None:
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()
    assert merkle.node_hash(b"a", b"b") == hashlib.sha256(b"\x01ab").digest()
    assert merkle.merkle_root([]).hex() == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


@pytest.mark.parametrize("size", range(1, 9))
def test_vector_roots(size: int) -> None:
    assert merkle.merkle_root(VECTOR_LEAVES[:size]).hex() == VECTOR_ROOTS[size - 1]
    log = merkle.MerkleLog()
    for leaf in VECTOR_LEAVES[:size]:
        log.append(leaf)
    assert log.root().hex() == VECTOR_ROOTS[size - 1]


@pytest.mark.parametrize(("index", "size", "proof"), VECTOR_INCLUSION)
def test_vector_inclusion(index: int, size: int, proof: list[str]) -> None:
    hashes = [merkle.leaf_hash(d) for d in VECTOR_LEAVES]
    assert [p.hex() for p in merkle.inclusion_proof(hashes, index, size)] == proof
    root = bytes.fromhex(VECTOR_ROOTS[size - 1])
    leaf = hashes[index]
    raw = [bytes.fromhex(p) for p in proof]
    assert merkle.verify_inclusion(index, size, leaf, raw, root)
    for bad_index, bad_size in ((index + 1, size), (index ^ 2, size), (index, size * 2)):
        if (bad_index, bad_size) != (index, size):
            assert not merkle.verify_inclusion(bad_index, bad_size, leaf, raw, root)
    assert not merkle.verify_inclusion(index, size, b"wrong leaf", raw, root)
    assert not merkle.verify_inclusion(index, size, leaf, [*raw, root], root)
    assert not merkle.verify_inclusion(index, size, leaf, [root, *raw], root)
    if raw:
        assert not merkle.verify_inclusion(index, size, leaf, raw[:-1], root)
        flipped = [bytes([raw[0][0] ^ 8]) + raw[0][1:], *raw[1:]]
        assert not merkle.verify_inclusion(index, size, leaf, flipped, root)


@pytest.mark.parametrize(("first", "second", "proof"), VECTOR_CONSISTENCY)
def test_vector_consistency(first: int, second: int, proof: list[str]) -> None:
    hashes = [merkle.leaf_hash(d) for d in VECTOR_LEAVES]
    assert [p.hex() for p in merkle.consistency_proof(hashes, first, second)] == proof
    r1, r2 = (bytes.fromhex(VECTOR_ROOTS[s - 1]) for s in (first, second))
    raw = [bytes.fromhex(p) for p in proof]
    assert merkle.verify_consistency(first, second, r1, r2, raw)
    if not raw:
        return
    assert not merkle.verify_consistency(first, second, r2, r1, raw)  # swapped roots
    assert not merkle.verify_consistency(first - 1, second, r1, r2, raw)
    assert not merkle.verify_consistency(first + 1, second, r1, r2, raw)
    assert not merkle.verify_consistency(first, second * 2, r1, r2, raw)
    assert not merkle.verify_consistency(first, second, r1, r2, [])
    assert not merkle.verify_consistency(first, second, r1, r2, raw[:-1])
    assert not merkle.verify_consistency(first, second, r1, r2, [*raw, r1])
    assert not merkle.verify_consistency(first, second, r1, r2, [raw[0], *raw])
    for i in range(len(raw)):
        bad = list(raw)
        bad[i] = bytes([bad[i][0] ^ 16]) + bad[i][1:]
        assert not merkle.verify_consistency(first, second, r1, r2, bad)


def test_consistency_edge_cases() -> None:
    some, other = merkle.leaf_hash(b"a"), merkle.leaf_hash(b"b")
    assert merkle.verify_consistency(0, 0, some, some, [])
    assert merkle.verify_consistency(0, 5, some, other, [])
    assert not merkle.verify_consistency(0, 5, some, other, [some])
    assert not merkle.verify_consistency(1, 1, some, other, [])
    assert not merkle.verify_consistency(2, 1, some, other, [some])


# --- against the naive definitions, every index and pair of sizes --------------------------


@pytest.mark.parametrize("n", range(0, 41))
def test_roots_and_proofs_match_the_definitions(n: int) -> None:
    data = data_leaves(n)
    hashes = [merkle.leaf_hash(d) for d in data]
    log = merkle.MerkleLog()
    roots = [merkle.EMPTY_ROOT]
    for d in data:
        log.append(d)
        roots.append(log.root())
    assert merkle.merkle_root(data) == naive_mth(data) == log.root()
    for size in range(n + 1):
        assert roots[size] == naive_mth(data[:size]) == log.root(size)
    root = naive_mth(data)
    for m in range(n):
        path = merkle.inclusion_proof(hashes, m)
        assert path == naive_path(m, data) == log.inclusion_proof(m)
        assert merkle.verify_inclusion(m, n, hashes[m], path, root)
        for other in range(n):
            if other != m:
                assert not merkle.verify_inclusion(other, n, hashes[m], path, root)
    for first in range(1, n + 1):
        proof = merkle.consistency_proof(hashes, first, n)
        expected = naive_subproof(first, data, True) if first < n else []
        assert proof == expected == log.consistency_proof(first)
        assert merkle.verify_consistency(first, n, roots[first], root, proof)
        if first < n:
            assert not merkle.verify_consistency(first, n, roots[first - 1], root, proof)


def test_a_changed_leaf_changes_the_root_and_fails_its_proof() -> None:
    data = data_leaves(13)
    hashes = [merkle.leaf_hash(d) for d in data]
    root = merkle.root_from_hashes(hashes)
    proof = merkle.inclusion_proof(hashes, 7)
    assert not merkle.verify_inclusion(7, 13, merkle.leaf_hash(b"record 7 altered"), proof, root)
    tampered = [*data[:7], b"record 7 altered", *data[8:]]
    assert merkle.merkle_root(tampered) != root
    # A rewritten history is not an extension of the signed smaller tree.
    old_root = merkle.root_from_hashes(hashes[:9])
    new_hashes = [merkle.leaf_hash(d) for d in tampered]
    cproof = merkle.consistency_proof(new_hashes, 9, 13)
    assert not merkle.verify_consistency(
        9, 13, old_root, merkle.root_from_hashes(new_hashes), cproof
    )


def test_proofs_outside_the_tree_are_refused() -> None:
    hashes = [merkle.leaf_hash(d) for d in data_leaves(4)]
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(hashes, 4)
    with pytest.raises(merkle.ProofError):
        merkle.inclusion_proof(hashes, 0, 5)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(hashes, 3, 5)
    with pytest.raises(merkle.ProofError):
        merkle.consistency_proof(hashes, 3, 2)
    assert not merkle.verify_inclusion(4, 4, hashes[0], [], hashes[0])
