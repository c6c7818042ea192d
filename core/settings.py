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
    city: Path | None = Field(
        None,
        description="City pack directory (cities/<id>, with city.toml); its id names the "
        "city scope (default: aarhus)",
    )
    timezone: str = Field(
        "Europe/Copenhagen",
        description="IANA time zone of the city's local days (the daily rollup's day) when no "
        "city pack is set; a pack's timezone wins (default: Aarhus's)",
    )

    # --- Kafka (librdkafka keys pass through kafka_extra) -------------------------------
    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", description="bootstrap.servers")
    kafka_security_protocol: str = Field("PLAINTEXT", description="security.protocol")
    kafka_sasl_mechanism: str | None = Field(None, description="sasl.mechanism")
    kafka_sasl_username: str | None = Field(None, description="sasl.username")
    kafka_sasl_password: SecretStr | None = Field(None, description="sasl.password")
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA bundle that signs the brokers' TLS certificates (ssl.ca.location)"
    )
    kafka_extra: dict[str, str] = Field(
        default_factory=dict, description="Extra librdkafka settings (JSON object)"
    )
    topic_prefix: str = Field("", description="Prepended to every topic and group name")
    partitions: int = Field(6, ge=1, description="Partitions of the per-reading topics")
    replication_factor: int = Field(1, ge=1, description="Replication factor of new topics")
    min_insync_replicas: int | None = Field(
        None,
        ge=1,
        description="min.insync.replicas of new topics (default: min(2, replication factor))",
    )

    # --- schema registry ---------------------------------------------------------------
    schema_registry_url: str = Field(
        "http://127.0.0.1:8081/apis/ccompat/v7", description="Confluent-compatible API"
    )
    schema_registry_basic_auth: SecretStr | None = Field(None, description="user:password")

    startup_timeout_s: float = Field(
        120.0, ge=0, description="How long a process waits for Kafka and the registry at start"
    )

    # --- local stack ports (citystream stack) --------------------------------------------
    kafka_port: int = Field(9092, description="Broker port of the local stack")
    controller_port: int = Field(9093, description="KRaft controller port of the local stack")
    registry_port: int = Field(8081, description="Registry port of the local stack")
    kafka_scram_port: int | None = Field(
        None, description="Extra SCRAM-SHA-512 listener of the local stack (off when unset)"
    )
    kafka_tls_port: int | None = Field(
        None, description="Extra SCRAM-over-TLS listener of the local stack (off when unset)"
    )

    # --- processing ---------------------------------------------------------------------
    window_minutes: int = Field(15, ge=1, description="Tumbling window length")
    grace_minutes: int = Field(15, ge=0, description="How late a reading may still count")
    idle_timeout_s: float = Field(
        5.0, gt=0, description="Emit open windows after this long without input"
    )
    source_batch_size: int = Field(
        1000, ge=1, description="Readings per message on the processor's input topic"
    )
    processor_id: str | None = Field(
        None,
        description="Faust app id (consumer group) of `citystream process`; default: derived "
        "from the processors it runs (citystream-processors for all, else citystream-<names>), "
        "so workers running different processors never share a group",
    )
    processor_web_host: str = Field(
        "127.0.0.1", description="Faust web bind address (0.0.0.0 in a container)"
    )
    processor_web_port: int = Field(6066, description="Faust web port of the processor")
    processor_session_timeout_s: float = Field(
        10.0, gt=0, description="A dead worker's partitions move after this long"
    )

    # --- alerts (citystream process alerts) ---------------------------------------------
    alerts_processor_id: str = Field(
        "citystream-alerts", description="Faust app id (consumer group) of the alerts processor"
    )
    alerts_web_port: int = Field(6067, description="Faust web port of the alerts processor")
    alert_aqi_threshold: float = Field(
        100.0, ge=0, description="air.aqi above this raises an air_quality alert"
    )
    # --- telemetry (tracing is configured by the standard OTEL_* variables) --------------
    metrics_host: str = Field(
        "127.0.0.1", description="Bind address of the /metrics endpoints (0.0.0.0 in a container)"
    )
    processor_metrics_port: int = Field(
        9464, ge=0, description="Prometheus /metrics port of the processor (0: off)"
    )
    sink_metrics_port: int = Field(
        9465, ge=0, description="Prometheus /metrics port of the sink (0: off)"
    )
    ingest_metrics_port: int = Field(
        9466, ge=0, description="Prometheus /metrics port of the HTTP and MQTT ingest (0: off)"
    )
    alerts_metrics_port: int = Field(
        9468, ge=0, description="Prometheus /metrics port of the alerts processor (0: off)"
    )
    source_metrics_port: int = Field(
        9467, ge=0, description="Prometheus /metrics port of a replay while it runs (0: off)"
    )

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
    clickhouse_kpi_ttl_days: int = Field(
        0, ge=0, description="Days the kpi table keeps a window (TTL); 0 keeps it forever"
    )
    clickhouse_rollup_ttl_days: int = Field(
        0, ge=0, description="Days the daily rollup keeps a window (TTL); 0 keeps it forever"
    )

    # --- ingest over open standards (MQTT, HTTP) ----------------------------------------
    ingest_config: Path | None = Field(
        None, description="Ingest config and mapping file (TOML), e.g. infra/examples/ingest.toml"
    )
    ingest_http_host: str = Field("127.0.0.1", description="Bind address of the HTTP ingest")
    ingest_http_port: int = Field(8090, description="Port of the HTTP ingest service")
    ingest_api_keys: SecretStr | None = Field(
        None, description='API keys per client as JSON {"client": "key"} (secret)'
    )
    ingest_api_keys_file: Path | None = Field(
        None, description="...or a JSON file of that shape (e.g. a mounted secret)"
    )
    ingest_max_body_bytes: int = Field(
        1_048_576,
        ge=1024,
        description="Larger request bodies are refused with 413; larger MQTT payloads are "
        "dead-lettered as too_large",
    )
    ingest_max_depth: int = Field(
        32,
        ge=2,
        le=256,
        description="Arrays/objects nested deeper in an HTTP body or MQTT payload: "
        "refused as too_complex (HTTP 400, dead-lettered)",
    )
    ingest_max_items: int = Field(
        10_000,
        ge=1,
        description="More events in one HTTP body or MQTT payload (array items, NDJSON "
        "lines, NGSI-LD entities): refused as too_complex",
    )
    ingest_max_string_chars: int = Field(
        4096,
        ge=64,
        description="A longer JSON string (key or value) in an HTTP body or MQTT payload: "
        "refused as too_complex",
    )
    ingest_rate_limit_rps: float = Field(
        50.0, gt=0, description="Requests per second per API key; beyond: 429"
    )
    ingest_rate_burst: int = Field(100, ge=1, description="Requests a key may send at once")
    ingest_request_timeout_s: float = Field(
        10.0, gt=0, description="To read a request and make it durable (then 408 or 503)"
    )
    ingest_max_pending: int = Field(
        100_000, ge=1, description="Messages waiting for Kafka before the HTTP ingest answers 503"
    )
    ingest_retry_after_s: int = Field(1, ge=1, description="Retry-After of 503 answers, seconds")
    ingest_max_future_s: float = Field(
        300.0, ge=0, description="Events further ahead of the clock are rejected"
    )
    mqtt_port: int = Field(1883, description="Mosquitto port of the local stack")
    mqtt_username: str | None = Field(None, description="MQTT user of the MQTT ingest")
    mqtt_ca_file: Path | None = Field(
        None, description="CA bundle of the MQTT broker's TLS certificate; set: MQTT over TLS"
    )
    mqtt_password: SecretStr | None = Field(None, description="MQTT password (secret)")

    # --- read API and dashboard (citystream serve) ----------------------------------------
    api_host: str = Field("127.0.0.1", description="Bind address of the read API")
    api_port: int = Field(8095, description="Port of the read API and dashboard")
    api_keys: SecretStr | None = Field(
        None,
        description='API keys as JSON {"key id": {"key": "...", "role": "analyst"}}; roles: '
        "public, analyst, auditor, operator; no key = public (secret)",
    )
    api_keys_file: Path | None = Field(
        None, description="...or a JSON file of that shape (e.g. a mounted secret)"
    )
    api_suppression_k: int = Field(
        5,
        ge=1,
        description="Small-cell suppression: a value from fewer samples is null for the public",
    )
    api_suppression_k_per_kpi: str | None = Field(
        None, description='Per-KPI k as JSON {"kpi": k}, overriding api_suppression_k'
    )
    api_query_time_limit_s: float = Field(
        5.0, gt=0, le=600, description="Time limit of each API query (max_execution_time)"
    )
    api_max_span_days: int = Field(
        31, ge=1, description="Longest from..to span a series or equity request may ask for"
    )
    api_page_size: int = Field(
        2000, ge=1, le=100_000, description="Largest page of a series (cursor pagination)"
    )
    api_cache_max_age_s: int = Field(
        30, ge=0, description="Cache-Control max-age of API answers, seconds"
    )
    api_stream_group_id: str = Field(
        "citystream-api-stream", description="Consumer group prefix of /v1/stream's reader"
    )
    api_map_tile_url: str | None = Field(
        None, description="Optional XYZ tile URL under the dashboard's map (none: no base map)"
    )

    # --- privacy: contracts, pseudonyms, opt-outs, resident rights ----------------------
    privacy_pseudonym_keys: SecretStr | None = Field(
        None,
        description="HMAC keys of the pseudonyms (secret): 'id=secret' pairs, comma "
        "separated, the first pseudonymises, the others recognise earlier pseudonyms "
        "(rotation); unset: a random key under data_dir/privacy (one machine only)",
    )
    privacy_subject_key_dir: Path | None = Field(
        None,
        description="Directory of the per-subject encryption keys (crypto-shredding), apart "
        "from Kafka and ClickHouse (default: data_dir/privacy/subject-keys)",
    )

    # --- audit trail and signed KPI statements ------------------------------------------
    statement_signing_key: SecretStr | None = Field(
        None,
        description="Ed25519 private key (PEM, PKCS #8) that signs KPI statements (secret); "
        "wins over statement_key_file",
    )
    statement_key_file: Path | None = Field(
        None,
        description="PEM file of the KPI statements' Ed25519 signing key (default: "
        "data_dir/keys/statements-ed25519.pem, created by the first statement issue)",
    )
    statement_public_key: str | None = Field(
        None,
        description="Ed25519 public keys `citystream statement verify` trusts: one key (PEM, "
        "base64 or hex of its raw 32 bytes), a keyring file or a directory of them; each "
        "statement is checked with the key its key id names (unset: only --public-key)",
    )
    audit_signing_key: SecretStr | None = Field(
        None,
        description="Ed25519 private key (PEM, PKCS #8) that signs the audit log's checkpoints "
        "(secret); wins over audit_key_file",
    )
    audit_key_file: Path | None = Field(
        None,
        description="PEM file of the audit checkpoints' Ed25519 signing key (default: "
        "data_dir/keys/audit-ed25519.pem, created by the first checkpoint)",
    )
    audit_public_key: str | None = Field(
        None,
        description="Ed25519 public keys `citystream audit verify` trusts: one key (PEM, base64 "
        "or hex of its raw 32 bytes), a keyring file or a directory of them; each checkpoint "
        "is checked with the key its key id names (unset: the signing key's own)",
    )
    audit_checkpoint_interval_s: float = Field(
        60.0,
        ge=0,
        description="citystream serve signs an audit checkpoint this often when the log grew "
        "(0: only on demand, citystream audit checkpoint)",
    )
    audit_write_timeout_s: float = Field(
        10.0,
        gt=0,
        description="Longest wait for Kafka to acknowledge an audit record; then the request fails",
    )

    # --- industrial and device-platform ingest (OPC UA, oneM2M, WoT) --------------------

    # --- city simulator (citystream simulate; flags override) ---------------------------
    simulator_seed: int = Field(
        42, description="Seed of the city simulator: same seed, same events"
    )
    simulator_meters: int = Field(500, ge=0, description="Simulated energy meters")
    simulator_bins: int = Field(200, ge=0, description="Simulated waste bins")
    simulator_requests_per_hour: float = Field(
        30.0, ge=0, description="Mean service requests opened per hour, city-wide"
    )

    @property
    def topic_min_insync_replicas(self) -> int:
        """With acks=all, a write needs this many in-sync copies (2 of 3 in production)."""
        return self.min_insync_replicas or min(2, self.replication_factor)

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
        if self.kafka_ssl_ca_file:
            conf["ssl.ca.location"] = str(self.kafka_ssl_ca_file)
        conf.update(self.kafka_extra)
        conf.update(overrides)
        return conf

    def registry_config(self) -> dict[str, Any]:
        # A bounded timeout: a lost reply costs seconds and a retry, not a hung process.
        conf: dict[str, Any] = {"url": self.schema_registry_url, "timeout": 10}
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
