"""Start, check and stop the local Kafka + schema-registry stack, without Docker.

Library use::

    from infra.stack import StackConfig, up, down
    cfg = StackConfig()
    up(cfg)                   # Kafka at cfg.bootstrap_servers, registry at cfg.registry_url
    down(cfg)

CLI: ``python -m infra.stack {up,down,status,fetch,reset} [options]``.
Services run detached and are found again through pid files in ``data_dir``,
so ``up`` and ``down`` may be called from different processes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from infra import _java, _proc, kafka_security, kafka_service, mosquitto_service, registry_service
from infra._service import Progress, Service
from infra.config import StackConfig, default_cache_dir
from infra.errors import StackError

__all__ = [
    "ServiceStatus",
    "StackConfig",
    "StackError",
    "down",
    "fetch",
    "main",
    "print_status",
    "reset",
    "status",
    "stop_service",
    "up",
]

STOP_TIMEOUT_S = 30.0
_POLL_S = 0.5


@dataclass(frozen=True)
class ServiceStatus:
    """Snapshot of one service: is our process alive, and does it answer?"""

    name: str
    running: bool
    ready: bool
    pid: int | None
    endpoint: str
    log: Path


def _services(cfg: StackConfig) -> list[Service]:
    """Services in start order (Kafka first; the registry is stopped first).

    Mosquitto comes last, when configured and installed (see ``mosquitto_service``).
    """
    return [
        kafka_service.service(cfg),
        registry_service.service(cfg),
        *mosquitto_service.services(cfg),
    ]


def fetch(cfg: StackConfig, progress: Progress = print) -> None:
    """Download both services into ``cfg.cache_dir``; a no-op when already cached."""
    with _proc.locked(cfg.cache_dir / ".lock"):
        kafka_service.fetch(cfg, progress)
        registry_service.fetch(cfg, progress)


def _check_ports(cfg: StackConfig, svc: Service) -> None:
    """Fail early, and clearly, if another process holds one of the service's ports."""
    for label, port in svc.ports:
        try:
            busy = _proc.port_in_use(cfg.bind_host, port)
        except OSError as exc:
            raise StackError(f"cannot bind {label} port {cfg.bind_host}:{port}: {exc}") from exc
        if busy:
            raise StackError(
                f"{label} port {cfg.bind_host}:{port} is already in use by another process "
                f"(not a {svc.name} started from {cfg.data_dir}). Stop that process or pick "
                "another port (see `python -m infra.stack up --help`)."
            )


def _launch(svc: Service, cmd: list[str], progress: Progress) -> int:
    """Launch one prepared service detached and record its pid."""
    _proc.rotate(svc.stdout_log)
    try:
        pid = _proc.spawn(cmd, svc.workdir, svc.stdout_log)
    except OSError as exc:
        raise StackError(f"{svc.name}: {exc}") from exc
    _proc.write_pid(svc.pid_file, pid)
    progress(f"{svc.name}: started (pid {pid}), log {svc.log}")
    return pid


def _wait_ready(
    svc: Service,
    pid: int,
    launched: float | None,
    deadline: float,
    progress: Progress,
) -> None:
    """Poll until ``svc`` answers; raise StackError (with its log) if it dies or times out.

    ``launched`` is the wall-clock (time.time) launch moment if this call started
    the service: used for the elapsed time and to leave older runs' log lines out
    of error messages.
    """
    while True:
        if svc.is_ready():
            took = "" if launched is None else f" ({time.time() - launched:.1f}s after launch)"
            progress(f"{svc.name}: ready at {svc.endpoint}{took}")
            return
        if not _proc.is_alive(pid):
            _proc.remove_pid(svc.pid_file)
            raise StackError(f"{svc.name} exited during startup.\n{svc.log_tail(launched or 0.0)}")
        if time.monotonic() >= deadline:
            raise StackError(
                f"{svc.name} did not become ready at {svc.endpoint} in time.\n"
                f"{svc.log_tail(launched or 0.0)}"
            )
        time.sleep(_POLL_S)


def _start_missing(
    cfg: StackConfig,
    services: list[Service],
    started: dict[str, int],
    progress: Progress,
) -> dict[str, int]:
    """Start the services that are not running; record their pids in ``started``.

    Everything that can fail cleanly (port conflicts, missing Java, config,
    storage format) is done for all services before the first process starts.
    Returns the pid of every service, already running or just started.
    """
    pids: dict[str, int] = {}
    to_start = []
    for svc in services:
        pid = _proc.running_pid(svc.pid_file, svc.markers)
        if pid is None:
            _proc.remove_pid(svc.pid_file)  # stale: its process is gone or is not ours
            _check_ports(cfg, svc)
            to_start.append(svc)
        else:
            progress(f"{svc.name}: already running (pid {pid})")
            pids[svc.name] = pid
    commands = [(svc, svc.prepare(progress)) for svc in to_start]
    for svc, cmd in commands:
        started[svc.name] = pids[svc.name] = _launch(svc, cmd, progress)
    return pids


def up(cfg: StackConfig, progress: Progress = print, timeout_s: float = 180) -> None:
    """Fetch if needed, start whatever is not running, and wait until both answer.

    Idempotent: healthy services that are already running are left alone.
    ``timeout_s`` bounds the wait for readiness (downloads are not counted).
    On failure, the services this call started are stopped again, so a failed
    ``up`` leaves nothing half-started behind; then StackError is raised.
    """
    fetch(cfg, progress)
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    with _proc.locked(cfg.data_dir / ".lock"):
        services = _services(cfg)
        if not mosquitto_service.startable(cfg, progress):
            services = [svc for svc in services if svc.name != mosquitto_service.NAME]
        started: dict[str, int] = {}
        try:
            launched = time.time()
            pids = _start_missing(cfg, services, started, progress)
            deadline = time.monotonic() + timeout_s
            for svc in services:
                since = launched if svc.name in started else None
                _wait_ready(svc, pids[svc.name], since, deadline, progress)
            if kafka_security.enabled(cfg):
                kafka_security.ensure_user(cfg)
                progress(f"kafka: SCRAM user {kafka_security.credentials(cfg)[0]!r} ready")
        except BaseException:
            for svc in reversed(services):
                pid = started.get(svc.name)
                if pid is not None and _proc.is_alive(pid):
                    _stop_service(svc, pid, progress)
            raise


def _stop_service(svc: Service, pid: int, progress: Progress) -> None:
    """Stop one of our processes and forget its pid file."""
    progress(f"{svc.name}: stopping (pid {pid}) ...")
    began = time.monotonic()
    clean = _proc.stop(pid, STOP_TIMEOUT_S)
    how = "stopped" if clean else f"killed (no exit {STOP_TIMEOUT_S:.0f}s after SIGTERM)"
    progress(f"{svc.name}: {how} in {time.monotonic() - began:.1f}s")
    _proc.remove_pid(svc.pid_file)


def down(cfg: StackConfig, progress: Progress = print) -> None:
    """Stop both services (SIGTERM, then SIGKILL after 30 s); idempotent."""
    if not cfg.data_dir.is_dir():
        progress(f"nothing to stop: {cfg.data_dir} does not exist")
        return
    with _proc.locked(cfg.data_dir / ".lock"):
        for svc in reversed(_services(cfg)):
            pid = _proc.read_pid(svc.pid_file)
            if pid is None:
                if svc.pid_file.exists():
                    _proc.remove_pid(svc.pid_file)
                    progress(f"{svc.name}: not running (removed unreadable pid file)")
                else:
                    progress(f"{svc.name}: not running")
            elif _proc.is_alive(pid) and _proc.is_ours(pid, svc.markers):
                _stop_service(svc, pid, progress)
            else:
                progress(f"{svc.name}: not running (removed stale pid file, pid {pid})")
                _proc.remove_pid(svc.pid_file)


def stop_service(cfg: StackConfig, name: str, progress: Progress = print) -> bool:
    """Stop one service of the stack (e.g. ``"kafka"`` for a broker-outage drill).

    Its data stays in ``cfg.data_dir``; a later :func:`up` with the same config starts it
    again on the same data. Returns False when it was not running.
    """
    by_name = {svc.name: svc for svc in _services(cfg)}
    if name not in by_name:
        raise StackError(f"no service {name!r} in the stack (have: {', '.join(by_name)})")
    svc = by_name[name]
    with _proc.locked(cfg.data_dir / ".lock"):
        pid = _proc.running_pid(svc.pid_file, svc.markers)
        if pid is None:
            progress(f"{svc.name}: not running")
            return False
        _stop_service(svc, pid, progress)
        return True


def status(cfg: StackConfig) -> dict[str, ServiceStatus]:
    """Per service: our process alive? answering? plus pid, endpoint and log path."""
    result: dict[str, ServiceStatus] = {}
    for svc in _services(cfg):
        pid = _proc.running_pid(svc.pid_file, svc.markers)
        result[svc.name] = ServiceStatus(
            name=svc.name,
            running=pid is not None,
            ready=pid is not None and svc.is_ready(),
            pid=pid,
            endpoint=svc.endpoint,
            log=svc.log,
        )
    return result


def reset(cfg: StackConfig, progress: Progress = print) -> None:
    """Stop the stack and delete its Kafka and registry state (the cache is kept)."""
    down(cfg, progress)
    for state in (kafka_service.state_dir(cfg), registry_service.state_dir(cfg)):
        if state.exists():
            shutil.rmtree(state)
            progress(f"deleted {state}")


# --------------------------------------------------------------------------- CLI


def _env_int(name: str, default: int) -> int:
    """Integer environment variable, with a clear error when it is not a number."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"error: {name}={raw!r} is not an integer") from None


def _parser() -> argparse.ArgumentParser:
    """CLI arguments; defaults come from CITYSTREAM_* variables, read only here."""
    env = os.environ
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env.get("CITYSTREAM_DATA_DIR") or ".citystream"),
        help="runtime state: logs, pid files, Kafka data (env CITYSTREAM_DATA_DIR; "
        "default ./.citystream)",
    )
    common.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(env["CITYSTREAM_CACHE_DIR"]) if env.get("CITYSTREAM_CACHE_DIR") else None,
        help="downloads (env CITYSTREAM_CACHE_DIR; default ${XDG_CACHE_HOME:-~/.cache}/citystream)",
    )
    ports = (
        ("--kafka-port", "CITYSTREAM_KAFKA_PORT", 9092, "Kafka client port"),
        ("--controller-port", "CITYSTREAM_CONTROLLER_PORT", 9093, "KRaft controller port"),
        ("--registry-port", "CITYSTREAM_REGISTRY_PORT", 8081, "registry HTTP port"),
        ("--mosquitto-port", "CITYSTREAM_MQTT_PORT", 1883, "Mosquitto MQTT port"),
    )
    for flag, var, default, what in ports:
        common.add_argument(
            flag,
            type=int,
            default=_env_int(var, default),
            help=f"{what} (env {var}; default {default})",
        )
    for flag, var, what in (
        ("--scram-port", "CITYSTREAM_KAFKA_SCRAM_PORT", "extra SCRAM-SHA-512 listener"),
        ("--tls-port", "CITYSTREAM_KAFKA_TLS_PORT", "extra SCRAM-over-TLS listener"),
    ):
        common.add_argument(
            flag,
            type=int,
            default=_env_int(var, 0) or None,
            help=f"{what} (env {var}; default: none)",
        )
    common.add_argument("--kafka-version", default=StackConfig.kafka_version)
    common.add_argument("--registry-version", default=StackConfig.registry_version)
    common.add_argument(
        "--java-home", type=Path, default=None, help="JDK for both services (default: auto)"
    )
    common.add_argument(
        "--registry-storage",
        choices=("memory", "file"),
        default=StackConfig.registry_storage,
        help="file: schemas kept in the data dir, so they survive down/up (default); "
        "memory: schemas are lost on every restart",
    )

    parser = argparse.ArgumentParser(
        prog="python -m infra.stack",
        description="Local Kafka 4.x (KRaft) + Apicurio schema registry, no Docker.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_up = sub.add_parser("up", parents=[common], help="fetch, start and wait until ready")
    p_up.add_argument("--timeout", type=float, default=180.0, help="readiness timeout, seconds")
    sub.add_parser("down", parents=[common], help="stop both services")
    p_status = sub.add_parser(
        "status", parents=[common], help="show state (exit 3 unless all ready)"
    )
    p_status.add_argument("--json", action="store_true", help="machine-readable output")
    sub.add_parser("fetch", parents=[common], help="download both services into the cache")
    sub.add_parser("reset", parents=[common], help="stop and delete Kafka/registry state")
    return parser


REGISTRY_FALLBACK_VERSION = "3.0.9"  # the newest 3.x that runs on Java 17


def registry_version_for(java_home: Path | None, wanted: str = StackConfig.registry_version) -> str:
    """``wanted`` when a Java 21+ JDK exists, else the Java 17 fallback (said, not silent)."""
    if wanted != StackConfig.registry_version or _java.has_java(21, java_home):
        return wanted
    print(
        f"registry: no Java 21+ found for Apicurio {wanted}; "
        f"using Apicurio {REGISTRY_FALLBACK_VERSION}, which runs on Java 17"
    )
    return REGISTRY_FALLBACK_VERSION


def _config(args: argparse.Namespace) -> StackConfig:
    """Build the StackConfig described by parsed CLI arguments."""
    return StackConfig(
        data_dir=args.data_dir,
        cache_dir=args.cache_dir or default_cache_dir(),
        kafka_port=args.kafka_port,
        controller_port=args.controller_port,
        registry_port=args.registry_port,
        kafka_version=args.kafka_version,
        registry_version=registry_version_for(args.java_home, args.registry_version),
        java_home=args.java_home,
        registry_storage=args.registry_storage,
        mosquitto_port=args.mosquitto_port,
        scram_port=args.scram_port,
        tls_port=args.tls_port,
    )


def print_status(cfg: StackConfig, as_json: bool = False) -> int:
    """Print status; exit code 0 when every service is ready, else 3."""
    states = status(cfg)
    if as_json:
        payload = {name: asdict(st) | {"log": str(st.log)} for name, st in states.items()}
        print(json.dumps(payload, indent=2))
    else:
        print(f"{'service':<9} {'state':<8} {'pid':<8} {'endpoint':<42} log")
        for st in states.values():
            state = "ready" if st.ready else "running" if st.running else "stopped"
            print(f"{st.name:<9} {state:<8} {st.pid or '-'!s:<8} {st.endpoint:<42} {st.log}")
    return 0 if all(st.ready for st in states.values()) else 3


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit code."""
    args = _parser().parse_args(argv)
    try:
        cfg = _config(args)
        if args.command == "up":
            began = time.monotonic()
            up(cfg, timeout_s=args.timeout)
            print(f"stack up in {time.monotonic() - began:.1f}s")
            print(f"  bootstrap servers: {cfg.bootstrap_servers}")
            print(f"  registry url:      {cfg.registry_url}")
            if mosquitto_service.binary() and cfg.mosquitto_port is not None:
                print(f"  mqtt broker:       {cfg.connect_host}:{cfg.mosquitto_port}")
        elif args.command == "down":
            down(cfg)
        elif args.command == "status":
            return print_status(cfg, args.json)
        elif args.command == "fetch":
            fetch(cfg)
        elif args.command == "reset":
            reset(cfg)
    except (StackError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
