"""When `stack up` starts Mosquitto, and what it says when it cannot."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from infra import mosquitto_service, stack
from infra.config import StackConfig


def test_no_port_means_no_broker(tmp_path: Path) -> None:
    cfg = StackConfig(data_dir=tmp_path)
    assert mosquitto_service.services(cfg) == []
    assert [s.name for s in stack._services(cfg)] == ["kafka", "registry"]
    said: list[str] = []
    assert not mosquitto_service.startable(cfg, said.append)
    assert said == []


def test_missing_binary_is_reported_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mosquitto_service, "binary", lambda: None)
    cfg = StackConfig(data_dir=tmp_path, mosquitto_port=21999)
    said: list[str] = []
    assert not mosquitto_service.startable(cfg, said.append)
    assert "NOT INSTALLED" in said[0] and "apt-get install -y mosquitto" in said[0]
    assert mosquitto_service.services(cfg) == []


def test_a_foreign_process_on_the_port_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mosquitto_service, "binary", lambda: "/usr/sbin/mosquitto")
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cfg = StackConfig(data_dir=tmp_path, mosquitto_port=port)
        said: list[str] = []
        assert not mosquitto_service.startable(cfg, said.append)
        assert f"127.0.0.1:{port} is held by another process" in said[0]
        assert [s.name for s in stack._services(cfg)] == ["kafka", "registry", "mosquitto"]


def test_config_is_rendered_with_port_and_loopback(tmp_path: Path) -> None:
    cfg = StackConfig(data_dir=tmp_path, mosquitto_port=21998)
    text = mosquitto_service.write_config(cfg, 21998).read_text()
    assert "listener 21998 127.0.0.1" in text
    assert "max_inflight_messages 0" in text
    svc = mosquitto_service.service(cfg, 21998)
    assert svc.markers == (str(tmp_path.resolve() / "mosquitto" / "mosquitto.conf"),)
    assert not svc.is_ready()  # nothing listens there


def test_ports_must_be_distinct(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="distinct"):
        StackConfig(data_dir=tmp_path, mosquitto_port=9092)


def test_tls_listener_uses_the_stack_certificate(tmp_path: Path) -> None:
    cfg = StackConfig(data_dir=tmp_path, mosquitto_port=21996, mosquitto_tls_port=21997)
    text = mosquitto_service.write_config(cfg, 21996).read_text()
    pem = tmp_path.resolve() / "kafka" / "tls" / "broker.pem"
    assert f"listener 21997 127.0.0.1\ncertfile {pem}\nkeyfile {pem}" in text
    assert pem.is_file() and (tmp_path.resolve() / "kafka" / "tls" / "ca.pem").is_file()
    plain = StackConfig(data_dir=tmp_path, mosquitto_port=21996)
    assert "certfile" not in mosquitto_service.write_config(plain, 21996).read_text()
