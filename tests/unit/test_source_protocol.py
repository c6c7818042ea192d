"""Every source is a :class:`Source` and reports with the one :class:`Report`."""

from __future__ import annotations

from pathlib import Path

from connectors.sources.aarhus import AarhusReplaySource
from connectors.sources.aarhus_air import AarhusAirReplay
from connectors.sources.aarhus_parking import AarhusParkingReplay
from connectors.sources.base import Report, Source
from connectors.sources.city_files import ServiceFileReplay
from connectors.sources.ingest_common import load_config
from connectors.sources.mqtt import MqttSource
from connectors.sources.simulator import CitySimulatorSource, SimulationConfig
from core.city import load_pack
from core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NOWHERE = Path("/nonexistent/input.csv")


def test_file_replays_the_simulator_and_mqtt_are_sources_built_without_io() -> None:
    settings = Settings()
    boston = load_pack(ROOT / "cities" / "boston")
    sources: list[Source] = [
        AarhusReplaySource(settings, NOWHERE, NOWHERE),
        AarhusAirReplay(settings, NOWHERE, NOWHERE),
        AarhusParkingReplay(settings, NOWHERE, NOWHERE),
        ServiceFileReplay(settings, boston, boston.spec.sources[0], NOWHERE),
        CitySimulatorSource(settings, SimulationConfig(seed=1, start_ms=0, hours=1)),
        MqttSource(settings, load_config(ROOT / "infra/examples/ingest.toml")),
    ]
    assert all(isinstance(source, Source) for source in sources)


def test_a_report_reads_rows_per_second_and_starts_empty() -> None:
    report = Report()
    assert (report.rows_read, report.published, report.rows_per_second) == (0, 0, 0.0)
    assert not (report.per_topic or report.dead_lettered or report.faults or report.reference)
    assert Report(rows_read=10, seconds=2.0).rows_per_second == 5.0
