"""Traffic processor dataflow, on one screen.

city.traffic.batches.v1 ──segment_windows──▶ city.kpi.v1 (segment KPIs)
        (N partitions)          │            city.dlq.v1 (late, undecodable)
                                ▼
                   city.traffic.partials.v1 ──city_windows──▶ city.kpi.v1
                        (1 partition)                        (district, city KPIs)
every second: idle_flush emits windows whose input has stopped (end of a replay).
"""

from __future__ import annotations

from typing import Any

import faust

from citystream import telemetry
from schemas.faust_codec import AvroCodec
from streams.traffic.processor import TrafficProcessor


def _origin(event: Any) -> str:
    message = event.message
    return f"{message.topic}/{message.partition}/{message.offset}"


def _owned(app: faust.App, event: Any) -> bool:
    """False for a message buffered before its partition moved to another worker."""
    return event.message.tp in app.consumer.assignment()


def _consumed(event: Any) -> Any:
    """telemetry: the span and metrics of processing one message (context from its headers)."""
    message, value = event.message, event.value
    events = len(value["origin"]) if isinstance(value, dict) and "origin" in value else 1
    return telemetry.consumed(
        message.headers, message.topic, message.partition, message.offset, events
    )


def register(app: faust.App, processor: TrafficProcessor) -> None:
    """Attach the traffic agents to the app; ``processor.setup()`` must have run."""
    batches = app.topic(
        processor.topics["city.traffic.batches.v1"],
        key_serializer="raw",
        value_serializer=AvroCodec(processor.serdes["city.traffic.batches.v1"]),
    )
    partials = app.topic(
        processor.topics["city.traffic.partials.v1"],
        key_serializer="raw",
        value_serializer=AvroCodec(processor.serdes["city.traffic.partials.v1"]),
    )

    @app.agent(batches, name="traffic.segment_windows")
    async def segment_windows(stream: Any) -> None:
        manual = stream.noack()  # acked once every window the message fed is final
        async for event in manual.events():
            if not _owned(app, event):
                continue
            partition = event.message.partition
            with _consumed(event):  # telemetry: continue the source batch's trace
                done_events = await processor.on_batch(
                    partition, event.value, _origin(event), event
                )
            for done in done_events:
                await manual.ack(done)

    @app.agent(partials, name="traffic.city_windows")
    async def city_windows(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            if not _owned(app, event):
                continue
            with _consumed(event):  # telemetry: continue the emitting stage's trace
                done_events = await processor.on_partial(event.value, _origin(event), event)
            for done in done_events:
                await manual.ack(done)

    async def forget_moved(sender: Any, assigned: Any, **kwargs: Any) -> None:
        owned: dict[str, set[int]] = {}
        for tp in app.consumer.assignment():
            owned.setdefault(tp.topic, set()).add(tp.partition)
        processor.on_assigned(owned)

    app.on_partitions_assigned.connect(forget_moved)  # type: ignore[arg-type]

    @app.timer(interval=1.0, name="traffic.idle_flush")
    async def idle_flush() -> None:
        await processor.on_tick()

    @app.page("/citystream/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(processor.stats.as_dict())
