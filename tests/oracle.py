"""An independent oracle for the traffic KPIs: the KPI table contract, written plainly.

It shares no code with the processor, so a test comparing the two catches a bug in either.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from citystream.query import run_query
from core.settings import Settings

REPO = Path(__file__).resolve().parents[1]
METADATA = REPO / "data/aarhus/traffic_metadata.csv"


def expected_kpis(rows: list[list[str]]) -> dict[tuple[str, str, str, int], tuple[float, int]]:
    """Independent oracle: the KPI table contract of docs/contracts.md, written plainly."""
    meta = {r["REPORT_ID"]: r for r in csv.DictReader(METADATA.open(encoding="utf-8"))}
    tz = ZoneInfo("Europe/Copenhagen")
    seen: set[tuple[str, str]] = set()
    acc: dict[tuple[str, str, int], list[float]] = defaultdict(lambda: [0, 0, 0.0])
    for _status, _avg_t, speed, _ext, _med, ts, count, _id, rid in rows:
        if (rid, ts) in seen:
            continue
        seen.add((rid, ts))
        local = datetime.fromisoformat(ts).replace(tzinfo=tz)
        epoch_ms = int(local.timestamp() * 1000)
        window = epoch_ms - epoch_ms % 900_000
        district = meta[rid]["POINT_1_POSTAL_CODE"] if rid in meta else "unknown"
        # the 15-minute window, and the four hourly trend windows (suffix _1h) holding it
        windows = [("", window)] + [("_1h", window - back * 60_000) for back in (0, 15, 30, 45)]
        for suffix, start in windows:
            for scope, entity in (("segment", rid), ("district", district), ("city", "aarhus")):
                if suffix and scope == "segment":
                    continue  # trends are for districts and the city
                a = acc[(suffix, scope, entity, start)]
                a[0] += 1
                a[1] += int(count)
                a[2] += float(speed) * int(count)
    out: dict[tuple[str, str, str, int], tuple[float, int]] = {}
    for (suffix, scope, entity, window), (n, vehicles, weighted) in acc.items():
        out[("traffic.vehicle_count" + suffix, scope, entity, window)] = (vehicles, n)
        if vehicles > 0:
            speed = weighted / vehicles
            out[("traffic.avg_speed_kmh" + suffix, scope, entity, window)] = (speed, n)
            if scope == "segment" and entity in meta and not suffix:
                ndt = float(meta[entity]["NDT_IN_KMH"])
                out[("traffic.congestion_index", scope, entity, window)] = (
                    max(0.0, 1 - speed / ndt),
                    n,
                )
    return out


def kpis_in_clickhouse(settings: Settings) -> dict[tuple[str, str, str, int], tuple[float, int]]:
    _, rows = run_query(
        settings,
        "SELECT kpi, scope, entity_id, toUnixTimestamp64Milli(window_start), value, samples "
        "FROM kpi FINAL WHERE startsWith(kpi, 'traffic.')",
    )
    return {(r[0], r[1], r[2], int(r[3])): (float(r[4]), int(r[5])) for r in rows}
