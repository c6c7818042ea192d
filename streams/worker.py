"""Runs the Faust worker with every processor registered (the `citystream process` command)."""

from __future__ import annotations

import logging

import faust

from citystream import telemetry
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
    # telemetry: Faust configures logging itself; make it our JSON lines with trace ids
    logging_config = telemetry.logging_config(telemetry.PROCESSOR, loglevel)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, logging_config=logging_config)
    try:
        worker.execute_from_commandline()
    finally:
        processor.close()
