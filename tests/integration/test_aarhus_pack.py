"""Aarhus as a city pack, on the real stack: `citystream city replay cities/aarhus` publishes
exactly what `citystream replay aarhus` publishes (every topic's message count, the dead
letters), and the processors' KPIs with CITYSTREAM_CITY=cities/aarhus equal those without
it (city scope `aarhus` either way).

Both commands run as the CLI runs them, on the small fixtures (with bad rows and a
duplicate, so that dead letters and the dedup are exercised): the old path with its
--traffic/--air/--parking flags, the pack as a copy of cities/aarhus whose sources name
the fixtures. Each run has its own topic prefix and its own processors and sink.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest

from citystream.pipeline import Pipeline, settings_env
from citystream.replay import wait_processed
from citystream.verify import read_topic, stored_kpis
from core.kafka import end_offsets
from core.settings import Settings
from families.registry import TOPICS, ensure_topics, register_schemas
from tests.conftest import PORT_SETTINGS, free_ports
from tests.integration.test_air_parking_pipeline import published_kpis
from tests.integration.test_air_parking_replay import (
    AIR_FIXTURE,
    BAD_AIR,
    PARKING_DUPLICATE,
    PARKING_EXTRA,
    PARKING_FIXTURE,
    with_rows,
)

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
PACK = REPO / "cities" / "aarhus"
TRAFFIC_FIXTURE = REPO / "tests/fixtures/traffic_2014-08-02_0600-0900.csv.gz"
CITYSTREAM = str(Path(sys.executable).with_name("citystream"))
PROCESSORS = ("traffic", "air", "parking", "devices")  # every family the pack feeds


def fixture_pack(tmp_path: Path, files: dict[str, Path]) -> Path:
    """A copy of cities/aarhus whose sources read ``files`` (reference data unchanged)."""
    pack = tmp_path / "aarhus-pack"
    pack.mkdir()
    text = (PACK / "city.toml").read_text(encoding="utf-8")
    for name, shipped in (
        ("traffic", "traffic_2014-08-02.csv.gz"),
        ("air", "pollution_2014-08-02.csv.gz"),
        ("parking", "parking.csv.gz"),
    ):
        old = f'file = "../../data/aarhus/{shipped}"'
        assert old in text, old
        text = text.replace(old, f'file = "{files[name]}"')
    text = text.replace('file = "../../data/aarhus/', f'file = "{REPO}/data/aarhus/')
    (pack / "city.toml").write_text(text, encoding="utf-8")
    return pack


def cli(settings: Settings, *args: str) -> str:
    run = subprocess.run([CITYSTREAM, *args], env=settings_env(settings), capture_output=True,
                         text=True, timeout=600, check=False)  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    return run.stdout


def topic_counts(settings: Settings) -> dict[str, int]:
    counts = {n: sum(end_offsets(settings, settings.topic(n)).values()) for n in TOPICS}
    return {name: n for name, n in counts.items() if n}


def dead_letters(settings: Settings) -> Counter[tuple[str, str, str, bytes]]:
    return Counter(
        (d["reason"], d["component"], d["origin"], d["payload"])
        for d in read_topic(settings, "city.dlq.v1")
    )


def isolated(settings: Settings, tmp_path: Path, name: str, **update: object) -> Settings:
    """Another run beside ``settings``: own topic prefix, data dir (chDB) and ports."""
    return settings.model_copy(
        update={
            "topic_prefix": f"t{uuid.uuid4().hex[:8]}.",
            "data_dir": tmp_path / name,
            **dict(zip(PORT_SETTINGS, free_ports(len(PORT_SETTINGS)), strict=True)),
            **update,
        }
    )


def test_the_aarhus_pack_publishes_and_computes_what_replay_aarhus_does(
    settings: Settings, tmp_path: Path
) -> None:
    air, parking = tmp_path / "air_test.csv.gz", tmp_path / "parking_test.csv.gz"
    with_rows(AIR_FIXTURE, air, list(BAD_AIR), duplicate=10)
    with_rows(PARKING_FIXTURE, parking, PARKING_EXTRA, duplicate=PARKING_DUPLICATE)
    pack = fixture_pack(tmp_path, {"traffic": TRAFFIC_FIXTURE, "air": air, "parking": parking})
    old = settings
    new = isolated(settings, tmp_path, "pack")
    for s in (old, new):
        ensure_topics(s)
        register_schemas(s)

    # the publishing: the same topics, the same counts, the same dead letters
    summary = cli(old, "replay", "aarhus", "--traffic", str(TRAFFIC_FIXTURE), "--air", str(air),
                  "--parking", str(parking))  # fmt: skip
    replayed = cli(new, "city", "replay", str(pack))
    assert "MISMATCH" not in summary + replayed
    assert "road_segments, car_parks: by their sources" in replayed
    counts = topic_counts(old)
    assert topic_counts(new) == counts
    assert counts["city.road_segments.v1"] == 2 * 449  # traffic and air each publish them
    assert counts["city.car_parks.v1"] == 8
    assert counts["city.air.v1"] == 5389 and counts["city.parking.v1"] > 500
    letters = dead_letters(old)
    assert dead_letters(new) == letters
    reasons = Counter(reason for reason, *_ in letters.elements())
    bad_rows = Counter(BAD_AIR.values()) + Counter({"invalid_row": 3, "invalid_timestamp": 1})
    assert bad_rows <= reasons, reasons  # the bad air and parking rows, once each

    # the processing: CITYSTREAM_CITY=cities/aarhus changes nothing (city scope aarhus)
    published = {
        "traffic": counts["city.traffic.v1"],
        "air": counts["city.air.v1"],
        "parking": counts["city.parking.v1"],
    }
    with_pack = new.model_copy(update={"city": PACK})
    pipelines = [Pipeline(old, processors=PROCESSORS), Pipeline(with_pack, processors=PROCESSORS)]
    try:
        for pipeline in pipelines:
            pipeline.start()
        stats = [wait_processed(p, published) for p in pipelines]
        outcomes = [
            {d: (s[d]["accepted"], s[d]["duplicates"], s[d]["late"]) for d in published}
            for s in stats
        ]
        assert outcomes[0] == outcomes[1]
        without, within = stored_kpis(old, ""), stored_kpis(with_pack, "")
        assert without == within and len(without) > 1000
        assert published_kpis(old) == published_kpis(with_pack)
        families = {kpi.split(".")[0] for kpi, *_ in without}
        assert families == {"traffic", "air", "parking", "devices"}
        cities = {(kpi.split(".")[0], e) for kpi, scope, e, _ in without if scope == "city"}
        assert cities == {(family, "aarhus") for family in families}
    finally:
        for pipeline in pipelines:
            pipeline.stop()
