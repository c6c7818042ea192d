from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from core.settings import Settings

CONFIGURATION = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()


def test_configuration_page_lists_every_setting() -> None:
    """docs/configuration.md is generated (tests/unit/test_catalog.py checks the whole table);
    this catches a setting missing from the page even when the generator itself is wrong."""
    for name in Settings.model_fields:
        assert f"`CITYSTREAM_{name.upper()}`" in CONFIGURATION, name


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_KAFKA_BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("CITYSTREAM_KAFKA_EXTRA", '{"client.rack": "a"}')
    monkeypatch.setenv("CITYSTREAM_WINDOW_MINUTES", "5")
    s = Settings()
    assert s.kafka_config()["bootstrap.servers"] == "broker:29092"
    assert s.kafka_config()["client.rack"] == "a"
    assert s.window_minutes == 5


def test_invalid_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CITYSTREAM_PARTITIONS", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_secrets_are_not_shown_but_reach_librdkafka() -> None:
    s = Settings(
        kafka_sasl_mechanism="SCRAM-SHA-512", kafka_sasl_username="u", kafka_sasl_password="hunter2"
    )  # type: ignore[arg-type]
    assert "hunter2" not in repr(s)
    assert s.kafka_config()["sasl.password"] == "hunter2"


def test_producers_are_idempotent_with_acks_all() -> None:
    conf = Settings().producer_config()
    assert conf["enable.idempotence"] is True and conf["acks"] == "all"


def test_default_clickhouse_is_embedded_chdb_under_the_data_dir(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path)
    assert s.resolved_clickhouse_url == f"chdb://{tmp_path.resolve()}/clickhouse"
    assert s.embedded_clickhouse
    server = Settings(clickhouse_url="https://ch.example:8443")
    assert not server.embedded_clickhouse


def test_topic_prefix_namespaces_topics_and_groups() -> None:
    s = Settings(topic_prefix="staging.")
    assert s.topic("city.kpi.v1") == "staging.city.kpi.v1"
    assert s.group("citystream-traffic") == "staging.citystream-traffic"


def test_query_command_reports_refused_statements_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from citystream.cli import main

    code = main(["query", "DROP TABLE kpi", "--data-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("citystream query:") and "Traceback" not in err
