"""The helm chart: lint, render with several value sets, validate every manifest.

helm comes from `make deploy-check` (built with `go install` into the tools cache) or
$HELM; without it these tests fail, they never skip.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import SecretStr

from citystream.cli import parser
from core.settings import Settings
from streams.worker import app_id
from tests.deploy.manifests import (
    AHEAD_OF_CODE,
    CHART,
    FULL_VALUES,
    REPO,
    check_manifest,
    check_model,
    citystream_argv,
    containers,
    helm,
    helm_template,
    render,
    run,
)

# Settings that come from Secrets (secrets.*), not from config.*.
SECRET_SETTINGS = {
    "kafka_sasl_password",
    "schema_registry_basic_auth",
    "clickhouse_password",
    "ingest_api_keys",
    "api_keys",
    "mqtt_password",
    "privacy_pseudonym_keys",
    "statement_signing_key",
    "audit_signing_key",
}

SCENARIOS: dict[str, tuple[str, ...]] = {
    "default": (),
    "full": ("-f", str(FULL_VALUES)),
    "full-hpa": (
        "-f",
        str(FULL_VALUES),
        "--set",
        "processor.autoscaling.keda.enabled=false",
        "--set",
        "processor.autoscaling.hpa.enabled=true",
    ),
    "plain-kafka-keda": (
        "--set",
        "processor.autoscaling.keda.enabled=true",
        "--set",
        "sources.replay.kind=Deployment",
    ),
    "secret-usernames": (
        "-f",
        str(FULL_VALUES),
        "--set",
        "secrets.kafka.usernameKey=user",
        "--set",
        "secrets.mqtt.usernameKey=user",
        "--set",
        "secrets.schemaRegistry.basicAuthKey=basic-auth",
    ),
}


def snake(key: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(*SCENARIOS[request.param])


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, suffix: str) -> dict[str, Any]:
    [doc] = [
        d
        for d in by_kind(docs, kind)
        if d["metadata"]["name"] == suffix or d["metadata"]["name"].endswith(f"-{suffix}")
    ]
    return doc


def plain_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# --- the chart as helm sees it ------------------------------------------------------------


@pytest.mark.parametrize("values", ["default", "full"])
def test_helm_lint_is_clean(values: str) -> None:
    args = [] if values == "default" else ["-f", str(FULL_VALUES)]
    result = run([helm(), "lint", str(CHART), "--strict", "--kube-version", "1.31.0", *args])
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rendered_manifest_fits_its_schema(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    scenario, docs = rendered
    assert docs, scenario
    errors = [e for doc in docs for e in check_manifest(doc)]
    assert not errors, f"{scenario}:\n" + "\n".join(errors)


def test_the_schema_check_catches_typos_and_wrong_types() -> None:
    docs = render("-f", str(FULL_VALUES))
    deployment = named(docs, "Deployment", "processor")
    broken = json.loads(json.dumps(deployment))
    container = broken["spec"]["template"]["spec"]["containers"][0]
    container["ports"][0]["containerPrt"] = container["ports"][0].pop("containerPort")
    container["env"][0]["value"] = 6066
    broken["spec"]["replicas"] = "2"
    errors = "\n".join(check_manifest(broken))
    assert "containerPrt: not a field of V1ContainerPort" in errors
    assert "env[0].value: expected a string" in errors
    assert "spec.replicas: expected an integer" in errors
    scaled = json.loads(json.dumps(named(docs, "ScaledObject", "processor")))
    scaled["spec"]["maxReplicas"] = scaled["spec"].pop("maxReplicaCount")
    scaled["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 20
    errors = "\n".join(check_manifest(scaled))
    assert "maxReplicas" in errors and "lagThreshold" in errors
    rule = json.loads(json.dumps(named(docs, "PrometheusRule", "citystream")))
    rule["spec"]["groups"][0]["rules"][0]["expresion"] = "up"
    assert any("expresion" in e for e in check_manifest(rule))
    missing = json.loads(json.dumps(named(docs, "Service", "processor")))
    missing["spec"]["ports"][0].pop("port")
    assert check_manifest(missing), "a Service port without `port` must fail"


def test_default_and_full_render_the_expected_objects() -> None:
    default = {(d["kind"], d["metadata"]["name"]) for d in render()}
    assert default == {
        ("Deployment", "citystream-processor"),
        ("Service", "citystream-processor"),
        ("PodDisruptionBudget", "citystream-processor"),
        ("Deployment", "citystream-sink"),
        ("Deployment", "citystream-alerts"),
        ("Job", "citystream-replay"),
        ("Job", "citystream-init"),
        ("Job", "citystream-migrate"),
        ("NetworkPolicy", "citystream-deny-ingress"),
        ("NetworkPolicy", "citystream-processor-web"),
    }
    full = {(d["kind"], d["metadata"]["name"]) for d in render("-f", str(FULL_VALUES))}
    for expected in [
        ("Deployment", "citystream-simulator"),
        ("Deployment", "citystream-mqtt"),
        ("Deployment", "citystream-http-ingest"),
        ("Service", "citystream-http-ingest"),
        ("PodDisruptionBudget", "citystream-http-ingest"),
        ("PodDisruptionBudget", "citystream-sink"),
        ("ConfigMap", "citystream-ingest-config"),
        ("Deployment", "citystream-replay"),
        ("ScaledObject", "citystream-processor"),
        ("TriggerAuthentication", "citystream-processor"),
        ("ServiceMonitor", "citystream-processor"),
        ("PrometheusRule", "citystream"),
        ("NetworkPolicy", "citystream-egress"),
        ("NetworkPolicy", "citystream-http-ingest"),
        ("Deployment", "citystream-api"),
        ("Service", "citystream-api"),
        ("NetworkPolicy", "citystream-api"),
    ]:
        assert expected in full


# --- values <-> settings -------------------------------------------------------------------


def test_values_config_maps_one_to_one_onto_the_settings() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    config_keys = set(values["config"])
    as_settings = {snake(k) for k in config_keys}
    assert len(as_settings) == len(config_keys)
    fields = set(Settings.model_fields)
    assert as_settings == fields - SECRET_SETTINGS, (
        f"missing in values.yaml config: {sorted(fields - SECRET_SETTINGS - as_settings)}; "
        f"not settings: {sorted(as_settings - fields)}"
    )
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == config_keys
    full = yaml.safe_load(FULL_VALUES.read_text())
    assert set(full["config"]) == config_keys, "the full values file sets every setting"


def test_deploy_page_documents_the_values_mapping() -> None:
    page = (REPO / "docs" / "deploy.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for key in values["config"]:
        row = f"`config.{key}` | `CITYSTREAM_{snake(key).upper()}`"
        assert row in page, f"the mapping table of docs/deploy.md lacks {row}"
    for name in SECRET_SETTINGS:
        assert f"`CITYSTREAM_{name.upper()}`" in page


def test_rendered_environment_is_a_valid_settings_object(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    scenario, docs = rendered
    for doc, container in containers(docs):
        names = [e["name"] for e in container.get("env", [])]
        assert len(names) == len(set(names)), f"{doc['metadata']['name']}: duplicate env {names}"
        settings_env = {n for n in names if n.startswith("CITYSTREAM_")}
        unknown = {
            n for n in settings_env if n[len("CITYSTREAM_") :].lower() not in Settings.model_fields
        }
        assert not unknown, f"{scenario}: not settings: {unknown}"
        env = plain_env(container)
        kwargs: dict[str, Any] = {
            n[len("CITYSTREAM_") :].lower(): json.loads(v) if n.endswith("_EXTRA") else v
            for n, v in env.items()
            if n.startswith("CITYSTREAM_")
        }
        for n in settings_env - set(env):  # from Secrets or composed: any string will do
            kwargs[n[len("CITYSTREAM_") :].lower()] = SecretStr("x") if "PASSWORD" in n else "x"
        kwargs.pop("schema_registry_basic_auth", None)
        Settings.model_validate(kwargs)  # raises on e.g. "1e+06" for an int setting


def test_full_values_reach_the_environment_unchanged() -> None:
    docs = render("-f", str(FULL_VALUES))
    env = plain_env(
        named(docs, "Deployment", "processor")["spec"]["template"]["spec"]["containers"][0]
    )
    assert env["CITYSTREAM_SINK_BATCH_ROWS"] == "1000000"
    assert env["CITYSTREAM_IDLE_TIMEOUT_S"] == "7.5"
    assert env["CITYSTREAM_TOPIC_PREFIX"] == "prod."
    assert json.loads(env["CITYSTREAM_KAFKA_EXTRA"])["client.rack"] == "zone-a"
    assert env["CITYSTREAM_SCHEMA_REGISTRY_BASIC_AUTH"] == (
        "$(SCHEMA_REGISTRY_USER):$(SCHEMA_REGISTRY_PASSWORD)"
    )


def test_secrets_come_from_existing_secrets_only() -> None:
    docs = render("-f", str(FULL_VALUES))
    assert not by_kind(docs, "Secret"), "the chart never creates Secrets"
    container = named(docs, "Deployment", "sink")["spec"]["template"]["spec"]["containers"][0]
    refs = {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container["env"]
        if "valueFrom" in e
    }
    assert refs["CITYSTREAM_KAFKA_SASL_PASSWORD"] == ("citystream-kafka-user", "password")
    assert refs["CITYSTREAM_CLICKHOUSE_PASSWORD"] == ("citystream-clickhouse", "password")
    assert refs["CITYSTREAM_CLICKHOUSE_USERNAME"] == ("citystream-clickhouse", "user")
    assert refs["CITYSTREAM_INGEST_API_KEYS"] == ("citystream-ingest", "api-keys")
    assert refs["CITYSTREAM_MQTT_PASSWORD"] == ("citystream-mqtt", "password")
    assert refs["CITYSTREAM_AUDIT_SIGNING_KEY"] == ("citystream-audit", "signing-key")
    assert "CITYSTREAM_CLICKHOUSE_USERNAME" not in plain_env(container)


# --- commands, probes, jobs ------------------------------------------------------------------


def test_every_container_runs_a_command_the_cli_accepts(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    scenario, docs = rendered
    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for doc, container in containers(docs):
        argv = citystream_argv(container)
        if argv[0] not in commands:
            assert argv[0] in AHEAD_OF_CODE, f"{doc['metadata']['name']}: unknown {argv}"
            continue
        try:
            parser().parse_args(argv)
        except SystemExit as exc:
            raise AssertionError(f"{scenario}: `citystream {' '.join(argv)}` is refused") from exc
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            exec_cmd = container.get(probe, {}).get("exec", {}).get("command")
            if exec_cmd:
                assert exec_cmd[0] == "citystream"
                parser().parse_args(exec_cmd[1:])


def test_sources_ahead_of_code_are_off_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["sources"]["simulator"]["enabled"] is False
    assert values["sources"]["mqtt"]["enabled"] is False
    assert values["sources"]["httpIngest"]["enabled"] is False


def test_processor_probes_use_the_stats_page_the_processor_serves() -> None:
    agents = (REPO / "streams" / "engine" / "agents.py").read_text()
    assert '@app.page("/citystream/stats/")' in agents
    deployment = named(render(), "Deployment", "processor")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"] == [
        {"name": "web", "containerPort": 6066, "protocol": "TCP"},
        {"name": "metrics", "containerPort": 9464, "protocol": "TCP"},  # /metrics
    ]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/citystream/stats/", "port": "web"}
    assert plain_env(container)["CITYSTREAM_PROCESSOR_WEB_HOST"] == "0.0.0.0"


def test_http_ingest_probes_use_its_health_endpoints() -> None:
    source = (REPO / "connectors" / "sources" / "http_ingest.py").read_text()
    container = named(render("-f", str(FULL_VALUES)), "Deployment", "http-ingest")["spec"][
        "template"
    ]["spec"]["containers"][0]
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert container[probe]["httpGet"]["path"] == path
        assert f'web.get("{path}"' in source
    assert plain_env(container)["CITYSTREAM_INGEST_HTTP_HOST"] == "0.0.0.0"


def test_ingest_config_in_the_full_values_loads(tmp_path: Path) -> None:
    from connectors.sources.ingest_common import load_config

    configmap = named(render("-f", str(FULL_VALUES)), "ConfigMap", "ingest-config")
    path = tmp_path / "ingest.toml"
    path.write_text(configmap["data"]["ingest.toml"])
    assert load_config(path).mqtt.host == "mosquitto.iot.svc"


def test_init_and_migrate_run_as_hooks_before_the_workloads_and_replay_after() -> None:
    docs = render()
    for name, weight in (("init", "-10"), ("migrate", "-5")):
        job = named(docs, "Job", name)
        annotations = job["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-install,pre-upgrade"
        assert annotations["helm.sh/hook-weight"] == weight
        assert job["spec"]["template"]["spec"]["containers"][0]["args"] == [name]
    replay = named(docs, "Job", "replay")
    assert replay["metadata"]["annotations"]["helm.sh/hook"] == "post-install"
    assert "--speed" not in replay["spec"]["template"]["spec"]["containers"][0]["args"]
    args = replay["spec"]["template"]["spec"]["containers"][0]["args"]
    for flag in ("--traffic", "--metadata", "--air", "--parking", "--car-parks"):
        shipped = args[args.index(flag) + 1]  # the Dockerfile copies data/aarhus there
        assert (REPO / "data" / "aarhus" / Path(shipped).name).is_file(), flag


def test_pods_run_non_root_read_only_without_api_tokens(
    rendered: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = rendered
    for doc, container in containers(docs):
        spec = doc["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["automountServiceAccountToken"] is False
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        mounts = {m["mountPath"] for m in container["volumeMounts"]}
        assert {"/var/lib/citystream", "/tmp"} <= mounts
        assert container["resources"]["requests"], doc["metadata"]["name"]


# --- scaling bounds and monitoring -------------------------------------------------------------


@pytest.mark.parametrize(
    "args, message",
    [
        (("--set", "processor.replicas=7"), "processor.replicas (7) must not exceed"),
        (("--set", "config.partitions=2", "--set", "processor.replicas=3"), "(3) must not exceed"),
        (
            (
                "--set",
                "processor.autoscaling.keda.enabled=true",
                "--set",
                "processor.autoscaling.keda.maxReplicas=8",
            ),
            "keda.maxReplicas (8) must not exceed",
        ),
        (("--set", "sink.replicas=9"), "sink.replicas (9) must not exceed"),
        (
            (
                "--set",
                "processor.autoscaling.keda.enabled=true",
                "--set",
                "processor.autoscaling.hpa.enabled=true",
            ),
            "not both",
        ),
        (("--set", "config.kafkaBootstrapServer=typo:9092"), "additional properties"),
        (("--set", "sources.mqtt.enabled=true"), "needs sources.ingestConfig"),
        (("--set", "sources.httpIngest.enabled=true"), "needs API keys"),
    ],
)
def test_inconsistent_values_fail_the_render(args: tuple[str, ...], message: str) -> None:
    result = helm_template(*args)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr


def test_autoscaling_targets_the_processor_group_and_input_topic() -> None:
    docs = render("-f", str(FULL_VALUES))
    env = plain_env(
        named(docs, "Deployment", "processor")["spec"]["template"]["spec"]["containers"][0]
    )
    settings = Settings(
        topic_prefix=env["CITYSTREAM_TOPIC_PREFIX"], processor_id=env["CITYSTREAM_PROCESSOR_ID"]
    )
    deployment = named(docs, "Deployment", "processor")
    assert "replicas" not in deployment["spec"], "the autoscaler owns the replica count"
    scaled = named(docs, "ScaledObject", "processor")["spec"]
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["maxReplicaCount"] <= int(env["CITYSTREAM_PARTITIONS"])
    metadata = scaled["triggers"][0]["metadata"]
    assert metadata["consumerGroup"] == settings.group(settings.processor_id)
    assert metadata["topic"] == settings.topic("city.traffic.batches.v1")
    assert metadata["bootstrapServers"] == env["CITYSTREAM_KAFKA_BOOTSTRAP_SERVERS"]
    assert (metadata["sasl"], metadata["tls"]) == ("scram_sha512", "enable")
    auth = named(docs, "TriggerAuthentication", "processor")["spec"]
    assert {p["parameter"] for p in auth["secretTargetRef"]} == {"password", "ca"}
    assert auth["env"] == [
        {
            "parameter": "username",
            "name": "CITYSTREAM_KAFKA_SASL_USERNAME",
            "containerName": "processor",
        }
    ]
    default = Settings()
    plain = named(render(*SCENARIOS["plain-kafka-keda"]), "ScaledObject", "processor")["spec"]
    default_group = default.group(app_id(default))
    assert plain["triggers"][0]["metadata"]["consumerGroup"] == default_group
    assert "authenticationRef" not in plain["triggers"][0]
    hpa = named(render(*SCENARIOS["full-hpa"]), "HorizontalPodAutoscaler", "processor")["spec"]
    assert hpa["maxReplicas"] <= 12


def test_alert_rules_watch_the_groups_and_topics_the_app_uses() -> None:
    docs = render("-f", str(FULL_VALUES))
    settings = Settings(topic_prefix="prod.", processor_id="citystream-traffic")  # full values
    rules = named(docs, "PrometheusRule", "citystream")["spec"]["groups"][0]["rules"]
    exprs = {r["alert"]: r["expr"] for r in rules if "alert" in r}
    assert (
        f'consumergroup="{settings.group(app_id(settings))}"' in exprs["CitystreamProcessorLagHigh"]
    )
    assert (
        f'topic="{settings.topic("city.traffic.batches.v1")}"'
        in exprs["CitystreamProcessorLagHigh"]
    )
    assert (
        f'consumergroup="{settings.group(settings.sink_group_id)}"'
        in exprs["CitystreamSinkLagHigh"]
    )
    assert f'topic="{settings.topic("city.dlq.v1")}"' in exprs["CitystreamDeadLetters"]
    assert "CitystreamProcessorDown" in exprs, "extraRules are appended"
    for rule in rules:  # every label and annotation a string
        assert not check_model(rule.get("labels", {}), "dict(str, str)", rule["alert"])


def test_the_alerts_processor_runs_alone_with_probes_on_its_stats_page() -> None:
    deployment = named(render(), "Deployment", "alerts")
    assert deployment["spec"]["replicas"] == 1  # its rule state is not partitioned
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert citystream_argv(container) == ["process", "alerts"]
    assert container["ports"] == [{"name": "web", "containerPort": 6067, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/citystream/stats/", "port": "web"}
