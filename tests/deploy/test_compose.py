"""infra/compose.yaml: loaded by the Compose Specification's reference loader (compose-go,
the library `docker compose` is built on; `make deploy-check` builds it), then checked
against the app: services, files, settings and command lines.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from citystream.cli import parser
from core.settings import Settings
from tests.deploy.manifests import AHEAD_OF_CODE, COMPOSE_FILE, REPO, compose_spec, run


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    """The project as compose-go normalises it (anchors merged, paths resolved), with
    every profile active."""
    result = run([compose_spec(), "--format", "json", COMPOSE_FILE.name], cwd=COMPOSE_FILE.parent)
    assert result.returncode == 0, result.stderr
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def citystream_services(project: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in project["services"].items()
        if svc.get("build", {}).get("dockerfile") == "Dockerfile"
    }


def test_the_compose_file_loads_against_the_compose_specification() -> None:
    result = run([compose_spec(), COMPOSE_FILE.name], cwd=COMPOSE_FILE.parent)
    assert result.returncode == 0, result.stderr


def test_the_loader_rejects_a_misspelt_key(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text(COMPOSE_FILE.read_text().replace("restart: unless-stopped", "restrat: x", 1))
    result = run([compose_spec(), "--no-path-resolution", str(broken)], cwd=COMPOSE_FILE.parent)
    assert result.returncode != 0 and "restrat" in result.stderr


def test_it_runs_the_stack_the_demo_needs(project: dict[str, Any]) -> None:
    services = project["services"]
    images = {name: svc.get("image", "") for name, svc in services.items()}
    assert images["kafka"].startswith("apache/kafka:")
    assert "apicurio/apicurio-registry" in images["registry"]
    assert images["clickhouse"].startswith("clickhouse/clickhouse-server:")
    assert images["mosquitto"].startswith("eclipse-mosquitto:")
    assert "opentelemetry-collector" in images["otel-collector"]
    kafka_env = services["kafka"]["environment"]
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller", "KRaft, no ZooKeeper"
    assert set(citystream_services(project)) >= {"init", "migrate", "processor", "sink", "replay"}
    argv = citystream_services(project)["replay"]["command"]
    inputs = ("--traffic", "--metadata", "--air", "--parking", "--car-parks")
    for shipped in (argv[argv.index(flag) + 1] for flag in inputs):  # the Dockerfile copies
        assert shipped.startswith("/opt/citystream/data/aarhus/")  # data/aarhus there
        assert (REPO / "data" / "aarhus" / Path(shipped).name).is_file()


def test_dependencies_exist_and_order_the_start(project: dict[str, Any]) -> None:
    services = project["services"]
    for name, svc in services.items():
        for dep in svc.get("depends_on", {}):
            assert dep in services, f"{name} depends on undefined service {dep}"
    deps = {n: s.get("depends_on", {}) for n, s in services.items()}
    assert deps["init"]["kafka"]["condition"] == "service_healthy"
    assert deps["init"]["registry"]["condition"] == "service_healthy"
    assert deps["migrate"]["clickhouse"]["condition"] == "service_healthy"
    assert deps["processor"]["init"]["condition"] == "service_completed_successfully"
    assert deps["sink"]["migrate"]["condition"] == "service_completed_successfully"
    assert deps["replay"]["processor"]["condition"] == "service_healthy"


def test_mounted_files_exist(project: dict[str, Any]) -> None:
    for name, svc in project["services"].items():
        for volume in svc.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name}: {volume['source']} is missing"


def test_citystream_services_use_real_settings_and_commands(project: dict[str, Any]) -> None:
    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name, svc in citystream_services(project).items():
        env = svc["environment"]
        settings = {
            k[len("CITYSTREAM_") :].lower(): v
            for k, v in env.items()
            if k.startswith("CITYSTREAM_")
        }
        unknown = set(settings) - set(Settings.model_fields)
        assert not unknown, f"{name}: not settings: {unknown}"
        if "ingest_api_keys_file" in settings:  # a path inside the container
            settings.pop("ingest_api_keys_file")
        Settings.model_validate(settings)
        argv = svc["command"]
        if argv[0] not in commands:
            assert argv[0] in AHEAD_OF_CODE, f"{name}: unknown command {argv}"
            continue
        parser().parse_args(argv)


def test_ingest_files_load_with_the_ingest_code() -> None:
    from connectors.sources.ingest_common import load_config

    config = load_config(COMPOSE_FILE.parent / "compose" / "ingest.toml")
    assert config.mqtt.host == "mosquitto"
    keys = json.loads((COMPOSE_FILE.parent / "compose" / "ingest-api-keys.json").read_text())
    assert keys and all(isinstance(v, str) and v for v in keys.values())


def test_health_checks_probe_the_ports_the_settings_use(project: dict[str, Any]) -> None:
    services = project["services"]
    defaults = Settings()
    processor_check = " ".join(services["processor"]["healthcheck"]["test"])
    assert f"127.0.0.1:{defaults.processor_web_port}/citystream/stats/" in processor_check
    ingest_check = " ".join(services["ingest-http"]["healthcheck"]["test"])
    port = services["ingest-http"]["command"][
        services["ingest-http"]["command"].index("--port") + 1
    ]
    assert f"127.0.0.1:{port}/ready" in ingest_check
