"""Runs the Faust worker with the chosen processors registered (`citystream process`)."""

from __future__ import annotations

import logging

import faust

from core import telemetry
from core.city import city_id
from core.settings import Settings
from families.registry import REGISTRY, Registry
from streams.app import create_app
from streams.engine import agents
from streams.engine.processor import ProcessorSpec, WindowedProcessor

log = logging.getLogger(__name__)


def processor_specs(
    registry: Registry = REGISTRY, city: str | None = None
) -> dict[str, ProcessorSpec]:
    """A processor per registered family, by name; with ``city`` (a city pack's id), the
    families that follow the city pack name their city scope after it."""
    return {f.name: ProcessorSpec.of(f, registry.topics, city) for f in registry.families}


PROCESSORS: dict[str, ProcessorSpec] = processor_specs()


def app_id(settings: Settings, names: list[str] | None = None) -> str:
    """The worker's Faust app id (its consumer group, before the topic prefix).

    Set explicitly with CITYSTREAM_PROCESSOR_ID; otherwise derived from what the worker
    runs, so a second Deployment running other processors cannot join the first one's
    group by accident (a group's members must subscribe to the same topics).
    """
    if settings.processor_id:
        return settings.processor_id
    chosen = list(dict.fromkeys(names or PROCESSORS))
    everything = set(chosen) == set(PROCESSORS)
    return "citystream-processors" if everything else "citystream-" + "-".join(chosen)


def input_topics(names: list[str] | None = None) -> list[str]:
    """Every topic the chosen processors (default: all) consume, each once."""
    specs = [PROCESSORS[n] for n in names or PROCESSORS]
    return list(dict.fromkeys(t for spec in specs for t in spec.input_topics))


def run(
    settings: Settings,
    names: list[str] | None = None,
    loglevel: str = "INFO",
    registry: Registry = REGISTRY,
) -> None:
    """One worker process for ``names`` (default: every processor) in one consumer group.

    The service processor names its city scope after the city pack (CITYSTREAM_CITY).
    """
    city = city_id(settings.city) if settings.city is not None else None
    specs = processor_specs(registry, city)
    processors = [WindowedProcessor(settings, specs[n]) for n in names or specs]
    for processor in processors:
        processor.setup()
    app = create_app(settings, app_id(settings, names))
    for processor in processors:
        agents.register(app, processor)
    agents.register_stats(app, processors)
    # telemetry: Faust configures logging itself; make it our JSON lines with trace ids
    logging_config = telemetry.logging_config(telemetry.PROCESSOR, loglevel)
    worker = faust.Worker(app, loglevel=loglevel, quiet=True, logging_config=logging_config)
    try:
        worker.execute_from_commandline()
    finally:
        for processor in processors:
            processor.close()
