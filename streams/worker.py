"""Runs the Faust worker with every processor registered (the `citystream process` command)."""

from __future__ import annotations

import logging

import faust

from citystream.settings import Settings
from streams.app import create_app
from streams.traffic import agents as traffic_agents
from streams.traffic.processor import TrafficProcessor

log = logging.getLogger(__name__)


def run(settings: Settings, loglevel: str = "INFO") -> None:
    processor = TrafficProcessor(settings)
    processor.setup()
    app = create_app(settings)
    traffic_agents.register(app, processor)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()


def run_alerts(settings: Settings, loglevel: str = "INFO") -> None:
    """The alerts processor: its own Faust app id (consumer group) and web port."""
    from streams.alerts import agents as alerts_agents
    from streams.alerts.processor import AlertsProcessor

    processor = AlertsProcessor(settings)
    processor.setup()
    app = create_app(
        settings.model_copy(
            update={
                "processor_id": settings.alerts_processor_id,
                "processor_web_port": settings.alerts_web_port,
            }
        )
    )
    alerts_agents.register(app, processor)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True)
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()
