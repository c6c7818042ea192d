"""The edge's privacy primitives (core/privacy/): keyed pseudonyms and their rotation, the
per-subject key store (crypto-shredding), the coarse grid, minimal dead letters and the
opt-out matching, on real files and real cryptography."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from core.privacy.minimise import DROPPED, coarse_cell, geohash, minimal_payload
from core.privacy.optout import OptOut, OptOuts
from core.privacy.pseudonym import Pseudonymiser, dev_keys, parse_keys
from core.privacy.subject_keys import KeyDestroyed, SubjectKeyStore

K1 = "k1=" + "a" * 32
K2 = "k2=" + "b" * 32


# --- pseudonyms ----------------------------------------------------------------------


def test_same_key_same_pseudonym_and_the_key_id_is_carried() -> None:
    one, two = Pseudonymiser(parse_keys(K1)), Pseudonymiser(parse_keys(K1))
    p = one.pseudonym("request_id", "101001240734")
    assert p == two.pseudonym("request_id", "101001240734")  # another process, same key
    assert p.startswith("k1:") and len(p) == 3 + 32 and "101001240734" not in p
    assert p != one.pseudonym("request_id", "101001240735")
    assert p != one.pseudonym("reporter", "101001240734")  # fields do not link


def test_a_rotated_key_gives_a_new_pseudonym_and_still_recognises_the_old() -> None:
    old = Pseudonymiser(parse_keys(K1))
    rotated = Pseudonymiser(parse_keys(f"{K2},{K1}"))
    before = old.pseudonym("request_id", "42")
    after = rotated.pseudonym("request_id", "42")
    assert after.startswith("k2:") and after != before
    assert rotated.every("request_id", "42") == (after, before)
    assert rotated.under("k1", "request_id", "42") == before


@pytest.mark.parametrize("text", ["", "k1", "k1=short", "bad id=" + "x" * 32, f"{K1},{K1}"])
def test_bad_key_settings_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_keys(text)


def test_a_key_never_shows_in_its_repr() -> None:
    (key,) = parse_keys(K1)
    assert "a" * 16 not in repr(key) and "k1" in repr(key)


def test_the_dev_key_is_made_once_private_and_reused(tmp_path: Path) -> None:
    first = dev_keys(tmp_path)
    assert dev_keys(tmp_path) == first
    mode = stat.S_IMODE(os.stat(tmp_path / "privacy" / "pseudonym.key").st_mode)
    assert mode == 0o600


# --- per-subject keys ----------------------------------------------------------------


def test_a_subject_token_reads_back_until_its_key_is_destroyed(tmp_path: Path) -> None:
    store = SubjectKeyStore(tmp_path / "keys")
    token = store.encrypt("k1:ab12", "101001240734")
    assert "101001240734" not in token
    other = store.encrypt("k1:cd34", "999")
    assert store.flush() == 2
    again = SubjectKeyStore(tmp_path / "keys")  # another process reads the store
    assert again.decrypt("k1:ab12", token) == "101001240734"
    assert again.destroy("k1:ab12") is True
    assert again.destroy("k1:ab12") is False
    for reader in (again, SubjectKeyStore(tmp_path / "keys")):
        with pytest.raises(KeyDestroyed):
            reader.decrypt("k1:ab12", token)
        assert reader.decrypt("k1:cd34", other) == "999"  # the other subject is untouched
    assert b"k1:ab12" not in (tmp_path / "keys" / "ab.keys").read_bytes()


def test_a_token_is_bound_to_its_subject(tmp_path: Path) -> None:
    store = SubjectKeyStore(tmp_path)
    token = store.encrypt("k1:ab12", "1")
    store.encrypt("k1:ab13", "2")
    with pytest.raises(ValueError):
        store.decrypt("k1:ab13", token)


def test_an_unflushed_key_is_dropped_by_destroy(tmp_path: Path) -> None:
    store = SubjectKeyStore(tmp_path)
    token = store.encrypt("k1:ee00", "1")
    store.destroy("k1:ee00")
    store.flush()
    with pytest.raises(KeyDestroyed):
        SubjectKeyStore(tmp_path).decrypt("k1:ee00", token)


# --- the grid and minimal dead letters -----------------------------------------------


def test_geohash_matches_the_published_examples() -> None:
    assert geohash(57.64911, 10.40744, 11) == "u4pruydqqvj"  # geohash.org's example
    assert geohash(42.3574, -71.0648) == geohash(42.3574, -71.0648, 7)[:6] == "drt2yy"
    assert coarse_cell(42.3594, -71.0587, [(42.3594, -71.0587)]) is None  # unlocated
    assert coarse_cell(None, -71.0) is None


def test_a_dead_letter_payload_keeps_names_and_only_explaining_values() -> None:
    entity = {"id": "urn:ngsi-ld:Traffic:1", "type": "TrafficFlowObserved",
              "address": {"type": "Property", "value": {"streetAddress": "33 Beacon St"}},
              "name": {"type": "Property", "value": "Jane's house"},
              "intensity": {"type": "Property", "value": -3}}  # fmt: skip
    out = minimal_payload(json.dumps(entity).encode(), keep={"intensity", "type"})
    text = out.decode()
    assert "Beacon" not in text and "Jane" not in text and "urn:ngsi-ld" not in text
    shape = json.loads(out)
    assert shape["intensity"]["value"] == -3 and shape["address"]["value"] == {
        "streetAddress": DROPPED
    }
    raw = minimal_payload(b"not json, 33 Beacon St", keep=())
    assert b"Beacon" not in raw and raw.startswith(b"<22 bytes not kept: not JSON")
    deep = minimal_payload(b"[" * 5000 + b"]" * 5000, keep=())
    assert deep.startswith(b"<10000 bytes not kept")
    assert minimal_payload(b'{"a": 1}', keep={"a"}, max_bytes=4).startswith(b"<8 bytes not kept")


# --- opt-outs ------------------------------------------------------------------------


def test_an_opt_out_is_matched_under_the_key_it_was_recorded_with() -> None:
    old = Pseudonymiser(parse_keys(K1))
    entry = OptOut("request_id", old.every("request_id", "42"), 0)
    assert OptOut.of(entry.record()) == entry and "42" not in entry.pseudonyms
    registry = OptOuts.of([entry])
    rotated = Pseudonymiser(parse_keys(f"{K2},{K1}"))
    for p in (old, rotated):
        assert registry.excludes("request_id", p.pseudonym("request_id", "42"), p, "42")
        assert not registry.excludes("request_id", p.pseudonym("request_id", "43"), p, "43")
    assert not registry.excludes("reporter", old.pseudonym("reporter", "42"), old, "42")
