"""OPC UA ingest throughput: data changes/s from an asyncua server into Kafka, durable.

A plant server of its own (asyncua, a free port, no security) holds ``meters`` energy
meters; each gets ``rounds`` new values with distinct source timestamps, written at once
(``rounds`` stays within the monitored items' server-side queue, so the server drops
none). The source runs in-process, as ``citystream ingest opcua`` runs it; the clock
stops when the energy topic holds every reading (Kafka has acknowledged them all).
"""

from __future__ import annotations

import asyncio
import socket
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import Server, ua

from connectors.sources.opcua import OpcUaSource, load_config
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import ensure_topics, register_schemas

T0 = datetime(2024, 3, 4, tzinfo=UTC)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class _Plant:
    """An asyncua server on its own event loop thread."""

    def __init__(self, port: int, meters: int) -> None:
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/bench/"
        self.meters = meters
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.server = Server()
        self.nodes: list[Any] = []

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(600)

    def start(self) -> None:
        self.thread.start()
        self.call(self._start())

    async def _start(self) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        ns = await self.server.register_namespace("urn:citystream:bench-plant")
        plant = await self.server.nodes.objects.add_object(
            ua.NodeId.from_string(f"ns={ns};s=Plant"), "Plant"
        )
        for i in range(self.meters):
            node = await plant.add_variable(ua.NodeId.from_string(f"ns={ns};s=M{i}"), f"M{i}", 0.0)
            self.nodes.append(node.nodeid)
            await self._write(node.nodeid, 0.5, T0)
        await self.server.start()

    async def _write(self, node: Any, value: float, when: datetime) -> None:
        variant = ua.Variant(value, ua.VariantType.Double)
        data = ua.DataValue(variant, SourceTimestamp=when)  # type: ignore[arg-type]
        await self.server.write_attribute_value(node, data)

    def write_rounds(self, rounds: int) -> None:
        async def all_rounds() -> None:
            for r in range(1, rounds + 1):
                when = T0 + timedelta(seconds=r)
                for node in self.nodes:
                    await self._write(node, 0.25 + r % 7, when)
                await asyncio.sleep(0)  # the server's loop serves its clients between rounds

        self.call(all_rounds())

    def stop(self) -> None:
        self.call(self.server.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def _config(path: Path, endpoint: str, meters: int) -> Path:
    nodes = "".join(
        f'[[nodes]]\nnode_id = "ns=2;s=M{i}"\ndomain = "energy"\nsensor = "m{i}"\n'
        f'field = "kwh"\nconstants = {{ district = "8000" }}\n'
        for i in range(meters)
    )
    path.write_text(
        f'[opcua]\nendpoint = "{endpoint}"\nsecurity = "None"\npublishing_interval_ms = 50\n'
        f"queue_size = 200\n\n{nodes}",
        encoding="utf-8",
    )
    return path


def bench_opcua(settings: Settings, meters: int = 500, rounds: int = 60) -> float:
    """Data changes/s, from the first write to the last reading acknowledged by Kafka."""
    plant = _Plant(_free_port(), meters)
    plant.start()
    topic = settings.topic("city.energy.v1")
    total = meters * (rounds + 1)  # the initial values count too
    with tempfile.TemporaryDirectory() as tmp:
        source = OpcUaSource(
            settings, load_config(_config(Path(tmp) / "b.toml", plant.endpoint, meters))
        )
        source.setup()
        thread = threading.Thread(target=source.run, daemon=True)
        try:
            thread.start()
            _wait(lambda: sum(end_offsets(settings, topic).values()) >= meters, 120)
            start = time.perf_counter()
            plant.write_rounds(rounds)
            _wait(lambda: sum(end_offsets(settings, topic).values()) >= total, 600)
            seconds = time.perf_counter() - start
        finally:
            source.stop()
            thread.join(60)
            plant.stop()
    return meters * rounds / seconds


def _wait(done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError("the OPC UA bench did not see every reading in Kafka")
        time.sleep(0.05)


def run_opcua_bench(settings: Settings, meters: int = 500, rounds: int = 60) -> dict[str, str]:
    """Measure into a fresh topic namespace; print and return the figure."""
    s = settings.model_copy(
        update={"topic_prefix": f"{settings.topic_prefix}bench-opcua-{time.strftime('%H%M%S')}."}
    )
    ensure_topics(s)
    register_schemas(s)
    rate = bench_opcua(s, meters, rounds)
    print(f"ingest OPC UA: {meters:,} variables x {rounds} changes: {rate:,.0f} data changes/s")
    return {"ingest_opcua_changes_per_s": f"{rate:,.0f}"}


if __name__ == "__main__":
    run_opcua_bench(Settings.model_validate({}))
