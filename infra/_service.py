"""What the orchestrator needs to know about one managed JVM service."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from infra._proc import LAUNCH_HEADER, tail
from infra.config import StackConfig

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Service:
    """Static description of a service plus its two behaviours (prepare, is_ready)."""

    name: str
    endpoint: str
    pid_file: Path
    log: Path
    """Main log file (reported by status)."""
    stdout_log: Path
    """Where the process' stdout/stderr are appended (JVM crashes land here)."""
    workdir: Path
    ports: tuple[tuple[str, int], ...]
    """(label, port) pairs the service binds; checked for conflicts before start."""
    markers: tuple[str, ...]
    """JVM arguments that identify our process on its command line."""
    prepare: Callable[[Progress], list[str]]
    """Write config, format storage if needed; return the command line to start."""
    is_ready: Callable[[], bool]
    """True once the service answers real requests."""

    def log_tail(self, since: float = 0.0, lines: int = 30) -> str:
        """Log lines written by the latest launch (at wall time ``since``), for errors."""
        parts = []
        for path in dict.fromkeys((self.log, self.stdout_log)):
            try:
                if path.stat().st_mtime < since:
                    continue  # untouched since launch: lines from an older run
            except FileNotFoundError:
                continue
            text = tail(path, 400)
            if path == self.stdout_log:  # appended across runs: keep the last run only
                text = text.rpartition(LAUNCH_HEADER)[2].partition("\n")[2]
            text = "\n".join(text.splitlines()[-lines:]).strip("\n")
            if text:
                parts.append(f"--- last lines of {path} ---\n{text}")
        return "\n".join(parts) or f"(no new log output in {self.log})"


def markers(cfg: StackConfig, name: str) -> tuple[str, ...]:
    """JVM system properties that tag a process as this stack's ``name`` service."""
    return (f"-Dcitystream.service={name}", f"-Dcitystream.home={cfg.data_dir}")
