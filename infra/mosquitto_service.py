"""Mosquitto, the MQTT broker of the local stack (from Debian's ``mosquitto`` package).

Optional: ``up`` starts it as a third service when ``StackConfig.mosquitto_port`` is set
(the CLIs set it from ``CITYSTREAM_MQTT_PORT``) and the ``mosquitto`` binary exists, and
says clearly when the binary is missing. Nothing is downloaded: ``apt-get install -y
mosquitto``. The config is rendered from ``mosquitto/mosquitto.conf.tmpl`` and its path
on the command line marks the process as ours.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import string
from pathlib import Path

from infra import _proc, kafka_security
from infra._service import Progress, Service
from infra.config import StackConfig
from infra.errors import StackError

NAME = "mosquitto"
RESOURCES = Path(__file__).resolve().parent / "mosquitto"
INSTALL_HINT = "apt-get install -y mosquitto"
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")
_PROBE_TIMEOUT_S = 2.0
# MQTT 3.1.1 CONNECT (clean session, keepalive 10 s, client id "citystream-probe").
_CONNECT = bytes([0x10, 28, 0, 4]) + b"MQTT" + bytes([4, 2, 0, 10, 0, 16]) + b"citystream-probe"
_CONNACK_OK = bytes([0x20, 2, 0, 0])
_DISCONNECT = bytes([0xE0, 0])


def binary() -> str | None:
    """The mosquitto executable (Debian installs it in /usr/sbin, often not on PATH)."""
    found = shutil.which("mosquitto")
    if found:
        return found
    for folder in _SBIN_DIRS:
        path = Path(folder) / "mosquitto"
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def state_dir(cfg: StackConfig) -> Path:
    return cfg.data_dir / NAME


def config_path(cfg: StackConfig) -> Path:
    return state_dir(cfg) / "mosquitto.conf"


def write_config(cfg: StackConfig, port: int) -> Path:
    template = string.Template((RESOURCES / "mosquitto.conf.tmpl").read_text(encoding="utf-8"))
    path = config_path(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        template.substitute(
            port=port,
            bind_host=cfg.bind_host,
            user=getpass.getuser(),
            tls_listener=tls_listener(cfg),
        ),
        encoding="utf-8",
    )
    return path


def tls_listener(cfg: StackConfig) -> str:
    """An MQTT-over-TLS listener when ``mosquitto_tls_port`` is set (clients trust
    :func:`infra.kafka_security.ca_file`); else nothing."""
    if cfg.mosquitto_tls_port is None:
        return ""
    kafka_security.ensure_certificates(cfg)
    pem = kafka_security.broker_pem(cfg)  # the key, then the certificate chain
    return "\n".join(
        [
            f"listener {cfg.mosquitto_tls_port} {cfg.bind_host}",
            f"certfile {pem}",
            f"keyfile {pem}",
            "tls_version tlsv1.2",
        ]
    )


def prepare(cfg: StackConfig, port: int) -> list[str]:
    exe = binary()
    if exe is None:
        raise StackError(f"mosquitto is not installed: {INSTALL_HINT}")
    return [exe, "-c", str(write_config(cfg, port))]


def is_ready(host: str, port: int) -> bool:
    """True when the broker accepts an MQTT CONNECT (not just a TCP connection)."""
    try:
        with socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S) as sock:
            sock.sendall(_CONNECT)
            answer = sock.recv(4)
            sock.sendall(_DISCONNECT)
            return answer == _CONNACK_OK
    except OSError:
        return False


def service(cfg: StackConfig, port: int) -> Service:
    log = state_dir(cfg) / "mosquitto.log"
    return Service(
        name=NAME,
        endpoint=f"mqtt://{cfg.connect_host}:{port}",
        pid_file=cfg.data_dir / f"{NAME}.pid",
        log=log,
        stdout_log=log,
        workdir=state_dir(cfg),
        ports=((NAME, port),),
        markers=(str(config_path(cfg)),),
        prepare=lambda _progress: prepare(cfg, port),
        is_ready=lambda: is_ready(cfg.connect_host, port),
    )


def services(cfg: StackConfig) -> list[Service]:
    """[Mosquitto] when configured and installed (or still running from earlier), else []."""
    if cfg.mosquitto_port is None:
        return []
    svc = service(cfg, cfg.mosquitto_port)
    return [svc] if binary() or svc.pid_file.exists() else []


def startable(cfg: StackConfig, progress: Progress) -> bool:
    """Whether ``up`` should start it; says why not, since MQTT ingest then has no broker."""
    if cfg.mosquitto_port is None:
        return False
    if binary() is None:
        progress(
            "mosquitto: NOT INSTALLED, so no MQTT broker in this stack "
            f"(MQTT ingest and its tests need one): {INSTALL_HINT}"
        )
        return False
    svc = service(cfg, cfg.mosquitto_port)
    ours = _proc.running_pid(svc.pid_file, svc.markers) is not None
    if not ours and _proc.port_in_use(cfg.bind_host, cfg.mosquitto_port):
        progress(
            f"mosquitto: port {cfg.bind_host}:{cfg.mosquitto_port} is held by another process "
            "(another stack's broker?); not started. Set CITYSTREAM_MQTT_PORT for one of its own."
        )
        return False
    return True
