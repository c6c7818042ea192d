"""`citystream verify aarhus`: every Aarhus KPI family recomputed from the files, compared.

The recomputations are the oracles (oracles/aarhus_traffic.py, aarhus_air_parking.py,
devices.py), which share no code with the processors; this only runs them on the files
and compares with what ClickHouse holds (:func:`citystream.verify.stored_kpis`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from citystream.verify import record_result, stored_kpis
from core.settings import Settings
from oracles.aarhus_air_parking import recompute_air, recompute_parking
from oracles.aarhus_traffic import recompute
from oracles.compare import Key, Value, compare
from oracles.devices import recompute_devices

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
        record_result(settings, name, result)  # shown by the read API's /v1/status
        if not result.ok:
            failed.append(name)
    return failed
