"""Alerts processor dataflow, on one screen (`citystream process alerts`, its own Faust app).

 on start: city.alerts.v1 (compacted) ─restore─▶ raised alerts, last judged window per entity
           city.road_segments.v1, city.service_categories.v1 ─▶ districts, SLA per category

 city.kpi.batches.v1 ────alerts.kpis─────┐ congestion    congestion_index > 0.5, 2 windows in a row
   own consumer group,   bulk decode,    │ air_quality   aqi > CITYSTREAM_ALERT_AQI_THRESHOLD
   every partition       rules.KpiAlerts │ parking_full  occupancy_pct > 95
                                         │ sensor_silent uptime_pct = 0 for an hour
 city.service_requests.v1 ─service_sla───┤ service_sla   stream time > opened_at + SLA, not closed
   key request_id        rules.SlaAlerts │
                                         ▼
                 city.alerts.v1 (key type|entity_id; one message per raise and per clear)
                 city.dlq.v1 (undecodable input, invalid KPI rows and request events)

KPI windows are judged in window order once every partition still delivering has passed
them (a backlog's partitions are read unevenly); every second, alerts.tick judges what
idle partitions held back and retries requests whose category had no SLA yet.
An input message is acked only after the alerts it caused are acknowledged by Kafka, and
held longer where a restart needs it again (see processor.py).
"""

from __future__ import annotations

from typing import Any

import faust

from core import telemetry
from core.settings import Settings
from schemas.faust_codec import AvroCodec
from streams.alerts.processor import AlertsProcessor
from streams.app import create_app


def run(settings: Settings, loglevel: str = "INFO") -> None:
    """The alerts worker: its own Faust app id (consumer group) and web port."""
    processor = AlertsProcessor(settings)
    processor.setup()
    own_port = settings.model_copy(update={"processor_web_port": settings.alerts_web_port})
    app = create_app(own_port, settings.alerts_processor_id)
    register(app, processor)
    # telemetry: JSON log lines with trace ids, as the other services
    logging_config = telemetry.logging_config(telemetry.ALERTS, loglevel)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, logging_config=logging_config)
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()


def _consumed(event: Any) -> Any:
    """telemetry: continue the input's trace; count and time it (rows of a KPI batch)."""
    message, value = event.message, event.value
    rows = len(value["kpi"]) if isinstance(value, dict) and "kpi" in value else 1
    return telemetry.consumed(
        message.headers, message.topic, message.partition, message.offset, rows, "alerts"
    )


def _origin(event: Any) -> str:
    message = event.message
    return f"{message.topic}/{message.partition}/{message.offset}"


def register(app: faust.App, processor: AlertsProcessor) -> None:
    """Attach the alerts agents to the app; ``processor.setup()`` must have run."""
    kpi_batches = app.topic(
        processor.topics["city.kpi.batches.v1"],
        key_serializer="raw",
        value_serializer=AvroCodec(processor.serdes["city.kpi.batches.v1"]),
    )
    requests = app.topic(
        processor.topics["city.service_requests.v1"],
        key_serializer="raw",
        value_serializer=AvroCodec(processor.serdes["city.service_requests.v1"]),
    )

    kpi_topic = processor.topics["city.kpi.batches.v1"]
    kpi_stream: list[Any] = []  # the agent's manual-ack stream, for the timer's acks

    def assigned() -> set[int]:
        return {tp.partition for tp in app.consumer.assignment() if tp.topic == kpi_topic}

    @app.agent(kpi_batches, name="alerts.kpis")
    async def kpis(stream: Any) -> None:
        manual = stream.noack()  # acked once the watermark is RETAIN_MS past its windows
        kpi_stream[:] = [manual]
        async for event in manual.events():
            partition = event.message.partition
            with _consumed(event):  # telemetry
                done_events = await processor.on_kpi_batch(
                    partition, event.value, _origin(event), assigned(), event
                )
            for done in done_events:
                await manual.ack(done)

    @app.agent(requests, name="alerts.service_sla")
    async def service_sla(stream: Any) -> None:
        manual = stream.noack()  # acked once its request is closed or has a later event
        async for event in manual.events():
            message = event.message
            with _consumed(event):  # telemetry
                done_events = await processor.on_request(
                    message.partition, message.offset, event.value, _origin(event), event
                )
            for done in done_events:
                await manual.ack(done)

    @app.timer(interval=1.0, name="alerts.tick")
    async def tick() -> None:
        for done in await processor.on_tick(assigned()):
            await kpi_stream[0].ack(done)

    @app.page("/citystream/stats/")
    async def stats(web: Any, request: Any) -> Any:
        return web.json(processor.stats_dict())
