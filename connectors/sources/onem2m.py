"""oneM2M notifications into canonical events: ``POST /onem2m/notify`` on the HTTP ingest.

A oneM2M CSE (a device platform) notifies a subscriber over the HTTP binding (TS-0009)
with ``X-M2M-Origin`` (the notifying CSE), ``X-M2M-RI`` (request id) and ``X-M2M-RVI``
(release version) headers and an ``m2m:sgn`` body. Its ``nev.rep`` carries the new
``m2m:cin`` content instance, and ``sur`` names the subscription. A verification request
(``vrq``: true) and a subscription-deletion notice (``sud``: true) carry no data. The
answer carries ``X-M2M-RSC`` (2000 OK; 4000 bad request; 5000 when Kafka does not
acknowledge in time) and echoes ``X-M2M-RI`` and ``X-M2M-RVI``.

Which container a notification is about: the path after ``/onem2m/notify/`` in the
subscription's notification URI (``nu``), e.g. ``…/onem2m/notify/plant/meter-1``, since
a CSE may name the subscription (``sur``) by its unstructured resource id; else the
structured ``sur``, whose parent is the container. The mapping
(``[onem2m.containers."<path or name>"]`` in the ingest config file) says which sensor,
domain and fields a container's content instances are: ``con`` is a number (``field``)
or a JSON object, or its text (``members``). The time is a content member (``time``) or
else the instance's creation time ``ct``. A notification about a container not in the
mapping is dead-lettered as ``unknown_container``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from connectors.publishing import Rejected
from connectors.sources.ingest_common import (
    DOMAINS,
    INVALID_EVENT,
    INVALID_TIMESTAMP,
    Accepted,
    Identifiers,
    IngestError,
    OptedOut,
    convert,
    dumps,
    loads,
    parse_time,
)
from connectors.sources.opcua import ENERGY_UNITS, validate

if TYPE_CHECKING:
    from connectors.sources.http_ingest import IngestService

UNKNOWN_CONTAINER = "unknown_container"
SOURCE = "onem2m"
# Response status codes (TS-0004 6.6.3): what X-M2M-RSC says
OK, BAD_REQUEST, INTERNAL_ERROR = "2000", "4000", "5000"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContainerMapping(_Strict):
    """One container: its content instances' sensor, domain and fields."""

    domain: str
    sensor: str
    field: str | None = Field(None, description="con is one number: this canonical field")
    members: dict[str, str] | None = Field(
        None, description="con is a JSON object: member -> canonical field"
    )
    units: dict[str, str] = Field(default_factory=dict, description="per canonical field")
    constants: dict[str, str | int | float] = Field(default_factory=dict)
    time: str | None = Field(None, description="member holding the time; else the cin's ct")

    @field_validator("sensor", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value

    def targets(self) -> list[str]:
        return [self.field] if self.field else list((self.members or {}).values())


class OneM2MConfig(_Strict):
    containers: dict[str, ContainerMapping] = Field(default_factory=dict)

    def model_post_init(self, _context: Any) -> None:
        for name, mapping in self.containers.items():
            _check(name, mapping)

    def container(self, sur: str, hint: str = "") -> tuple[str, ContainerMapping] | None:
        """The mapping of the container named by ``hint`` (the notification URI's path)
        or else by the subscription ``sur``, and its key."""
        named = hint.strip("/")
        keys = [named, named.rpartition("/")[2]] if named else []  # the path, or the name
        for key in keys + container_keys(sur):
            if key in self.containers:
                return key, self.containers[key]
        return None


def _check(name: str, mapping: ContainerMapping) -> None:
    where = f"onem2m.containers.{name}"
    if (mapping.field is None) == (mapping.members is None):
        raise ValueError(f"{where}: give exactly one of `field` (number) or `members` (object)")
    if mapping.domain == "energy":
        if mapping.targets() != ["kwh"] or "district" not in mapping.constants:
            raise ValueError(f"{where}: an energy container fills kwh, with constants.district")
        unit = mapping.units.get("kwh")
        if unit is not None and unit not in ENERGY_UNITS:
            raise ValueError(f"{where}: unit {unit!r} is not an energy unit")
        return
    if mapping.domain not in DOMAINS:
        raise ValueError(f"{where}: unknown domain {mapping.domain!r}")
    kinds = DOMAINS[mapping.domain].quantities
    for target in mapping.targets():
        if target not in kinds:
            raise ValueError(f"{where}: {target!r} is not a value field of {mapping.domain}")
        convert(0, kinds[target], mapping.units.get(target), where)


def load(section: dict[str, Any]) -> OneM2MConfig:
    """The ``[onem2m]`` table of the ingest config file, checked."""
    try:
        return OneM2MConfig.model_validate(section)
    except ValidationError as exc:
        raise ValueError(f"ingest config [onem2m]: {exc}") from exc


def container_keys(sur: str) -> list[str]:
    """Names a container may be mapped by, most specific first.

    ``sur`` is the subscription's address, e.g. ``/id-in/cse-in/plant/meter-1/sub`` or
    ``cse-in/plant/meter-1/sub``: the container is its parent. Keys: the path below the
    CSE (``plant/meter-1``), the path with the CSE's name, and the container's name.
    """
    parts = [p for p in sur.split("/") if p]
    if parts and parts[0] in ("~", "_"):
        parts = parts[1:]
    if parts and parts[0].startswith("id-"):  # an SP-relative CSE-ID
        parts = parts[1:]
    parts = parts[:-1]  # the subscription itself
    if not parts:
        return []
    keys = ["/".join(parts[1:]), "/".join(parts), parts[-1]]
    return [k for i, k in enumerate(keys) if k and k not in keys[:i]]


def onem2m_time(text: object) -> datetime:
    """oneM2M's basic ISO 8601 (``20240304T060000`` or ``…,123456``, UTC) or ISO 8601."""
    if isinstance(text, str) and len(text) >= 15 and text[8:9] == "T" and text[:8].isdigit():
        try:
            whole, _, fraction = text.partition(",")
            parsed = datetime.strptime(whole, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
            return parsed.replace(microsecond=int((fraction or "0")[:6].ljust(6, "0")))
        except ValueError as exc:
            raise ValueError(f"unparseable oneM2M time {text!r}") from exc
    return parse_time(text)


def content_event(mapping: ContainerMapping, cin: dict[str, Any]) -> dict[str, Any]:
    """A content instance as the canonical event dict of its container's domain."""
    con = cin.get("con")
    if mapping.members is not None:
        body = _object(con)
        values = {
            target: body[member] for member, target in mapping.members.items() if member in body
        }
    else:
        body, values = {}, {mapping.field or "": _number(con)}
    values = {target: _converted(mapping, target, v) for target, v in values.items()}
    try:
        when = onem2m_time(body.get(mapping.time) if mapping.time else cin.get("ct"))
    except ValueError as exc:
        raise IngestError(INVALID_TIMESTAMP, f"content instance time: {exc}") from None
    sensor_field = (
        "meter_id" if mapping.domain == "energy" else DOMAINS[mapping.domain].sensor_field
    )
    return {
        "domain": mapping.domain,
        sensor_field: mapping.sensor,
        "event_time": when.isoformat(),
        **mapping.constants,
        **values,
    }


def _object(con: object) -> dict[str, Any]:
    if isinstance(con, str):
        try:
            con = json.loads(con)
        except ValueError:
            raise IngestError(INVALID_EVENT, "con is not a JSON object") from None
    if not isinstance(con, dict):
        raise IngestError(INVALID_EVENT, f"con must be a JSON object, not {type(con).__name__}")
    return con


def _number(con: object) -> object:
    """A scalar con: a number, or a number as text (oneM2M content is often text)."""
    if isinstance(con, str):
        try:
            value = json.loads(con)
        except ValueError:
            raise IngestError(INVALID_EVENT, f"con {con[:80]!r} is not a number") from None
        return value
    return con


def _converted(mapping: ContainerMapping, target: str, value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise IngestError(INVALID_EVENT, f"{target}: expected a number, got {value!r:.80}")
    unit = mapping.units.get(target)
    if mapping.domain == "energy":
        return float(value) * (ENERGY_UNITS[unit] if unit else 1.0)
    return convert(value, DOMAINS[mapping.domain].quantities[target], unit, target)


def notification_outcome(
    config: OneM2MConfig,
    body: Any,
    origin: str,
    now_ms: int,
    max_future_ms: int,
    hint: str = "",
    identifiers: Identifiers | None = None,
) -> Accepted | Rejected | OptedOut | None:
    """A parsed notification as an outcome; None for one without data (vrq, sud).

    A mapping's declared ``identifiers`` (``[privacy]``, #16) are pseudonymised before the
    event is validated, and an opted-out one is :class:`OptedOut` (kept nowhere).
    """
    sgn = body.get("m2m:sgn") if isinstance(body, dict) else None
    if not isinstance(sgn, dict):
        return Rejected(INVALID_EVENT, "the body is not an m2m:sgn notification", origin, b"")
    if sgn.get("vrq") is True or sgn.get("sud") is True:
        return None
    rep = (sgn.get("nev") or {}).get("rep") if isinstance(sgn.get("nev"), dict) else None
    cin = rep.get("m2m:cin") if isinstance(rep, dict) else None
    if not isinstance(cin, dict):
        return Rejected(INVALID_EVENT, "the notification carries no m2m:cin", origin, b"")
    sur = sgn.get("sur")
    found = config.container(sur if isinstance(sur, str) else "", hint)
    if found is None:
        where = f"{hint!r} (notification URI)" if hint else f"of subscription {sur!r}"
        detail = f"the container {where} is not in the mapping ([onem2m])"
        return Rejected(UNKNOWN_CONTAINER, detail, origin, b"")
    try:
        event = content_event(found[1], cin)
    except IngestError as exc:
        return Rejected(exc.reason, str(exc), origin, b"")
    opted_out = False
    if identifiers is not None:
        event, opted_out = identifiers.protect(event)
    outcome = validate(event, origin, b"", now_ms, max_future_ms)
    return OptedOut(outcome) if opted_out else outcome


def _answer(
    request: web.Request, rsc: str, status: int, body: dict[str, Any] | None = None
) -> web.Response:
    headers = {"X-M2M-RSC": rsc}
    for name in ("X-M2M-RI", "X-M2M-RVI"):
        if name in request.headers:
            headers[name] = request.headers[name][:256]
    if body is None:
        return web.Response(status=status, headers=headers)
    return web.json_response(body, status=status, headers=headers)


async def notify(service: IngestService, request: web.Request) -> web.Response:
    """``POST /onem2m/notify``: one notification, durable in Kafka before the answer."""
    from connectors.sources.http_ingest import Refused

    originator = request.headers.get("X-M2M-Origin", "")
    rid = request.headers.get("X-M2M-RI", "")
    if not originator or not rid:
        detail = "a oneM2M request needs the X-M2M-Origin and X-M2M-RI headers"
        return _answer(request, BAD_REQUEST, 400, {"error": "invalid_request", "detail": detail})
    raw = await service.read_body(request)
    origin = f"onem2m:{originator[:64]}:{rid[:64]}"
    try:
        body = loads(raw, service.limits)
    except IngestError as exc:
        service.kafka.reject(Rejected(exc.reason, str(exc), origin, raw))
        outcome: Accepted | Rejected | OptedOut | None = None
        error: dict[str, Any] | None = {"error": exc.reason, "detail": str(exc)}
    else:
        now_ms = int(service.clock() * 1000)
        future_ms = int(service.settings.ingest_max_future_s * 1000)
        hint = request.match_info.get("container", "")
        outcome = notification_outcome(
            service.onem2m, body, origin, now_ms, future_ms, hint, service.identifiers
        )
        error = None
        if isinstance(outcome, OptedOut):
            pass  # kept nowhere, not even as a dead letter; answered as it would have been
        elif isinstance(outcome, Rejected):  # the notification as received
            outcome = Rejected(outcome.reason, outcome.detail, origin, dumps(body))
            service.kafka.reject(outcome)
        elif outcome is not None:
            service.kafka.accept(outcome)
    try:
        await service.make_durable()
    except Refused:
        return _answer(request, INTERNAL_ERROR, 503, {"error": "unavailable"})
    counters = service.counters[SOURCE]
    if error is not None:
        counters.rejected[error["error"]] += 1
        return _answer(request, BAD_REQUEST, 400, error)
    if isinstance(outcome, OptedOut):
        counters.opted_out += 1
        return _outcome_answer(request, outcome.answer)
    if isinstance(outcome, Accepted):
        counters.accepted += 1
    elif isinstance(outcome, Rejected):
        counters.rejected[outcome.reason] += 1
    return _outcome_answer(request, outcome)


def _outcome_answer(request: web.Request, outcome: Accepted | Rejected | None) -> web.Response:
    """200 for every notification taken: accepted (its event id) or rejected (its reason; the
    notification is in the dead-letter topic), or plain for one without data."""
    if isinstance(outcome, Accepted):
        return _answer(request, OK, 200, {"status": "accepted", "event_id": outcome.event_id})
    if isinstance(outcome, Rejected):
        rejected = {"status": "rejected", "reason": outcome.reason, "detail": outcome.detail}
        return _answer(request, OK, 200, rejected)
    return _answer(request, OK, 200)


def openapi_paths(bounds: dict[str, Any], responses: dict[str, Any]) -> dict[str, Any]:
    """The two notification paths for the HTTP ingest's OpenAPI document."""
    m2m_headers = [
        {"name": name, "in": "header", "required": required, "schema": {"type": "string"},
         "description": text}
        for name, required, text in (
            ("X-M2M-Origin", True, "the notifying CSE (or AE)"),
            ("X-M2M-RI", True, "request id, echoed in the answer"),
            ("X-M2M-RVI", False, "release version, echoed in the answer"),
        )
    ]  # fmt: skip
    key = {"name": "api_key", "in": "query", "required": False, "schema": {"type": "string"},
           "description": "the API key, for a CSE that cannot send X-API-Key"}  # fmt: skip
    answer = {
        "200": {
            "description": "Taken (X-M2M-RSC 2000): accepted, dead-lettered with a reason, "
            "or a verification request / subscription deletion notice",
            "headers": {"X-M2M-RSC": {"schema": {"type": "string"}}},
        },
        **responses,
    }

    def operation(op_id: str, extra: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "post": {
                "operationId": op_id,
                "summary": "oneM2M notification (m2m:sgn carrying an m2m:cin), HTTP binding",
                "security": [{"apiKey": []}, {"bearer": []}, {}],
                "parameters": [*m2m_headers, key, *extra],
                "requestBody": {
                    "required": True,
                    "description": bounds["description"],
                    "x-citystream-limits": bounds,
                    "content": {"application/json": {"schema": {"type": "object"}}},
                },
                "responses": answer,
            }
        }

    container = {"name": "container", "in": "path", "required": True,
                 "schema": {"type": "string"},
                 "description": "the container's path or name in [onem2m.containers]"}  # fmt: skip
    return {
        "/onem2m/notify": operation("postOneM2MNotification", []),
        "/onem2m/notify/{container}": operation("postOneM2MContainerNotification", [container]),
    }
