"""``GET /v1/things/{thing}``: a W3C WoT Thing Description 1.1 for every sensor the API
knows (#18).

A sensor described by its city pack (``things/*.td.json``) is served as the pack has it;
any other sensor of the pack's reference data (a road segment: its traffic and its air
sensor; a car park) gets a TD written from the canonical model
(:func:`connectors.sources.wot.thing_for_sensor`). ``thing`` is ``<domain>:<sensor>``
(``traffic:158895``) or the TD's id (``urn:citystream:aarhus:traffic:158895``). Every TD
served validates against the W3C TD 1.1 JSON Schema shipped in ``api/jsonschema/``.
"""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import APIRouter, Response

from api.context import City, Context, CurrentCaller, record_access
from api.problems import not_found
from connectors.sources.wot import THINGS_DIR, read_things, thing_for_sensor, thing_id
from core.city import CityPack, read_reference

router = APIRouter(prefix="/v1", tags=["things"])
TD_JSON = "application/td+json"
# reference data kind -> the domains its records are sensors of, and their title
SENSORS = {
    "road_segments": (
        ("traffic", "segment_id", "Traffic counter"),
        ("air", "segment_id", "Air quality sensor"),
    ),
    "car_parks": (("parking", "car_park_id", "Car park"),),
}  # fmt: skip


@router.get(
    "/things/{thing}",
    summary="The W3C WoT Thing Description (1.1) of a sensor",
    responses={200: {"content": {TD_JSON: {}}}, 404: {"description": "No such sensor"}},
)
def get_thing(
    thing: str, context: Context, caller: CurrentCaller, city: str | None = None
) -> Response:
    place = context.city(city)
    key = _key(thing, place.id)
    td = known_things(place).get(key) if key else None
    if td is None:
        raise not_found(f"no sensor {thing!r} in {place.id} (ids: <domain>:<sensor>)", "thing")
    record_access(context, caller, "/v1/things", {"thing": thing, "city": place.id}, None, 1)
    return Response(orjson.dumps(td), media_type=TD_JSON)


def _key(thing: str, city: str) -> tuple[str, str] | None:
    prefix = f"urn:citystream:{city}:"
    text = thing[len(prefix) :] if thing.startswith(prefix) else thing
    domain, sep, sensor = text.partition(":")
    return (domain, sensor) if sep and sensor else None


def known_things(place: City) -> dict[tuple[str, str], dict[str, Any]]:
    """Every TD of a city by (domain, sensor): the pack's own first, then the reference."""
    if place.pack is None:
        return {}
    key = (place.id, str(place.pack.directory))
    if key not in _CACHE:  # the pack's files are read once per process
        _CACHE[key] = _things(place.id, place.pack)
    return _CACHE[key]


_CACHE: dict[tuple[str, str], dict[tuple[str, str], dict[str, Any]]] = {}


def _things(city: str, pack: CityPack) -> dict[tuple[str, str], dict[str, Any]]:
    out: dict[tuple[str, str], dict[str, Any]] = {}
    records = read_reference(pack).records
    for kind, sensors in SENSORS.items():
        for record in records.get(kind, []):
            for domain, column, title in sensors:
                sensor = str(record[column])
                name = record.get("name") or sensor
                out[(domain, sensor)] = thing_for_sensor(city, domain, sensor, f"{title} {name}")
    for described in read_things(pack.path(THINGS_DIR)):
        td = {
            **described.td,
            "id": described.td.get("id") or thing_id(city, described.domain, described.sensor),
        }
        out[(described.domain, described.sensor)] = td
    return out
