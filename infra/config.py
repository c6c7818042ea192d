"""Settings of the local stack; plain data, no environment lookups at import time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

_WILDCARD_HOSTS = frozenset({"", "0.0.0.0", "::", "[::]"})


def default_cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/citystream``: downloads shared by all checkouts."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "citystream"


@dataclass(frozen=True)
class StackConfig:
    """Where the stack keeps its files and which ports/versions it uses.

    ``data_dir`` holds runtime state (logs, pid files, Kafka log dirs) and is
    safe to delete when the stack is down; ``cache_dir`` holds downloads that
    are reused across runs and checkouts. Relative paths are made absolute at
    construction, so later calls agree on them even if the cwd changes.
    """

    data_dir: Path = Path(".citystream")
    cache_dir: Path = field(default_factory=default_cache_dir)
    kafka_port: int = 9092
    controller_port: int = 9093
    registry_port: int = 8081
    kafka_version: str = "4.1.1"
    registry_version: str = "3.3.3"
    """Apicurio 3.3.x needs Java 21; see :func:`infra.stack.registry_version_for`."""
    bind_host: str = "127.0.0.1"
    java_home: Path | None = None
    """JDK to use for both services; None means: pick a new-enough one per service."""
    kafka_heap: str = "1g"
    registry_heap: str = "512m"
    registry_compatibility: str | None = "BACKWARD"
    """Registry-wide default compatibility (Confluent's default); None keeps Apicurio's NONE."""
    registry_storage: str = "file"
    """Registry database: "memory" is emptied by every restart; "file" (H2 in data_dir)
    survives down/up like Kafka's data does, so old records' schema ids stay resolvable."""
    scram_port: int | None = None
    """Port of an extra SASL_PLAINTEXT (SCRAM-SHA-512) listener; None: no such listener."""
    tls_port: int | None = None
    """Port of an extra SASL_SSL (SCRAM over TLS) listener; None: no such listener."""
    mosquitto_port: int | None = None
    """MQTT port of the optional Mosquitto broker; None (the library default): no broker.
    The CLIs pass CITYSTREAM_MQTT_PORT (1883), see infra/mosquitto_service.py."""
    mosquitto_tls_port: int | None = None
    """Port of an extra MQTT-over-TLS listener of Mosquitto (certificate and CA of
    infra/kafka_security.py); None: no such listener."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser().resolve())
        object.__setattr__(self, "cache_dir", Path(self.cache_dir).expanduser().resolve())
        if self.java_home is not None:
            object.__setattr__(self, "java_home", Path(self.java_home).expanduser().resolve())
        ports = {
            "kafka_port": self.kafka_port,
            "controller_port": self.controller_port,
            "registry_port": self.registry_port,
        }
        for name, port in ports.items():
            if not 0 < port < 65536:
                raise ValueError(f"{name}={port} is not a TCP port number")
        optional = {
            "scram_port": self.scram_port,
            "tls_port": self.tls_port,
            "mosquitto_port": self.mosquitto_port,
            "mosquitto_tls_port": self.mosquitto_tls_port,
        }
        for name, maybe in optional.items():
            if maybe is not None:
                ports[name] = maybe
                if not 0 < maybe < 65536:
                    raise ValueError(f"{name}={maybe} is not a TCP port number")
        if self.registry_storage not in ("memory", "file"):
            raise ValueError(
                f"registry_storage must be 'memory' or 'file', not {self.registry_storage!r}"
            )
        if len(set(ports.values())) != len(ports):
            raise ValueError(f"ports must be distinct, got {ports}")

    @property
    def connect_host(self) -> str:
        """Host clients use: the bind host, or loopback when binding to all interfaces."""
        return "127.0.0.1" if self.bind_host in _WILDCARD_HOSTS else self.bind_host

    @property
    def bootstrap_servers(self) -> str:
        """Kafka ``bootstrap.servers`` value for clients."""
        return f"{self.connect_host}:{self.kafka_port}"

    @property
    def registry_url(self) -> str:
        """Base URL of the registry's Confluent-compatible API (for SchemaRegistryClient)."""
        return f"http://{self.connect_host}:{self.registry_port}/apis/ccompat/v7"
