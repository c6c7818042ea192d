"""Running the pipeline's processes together, and knowing when they have caught up.

Used by the demo, the benchmark and the integration tests, so all three exercise the same
`citystream process` and `citystream sink clickhouse` commands a user runs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.kafka import end_offsets, group_lag
from core.settings import Settings


class PipelineError(RuntimeError):
    pass


def settings_env(settings: Settings) -> dict[str, str]:
    """The settings as CITYSTREAM_* variables, so a child process sees the same config."""
    env = dict(os.environ)
    for name, value in settings.model_dump(exclude_none=True).items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[f"CITYSTREAM_{name.upper()}"] = (
            json.dumps(value) if isinstance(value, dict) else str(value)
        )
    return env


def launch(
    settings: Settings, log_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``citystream ARGS`` as a child process with ``settings`` (and ``env`` on top of the
    environment, e.g. OTEL_* variables), output appended to a log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "citystream.cli", *args],
            env={**settings_env(settings), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def check_alive(self) -> None:
        code = self.process.poll()
        if code is not None:
            raise PipelineError(
                f"{self.name} exited with code {code}; last log lines ({self.log_path}):\n"
                + self.log_tail()
            )

    def stop(self, timeout: float = 30.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


@dataclass
class Pipeline:
    """The processor and the ClickHouse sink as child processes."""

    settings: Settings
    services: dict[str, Service] = field(default_factory=dict)
    processors: tuple[str, ...] = ()  # what `citystream process` runs (default: all)
    env: dict[str, str] = field(default_factory=dict)  # on top of the environment (OTEL_*)
    ports: dict[str, int] = field(default_factory=dict)  # extra workers' web/metrics ports

    def start(self, *which: str) -> None:
        """Start services by name: ``processor`` (``processor2``, … for more workers), ``sink``,
        ``alerts`` (the alerts processor)."""
        logs = self.settings.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        for name in which or ("processor", "sink"):
            if name.startswith("processor"):
                command = ["process", *self.processors, "--web-port", str(self.web_port(name))]
                command += ["--metrics-port", str(self.metrics_port(name))]
            elif name == "alerts":
                command = ["process", "alerts", "--web-port", str(self.settings.alerts_web_port)]
            else:
                command = ["sink", "clickhouse"]
            log_path = logs / f"{self.settings.topic_prefix or ''}{name}.log"
            process = launch(self.settings, log_path, *command, env=self.env)
            self.services[name] = Service(name, process, log_path)
        self.wait_ready(which or ("processor", "sink"))

    def wait_ready(self, which: tuple[str, ...], timeout: float = 120.0) -> None:
        def probe(name: str) -> Any:
            if name.startswith("processor"):  # any processor's counters: the page answers
                return http_get(f"http://127.0.0.1:{self.web_port(name)}/citystream/stats/")
            if name == "alerts":
                return self.alerts_stats()
            return http_get(f"http://127.0.0.1:{self.settings.query_port}/health")

        deadline = time.monotonic() + timeout
        for name in which:
            while True:
                self.services[name].check_alive()
                try:
                    probe(name)
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise PipelineError(
                            f"{name} not ready after {timeout}s:\n{self.services[name].log_tail()}"
                        ) from None
                    time.sleep(0.3)

    def web_port(self, name: str) -> int:
        """``processor`` on the configured port, ``processorN`` on a free one, kept."""
        if name == "processor":
            return self.settings.processor_web_port
        return self._extra_port("web", name)

    def metrics_port(self, name: str) -> int:
        """Like :meth:`web_port`; 0 (no /metrics) stays 0 for every worker."""
        if name == "processor" or not self.settings.processor_metrics_port:
            return self.settings.processor_metrics_port
        return self._extra_port("metrics", name)

    def _extra_port(self, kind: str, name: str) -> int:
        """A port the OS says is free now, the same for the service's whole life."""
        key = f"{kind}:{name}"
        if key not in self.ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.ports[key] = int(sock.getsockname()[1])
        return self.ports[key]

    def processor_stats(self, name: str = "processor", domain: str | None = None) -> dict[str, Any]:
        """The reconciliation counters of one KPI family's processor in a worker (default:
        the first it runs, traffic in a worker that runs them all)."""
        result: dict[str, Any] = self.worker_stats(name)[domain or self.main_processor]
        return result

    def worker_stats(self, name: str = "processor") -> dict[str, dict[str, Any]]:
        """Every processor's counters in one worker, by processor name."""
        url = f"http://127.0.0.1:{self.web_port(name)}/citystream/stats/"
        result: dict[str, dict[str, Any]] = json.loads(http_get(url))
        return result

    @property
    def main_processor(self) -> str:
        return self.processors[0] if self.processors else "traffic"

    def alerts_stats(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.settings.alerts_web_port}/citystream/stats/"
        result: dict[str, Any] = json.loads(http_get(url))
        return result

    def check_alive(self) -> None:
        for service in self.services.values():
            service.check_alive()

    def restart_exited(self) -> list[str]:
        """Start again every service that exited, as an orchestrator would; their names."""
        exited = [n for n, svc in self.services.items() if svc.process.poll() is not None]
        for name in exited:
            self.services.pop(name)
            self.start(name)
        return exited

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash or an OOM kill would: no cleanup, no final commit."""
        service = self.services.pop(name)
        service.process.kill()
        service.process.wait(30)

    def stop(self) -> None:
        for service in reversed(list(self.services.values())):
            service.stop()

    def wait_processed(self, published: int, timeout: float = 600.0) -> dict[str, Any]:
        """Until every published reading is accepted, a duplicate or late."""
        deadline = time.monotonic() + timeout
        while True:
            self.check_alive()
            stats = self.processor_stats()
            if stats["accepted"] + stats["duplicates"] + stats["late"] >= published:
                return stats
            if time.monotonic() > deadline:
                raise PipelineError(f"processor saw {stats} of {published} readings in {timeout}s")
            time.sleep(0.2)

    def wait_caught_up(self, published: int, timeout: float = 600.0) -> dict[str, Any]:
        """Processor has seen everything, idle windows are out, and the sink committed all."""
        s = self.settings
        stats = self.wait_processed(published, timeout)
        deadline = time.monotonic() + timeout
        quiet_needed = 2 * s.idle_timeout_s + 2.0
        kpi_topic = s.topic("city.kpi.batches.v1")
        last_end, quiet_since = -1, time.monotonic()
        while True:
            self.check_alive()
            end = sum(end_offsets(s, kpi_topic).values())
            if end != last_end:
                last_end, quiet_since = end, time.monotonic()
            quiet = time.monotonic() - quiet_since >= quiet_needed
            if quiet and group_lag(s, s.group(s.sink_group_id), kpi_topic) == 0:
                return self.processor_stats()
            if time.monotonic() > deadline:
                raise PipelineError(f"pipeline did not settle within {timeout}s (stats {stats})")
            time.sleep(0.5)


def wait_settled(pipeline: Pipeline, timeout: float = 600.0) -> dict[str, Any]:
    """No input for the processor, no new KPIs, and the sink has committed them all.

    For runs where the processor's counters cannot be compared with what was published
    (it restarted and re-read part of its input).
    """
    s = pipeline.settings
    quiet_needed = 2 * s.idle_timeout_s + 2.0
    kpi_topic = s.topic("city.kpi.batches.v1")
    deadline = time.monotonic() + timeout
    last_end, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        pipeline.check_alive()
        workers = [n for n in pipeline.services if n.startswith("processor")]
        try:
            every = [p for n in workers for p in pipeline.worker_stats(n).values()]
            stats = pipeline.processor_stats(workers[0])
        except OSError:  # a worker's web server restarting (e.g. after a broker restart)
            time.sleep(0.5)
            continue
        end = sum(end_offsets(s, kpi_topic).values())
        if end != last_end:
            last_end, quiet_since = end, time.monotonic()
        quiet = time.monotonic() - quiet_since >= quiet_needed
        idle = min(x["idle_seconds"] for x in every) >= quiet_needed
        if quiet and idle and group_lag(s, s.group(s.sink_group_id), kpi_topic) == 0:
            return stats
        time.sleep(0.5)
    raise PipelineError(f"pipeline did not settle within {timeout}s")


def http_get(url: str, timeout: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        body: bytes = response.read()
        return body.decode()
