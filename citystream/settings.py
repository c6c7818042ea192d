"""All configuration in one typed object.

Every value can be set with an environment variable ``CITYSTREAM_<NAME>`` (e.g.
``CITYSTREAM_KAFKA_BOOTSTRAP_SERVERS``) or by a CLI flag. Only entry points build a
:class:`Settings`; library code receives it as an argument, so nothing reads the
environment at import time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CITYSTREAM_", extra="ignore")

    # --- where things live -------------------------------------------------------------
    data_dir: Path = Field(Path(".citystream"), description="Runtime state: logs, pids, chDB")
    cache_dir: Path = Field(
        Path.home() / ".cache" / "citystream", description="Downloaded Kafka and registry"
    )

    aarhus_dir: Path = Field(
        Path("../shared/data/aarhus"), description="Full Aarhus recordings (bench, big replays)"
    )

    # --- Kafka (librdkafka keys pass through kafka_extra) -------------------------------
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="bootstrap.servers")
    kafka_security_protocol: str = Field("PLAINTEXT", description="security.protocol")
    kafka_sasl_mechanism: str | None = Field(None, description="sasl.mechanism")
    kafka_sasl_username: str | None = Field(None, description="sasl.username")
    kafka_sasl_password: SecretStr | None = Field(None, description="sasl.password")
    kafka_extra: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka settings (JSON object)"
    )
    topic_prefix: str = Field("", description="Prepended to every topic and group name")
    partitions: int = Field(6, ge=1, description="Partitions of the per-reading topics")
    replication_factor: int = Field(1, ge=1, description="Replication factor of new topics")

    # --- schema registry ---------------------------------------------------------------
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible API"
    )
    schema_registry_basic_auth: SecretStr | None = Field(None, description="user:password")

    # --- local stack ports (citystream stack) --------------------------------------------
    kafka_port: int = Field(9092, description="Broker port of the local stack")
    controller_port: int = Field(9093, description="KRaft controller port of the local stack")
    registry_port: int = Field(8081, description="Registry port of the local stack")

    # --- processing ---------------------------------------------------------------------
    window_minutes: int = Field(15, ge=1, description="Tumbling window length")
    grace_minutes: int = Field(15, ge=0, description="How late a reading may still count")
    idle_timeout_s: float = Field(
        5.0, gt=0, description="Emit open windows after this long without input"
    )
    source_batch_size: int = Field(
        1000, ge=1, description="Readings per message on the processor's input topic"
    )
    processor_id: str = Field("citystream-traffic", description="Faust app id (consumer group)")
    processor_web_port: int = Field(6066, description="Faust web port of the processor")

    # --- ClickHouse sink ----------------------------------------------------------------
    clickhouse_url: str | None = Field(
        None, description="chdb:///path (default: <data_dir>/clickhouse) or http(s)://host:port"
    )
    clickhouse_username: str | None = Field(None, description="ClickHouse server user")
    clickhouse_password: SecretStr | None = Field(None, description="ClickHouse server password")
    clickhouse_database: str = Field("citystream", description="Database holding the tables")
    sink_group_id: str = Field("citystream-sink-clickhouse", description="Sink consumer group")
    sink_batch_rows: int = Field(50_000, ge=1, description="Insert when this many rows wait")
    sink_batch_seconds: float = Field(
        1.0, gt=0, description="...or when the oldest row has waited this long"
    )
    query_port: int = Field(8124, description="Sink's read-only query endpoint (chDB mode)")

    def topic(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    def group(self, name: str) -> str:
        return f"{self.topic_prefix}{name}"

    @property
    def resolved_clickhouse_url(self) -> str:
        if self.clickhouse_url:
            return self.clickhouse_url
        return f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def embedded_clickhouse(self) -> bool:
        return self.resolved_clickhouse_url.startswith("chdb://")

    def kafka_config(self, **overrides: Any) -> dict[str, Any]:
        """librdkafka configuration shared by every producer, consumer and admin client."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            conf["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            conf["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            conf["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        conf.update(self.kafka_extra)
        conf.update(overrides)
        return conf

    def registry_config(self) -> dict[str, Any]:
        conf: dict[str, Any] = {"url": self.schema_registry_url}
        if self.schema_registry_basic_auth:
            conf["basic.auth.user.info"] = self.schema_registry_basic_auth.get_secret_value()
        return conf

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        """Idempotent, acks=all: a retried send never duplicates or reorders."""
        return self.kafka_config(
            **{
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "batch.size": 1_000_000,
                "compression.type": "lz4",
                "queue.buffering.max.messages": 1_000_000,
                **overrides,
            }
        )


def settings_table() -> list[tuple[str, str, str]]:
    """(env var, default, description) for the README's configuration table."""
    rows = []
    for name, field in Settings.model_fields.items():
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        rows.append((f"CITYSTREAM_{name.upper()}", repr(default), field.description or ""))
    return rows
