"""OPC UA ingest end to end: a real asyncua server started here (a district-heating plant
of 300 energy meters, every one changing every second), `citystream ingest opcua` as a
user runs it, Kafka, the energy processor and ClickHouse.

The server is restarted once: the source reconnects with backoff and subscribes again,
and the values the new subscription delivers again are not counted twice. Expected KPIs
are `verify`'s recomputation (oracles/simulated.py) over what the server wrote, sharing
nothing with the processor. The server helper is shared with the security tests.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from asyncua import Server, ua
from asyncua.crypto.permission_rules import User, UserRole

from citystream.pipeline import Pipeline, wait_settled
from citystream.verify import stored_kpis
from connectors.sources.ingest_common import dead_letter_fields
from core.kafka import end_offsets
from core.privacy.minimise import DROPPED
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from oracles.compare import compare
from oracles.simulated import energy_kpis
from tests.conftest import free_port
from tests.integration.test_ingest_http import (
    log_tail,
    read_topic,
    start_command,
    stop_command,
)

pytestmark = pytest.mark.integration
NAMESPACE = "urn:citystream:test-plant"
METERS = 300
DISTRICTS = ("8000", "8200", "8210", "8220")
T0 = datetime(2024, 3, 4, 6, 0, tzinfo=UTC)
STEP = timedelta(minutes=4)  # source time between rounds: a round per second of wall time
LABEL = "ns=2;s=Plant.Label"  # a String variable mapped as a meter: wrong type
MISSING = "ns=2;s=Meter999.Energy"  # mapped, but the server has no such node


def values_outside(shape: Any, keep: frozenset[str], kept: bool = False) -> list[Any]:
    """The values of a dead letter's payload that are not under a ``keep`` field (each should
    have been dropped by the minimisation)."""
    if isinstance(shape, dict):
        return [x for k, v in shape.items() for x in values_outside(v, keep, kept or k in keep)]
    if isinstance(shape, list):
        return [x for v in shape for x in values_outside(v, keep, kept)]
    return [] if kept or shape == DROPPED else [shape]


def meter_node(i: int) -> str:
    return f"ns=2;s=Meter{i:03}.Energy"


@dataclass(frozen=True)
class Write:
    node: str
    value: Any
    when: datetime | None
    status: int = ua.StatusCodes.Good
    variant: ua.VariantType = ua.VariantType.Double


class Users:
    """An asyncua user manager with one user/password (None: anyone, anonymously)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password

    def get_user(
        self, _iserver: Any, username: str | None = None, password: str | None = None, **_: Any
    ) -> User | None:
        if username == self.username and password == self.password:
            return User(role=UserRole.User)
        return None


class PlantServer:
    """An asyncua server in a thread of its own (its own event loop), on a fixed port so a
    restart keeps the address; ``security``: (certificate, key) for Basic256Sha256 only."""

    def __init__(
        self,
        port: int,
        meters: int = METERS,
        security: tuple[Path, Path] | None = None,
        users: Users | None = None,
    ) -> None:
        self.port, self.meters, self.security, self.users = port, meters, security, users
        self.endpoint = f"opc.tcp://127.0.0.1:{port}/citystream/"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread: threading.Thread | None = None
        self.server: Server | None = None

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self, initial: list[Write]) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self._call(self._start(initial))

    async def _start(self, initial: list[Write]) -> None:
        server = Server(user_manager=self.users) if self.users else Server()
        await server.init()
        server.set_endpoint(self.endpoint)
        server.set_server_name("citystream test plant")
        if self.security:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.security[0]))
            await server.load_private_key(str(self.security[1]))
        if self.users:
            server.set_identity_tokens([ua.UserNameIdentityToken])
        ns = await server.register_namespace(NAMESPACE)
        assert ns == 2
        plant = await server.nodes.objects.add_object(ua.NodeId("Plant", ns), "Plant")
        for i in range(self.meters):
            await plant.add_variable(ua.NodeId(f"Meter{i:03}.Energy", ns), f"Meter{i:03}", 0.0)
        await plant.add_variable(ua.NodeId("Plant.Label", ns), "Label", "", ua.VariantType.String)
        for w in initial:
            await self._write(server, w)
        await server.start()
        self.server = server

    @staticmethod
    async def _write(server: Server, w: Write) -> None:
        status = ua.StatusCode(w.status)
        variant = ua.Variant(w.value, w.variant)
        await server.write_attribute_value(
            ua.NodeId.from_string(w.node),
            ua.DataValue(variant, StatusCode=status, SourceTimestamp=w.when),
        )

    @staticmethod
    async def _cancel_the_rest() -> None:
        """The server's session tasks outlive stop(): cancelled, so the loop closes clean."""
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in rest:
            task.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    def subscribed(self) -> bool:
        """Whether a client holds a subscription (the source has subscribed again)."""

        async def count() -> int:
            assert self.server is not None
            return len(self.server.iserver.subscription_service.subscriptions)

        return bool(self._call(count()))

    def write(self, writes: list[Write]) -> None:
        async def all_of() -> None:
            assert self.server is not None
            for w in writes:
                await self._write(self.server, w)

        self._call(all_of())

    def stop(self) -> None:
        if self.loop is None:
            return
        if self.server is not None:
            self._call(self.server.stop())
            self.server = None
        self._call(self._cancel_the_rest())
        self.loop.call_soon_threadsafe(self.loop.stop)
        assert self.thread is not None
        self.thread.join(10)
        self.loop.close()
        self.loop = None


def write_config(path: Path, endpoint: str, extra: str = "", nodes: str | None = None) -> None:
    if nodes is None:
        nodes = "".join(
            f'[[nodes]]\nnode_id = "{meter_node(i)}"\ndomain = "energy"\n'
            f'sensor = "meter-{i:03}"\nfield = "kwh"\nunit = "kWh"\n'
            f'constants = {{ district = "{DISTRICTS[i % len(DISTRICTS)]}" }}\n\n'
            for i in range(METERS)
        )
        for node, unit in ((LABEL, "kWh"), (MISSING, "Wh")):
            nodes += (
                f'[[nodes]]\nnode_id = "{node}"\ndomain = "energy"\nsensor = "{node[7:]}"\n'
                f'field = "kwh"\nunit = "{unit}"\nconstants = {{ district = "8000" }}\n\n'
            )
    path.write_text(
        f"""
[opcua]
endpoint = "{endpoint}"
publishing_interval_ms = 100
reconnect_min_s = 0.5
reconnect_max_s = 2
flush_interval_ms = 100
max_pending = 500
{extra}

{nodes}""",
        encoding="utf-8",
    )


def wait_until(
    check: Callable[[], bool],
    what: Callable[[], str],
    timeout: float = 120,
    process: subprocess.Popen[bytes] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert process is None or process.poll() is None, what()
        assert time.monotonic() < deadline, what()
        time.sleep(0.2)


def published(settings: Settings, name: str) -> int:
    return sum(end_offsets(settings, settings.topic(name)).values())


def test_opcua_plant_to_clickhouse_matches_the_recomputation(
    settings: Settings, tmp_path: Path
) -> None:
    ensure_topics(settings)
    register_schemas(settings)
    rng = random.Random(18)
    expected: list[dict[str, Any]] = []  # what the KPIs must count, as Avro has it

    def good_round(r: int, skip: tuple[int, ...] = ()) -> list[Write]:
        when = T0 + r * STEP
        out = []
        for i in range(METERS):
            if i in skip:
                continue
            kwh = round(rng.uniform(0.0, 12.0), 3)
            out.append(Write(meter_node(i), kwh, when))
            expected.append(
                {
                    "meter_id": f"meter-{i:03}",
                    "district": DISTRICTS[i % len(DISTRICTS)],
                    "event_time": int(when.timestamp() * 1000),
                    "kwh": kwh,
                }
            )
        return out

    # round 0 is each variable's value when the ingest subscribes (its initial value)
    label = Write(LABEL, "n/a", T0, variant=ua.VariantType.String)
    server = PlantServer(free_port())
    server.start([*good_round(0), label])
    config = tmp_path / "opcua.toml"
    write_config(
        config, server.endpoint, 'security = "None"  # security: test_ingest_opcua_security'
    )
    process = start_command(settings, "ingest-opcua", "ingest", "opcua", "--config", str(config))
    bad_reasons = ["invalid_event", "unknown_node"]  # the label's initial value, the missing node
    try:
        wait_until(
            lambda: published(settings, "city.energy.v1") == len(expected),
            lambda: log_tail(settings, "ingest-opcua"),
            process=process,
        )
        last: list[Write] = []
        for r in range(1, 5):  # a round per second, every meter changes
            time.sleep(1)
            if r == 2:  # bad values instead of three meters' readings
                when = T0 + r * STEP
                bad = [
                    Write(meter_node(0), 1.0, when, ua.StatusCodes.BadSensorFailure),
                    Write(meter_node(1), 2.0, datetime(2099, 1, 1, tzinfo=UTC)),
                    Write(meter_node(2), -4.0, when),
                ]
                server.write(bad)
                bad_reasons += ["bad_status", "future_timestamp", "invalid_event"]
            last = good_round(r, skip=(0, 1, 2) if r == 2 else ())
            server.write(last)
        wait_until(
            lambda: published(settings, "city.energy.v1") == len(expected),
            lambda: (
                f"{published(settings, 'city.energy.v1')} of {len(expected)}: "
                + log_tail(settings, "ingest-opcua")
            ),
            process=process,
        )

        # the server restarts with its last values: delivered again, counted once
        server.stop()
        time.sleep(1.5)  # the source notices, and retries with backoff meanwhile
        server = PlantServer(server.port)
        server.start([*last, label])
        wait_until(server.subscribed, lambda: log_tail(settings, "ingest-opcua"), process=process)
        for r in range(5, 9):
            time.sleep(1)
            server.write(good_round(r))
        wait_until(
            lambda: published(settings, "city.energy.v1") == len(expected),
            lambda: (
                f"{published(settings, 'city.energy.v1')} of {len(expected)}: "
                + log_tail(settings, "ingest-opcua")
            ),
            process=process,
        )
        wait_until(
            lambda: published(settings, "city.dlq.v1") == len(bad_reasons),
            lambda: log_tail(settings, "ingest-opcua"),
            process=process,
        )
        assert stop_command(process) == 0, log_tail(settings, "ingest-opcua")
    finally:
        server.stop()
        if process.poll() is None:
            stop_command(process)
    log = (settings.data_dir / "logs" / "ingest-opcua.log").read_text()
    assert "reconnecting in" in log  # the restart was noticed, and retried with backoff
    assert f"'duplicates': {METERS + 1}" in log  # the values delivered again: counted once

    records = read_topic(settings, "city.energy.v1")
    assert len(records) == len(expected) == 9 * METERS - 3
    assert len({r["event_id"] for r in records}) == len(records)  # none published twice
    assert {r["source"] for r in records} == {"opcua-ingest"}
    letters = read_topic(settings, "city.dlq.v1")
    assert sorted(d["reason"] for d in letters) == sorted(bad_reasons)
    assert {d["component"] for d in letters} == {"opcua-ingest"}
    status = next(d for d in letters if d["reason"] == "bad_status")
    assert "BadSensorFailure" in status["detail"]
    assert status["origin"] == f"opcua:{server.endpoint}#{meter_node(0)}"
    wrong_type = next(d for d in letters if d["origin"].endswith(LABEL))
    assert "expected a number, got str" in wrong_type["detail"]
    # #16: a dead letter keeps the change's shape, and values only of canonical, time, unit
    # and type fields (the status is one); the node id, value and timestamps are names only
    for letter in letters:
        shape = json.loads(letter["payload"])
        fields = {"node_id", "value", "status", "source_timestamp", "server_timestamp"}
        assert set(shape) == fields, shape
        assert values_outside(shape, dead_letter_fields()) == [], letter
        assert (
            LABEL.encode() not in letter["payload"]
            and meter_node(0).encode() not in letter["payload"]
        )
    assert json.loads(status["payload"])["status"] == "BadSensorFailure"  # a canonical field

    pipeline = Pipeline(settings, processors=("energy",))
    try:
        pipeline.start()
        deadline = time.monotonic() + 300
        while True:
            stats = pipeline.processor_stats(domain="energy")
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= len(records):
                break
            assert time.monotonic() < deadline, stats
            time.sleep(0.3)
        assert stats["duplicates"] == 0 and stats["late"] == 0, stats
        wait_settled(pipeline, timeout=300)
        window_ms = settings.window_minutes * 60_000
        result = compare(energy_kpis(expected, {}, window_ms), stored_kpis(settings, "energy."))
        assert result.ok, result.summary()
        assert result.matched == len(energy_kpis(expected, {}, window_ms))
    finally:
        pipeline.stop()
