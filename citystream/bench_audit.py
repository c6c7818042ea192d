"""`make bench`, stage ``audit``: what auditing costs a request, and checking the log.

An audited request waits for its record to be acknowledged by Kafka (idempotent, acks=all,
one partition), so that cost is measured the way a request pays it: one append at a time,
each waiting for its acknowledgement (median and 99th percentile), and the same from 8
threads at once (the API's worker threads), as records per second. Beside it: the
in-process part (encoding, leaf hash, tree append), a checkpoint of the whole log, and
``audit verify`` over it. And what the sink's query endpoint adds per statement by
auditing it: the same small read through the endpoint (HTTP on loopback, chDB) without
and with its audit record, one at a time (median and p99 each). Nothing is asserted here;
the tests check behaviour.
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import TYPE_CHECKING

from core.audit_append import (
    AuditAppender,
    AuditEntry,
    CallerContext,
    ensure_audit_topics,
    leaf_bytes,
)
from core.settings import Settings

if TYPE_CHECKING:
    from connectors.sinks.clickhouse import ClickHouseSink

SEQUENTIAL = 2000
ENDPOINT_READS = 500
THREADS, PER_THREAD = 8, 500


def sample_entry(i: int) -> AuditEntry:
    """A typical series read: a key, a role, six parameters and its SQL."""
    return AuditEntry(
        role="analyst",
        action="read",
        endpoint="/v1/kpis/{kpi}/series",
        parameters={
            "kpi": "traffic.mean_speed_kmh", "scope": "district", "entity": f"d{i % 40}",
            "from": "2014-08-01", "to": "2014-08-02", "resolution": "1h",
        },
        key_id="analyst-key",
        sql="SELECT start, end, avg(value) AS value FROM kpi_latest WHERE kpi = {kpi:String}",
        rows=24,
    )  # fmt: skip


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_audit_bench(settings: Settings) -> dict[str, str]:
    """The figures by name; ``settings``: a fresh namespace (topic prefix of its own)."""
    from trust.audit.checkpoint import checkpoint_now
    from trust.audit.log import read_log
    from trust.merkle import MerkleLog

    print("== audit: appending records as audited requests do, checkpoint and verify")
    key = settings.data_dir / "bench" / f"{settings.topic_prefix.rstrip('.')}-audit.pem"
    settings = settings.model_copy(update={"audit_key_file": key})  # a key of the run's own
    ensure_audit_topics(settings)
    appender = AuditAppender(settings)
    appender.append(sample_entry(0))  # connect, register the schema
    waits = []
    for i in range(SEQUENTIAL):
        started = time.perf_counter()
        appender.append(sample_entry(i))
        waits.append(time.perf_counter() - started)

    def worker(base: int) -> None:
        for i in range(PER_THREAD):
            appender.append(sample_entry(base + i))

    threads = [threading.Thread(target=worker, args=(t * PER_THREAD,)) for t in range(THREADS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    concurrent_s = time.perf_counter() - started
    appender.close()

    tree, rounds = MerkleLog(), 20_000
    started = time.perf_counter()
    for i in range(rounds):
        tree.append(leaf_bytes(sample_entry(i).record()))
    local_us = (time.perf_counter() - started) / rounds * 1e6

    endpoint_figures = _endpoint_cost(settings)

    started = time.perf_counter()
    made = checkpoint_now(settings)
    checkpoint_s = time.perf_counter() - started
    size = made[-1].tree_size if made else 0
    verify_s = _verify_time(settings)
    records = len(read_log(settings))
    return {
        "audit write per request (sequential)": (
            f"{statistics.median(waits) * 1e3:>10.2f} ms median, "
            f"{_percentile(waits, 0.99) * 1e3:.2f} ms p99 ({SEQUENTIAL} appends, each acked)"
        ),
        "audit writes, 8 threads": (
            f"{THREADS * PER_THREAD / concurrent_s:>10,.0f} records/s "
            f"({THREADS}x{PER_THREAD}, each waiting for its ack)"
        ),
        "audit record in-process": f"{local_us:>10.1f} µs (encode, leaf hash, tree append)",
        **endpoint_figures,
        "audit checkpoint": f"{checkpoint_s:>10.2f} s (read, hash and sign {size:,} records)",
        "audit verify": f"{verify_s:>10.2f} s ({records:,} records, every checkpoint)",
    }


def _endpoint_cost(settings: Settings) -> dict[str, str]:
    """The same read through the sink's query endpoint, unaudited and audited (the API's
    caller context sent with it), on a chDB sink of the run's own."""
    from connectors.sinks.clickhouse import ClickHouseSink

    with ClickHouseSink(settings) as sink:
        sink.setup()
        plain = _endpoint_waits(sink, None)
        audited = _endpoint_waits(sink, AuditAppender(settings))
    extra = statistics.median(audited) - statistics.median(plain)
    return {
        "endpoint read, unaudited": _waits_text(plain),
        "endpoint read, audited": _waits_text(audited) + f" (+{extra * 1e3:.2f} ms median)",
    }


def _endpoint_waits(sink: ClickHouseSink, audit: AuditAppender | None) -> list[float]:
    from connectors.sinks.clickhouse.endpoint import QueryEndpoint, QueryRequest, ask_endpoint

    endpoint = QueryEndpoint(sink.query, 0, audit=audit)  # port 0: any free port
    endpoint.start()
    caller = CallerContext("analyst-key", "analyst", "/v1/status", {"city": "aarhus"})
    request = QueryRequest("SELECT {n:UInt32} + 1 AS n", {"n": 1}, caller=caller)
    try:
        ask_endpoint(endpoint.port, request)  # sessions opened, schema registered
        waits = []
        for _ in range(ENDPOINT_READS):
            started = time.perf_counter()
            ask_endpoint(endpoint.port, request)
            waits.append(time.perf_counter() - started)
    finally:
        endpoint.stop()
    return waits


def _waits_text(waits: list[float]) -> str:
    return (
        f"{statistics.median(waits) * 1e3:>10.2f} ms median, "
        f"{_percentile(waits, 0.99) * 1e3:.2f} ms p99 ({len(waits)} reads)"
    )


def _verify_time(settings: Settings) -> float:
    from trust.audit.checkpoint import read_checkpoints, trusted_keys
    from trust.audit.log import read_log
    from trust.audit.verify import verify

    started = time.perf_counter()
    verdict = verify(read_log(settings), read_checkpoints(settings), trusted_keys(settings))
    elapsed = time.perf_counter() - started
    if not verdict.ok:
        print(f"audit bench: verify failed: {verdict.problems[0]}")
    return elapsed
