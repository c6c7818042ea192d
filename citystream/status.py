"""`citystream status`: one screen for an SRE.

Services up, consumer lag per group and partition, throughput per topic (end offsets
sampled twice), dead letters by reason (the DLQ's message keys are the reasons), and the
freshest KPI window per domain (the KPI name before its first dot).
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from core.kafka import end_offsets, partition_lag
from core.settings import Settings

THROUGHPUT_TOPICS = ("city.traffic.v1", "city.traffic.batches.v1", "city.kpi.v1", "city.dlq.v1")
FRESHNESS_SQL = (
    "SELECT splitByChar('.', kpi)[1] AS domain, max(window_end) AS newest, count() AS rows "
    "FROM kpi WHERE NOT endsWith(kpi, '_1h') GROUP BY domain ORDER BY domain"
)  # trend windows (_1h) reach past the data they hold: not a measure of freshness


@dataclass
class Status:
    services: dict[str, str] = field(default_factory=dict)  # name -> "up ..." / "DOWN: why"
    lag: dict[tuple[str, str], dict[int, int]] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)  # messages/s per topic
    dead_letters: Counter[str] = field(default_factory=Counter)
    freshest: list[tuple[str, datetime, int]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.problems and all(s.startswith("up") for s in self.services.values())


def _probe(status: Status, name: str, check: Callable[[], str]) -> bool:
    try:
        status.services[name] = f"up ({check()})"
        return True
    except Exception as exc:  # any failure to reach it is what the screen reports
        status.services[name] = f"DOWN: {exc}"
        return False


def _http(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=3) as response:
        body: bytes = response.read()
        return body


def collect(settings: Settings, interval: float = 1.0) -> Status:
    status = Status()

    def kafka() -> str:
        return f"{len(end_offsets(settings, settings.topic('city.traffic.v1')))} partitions"

    if not _probe(status, "kafka", kafka):
        return status
    _probe(status, "registry", lambda: f"{len(json.loads(_http(registry_url(settings))))} subjects")
    web = f"http://127.0.0.1:{settings.processor_web_port}/citystream/stats/"
    _probe(status, "processor", lambda: _processor_summary(json.loads(_http(web))))
    _probe(status, "sink", lambda: _sink_probe(settings))
    _lag(settings, status)
    _throughput(settings, status, interval)
    _dead_letters(settings, status)
    _freshness(settings, status)
    return status


def registry_url(settings: Settings) -> str:
    return f"{settings.schema_registry_url}/subjects"


def _processor_summary(stats: dict[str, Any]) -> str:
    """One line for the worker: events accepted and late over its processors."""
    accepted = sum(s["accepted"] for s in stats.values())
    late = sum(s["late"] for s in stats.values())
    idle = min(s["idle_seconds"] for s in stats.values())
    return f"{len(stats)} processors: accepted {accepted:,}, late {late:,}, idle {idle}s"


def _sink_probe(settings: Settings) -> str:
    if settings.embedded_clickhouse:
        _http(f"http://127.0.0.1:{settings.query_port}/health")
        return f"query endpoint :{settings.query_port}"
    from citystream.query import run_query

    run_query(settings, "SELECT 1")
    return "ClickHouse answers"


def consumer_groups(settings: Settings) -> list[tuple[str, str]]:
    from streams.worker import app_id, input_topics

    processor = settings.group(app_id(settings))
    return [
        *((processor, settings.topic(topic)) for topic in input_topics()),
        (settings.group(settings.alerts_processor_id), settings.topic("city.kpi.batches.v1")),
        (settings.group(settings.sink_group_id), settings.topic("city.kpi.batches.v1")),
    ]


def _lag(settings: Settings, status: Status) -> None:
    for group, topic in consumer_groups(settings):
        try:
            status.lag[(group, topic)] = partition_lag(settings, group, topic)
        except Exception as exc:
            status.problems.append(f"lag of {group} on {topic}: {exc}")


def _throughput(settings: Settings, status: Status, interval: float) -> None:
    topics = [settings.topic(t) for t in THROUGHPUT_TOPICS]
    before = {t: sum(end_offsets(settings, t).values()) for t in topics}
    started = time.monotonic()
    time.sleep(interval)
    elapsed = time.monotonic() - started
    for t in topics:
        status.throughput[t] = (sum(end_offsets(settings, t).values()) - before[t]) / elapsed


def _dead_letters(settings: Settings, status: Status, timeout: float = 10.0) -> None:
    """Count the DLQ's keys (the reasons) without decoding the records."""
    topic = settings.topic("city.dlq.v1")
    ends = {p: end for p, end in end_offsets(settings, topic).items() if end}
    consumer = Consumer(settings.kafka_config(**{"group.id": "citystream-status"}))
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        done: dict[int, int] = {}
        deadline = time.monotonic() + timeout
        while any(done.get(p, 0) < end for p, end in ends.items()):
            if time.monotonic() > deadline:
                status.problems.append(f"{topic}: counted only part of it in {timeout:.0f}s")
                return
            for msg in consumer.consume(10_000, timeout=0.2):
                if msg.error() is None:
                    status.dead_letters[(msg.key() or b"?").decode(errors="replace")] += 1
                    done[msg.partition() or 0] = (msg.offset() or 0) + 1
    finally:
        consumer.close()


def _freshness(settings: Settings, status: Status) -> None:
    from citystream.query import QueryError, run_query

    try:
        _, rows = run_query(settings, FRESHNESS_SQL)
    except QueryError as exc:
        status.problems.append(f"KPI freshness: {exc}")
        return
    status.freshest = [(str(d), _as_datetime(newest), int(n)) for d, newest, n in rows]


def _as_datetime(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).replace(tzinfo=UTC)


def render(status: Status, now: datetime | None = None) -> str:
    """The screen, as text."""
    now = now or datetime.now(UTC)
    out = ["services"]
    out += [f"  {name:10} {state}" for name, state in status.services.items()]
    out.append("consumer lag (group / topic: total [per partition])")
    for (group, topic), parts in status.lag.items():
        detail = " ".join(f"p{p}={n}" for p, n in sorted(parts.items()))
        out.append(f"  {group} / {topic}: {sum(parts.values()):,} [{detail}]")
    out.append("throughput (messages/s)")
    out += [f"  {topic:40} {rate:12,.1f}" for topic, rate in status.throughput.items()]
    out.append(f"dead letters by reason ({sum(status.dead_letters.values()):,} in all)")
    out += [f"  {reason:24} {n:10,}" for reason, n in status.dead_letters.most_common()]
    out.append("freshest KPI window per domain")
    for domain, newest, rows in status.freshest:
        age = (now - newest).total_seconds()
        out.append(
            f"  {domain:12} window_end {newest.isoformat()}  ({age:,.0f} s ago, {rows:,} rows)"
        )
    if status.problems:
        out.append("problems")
        out += [f"  {p}" for p in status.problems]
    return "\n".join(out)
