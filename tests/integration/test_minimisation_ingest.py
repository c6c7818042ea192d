"""Minimisation on the ingest paths (#16), on the real stack: `citystream ingest http` as a
user runs it. An NGSI-LD entity's `address`, `name` and free text, and a body that is not
JSON at all, reach no topic: accepted entities publish their canonical fields only, and
a dead letter keeps the payload's shape (field names) and only the values that explain it.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from core.kafka import read_topic
from core.settings import Settings
from tests.integration.test_ingest_http import (  # noqa: F401  (the fixture)
    entity,
    ingest,
    notification,
)
from tests.integration.test_ingest_http import read_topic as read_records

pytestmark = pytest.mark.integration
ADDRESS = {"streetAddress": "33 Beacon St", "postalCode": "02108"}
PERSONAL = {
    "address": {"type": "Property", "value": ADDRESS},
    "name": {"type": "Property", "value": "Jane Roe's driveway camera"},
    "description": {"type": "Property", "value": "reported by Jane Roe, call 617-555-0100"},
}  # fmt: skip
NEEDLES = (b"Beacon", b"02108", b"Jane", b"Roe", b"617-555")


def with_personal(base: dict[str, Any], **update: Any) -> dict[str, Any]:
    return {**base, **PERSONAL, **update}


def test_ngsi_ld_personal_attributes_and_raw_bodies_reach_no_topic(
    ingest: tuple[Settings, httpx.Client],  # noqa: F811
) -> None:
    settings, client = ingest
    accepted = with_personal(entity("TrafficFlowObserved-normalized.jsonld"))
    unknown = with_personal(
        entity("TrafficFlowObserved-normalized.jsonld"),
        id="urn:ngsi-ld:TrafficFlowObserved:nowhere-1",
        intensity={"type": "Property", "value": -5},
    )
    unknown.pop("refRoadSegment", None)
    answer = client.post(
        "/ngsi-ld/v1/notify",
        content=json.dumps(notification(accepted, unknown)),
        headers={"Content-Type": "application/ld+json"},
    )
    assert answer.status_code == 202, answer.text
    assert answer.json()["accepted"] == 1, answer.text
    bad = client.post(
        "/v1/events",
        content=b"Jane Roe, 33 Beacon St, 02108: the light is out",
        headers={"Content-Type": "application/json"},
    )
    assert bad.status_code == 400

    letters = read_records(settings, "city.dlq.v1")
    assert len(letters) == 2, [(d["reason"], d["detail"]) for d in letters]
    shape = next(json.loads(d["payload"]) for d in letters if d["payload"].startswith(b"{"))
    assert set(PERSONAL) <= set(shape)  # the names explain what was sent ...
    assert shape["address"]["value"] == {"streetAddress": "<dropped>", "postalCode": "<dropped>"}
    assert shape["name"]["type"] == "Property"  # ... the values are gone
    raw = next(d for d in letters if not d["payload"].startswith(b"{"))
    assert raw["reason"] == "invalid_json" and raw["payload"].startswith(b"<47 bytes not kept")

    topics = [
        settings.topic(t) for t in ("city.traffic.v1", "city.traffic.batches.v1", "city.dlq.v1")
    ]
    read = 0
    for topic in topics:
        for value in read_topic(settings, topic):
            read += 1
            assert not [n for n in NEEDLES if n in value], (topic, value[:300])
    assert read >= 4  # the event, its batch and the two dead letters
