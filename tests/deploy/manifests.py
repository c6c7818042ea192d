"""Tools and schema checks shared by the deployment tests (helm chart, compose file).

Kubernetes objects are checked against the official Python client's models: every key
must be a field of the model (the client itself ignores unknown keys, and so would a
cluster's pruning: a misspelt field would silently do nothing), every scalar must have the
field's type, and the model's own constructor checks required fields. Custom resources
are checked against their CRDs' OpenAPI schemas, vendored in ``crds/``, closed the same
way (unknown properties are errors).
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes.client
import yaml
from kubernetes.client import ApiClient

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "citystream"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
COMPOSE_FILE = REPO / "infra" / "compose.yaml"
CRDS = Path(__file__).resolve().parent / "crds"
KUBE_VERSION = os.environ.get("KUBE_VERSION", "1.31.0")
TOOLS_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "citystream" / "tools"
)

# Subcommands templated ahead of their code: the chart and the compose file carry them
# (disabled / behind a profile) before `citystream` has them.
AHEAD_OF_CODE = {"ingest"}


# --- tools -----------------------------------------------------------------------------------


def _tool(env: str, cached: str, name: str) -> str:
    """$<env>, else the newest copy `make` built into the tools cache, else PATH."""
    if os.environ.get(env):
        return os.environ[env]
    built = sorted(TOOLS_DIR.glob(cached))
    if built:
        return str(built[-1])
    found = shutil.which(name)
    if found:
        return found
    raise RuntimeError(
        f"{name} not found (${env}, {TOOLS_DIR}/{cached} or PATH): run `make deploy-check`, "
        "which builds it with `go install`"
    )


def helm() -> str:
    return _tool("HELM", "helm-*/helm", "helm")


def compose_spec() -> str:
    return _tool("COMPOSE_SPEC", "compose-go-*/compose-spec", "compose-spec")


def run(cmd: Sequence[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=120)


def helm_template(*args: str) -> subprocess.CompletedProcess[str]:
    return run(
        [helm(), "template", "citystream", str(CHART), "--kube-version", KUBE_VERSION, *args]
    )


def render(*args: str) -> list[dict[str, Any]]:
    """The chart's manifests for these helm arguments; a failed render fails the caller."""
    result = helm_template(*args)
    if result.returncode != 0:
        raise AssertionError(f"helm template {' '.join(args)} failed:\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


# --- Kubernetes models -----------------------------------------------------------------------

# Type names as the client's models spell them: list[X] / List[X], dict(str, X) / Dict[str, X].
_LIST = re.compile(r"^[lL]ist\[(.+)\]$")
_DICT = re.compile(r"^(?:dict\(str, (.+)\)|Dict\[str, (.+)\])$")
# Quantities (resources.limits/requests, ...) are typed dict(str, str) but accept numbers.
_QUANTITY_MAPS = {"limits", "requests", "hard", "capacity", "allocatable"}


def model_name(api_version: str, kind: str) -> str:
    """apps/v1 + Deployment -> V1Deployment (the client's class naming)."""
    version = api_version.rsplit("/", 1)[-1]
    return version[:1].upper() + version[1:] + kind


def check_model(value: Any, type_name: str, path: str = "") -> list[str]:
    """Every way ``value`` does not fit the client model type ``type_name``."""
    if (m := _LIST.match(type_name)) is not None:
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {type(value).__name__}"]
        return [e for i, item in enumerate(value) for e in check_model(item, m[1], f"{path}[{i}]")]
    if (m := _DICT.match(type_name)) is not None:
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {type(value).__name__}"]
        inner = m[1] or m[2]
        if inner == "str" and path.rsplit(".", 1)[-1] in _QUANTITY_MAPS:
            inner = "object"
        return [e for k, v in value.items() for e in check_model(v, inner, f"{path}.{k}")]
    if type_name == "str":
        return [] if isinstance(value, str) else [f"{path}: expected a string, got {value!r}"]
    if type_name == "int":
        ok = isinstance(value, int) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected an integer, got {value!r}"]
    if type_name == "float":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{path}: expected a number, got {value!r}"]
    if type_name == "bool":
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean, got {value!r}"]
    if type_name in ("object", "datetime", "date", "bytes"):
        return []  # IntOrString, Quantity, RawExtension, times: checked by the API server
    cls = getattr(kubernetes.client.models, type_name, None)
    if cls is None:
        return [f"{path}: unknown model type {type_name}"]
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} object, got {value!r}"]
    by_key = {key: attr for attr, key in cls.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in by_key:
            errors.append(f"{path}.{key}: not a field of {type_name}")
        elif item is not None:
            errors.extend(check_model(item, cls.openapi_types[by_key[key]], f"{path}.{key}"))
    return errors


@functools.cache
def _api_client() -> ApiClient:
    return ApiClient()


def check_core(doc: dict[str, Any]) -> list[str]:
    """Errors of one built-in Kubernetes object (empty list: it fits its model)."""
    name = model_name(doc.get("apiVersion", ""), doc.get("kind", ""))
    if getattr(kubernetes.client.models, name, None) is None:
        return [f"{doc.get('kind')}: no Kubernetes model {name}"]
    errors = check_model(doc, name, doc["kind"])
    if not errors:
        try:  # the models' constructors reject missing required fields and bad enums
            _api_client()._ApiClient__deserialize(doc, name)  # type: ignore[attr-defined]
        except (ValueError, TypeError) as exc:
            errors.append(f"{doc['kind']}: {exc}")
    return errors


# --- custom resources ------------------------------------------------------------------------


def _closed(schema: Any) -> Any:
    """The schema with unknown properties forbidden where the CRD lists properties."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> the closed openAPIV3Schema of every vendored CRD version."""
    schemas = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            spec = crd["spec"]
            for version in spec["versions"]:
                key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                schemas[key] = _closed(version["schema"]["openAPIV3Schema"])
    return schemas


def check_custom(doc: dict[str, Any]) -> list[str]:
    schema = crd_schemas().get((doc.get("apiVersion", ""), doc.get("kind", "")))
    if schema is None:
        return [f"{doc.get('apiVersion')} {doc.get('kind')}: no vendored CRD schema"]
    validator = jsonschema.Draft7Validator(schema)
    errors = [
        f"{doc['kind']}.{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(doc)
    ]
    errors += check_model(doc.get("metadata", {}), "V1ObjectMeta", f"{doc['kind']}.metadata")
    return errors


def check_manifest(doc: dict[str, Any]) -> list[str]:
    """Errors of any rendered object: custom resources by CRD, the rest by model."""
    if (doc.get("apiVersion"), doc.get("kind")) in crd_schemas():
        return check_custom(doc)
    return check_core(doc)


# --- containers ------------------------------------------------------------------------------


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    if doc["kind"] in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
        spec: dict[str, Any] = doc["spec"]["template"]["spec"]
        return spec
    return None


def containers(docs: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(object, container) for every container of every workload."""
    for doc in docs:
        spec = pod_spec(doc)
        if spec is not None:
            for container in spec.get("initContainers", []) + spec["containers"]:
                yield doc, container


def citystream_argv(container: dict[str, Any]) -> list[str]:
    """The `citystream` arguments a container runs, through the image's entrypoint or the
    replay loop (`/bin/sh -c SCRIPT NAME ARGS...`, which runs `citystream "$@"`)."""
    command = container.get("command")
    args = [str(a) for a in container.get("args", [])]
    if command is None:
        return args
    if command[:2] == ["/bin/sh", "-c"] and 'citystream "$@"' in command[2]:
        return args
    raise AssertionError(f"container {container['name']} runs {command}, not citystream")
