"""The noise KPIs recomputed from a list of readings, sharing no code with the family.

Per 15-minute window aligned to the UTC epoch: the level of every sensor, district and
the city is 10·log10 of the mean of 10^(dB/10) over their readings; a reading repeated
with the same sensor and time counts once.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

WINDOW_MS = 15 * 60_000
Reading = tuple[str, str, int, float]  # sensor_id, district, event time (ms), dB(A)


def recompute(readings: Iterable[Reading]) -> dict[tuple[str, str, str, int], tuple[float, int]]:
    """{(kpi, scope, entity_id, window_start): (value, samples)}"""
    levels: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for sensor, district, ms, db in readings:
        if (sensor, ms) in seen:
            continue
        seen.add((sensor, ms))
        start = ms - ms % WINDOW_MS
        for scope, entity in (("sensor", sensor), ("district", district), ("city", "aarhus")):
            levels[(scope, entity, start)].append(db)
    return {
        ("noise.leq_db", scope, entity, start): (_leq(dbs), len(dbs))
        for (scope, entity, start), dbs in levels.items()
    }


def _leq(levels: list[float]) -> float:
    return 10 * math.log10(sum(10 ** (db / 10) for db in levels) / len(levels))
