"""A city pack gives its city a namespace (docs/cities.md, "Several cities, one
deployment"): topic prefix ``<id>.`` and database ``citystream_<id>`` unless set
explicitly; without a pack nothing changes. And the one sink of several cities refuses
two cities in one namespace before it touches anything."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import pytest

from citystream.cli import build_settings, city_namespace, main, parser
from citystream.pipeline import settings_env
from connectors.sinks.clickhouse import KPI_TOPIC, ClickHouseSink
from core.settings import Settings

BOSTON = Path(__file__).resolve().parents[2] / "cities" / "boston"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CITY", "TOPIC_PREFIX", "CLICKHOUSE_DATABASE"):
        monkeypatch.delenv(f"CITYSTREAM_{name}", raising=False)


def args(*argv: str) -> argparse.Namespace:
    return parser().parse_args(["query", "SELECT 1", *argv])


def test_without_a_pack_nothing_changes() -> None:
    settings = build_settings(args())
    assert (settings.topic_prefix, settings.clickhouse_database) == ("", "citystream")
    assert settings.topic(KPI_TOPIC) == KPI_TOPIC


def test_a_pack_names_the_topics_groups_and_database(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_CITY", str(BOSTON))
    settings = build_settings(args())
    assert settings.topic(KPI_TOPIC) == "boston.city.kpi.batches.v1"
    assert settings.group(settings.sink_group_id) == "boston.citystream-sink-clickhouse"
    assert settings.clickhouse_database == "citystream_boston"


def test_what_is_set_explicitly_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_CITY", str(BOSTON))
    monkeypatch.setenv("CITYSTREAM_CLICKHOUSE_DATABASE", "kpis")
    settings = build_settings(args("--topic-prefix", "prod."))
    assert (settings.topic_prefix, settings.clickhouse_database) == ("prod.", "kpis")


def test_a_child_process_gets_the_same_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline's children read the parent's settings from CITYSTREAM_* variables."""
    parent = city_namespace(Settings(), BOSTON)
    for name, value in settings_env(parent).items():
        if name.startswith("CITYSTREAM_"):
            monkeypatch.setenv(name, value)
    child = build_settings(args())
    assert (child.topic_prefix, child.clickhouse_database) == ("boston.", "citystream_boston")


def test_a_hyphen_in_the_id_becomes_an_underscore_in_the_database(tmp_path: Path) -> None:
    pack = tmp_path / "new-york"
    shutil.copytree(BOSTON, pack)
    toml = pack / "city.toml"
    toml.write_text(toml.read_text().replace('id = "boston"', 'id = "new-york"', 1))
    settings = city_namespace(Settings(), pack)
    assert (settings.topic_prefix, settings.clickhouse_database) == (
        "new-york.",
        "citystream_new_york",
    )


def test_no_pack_there_is_an_error_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sink", "clickhouse", "--city", str(tmp_path / "nowhere")]) == 2
    assert "no city.toml here" in capsys.readouterr().err


def test_the_sink_of_several_cities_refuses_one_namespace_twice(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["sink", "clickhouse", "--city", str(BOSTON), "--city", str(BOSTON)]) == 2
    assert "two cities share" in capsys.readouterr().err
    one = city_namespace(Settings(), BOSTON)
    with pytest.raises(ValueError, match="topic prefix"):  # an explicit prefix for both
        ClickHouseSink(Settings(), [one, one.model_copy(update={"clickhouse_database": "x"})])
    with pytest.raises(ValueError, match="the sink's own"):
        ClickHouseSink(one, [one])


def test_the_sink_of_several_cities_consumes_each_citys_topic() -> None:
    base = Settings()
    cities = [city_namespace(base, BOSTON), base.model_copy(update={"topic_prefix": "a.",
              "clickhouse_database": "citystream_a"})]  # fmt: skip
    sink = ClickHouseSink(base, cities)
    assert [c.topic(KPI_TOPIC) for c in sink.namespaces()] == [
        "boston.city.kpi.batches.v1",
        "a.city.kpi.batches.v1",
    ]
    assert sink.databases == {
        "boston.city.kpi.batches.v1": "citystream_boston",
        "a.city.kpi.batches.v1": "citystream_a",
    }
    assert sink.group() == "citystream-sink-clickhouse"
    single = ClickHouseSink(base)
    assert [c.topic(KPI_TOPIC) for c in single.namespaces()] == [KPI_TOPIC]


def test_every_command_takes_city_and_replay_city_reads_the_pack(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--city DIR` selects the pack for any command, as CITYSTREAM_CITY does; `replay city`
    without one says how to give it (before connecting to anything)."""
    monkeypatch.delenv("CITYSTREAM_CITY", raising=False)
    boston = BOSTON
    args = parser().parse_args(
        ["replay", "city", "--city", str(boston), "--source", "requests", "--file", "x.csv"]
    )
    settings = build_settings(args)
    assert (settings.city, settings.topic_prefix) == (boston, "boston.")
    assert settings.clickhouse_database == "citystream_boston"
    assert (args.source, args.file) == ("requests", Path("x.csv"))
    for command in (["process", "service"], ["query", "SELECT 1"], ["init"], ["migrate"]):
        parsed = parser().parse_args([*command, "--city", str(boston)])
        assert build_settings(parsed).topic_prefix == "boston.", command
    assert main(["replay", "city", "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "--city DIR or CITYSTREAM_CITY" in capsys.readouterr().out
