"""What privacy at the edge costs per event (#16): pseudonyms, subject encryption, keys.

Measured in-process on Boston's shipped 311 month (no Kafka: the source's own CPU):

- the month's rows parsed into events without and with the privacy tools; the difference
  per event is what pseudonymisation, the cell, the opt-out check and the encryption of
  ``subject`` add to a source;
- the pieces alone: an HMAC-SHA256 pseudonym (new value, and the cached second event of
  a case), an AES-256-GCM encryption of a case id, and the key store's durable write of
  new subject keys (one fsync per touched shard), per key.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from connectors.sources.city_files import iter_service_events
from core.city import load_pack
from core.privacy.edge import Edge
from core.privacy.optout import OptOuts
from core.privacy.pseudonym import Pseudonymiser, parse_keys
from core.privacy.subject_keys import SubjectKeyStore

BOSTON = Path(__file__).resolve().parent.parent / "cities" / "boston"
KEYS = "bench=" + "x" * 32
N = 50_000


def run_privacy_bench() -> dict[str, str]:
    """The figures, by name (µs per event or per key)."""
    results: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="citystream-bench-privacy-") as tmp:
        plain, private, events = _source_rows(Path(tmp) / "source-keys")
        results["privacy: 311 source, plain"] = f"{plain:>10.2f} µs/event  ({events:,} events)"
        results["privacy: 311 source, private"] = (
            f"{private:>10.2f} µs/event  (+{private - plain:.2f} µs: pseudonym, cell, opt-out "
            "check, subject encrypted)"
        )
        pseudonyms = Pseudonymiser(parse_keys(KEYS))
        fresh = _per_call(lambda i: pseudonyms.pseudonym("request_id", f"10100{i:07d}"))
        cached = _per_call(lambda i: pseudonyms.pseudonym("request_id", "101001240734"))
        results["privacy: pseudonym (HMAC)"] = f"{fresh:>10.2f} µs  (cached: {cached:.2f} µs)"
        store = SubjectKeyStore(Path(tmp) / "keys")
        subjects = [pseudonyms.pseudonym("request_id", f"9{i:011d}") for i in range(N)]
        new_key = _per_call(lambda i: store.encrypt(subjects[i], "101001240734"))
        same_key = _per_call(lambda i: store.encrypt(subjects[0], "101001240734"))
        results["privacy: encrypt subject"] = (
            f"{same_key:>10.2f} µs  (with a new key: {new_key:.2f} µs)"
        )
        started = time.perf_counter()
        written = store.flush()
        per_key = (time.perf_counter() - started) * 1e6 / max(1, written)
        results["privacy: key store write"] = (
            f"{per_key:>10.2f} µs/key  ({written:,} keys, fsync'd)"
        )
    return results


def _source_rows(key_dir: Path) -> tuple[float, float, int]:
    """µs per event of the month's rows → events, without and with the privacy tools
    (fresh tools each run: every case's pseudonym and key are new, as in a real replay)."""
    pack = load_pack(BOSTON)
    source = pack.source("requests")
    path = pack.path(source.file)

    def parse(private: bool, run: int) -> tuple[float, int]:
        tools = None
        if private:
            keys = SubjectKeyStore(key_dir / str(run))
            tools = Edge(Pseudonymiser(parse_keys(KEYS)), keys, OptOuts())
        started = time.perf_counter()
        count = sum(1 for _ in iter_service_events(pack, source, path, edge=tools))
        return time.perf_counter() - started, count

    parse(False, 0)  # warm: the district layer, the time cache
    plain, events = min(parse(False, run) for run in range(3))
    private, _ = min(parse(True, run) for run in range(3))
    return plain * 1e6 / events, private * 1e6 / events, events


def _per_call(call: Callable[[int], Any], n: int = N) -> float:
    started = time.perf_counter()
    for i in range(n):
        call(i)
    return (time.perf_counter() - started) * 1e6 / n


def main() -> None:
    for name, text in run_privacy_bench().items():
        print(f"  {name:30} {text}")


if __name__ == "__main__":
    main()
