"""Several cities, one deployment (docs/cities.md): two cities on the real stack, each in
its own namespace (topic prefix, database), each through its own service processor, and
ONE ClickHouse sink serving both; then the docs' cross-city query, as written.

cities/aarhus has no service source, so a copy of the Boston pack with the id ``aarhus``
stands in for it: the Boston month is split in two, the first part replayed under
``cities/boston``, the second under the copy. Each city's KPIs must be those of its own
part (the oracle, row for row), in its own database: both have a district ``unknown``,
and its rows stay apart.
"""

from __future__ import annotations

import csv
import gzip
import re
import shutil
import time
from collections import Counter
from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from citystream.cli import city_namespace
from citystream.pipeline import Pipeline
from citystream.query import run_query
from citystream.replay import reconciles
from citystream.verify import stored_kpis
from connectors.sinks.base import DLQ_TOPIC
from connectors.sinks.clickhouse import KPI_TOPIC, ClickHouseSink
from connectors.sources.city_files import city_replay, publish_reference
from core.city import load_pack
from core.kafka import Publisher, end_offsets, group_lag
from core.settings import Settings
from families.registry import ensure_topics
from oracles.boston_311 import expected_for_pack
from oracles.compare import Key, Value, compare
from tests.conftest import free_ports
from tests.integration.sink_harness import dead_letters, running, wait_for
from tests.integration.test_simulated_domains import domain_stats

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
BOSTON = REPO / "cities" / "boston"
QUERY = re.compile(r"<!-- cross-city-query -->\n```sql\n(.*?)```", re.S)
ZONES = {"aarhus": ZoneInfo("Europe/Copenhagen"), "boston": ZoneInfo("America/New_York")}
ROWS = {"boston": (0, 900), "aarhus": (900, 1500)}  # rows of the month each city replays


def docs_query() -> str:
    (sql,) = QUERY.findall((REPO / "docs" / "cities.md").read_text())
    return str(sql)


def split_month(tmp_path: Path) -> dict[str, Path]:
    """Each city's part of the shipped month, as a CSV of its own."""
    with gzip.open(BOSTON / "boston_311_2015-01.csv.gz", "rt", newline="") as f:
        header, *rows = list(csv.reader(f))
    parts = {}
    for city, (first, last) in ROWS.items():
        parts[city] = tmp_path / f"{city}_311.csv"
        with parts[city].open("w", newline="") as out:
            csv.writer(out).writerows([header, *rows[first:last]])
    return parts


def aarhus_stand_in(tmp_path: Path) -> Path:
    """The Boston pack under the id ``aarhus``."""
    pack = tmp_path / "aarhus"
    shutil.copytree(BOSTON, pack)
    toml = pack / "city.toml"
    text = toml.read_text()
    assert 'id = "boston"' in text
    toml.write_text(text.replace('id = "boston"', 'id = "aarhus"', 1))
    return pack


def wait_all_written(
    sink_settings: Settings, pipelines: dict[str, Pipeline], published: dict[str, int]
) -> None:
    """Every event processed, every window out, and the one sink caught up on both."""
    for city, pipeline in pipelines.items():
        deadline = time.monotonic() + 300
        while True:
            pipeline.check_alive()
            stats = domain_stats(pipeline, "service")
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= published[city]:
                assert (stats["accepted"], stats["duplicates"], stats["late"]) == (
                    published[city], 0, 0
                ), stats  # fmt: skip
                break
            assert time.monotonic() < deadline, (city, stats)
            time.sleep(0.3)
    group = sink_settings.group(sink_settings.sink_group_id)
    quiet_needed = 2 * sink_settings.idle_timeout_s + 2.0
    last_ends: dict[str, int] = {}
    quiet_since = time.monotonic()
    deadline = time.monotonic() + 300
    while True:
        for pipeline in pipelines.values():
            pipeline.check_alive()
        topics = {c: p.settings.topic(KPI_TOPIC) for c, p in pipelines.items()}
        ends = {c: sum(end_offsets(sink_settings, t).values()) for c, t in topics.items()}
        if ends != last_ends:
            last_ends, quiet_since = ends, time.monotonic()
        quiet = time.monotonic() - quiet_since >= quiet_needed
        if quiet and all(group_lag(sink_settings, group, t) == 0 for t in topics.values()):
            return
        assert time.monotonic() < deadline, "the pipelines did not settle"
        time.sleep(0.5)


def opened_per_local_day(expected: dict[Key, Value], city: str) -> dict[str, int]:
    days: Counter[str] = Counter()
    for (kpi, scope, entity, start_ms), (value, _) in expected.items():
        if kpi == "service.requests_opened" and scope == "city":
            assert entity == city
            day = datetime.fromtimestamp(start_ms / 1000, UTC).astimezone(ZONES[city]).date()
            days[day.isoformat()] += int(value)
    return dict(days)


def test_two_cities_one_sink_and_one_query_across_them(settings: Settings, tmp_path: Path) -> None:
    parts = split_month(tmp_path)
    packs = {"boston": BOSTON, "aarhus": aarhus_stand_in(tmp_path)}
    web, metrics = free_ports(2)
    # Each city's namespace as the command line derives it; the test's own topic prefix
    # stays in front, so that runs on the shared stack do not meet.
    cities = {
        city: city_namespace(
            settings.model_copy(update={"topic_prefix": f"{settings.topic_prefix}{city}."}), pack
        )
        for city, pack in packs.items()
    }
    cities["aarhus"] = cities["aarhus"].model_copy(
        update={"processor_web_port": web, "processor_metrics_port": metrics}
    )
    assert {c: s.clickhouse_database for c, s in cities.items()} == {
        "boston": "citystream_boston",
        "aarhus": "citystream_aarhus",
    }
    expected = {
        city: expected_for_pack(packs[city], parts[city], settings.window_minutes)
        for city in cities
    }
    for city in cities:  # the two parts are not alike: mixing them would show
        unknown = {k: v for k, v in expected[city].items() if k[1:3] == ("district", "unknown")}
        assert unknown, f"{city}'s part has no request in district unknown"

    pipelines = {c: Pipeline(s, processors=("service",)) for c, s in cities.items()}
    sink = ClickHouseSink(settings, list(cities.values()))
    try:
        for city, city_settings in cities.items():
            ensure_topics(city_settings)
            pipelines[city].start("processor")
        with running(sink) as errors:
            published = {}
            for city, city_settings in cities.items():
                pack = load_pack(packs[city])
                assert publish_reference(city_settings, pack).published == {"districts": 26}
                source = city_replay(city_settings, pack, pack.source("requests"), parts[city])
                source.setup()
                report = source.run()
                assert reconciles(report) and report.published > 0
                published[city] = report.published
            wait_all_written(settings, pipelines, published)

            # the docs' query, through the sink's endpoint (what `citystream query` uses)
            columns, rows = run_query(settings, docs_query())
            assert columns == ["city", "day", "requests_opened"]
            got: dict[str, dict[str, int]] = {city: {} for city in cities}
            for city, day, opened in rows:
                got[city][date.fromisoformat(day).isoformat()] = opened
            for city in cities:
                assert got[city] == opened_per_local_day(expected[city], city), city
            assert sum(got["boston"].values()) == ROWS["boston"][1] - ROWS["boston"][0]
            assert sum(got["aarhus"].values()) == ROWS["aarhus"][1] - ROWS["aarhus"][0]

            # what the sink cannot decode is dead-lettered in its own city's namespace
            publisher = Publisher.create(settings)
            publisher.send(cities["aarhus"].topic(KPI_TOPIC), b"garbage", b"not Avro")
            publisher.flush()
            wait_for(lambda: sink.dead_lettered == 1, "the garbage to be dead-lettered", errors)
        sink_letters = {
            city: [
                letter
                for letter in dead_letters(s, sum(end_offsets(s, s.topic(DLQ_TOPIC)).values()))
                if letter["component"] == "clickhouse-sink"
            ]
            for city, s in cities.items()
        }
        assert sink_letters["boston"] == []
        (letter,) = sink_letters["aarhus"]
        assert letter["origin"].startswith(cities["aarhus"].topic(KPI_TOPIC) + "/")
    finally:
        for pipeline in pipelines.values():
            pipeline.stop()
        sink.close()

    # each city's database holds its own KPIs, row for row, and nothing of the other's
    for city, city_settings in cities.items():
        stored = stored_kpis(city_settings, "service.")
        result = compare(expected[city], stored)
        assert result.ok and result.matched == len(expected[city]), (city, result.summary())
        assert {e for _, scope, e, _ in stored if scope == "city"} == {city}
    opened_unknown = {
        city: {k[3]: v for k, v in stored_kpis(s, "service.requests_opened").items()
               if k[1:3] == ("district", "unknown")}
        for city, s in cities.items()
    }  # fmt: skip
    assert opened_unknown["boston"] and opened_unknown["aarhus"]
    assert opened_unknown["boston"] != opened_unknown["aarhus"]
    # the sink's own database exists (sessions default to it) and holds no table
    _, tables = run_query(settings, "SELECT name FROM system.tables WHERE database = 'citystream'")
    assert tables == []
