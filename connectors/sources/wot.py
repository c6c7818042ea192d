"""W3C WoT Thing Descriptions 1.1: a city pack's sensors described once, the ingest mapping
generated from them, and a TD for every sensor the system knows.

A pack may hold ``things/*.td.json``: one TD per sensor, each property a canonical field
with its unit and its ``forms``. The terms of the citystream vocabulary
(:data:`VOCAB`, prefix ``cs``) say what a Thing and a property are: ``cs:domain`` and
``cs:sensor`` on the Thing, ``cs:field`` on a property. An MQTT form (the WoT MQTT
binding: ``href`` ``mqtt://host:port`` with ``mqv:filter`` or ``mqv:topic``, or the topic
as the href's path) on a SensorThings Observations topic becomes a Datastream of the
mapping (:func:`mapping_from_things`); properties on one topic form one object result.
HTTP forms need no mapping: ``POST /v1/events`` carries canonical events.

:func:`thing_for_sensor` writes a TD for a sensor known only from reference data (a road
segment, a car park): its canonical fields with units, observable on the MQTT ingest's
``citystream/events/<domain>`` topics.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from connectors.sources.ingest_common import DOMAINS, DatastreamMapping, IngestConfig
from connectors.sources.mqtt import datastream_ref

TD_CONTEXT = "https://www.w3.org/2022/wot/td/v1.1"
VOCAB = "https://citystream.org/ns/wot#"
CONTEXT: list[Any] = [TD_CONTEXT, {"cs": VOCAB}]
THINGS_DIR = "things"
# The unit of each canonical field, as a TD states it (the mapping's unit symbols)
FIELD_UNITS = {
    "vehicle_count": "vehicles",
    "avg_speed_kmh": "km/h",
    "avg_measured_time_s": "s",
    "median_measured_time_s": "s",
    "total_spaces": "1",
    "available_spaces": "1",
    "latitude": "deg",
    "longitude": "deg",
    "ozone": "AQI",
    "particulate_matter": "AQI",
    "carbon_monoxide": "AQI",
    "sulfure_dioxide": "AQI",
    "nitrogen_dioxide": "AQI",
}


class ThingError(ValueError):
    """A TD that cannot become a mapping; the message names the file and property."""


@dataclass(frozen=True)
class Thing:
    """One TD of a pack: where it was read from and its JSON."""

    path: Path
    td: dict[str, Any]

    @property
    def sensor(self) -> str:
        return str(self.td.get("cs:sensor", ""))

    @property
    def domain(self) -> str:
        return str(self.td.get("cs:domain", ""))


def read_things(directory: Path) -> list[Thing]:
    """The TDs of ``directory`` (``*.td.json``, sorted); a missing directory has none."""
    if not directory.is_dir():
        return []
    things = []
    for path in sorted(directory.glob("*.td.json")):
        try:
            td = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ThingError(f"{path}: not a readable JSON TD ({exc})") from exc
        if not isinstance(td, dict):
            raise ThingError(f"{path}: a TD is a JSON object")
        things.append(Thing(path, td))
    return things


def mqtt_topic(form: dict[str, Any]) -> str | None:
    """The topic of an MQTT form (WoT MQTT binding), None for another protocol."""
    href = form.get("href")
    if not isinstance(href, str) or not href.startswith(("mqtt://", "mqtts://")):
        return None
    for key in ("mqv:filter", "mqv:topic"):
        if isinstance(form.get(key), str):
            return str(form[key])
    path = urlparse(href).path.lstrip("/")
    return path or None


def mapping_from_things(things: list[Thing]) -> list[DatastreamMapping]:
    """The Datastreams that the TDs' MQTT forms describe, checked like a written mapping."""
    by_topic: dict[tuple[bool, str], tuple[Thing, dict[str, str], dict[str, str]]] = {}
    for thing in things:
        where = str(thing.path)
        if thing.domain not in DOMAINS:
            raise ThingError(f"{where}: cs:domain {thing.domain!r} is not one of {list(DOMAINS)}")
        if not thing.sensor:
            raise ThingError(f"{where}: the Thing needs cs:sensor (the canonical sensor id)")
        for name, prop in (thing.td.get("properties") or {}).items():
            field = prop.get("cs:field")
            if field is None:
                continue
            for form in prop.get("forms") or []:
                topic = mqtt_topic(form)
                if topic is None:
                    continue
                ref = datastream_ref(topic)
                if ref is None or ref[0]:
                    raise ThingError(
                        f"{where}: property {name}: {topic!r} is not a SensorThings "
                        "Datastreams(<id>)/Observations topic"
                    )
                _, members, units = by_topic.setdefault(ref, (thing, {}, {}))
                members[name] = field
                if prop.get("unit") is not None:
                    units[field] = str(prop["unit"])
    return [_datastream(ref[1], *entry) for ref, entry in sorted(by_topic.items())]


def _datastream(
    ds_id: str, thing: Thing, members: dict[str, str], units: dict[str, str]
) -> DatastreamMapping:
    base: dict[str, Any] = {"id": ds_id, "domain": thing.domain, "sensor": thing.sensor}
    if len(members) == 1:
        [field] = members.values()
        base.update(field=field, unit=units.get(field))
    else:
        base.update(result=members, units=units)
    try:  # checked as a written Datastream is: domain, fields, units
        return IngestConfig.model_validate({"datastreams": [base]}).datastreams[0]
    except ValueError as exc:
        raise ThingError(f"{thing.path}: {exc}") from exc


def with_things(config: IngestConfig | None, city_dir: Path | None) -> IngestConfig | None:
    """``config`` plus the Datastreams of the pack's ``things/`` (none: unchanged).

    A Datastream both written and described is refused: one place says what it is.
    """
    if city_dir is None:
        return config
    things = read_things(city_dir / THINGS_DIR)
    if not things:
        return config
    generated = mapping_from_things(things)
    data = config.model_dump(exclude_unset=False) if config is not None else {}
    data["datastreams"] = [*data.get("datastreams", []), *(d.model_dump() for d in generated)]
    try:
        return IngestConfig.model_validate(data)
    except ValueError as exc:
        raise ThingError(f"{city_dir / THINGS_DIR}: {exc}") from exc


_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def thing_id(city: str, domain: str, sensor: str) -> str:
    """The URN of a sensor's TD, e.g. ``urn:citystream:aarhus:traffic:158895``."""
    return f"urn:citystream:{city}:{domain}:{_SAFE.sub('_', sensor)}"


def thing_for_sensor(city: str, domain: str, sensor: str, title: str) -> dict[str, Any]:
    """A TD 1.1 for a sensor known from reference data: its canonical fields and units,
    observable as canonical events on the MQTT ingest."""
    spec = DOMAINS[domain]
    properties = {}
    for field in spec.quantities:
        unit = FIELD_UNITS.get(field)
        prop: dict[str, Any] = {
            "title": field,
            "type": "integer" if spec.quantities[field] == "count" else "number",
            "readOnly": True,
            "observable": True,
            "cs:field": field,
            "forms": [
                {
                    "href": f"mqtt://mqtt.invalid/citystream/events/{domain}",
                    "mqv:filter": f"citystream/events/{domain}",
                    "op": "observeproperty",
                    "contentType": "application/json",
                }
            ],
        }
        if unit is not None:
            prop["unit"] = unit
        properties[field] = prop
    return {
        "@context": CONTEXT,
        "id": thing_id(city, domain, sensor),
        "title": title,
        "@type": "cs:Sensor",
        "cs:domain": domain,
        "cs:sensor": sensor,
        "securityDefinitions": {"nosec_sc": {"scheme": "nosec"}},
        "security": "nosec_sc",
        "properties": properties,
    }
