"""Faust wiring shared by every windowed processor: the dataflow of one KPI family.

<domain batches> ──partition_windows──▶ city.kpi.v1, city.kpi.batches.v1 (entity KPIs)
  (N partitions)          │             city.dlq.v1 (late, undecodable)
                          ▼
             <domain partials> ──merge_windows──▶ city.kpi.v1, city.kpi.batches.v1
               (1 partition)                      (district, city… KPIs)
every second: idle_flush emits windows whose input has stopped (end of a replay).
"""

from __future__ import annotations

from typing import Any

import faust

from core import telemetry
from schemas.faust_codec import AvroCodec
from streams.engine.processor import WindowedProcessor


def _origin(event: Any) -> str:
    message = event.message
    return f"{message.topic}/{message.partition}/{message.offset}"


def _consumed(event: Any, processor: WindowedProcessor) -> Any:
    """telemetry: the span and metrics of processing one message (context from its headers)."""
    message, value = event.message, event.value
    events = len(value["origin"]) if isinstance(value, dict) and "origin" in value else 1
    return telemetry.consumed(
        message.headers, message.topic, message.partition, message.offset, events, processor.name
    )


def _owned(app: faust.App, event: Any) -> bool:
    """False for a message buffered before its partition moved to another worker."""
    return event.message.tp in app.consumer.assignment()


def _topic(app: faust.App, processor: WindowedProcessor, name: str) -> Any:
    return app.topic(
        processor.topics[name],
        key_serializer="raw",
        value_serializer=AvroCodec(processor.serdes[name]),
    )


def register(app: faust.App, processor: WindowedProcessor) -> None:
    """Attach one processor's agents to the app; ``processor.setup()`` must have run."""
    name = processor.name
    for source, spec_input in enumerate(processor.spec.inputs):
        _register_input(app, processor, source, _topic(app, processor, spec_input.batch_topic))

    @app.agent(_topic(app, processor, processor.spec.partials_topic), name=f"{name}.merge")
    async def merge_windows(stream: Any) -> None:
        manual = stream.noack()
        async for event in manual.events():
            if not _owned(app, event):
                continue
            with _consumed(event, processor):  # telemetry: continue the emitting stage's trace
                done_events = await processor.on_partial(event.value, _origin(event), event)
            for done in done_events:
                await manual.ack(done)

    async def forget_moved(sender: Any, assigned: Any, **kwargs: Any) -> None:
        owned: dict[str, set[int]] = {}
        for tp in app.consumer.assignment():
            owned.setdefault(tp.topic, set()).add(tp.partition)
        processor.on_assigned(owned)

    app.on_partitions_assigned.connect(forget_moved)  # type: ignore[arg-type]

    @app.timer(interval=1.0, name=f"{name}.idle_flush")
    async def idle_flush() -> None:
        await processor.on_tick()


def _register_input(app: faust.App, processor: WindowedProcessor, source: int, topic: Any) -> None:
    @app.agent(topic, name=f"{processor.name}.windows.{source}")
    async def partition_windows(stream: Any) -> None:
        manual = stream.noack()  # acked once every window the message fed is final
        async for event in manual.events():
            if not _owned(app, event):
                continue
            partition = event.message.partition
            with _consumed(event, processor):  # telemetry: continue the source batch's trace
                done_events = await processor.on_batch(
                    source, partition, event.value, _origin(event), event
                )
            for done in done_events:
                await manual.ack(done)


def register_stats(app: faust.App, processors: list[WindowedProcessor]) -> None:
    @app.page("/citystream/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json({p.name: p.stats.as_dict() for p in processors})
