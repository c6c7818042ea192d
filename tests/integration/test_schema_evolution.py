"""Schema evolution under the registry's BACKWARD rule.

1. Every .avsc as committed in git history, then as it is now, is registered in order
   under a scratch subject: an incompatible change to a schema fails this test (and CI).
2. A compatible change (a new optional field) with old and new producers and consumers
   side by side: each reads what the other writes.
"""

from __future__ import annotations

import copy
import json
import subprocess
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from confluent_kafka.schema_registry.error import SchemaRegistryError

from core.settings import Settings
from schemas.catalog import AVRO_DIR, load_schema
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde
from tests.oracle import REPO

pytestmark = pytest.mark.integration


def committed_versions(name: str) -> list[dict[str, Any]]:
    """The schema at every commit that changed it, oldest first (empty without git)."""
    path = f"schemas/avro/{name}"
    log = subprocess.run(
        ["git", "log", "--reverse", "--format=%H", "--", path],
        cwd=REPO, capture_output=True, text=True, check=False,
    )  # fmt: skip
    versions = []
    for commit in log.stdout.split():
        shown = subprocess.run(
            ["git", "show", f"{commit}:{path}"], cwd=REPO, capture_output=True, text=True
        )
        if shown.returncode == 0:
            versions.append(json.loads(shown.stdout))
    return versions


@pytest.mark.parametrize("path", sorted(AVRO_DIR.glob("*.avsc")), ids=lambda p: p.name)
def test_every_schema_change_is_backward_compatible(stack: Settings, path: Any) -> None:
    registry = SchemaRegistry(stack.registry_config())
    topic = f"evolution-{uuid.uuid4().hex[:8]}.{path.stem}"
    for old in committed_versions(path.name):
        registry.register(topic, old)
    current = load_schema(path.name)
    assert registry.is_compatible(topic, current), f"{path.name} breaks BACKWARD compatibility"
    registry.register(topic, current)


def test_incompatible_change_is_refused(stack: Settings) -> None:
    registry = SchemaRegistry(stack.registry_config())
    topic = f"evolution-{uuid.uuid4().hex[:8]}.kpi"
    registry.register(topic, load_schema("kpi_record.avsc"))
    broken = copy.deepcopy(load_schema("kpi_record.avsc"))
    broken["fields"].append({"name": "district_name", "type": "string"})  # no default
    assert not registry.is_compatible(topic, broken)
    with pytest.raises(SchemaRegistryError):
        registry.register(topic, broken)


def test_old_and_new_producers_and_consumers_side_by_side(stack: Settings) -> None:
    registry = SchemaRegistry(stack.registry_config())
    topic = f"evolution-{uuid.uuid4().hex[:8]}.city.traffic.v1"
    v1 = load_schema("traffic_reading.avsc")
    v2 = copy.deepcopy(v1)
    v2["fields"].append(
        {"name": "lane", "type": ["null", "string"], "default": None, "doc": "new in v2"}
    )
    old = AvroSerde(v1, registry.register(topic, v1), registry.writer_schema)
    new = AvroSerde(v2, registry.register(topic, v2), registry.writer_schema)
    assert old.schema_id != new.schema_id
    reading = {
        "segment_id": "158324", "event_time": 1406872800000, "vehicle_count": 5,
        "avg_speed_kmh": 50.0, "avg_measured_time_s": 74, "median_measured_time_s": 74,
        "status": "OK", "source": "test",
    }  # fmt: skip
    from_old, from_new = old.encode(reading), new.encode({**reading, "lane": "north"})
    assert old.decode(from_new)["vehicle_count"] == 5 and "lane" not in old.decode(from_new)
    assert new.decode(from_old)["lane"] is None
    assert new.decode(from_new)["lane"] == "north"


def test_processes_registering_one_new_subject_at_once_all_succeed(stack: Settings) -> None:
    """Two registrants setting a new subject's compatibility together once made Apicurio
    answer 409 ("rule already exists") to one of them, and a sink died of it."""
    schema = load_schema("kpi_record.avsc")
    for _ in range(5):
        topic = f"race-{uuid.uuid4().hex[:8]}"
        clients = [SchemaRegistry(stack.registry_config()) for _ in range(8)]
        start = threading.Barrier(len(clients))
        with ThreadPoolExecutor(len(clients)) as pool:
            n = len(clients)
            ids = list(pool.map(register_at, [start] * n, clients, [topic] * n, [schema] * n))
        assert len(set(ids)) == 1, ids


def register_at(
    start: threading.Barrier, registry: SchemaRegistry, topic: str, schema: dict[str, Any]
) -> int:
    start.wait()
    return registry.register(topic, schema)
