"""`citystream verify aarhus`: every Aarhus KPI family recomputed from the files, compared.

The recomputations (verify, recompute_aarhus, recompute_devices, recompute_sim) share no
code with the processors; this only runs them and compares with what ClickHouse holds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from citystream.recompute_aarhus import recompute_air, recompute_parking
from citystream.recompute_devices import recompute_devices
from citystream.verify import Key, Value, compare, recompute, stored_kpis
from core.settings import Settings

AARHUS_DOMAINS = ("traffic", "air", "parking", "devices")


def expected_aarhus(
    settings: Settings, files: Any, domains: Iterable[str] = AARHUS_DOMAINS
) -> dict[str, dict[Key, Value]]:
    """What ClickHouse should hold per domain after replaying ``files`` (an AarhusFiles)."""
    n, grace = settings.partitions, settings.grace_minutes
    size = settings.window_minutes
    compute = {
        "traffic": lambda: recompute(files.traffic, files.metadata, n, size, grace),
        "air": lambda: recompute_air(files.air, files.metadata, n, size, grace),
        "parking": lambda: recompute_parking(files.parking, files.car_parks, n, size, grace),
        "devices": lambda: recompute_devices(files.traffic, files.air, files.metadata, n, grace),
    }
    return {domain: compute[domain]() for domain in domains}


def audit(settings: Settings, expected: Mapping[str, dict[Key, Value]]) -> list[str]:
    """Compare each domain's rows with ClickHouse, print a line each; the failed domains."""
    failed = []
    for name, rows in expected.items():
        stored: dict[Key, Value] = {}
        for prefix in {key[0].split(".")[0] + "." for key in rows} or {f"{name}."}:
            stored.update(stored_kpis(settings, prefix))
        result = compare(rows, stored)
        print(f"{name:9} {result.summary()}  [{'OK' if result.ok else 'DIFFERENCES'}]")
        if not result.ok:
            failed.append(name)
    return failed
