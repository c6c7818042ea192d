"""Apache Kafka 4.x, single node in KRaft mode (broker + controller in one JVM).

The broker jars are resolved from Maven Central with ``infra/kafka/pom.xml``
into ``<cache>/kafka-<version>/libs`` and the broker runs as
``java -cp 'libs/*' kafka.Kafka server.properties``; storage is formatted once
with ``kafka.tools.StorageTool format``.
"""

from __future__ import annotations

import base64
import shutil
import string
import subprocess
import uuid
from pathlib import Path

from infra import _java, _maven, _proc, kafka_security
from infra._service import Progress, Service, markers
from infra.config import StackConfig
from infra.errors import StackError

NAME = "kafka"
RESOURCES = Path(__file__).resolve().parent / "kafka"
MIN_JAVA = 17
_MARKER = ".complete"
_PROBE_TIMEOUT_S = 3.0


def home(cfg: StackConfig) -> Path:
    """Cache folder of one Kafka version."""
    return cfg.cache_dir / f"kafka-{cfg.kafka_version}"


def libs_dir(cfg: StackConfig) -> Path:
    """Folder with every jar of the broker's classpath."""
    return home(cfg) / "libs"


def state_dir(cfg: StackConfig) -> Path:
    """Runtime folder: config, logs and the log.dirs of the broker."""
    return cfg.data_dir / NAME


def log_dir(cfg: StackConfig) -> Path:
    """Kafka ``log.dirs`` (the topic data and the KRaft metadata log)."""
    return state_dir(cfg) / "data"


def is_fetched(cfg: StackConfig) -> bool:
    """True when a previous fetch of this version completed."""
    return (home(cfg) / _MARKER).is_file() and libs_dir(cfg).is_dir()


def fetch(cfg: StackConfig, progress: Progress) -> None:
    """Resolve the broker jars into the cache, unless a complete copy is there."""
    if is_fetched(cfg):
        progress(f"kafka {cfg.kafka_version}: using cached jars in {libs_dir(cfg)}")
        return
    progress(f"kafka {cfg.kafka_version}: resolving broker jars from Maven Central ...")
    root = home(cfg)
    partial = root / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RESOURCES / "pom.xml", root / "pom.xml")
    _maven.run_mvn(
        [
            "-f",
            str(root / "pom.xml"),
            f"{_maven.DEPENDENCY_PLUGIN}:copy-dependencies",
            f"-Dkafka.version={cfg.kafka_version}",
            f"-DoutputDirectory={partial}",
            "-DincludeScope=runtime",
        ],
        cwd=root,
        what=f"org.apache.kafka:kafka_2.13:{cfg.kafka_version}",
    )
    if not (partial / f"kafka_2.13-{cfg.kafka_version}.jar").is_file():
        raise StackError(f"mvn finished but kafka_2.13-{cfg.kafka_version}.jar is not in {partial}")
    shutil.rmtree(libs_dir(cfg), ignore_errors=True)
    partial.rename(libs_dir(cfg))
    (root / _MARKER).write_text(cfg.kafka_version + "\n", encoding="utf-8")
    jars = len(list(libs_dir(cfg).glob("*.jar")))
    progress(f"kafka {cfg.kafka_version}: {jars} jars cached in {libs_dir(cfg)}")


def write_server_properties(cfg: StackConfig) -> Path:
    """Render server.properties from the template (every start: ports may change)."""
    template = string.Template((RESOURCES / "server.properties").read_text(encoding="utf-8"))
    text = template.substitute(
        advertised_host=cfg.connect_host,
        controller_port=cfg.controller_port,
        log_dir=log_dir(cfg),
        **kafka_security.listener_properties(cfg),
    )
    path = state_dir(cfg) / "server.properties"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def random_cluster_id() -> str:
    """A Kafka cluster id: 16 random bytes, URL-safe base64 without padding.

    Same format as ``kafka-storage.sh random-uuid``, minus one JVM start; ids
    starting with '-' are skipped, as Kafka does, because CLIs misread them.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        if not cid.startswith("-"):
            return cid


def _classpath(cfg: StackConfig) -> list[str]:
    """``-cp libs/*``: the JVM expands the wildcard to every jar of the broker."""
    return ["-cp", f"{libs_dir(cfg)}/*"]


def format_storage(cfg: StackConfig, java: str, props: Path, progress: Progress) -> None:
    """Format the KRaft storage once; later starts reuse it (data survives down/up)."""
    if (log_dir(cfg) / "meta.properties").is_file():
        return
    cluster_id = random_cluster_id()
    progress(f"kafka: formatting KRaft storage in {log_dir(cfg)} (cluster id {cluster_id})")
    # No log4j2 file config here: the tool's output is captured below instead,
    # so server.log only ever holds broker lines.
    cmd = [
        java,
        *_classpath(cfg),
        "kafka.tools.StorageTool",
        "format",
        "--cluster-id",
        cluster_id,
        "--config",
        str(props),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise StackError(
            f"kafka storage format failed (exit {out.returncode}):\n{out.stdout}{out.stderr}"
        )


def command(cfg: StackConfig, java: str, props: Path) -> list[str]:
    """Broker command line: modest heap for a dev box, G1 like Kafka's own scripts."""
    return [
        java,
        "-Xms256m",
        f"-Xmx{cfg.kafka_heap}",
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:InitiatingHeapOccupancyPercent=35",
        "-XX:+ExplicitGCInvokesConcurrent",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        *markers(cfg, NAME),
        f"-Dkafka.logs.dir={state_dir(cfg) / 'logs'}",
        f"-Dlog4j2.configurationFile={RESOURCES / 'log4j2.xml'}",
        *_classpath(cfg),
        "kafka.Kafka",
        str(props),
    ]


def prepare(cfg: StackConfig, progress: Progress) -> list[str]:
    """Pick a JVM, write server.properties, format storage if new; return the command."""
    if not is_fetched(cfg):
        raise StackError(f"kafka {cfg.kafka_version} is not in the cache; run fetch first")
    java = _java.find_java(MIN_JAVA, cfg.java_home, f"Kafka {cfg.kafka_version}")
    props = write_server_properties(cfg)
    format_storage(cfg, java, props, progress)
    return command(cfg, java, props)


def is_ready(cfg: StackConfig) -> bool:
    """True when an AdminClient can fetch cluster metadata from the broker."""
    if not _proc.port_open(cfg.connect_host, cfg.kafka_port):
        return False  # Cheap check first: avoids librdkafka connect-refused noise.
    from confluent_kafka import KafkaException  # lazy: only needed when probing
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers, "log_level": 0})
    try:
        metadata = admin.list_topics(timeout=_PROBE_TIMEOUT_S)
    except KafkaException:
        return False
    return bool(metadata.brokers)


def service(cfg: StackConfig) -> Service:
    """The Kafka broker as a managed service."""
    logs = state_dir(cfg) / "logs"
    return Service(
        name=NAME,
        endpoint=cfg.bootstrap_servers,
        pid_file=cfg.data_dir / f"{NAME}.pid",
        log=logs / "server.log",
        stdout_log=logs / "stdout.log",
        workdir=state_dir(cfg),
        ports=(
            ("kafka", cfg.kafka_port),
            ("kafka controller", cfg.controller_port),
            *((("kafka scram", cfg.scram_port),) if cfg.scram_port is not None else ()),
            *((("kafka tls", cfg.tls_port),) if cfg.tls_port is not None else ()),
        ),
        markers=markers(cfg, NAME),
        prepare=lambda progress: prepare(cfg, progress),
        is_ready=lambda: is_ready(cfg),
    )
