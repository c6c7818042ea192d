"""The chDB sink's reads (its query endpoint's) beside each other and beside inserts.

Reads used to take the lock the inserts hold, so a dashboard's dozen first reads queued
behind each other and behind every insert (docs/benchmark.md). They now run on read-only
sessions of their own (:class:`ReadSessions`); these tests run them on real chDB.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from connectors.sinks.clickhouse.sink import READ_SESSIONS, ClickHouseSink, ReadSessions
from core.settings import Settings
from tests.conftest import free_port

T0 = datetime(2024, 5, 1, tzinfo=UTC)
BATCH = 100


def batch(n: int) -> list[dict[str, Any]]:
    """``BATCH`` rows of one window (the ``n``-th), one per segment."""
    start = T0 + n * timedelta(minutes=15)
    return [
        {"kpi": "traffic.vehicle_count", "scope": "segment", "entity_id": f"seg-{i}",
         "window_start": start, "window_end": start + timedelta(minutes=15), "value": 1.0,
         "samples": 3, "revision": 0, "computed_at": start}
        for i in range(BATCH)
    ]  # fmt: skip


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[ClickHouseSink]:
    settings = Settings().model_copy(
        update={"data_dir": tmp_path / "data", "clickhouse_url": None, "query_port": free_port()}
    )
    with ClickHouseSink(settings) as sink:
        sink.setup()
        yield sink


def in_thread(target: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(target()), daemon=True)
    thread.start()
    return thread, out


def test_a_read_does_not_wait_for_an_insert(sink: ClickHouseSink) -> None:
    sink.write(batch(0))
    with sink._db_lock:  # as an insert in progress holds it
        thread, out = in_thread(lambda: sink.query("SELECT count() FROM kpi").rows)
        thread.join(timeout=60)
        assert not thread.is_alive(), "the read waited for the insert lock"
    assert out == [[[BATCH]]]


def test_reads_during_inserts_see_whole_batches(sink: ClickHouseSink) -> None:
    inserts = 30
    counts: list[int] = []
    done = threading.Event()

    def write() -> None:
        for n in range(inserts):
            sink.write(batch(n))
        done.set()

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    while not done.is_set():
        counts.append(int(sink.query("SELECT count() FROM kpi").rows[0][0]))
    writer.join(timeout=60)
    counts.append(int(sink.query("SELECT count() FROM kpi").rows[0][0]))
    assert all(c % BATCH == 0 for c in counts), counts  # an insert is seen whole or not
    assert counts == sorted(counts)
    assert counts[-1] == inserts * BATCH
    assert sink._readers.opened <= READ_SESSIONS


def test_read_sessions_are_own_reused_per_limit_and_bounded(sink: ClickHouseSink) -> None:
    pool = ReadSessions(sink._open_reader, size=2)
    try:
        with pool.session(None) as first, pool.session(None) as second:
            assert first is not second  # two reads in flight: two sessions
            assert first.query("SELECT 1").result_rows == [(1,)]
            assert second.query("SELECT 2").result_rows == [(2,)]
            waiting, out = in_thread(lambda: _read_in(pool, None))
            waiting.join(timeout=0.5)
            assert waiting.is_alive(), "a third read ran while two held the two slots"
        waiting.join(timeout=60)
        assert out == [[(1,)]]
        assert pool.opened == 2  # the third read reused an idle session
        with pool.session(5.0) as limited:  # a readonly session keeps its time limit
            limit = limited.query("SELECT getSetting('max_execution_time')").result_rows
            readonly = limited.query("SELECT getSetting('readonly')").result_rows
        assert float(limit[0][0]) == 5.0
        assert int(readonly[0][0]) == 1
        assert pool.opened == 3
        for n in range(10):  # a caller asking with ever new limits does not pile sessions up
            assert _read_in(pool, 10.0 + n) == [(1,)]
        assert pool.opened == 2 * pool.size
    finally:
        pool.close()
    assert pool.opened == 0


def _read_in(pool: ReadSessions, limit: float | None) -> Any:
    with pool.session(limit) as session:
        return session.query("SELECT 1").result_rows
