"""HTTP ingest service: canonical events and NGSI-LD notifications into Kafka (aiohttp).

- ``POST /v1/events``: a JSON array (or NDJSON) of canonical events; 202 answers per item.
- ``POST /ngsi-ld/v1/notify``: notifications of an NGSI-LD context broker (Orion-LD) for a
  subscription, entities of the FIWARE Smart Data Models in normalized or key-values form.
- ``GET /health`` (alive), ``GET /ready`` (Kafka reachable, not backpressured),
  ``GET /stats`` (accepted/rejected per source), ``GET /openapi.json``.

A body is bounded before it is parsed: bytes (413), then nesting depth, events and
string length (:class:`JsonLimits`; 400 ``too_complex``). Whatever cannot be parsed is a
400 with a dead letter, never a 500.

A 202 means durable: the request's events (and dead letters) are acknowledged by Kafka
before the answer. Requests share flushes (group commit), so batching clients pay one
Kafka round trip per group. When Kafka falls behind, the service answers 503 with
Retry-After instead of queueing without bound. Event ids are derived from (domain,
sensor, event time), the key the processor de-duplicates on, so a retried request never
double counts.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from connectors.publishing import AIR, ENERGY, PARKING, EventPublisher, Rejected
from connectors.sources import onem2m
from connectors.sources.base import Report
from connectors.sources.ingest_common import (
    DEFAULT_LIMITS,
    DOMAINS,
    INVALID_EVENT,
    INVALID_TIMESTAMP,
    UNKNOWN_ENTITY,
    Accepted,
    AirEvent,
    Identifiers,
    IngestConfig,
    IngestError,
    JsonLimits,
    NgsiConfig,
    NgsiTypeMapping,
    OptedOut,
    ParkingEvent,
    SourceCounters,
    TrafficEvent,
    convert,
    dumps,
    fit_dead_letter,
    loads,
    minimised,
    parse_time,
    publish_accepted,
    split_items,
    validate_event,
    validate_items,
)
from connectors.sources.ngsi_context import ContextCache, canonical_names
from core.kafka import DeliveryError
from core.privacy.edge import Edge
from core.settings import Settings

COMPONENT = "http-ingest"
log = logging.getLogger(__name__)
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/ndjson", "application/jsonl"})
OPEN_PATHS = frozenset({"/health", "/ready", "/stats", "/openapi.json"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


# --- NGSI-LD entities -> canonical events (pure) ---------------------------------------

_NGSI_ATTRIBUTE_TYPES = frozenset({"Property", "GeoProperty", "Relationship", "LanguageProperty"})


def _attribute(raw: Any) -> tuple[Any, str | None, str | None]:
    """(value, unitCode, observedAt) of a normalized or key-values attribute."""
    value, unit, observed = raw, None, None
    kind = raw.get("type") if isinstance(raw, dict) else None
    if isinstance(kind, str) and kind in _NGSI_ATTRIBUTE_TYPES:
        value = raw.get("object") if raw["type"] == "Relationship" else raw.get("value")
        unit, observed = raw.get("unitCode"), raw.get("observedAt")
    if isinstance(value, dict) and "@value" in value:  # {"@type": "DateTime", "@value": ...}
        value = value["@value"]
    return value, unit, observed


def ngsi_event(
    config: NgsiConfig,
    entity: Any,
    context: Any = None,
    contexts: ContextCache | None = None,
    identifiers: Collection[str] = (),
) -> dict[str, Any]:
    """One NGSI-LD entity as a canonical event dict; IngestError says why it cannot be.

    Names resolve through the entity's ``@context`` (else the notification's ``context``,
    else every shipped one) to Smart Data Model terms (:mod:`ngsi_context`); ``contexts``
    resolves each context of a request once. Attributes named in ``identifiers`` (declared
    personal identifiers, #16) are carried for :meth:`Identifiers.protect`, and an unknown
    sensor's detail does not repeat ids that may be one.
    """
    if not isinstance(entity, dict) or not isinstance(entity.get("type"), str):
        raise IngestError(INVALID_EVENT, "an NGSI-LD entity needs `id` and `type`")
    if not isinstance(entity.get("id"), str):
        raise IngestError(INVALID_EVENT, "an NGSI-LD entity needs `id` and `type`")
    etype, attrs = canonical_names(entity, entity.get("@context", context), contexts)
    mapping = config.types.get(etype)
    if mapping is None:
        raise IngestError(UNKNOWN_ENTITY, f"entity type {etype!r} is not in the mapping file")
    spec = DOMAINS[mapping.domain]
    values: dict[str, Any] = dict(mapping.constants)
    observed: str | None = None
    for name, target in mapping.attributes.items():
        if name in attrs:
            value, unit, observed_at = _attribute(attrs[name])
            value = _category(mapping, name, value)
            unit = unit or mapping.units.get(name)
            values[target] = convert(value, spec.quantities[target], unit, name)
            observed = observed or observed_at
    if "latitude" in spec.quantities and "location" in attrs:
        values.update(_point(attrs["location"]))
    declared = {n: _attribute(attrs[n])[0] for n in identifiers if n in attrs and n not in values}
    hide = spec.sensor_field in identifiers
    return {
        **declared,
        "domain": mapping.domain,
        spec.sensor_field: _sensor(mapping, config.sensors, entity["id"], attrs, hide),
        "event_time": _event_time(mapping, attrs, observed),
        **values,
    }


def _category(mapping: NgsiTypeMapping, name: str, value: Any) -> Any:
    """A text value of a categorical attribute as its number (``occupied`` -> 1)."""
    categories = mapping.categories.get(name)
    if categories is None:
        return value
    if not isinstance(value, str) or value not in categories:
        known = ", ".join(categories)
        raise IngestError(INVALID_EVENT, f"{name} {value!r} is not one of: {known}")
    return categories[value]


def _point(raw: Any) -> dict[str, Any]:
    """latitude/longitude of a GeoJSON Point ``location`` (other geometries: none)."""
    geometry = _attribute(raw)[0]
    if not isinstance(geometry, dict) or geometry.get("type") != "Point":
        return {}
    coordinates = geometry.get("coordinates")
    if not isinstance(coordinates, list) or len(coordinates) < 2:
        raise IngestError(INVALID_EVENT, "location: a Point needs [longitude, latitude]")
    return {"longitude": coordinates[0], "latitude": coordinates[1]}


def _event_time(mapping: NgsiTypeMapping, attrs: dict[str, Any], observed: str | None) -> str:
    """The first time attribute present (interval: its end), else a value's observedAt."""
    raw = next((_attribute(attrs[n])[0] for n in mapping.time if n in attrs), observed)
    if raw is None:
        wanted = ", ".join([*mapping.time, "observedAt"])
        raise IngestError(INVALID_TIMESTAMP, f"entity has none of {wanted}")
    try:
        return parse_time(raw, assume_utc=True).isoformat()
    except ValueError as exc:
        raise IngestError(INVALID_TIMESTAMP, str(exc)) from exc


def _sensor(
    mapping: NgsiTypeMapping,
    sensors: dict[str, str],
    entity_id: str,
    attrs: dict[str, Any],
    hide: bool = False,
) -> str:
    """The sensor (e.g. segment id) from ``refRoadSegment`` or the entity id, via the map
    (``hide``: the sensor is a declared identifier, so a failure does not name the ids)."""
    candidates: list[str] = []
    for name in mapping.sensor:
        value = entity_id if name == "id" else _attribute(attrs.get(name))[0]
        if isinstance(value, list):
            value = value[0] if value else None
        if isinstance(value, str):
            candidates.append(value)
    for candidate in candidates:
        if candidate in sensors:
            return sensors[candidate]
    if mapping.id_pattern:
        for candidate in candidates:
            match = re.search(mapping.id_pattern, candidate)
            if match:
                return match.group("sensor")
    if hide:
        raise IngestError(UNKNOWN_ENTITY, "no sensor mapped for the entity (ids not shown)")
    raise IngestError(UNKNOWN_ENTITY, f"no sensor mapped for {', '.join(candidates) or entity_id}")


def notification_context(body: Any) -> Any:
    """The ``@context`` of a Notification body, for entities that carry none."""
    return body.get("@context") if isinstance(body, dict) else None


def notification_entities(body: Any) -> list[Any]:
    """The ``data`` of an NGSI-LD Notification (a bare entity list is accepted too)."""
    if isinstance(body, dict) and isinstance(body.get("data"), list):
        return body["data"]
    if isinstance(body, list):
        return body
    raise IngestError(INVALID_EVENT, "expected an NGSI-LD Notification with a `data` array")


# --- access control ----------------------------------------------------------------------


class ApiKeys:
    """API keys per client; compared in constant time, never logged."""

    def __init__(self, keys: dict[str, str]) -> None:
        if not keys:
            raise ValueError(
                "no API keys: set CITYSTREAM_INGEST_API_KEYS or CITYSTREAM_INGEST_API_KEYS_FILE"
            )
        self._keys = [
            (client, key.encode(errors="backslashreplace")) for client, key in keys.items()
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> ApiKeys:
        text = "{}"
        if settings.ingest_api_keys is not None:
            text = settings.ingest_api_keys.get_secret_value()
        elif settings.ingest_api_keys_file is not None:
            text = Path(settings.ingest_api_keys_file).read_text(encoding="utf-8")
        try:
            keys = json.loads(text)
        except ValueError:
            raise ValueError("API keys are not a JSON object (content not shown)") from None
        if not isinstance(keys, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in keys.items()
        ):
            raise ValueError('API keys must be a JSON object {"client": "non-empty key"}')
        return cls(keys)

    def client(self, presented: str | None) -> str | None:
        if not presented:
            return None
        given = presented.encode(errors="backslashreplace")  # headers may hold any bytes
        found = None
        for client, key in self._keys:  # no early exit: timing says nothing about which
            if hmac.compare_digest(given, key):
                found = client
        return found


@dataclass
class TokenBucket:
    """Requests per second per client, with a burst allowance."""

    rate: float
    burst: int
    _state: dict[str, tuple[float, float]] = field(default_factory=dict)

    def wait_s(self, client: str, now: float) -> float:
        """0 if the request may go now (and takes a token), else seconds until it may."""
        tokens, last = self._state.get(client, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._state[client] = (tokens - 1.0, now)
            return 0.0
        self._state[client] = (tokens, now)
        return (1.0 - tokens) / self.rate


# --- the Kafka side ----------------------------------------------------------------------


class KafkaSide(Protocol):
    """What the service needs from Kafka; tests pass a fake."""

    def pending(self) -> int: ...
    def accept(self, accepted: Accepted) -> None: ...
    def reject(self, rejected: Rejected) -> None: ...
    def send_batches(self) -> None: ...
    def flush(self, timeout: float) -> None: ...
    def poll(self) -> None: ...


class PublisherSide:
    """The real :class:`EventPublisher` (call ``setup`` on it first); dead letters are
    minimised, declared ``identifiers`` as their pseudonyms (#16)."""

    def __init__(self, events: EventPublisher, identifiers: Identifiers | None = None) -> None:
        self.events = events
        self.identifiers = identifiers

    def pending(self) -> int:
        return len(self.events.publisher.producer)

    def accept(self, accepted: Accepted) -> None:
        publish_accepted(self.events, accepted)

    def reject(self, rejected: Rejected) -> None:
        self.events.reject(fit_dead_letter(minimised(rejected, self.identifiers)))  # #16

    def send_batches(self) -> None:
        self.events.send_batches()

    def flush(self, timeout: float) -> None:
        self.events.publisher.flush(timeout)

    def poll(self) -> None:
        self.events.publisher.producer.poll(0)


class GroupCommit:
    """Requests wait for a flush that started after they produced; one flush at a time."""

    def __init__(self, kafka: KafkaSide, timeout_s: float) -> None:
        self.kafka = kafka
        self.timeout_s = timeout_s
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self.healthy = True

    async def durable(self) -> None:
        """Returns once everything produced before the call is acknowledged by Kafka."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run())
        await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self._waiters:
            waiters, self._waiters = self._waiters, []
            self.kafka.send_batches()
            try:
                await loop.run_in_executor(None, self.kafka.flush, self.timeout_s)
            except DeliveryError as exc:
                self.healthy = False
                log.error("Kafka did not acknowledge: %s", exc)
                for w in waiters:
                    if not w.done():
                        w.set_exception(exc)
                continue
            self.healthy = True
            for w in waiters:
                if not w.done():
                    w.set_result(None)


# --- the service ----------------------------------------------------------------------------


class Refused(Exception):
    """Ends a request early with a JSON error answer (caught by the guard middleware)."""

    def __init__(self, status: int, error: str, detail: str, **headers: str) -> None:
        super().__init__(detail)
        self.response = web.json_response(
            {"error": error, "detail": detail}, status=status, headers=headers or None
        )


def unavailable(retry_after: int, detail: str) -> Refused:
    return Refused(503, "unavailable", detail, **{"Retry-After": str(retry_after)})


CLIENT = web.RequestKey("client", str)
REQUEST_ID = web.RequestKey("request_id", str)
BODY_READ = web.RequestKey("body_read", bool)


Outcome = Accepted | Rejected | OptedOut
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class IngestService:
    """The aiohttp application; Kafka, keys, the clock and the privacy edge are injected.

    The mapping's declared identifiers (``[privacy]``) need ``edge`` (keys and the
    followed opt-out registry); :meth:`close` stops following it.
    """

    def __init__(
        self,
        settings: Settings,
        config: IngestConfig | None,
        kafka: KafkaSide,
        keys: ApiKeys,
        clock: Callable[[], float] = time.time,
        edge: Edge | None = None,
    ) -> None:
        self.settings = settings
        self.ngsi = config.ngsi_ld if config else NgsiConfig.model_validate({})
        self.identifiers = Identifiers(config.privacy.identifiers if config else (), edge)
        self.kafka = kafka
        self.keys = keys
        self.clock = clock
        self.limits = JsonLimits.from_settings(settings)
        self.limiter = TokenBucket(settings.ingest_rate_limit_rps, settings.ingest_rate_burst)
        self.commit = GroupCommit(kafka, settings.ingest_request_timeout_s)
        self.counters = {"events": SourceCounters(), "ngsi-ld": SourceCounters()}
        # oneM2M notifications (#18): POST /onem2m/notify, mapped by container
        self.onem2m = onem2m.load(config.onem2m if config else {})
        self.counters[onem2m.SOURCE] = SourceCounters()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.settings.ingest_max_body_bytes,
            middlewares=[self._guard],
        )
        app.add_routes(
            [
                web.post("/v1/events", self.post_events),
                web.post("/ngsi-ld/v1/notify", self.post_notify),
                web.post("/onem2m/notify", self.post_onem2m),
                web.post("/onem2m/notify/{container:.+}", self.post_onem2m),
                web.get("/health", self.health),
                web.get("/ready", self.ready),
                web.get("/stats", self.stats),
                web.get("/openapi.json", self.openapi),
            ]
        )
        app.cleanup_ctx.append(self._poller)
        return app

    async def _poller(self, _app: web.Application) -> Any:
        """Serves delivery callbacks between flushes, so the producer queue stays honest."""

        async def poll() -> None:
            while True:
                self.kafka.poll()
                await asyncio.sleep(0.05)

        task = asyncio.create_task(poll())
        yield
        task.cancel()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await self._checked(request, handler)
        except Refused as refused:
            if request.can_read_body and not request.get(BODY_READ):
                # refused before its body was read: the connection closes after the answer
                # (say so, rather than fail the client's next request on it)
                refused.response.force_close()
            return refused.response

    async def _checked(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """API key, rate limit, size limit and backpressure, before any body is read."""
        if request.path in OPEN_PATHS:
            return await handler(request)
        client = self.keys.client(_presented_key(request))
        if client is None:
            raise Refused(
                401,
                "unauthorized",
                "a valid API key is needed (X-API-Key or Authorization: Bearer)",
                **{"WWW-Authenticate": 'Bearer realm="citystream"'},
            )
        wait = self.limiter.wait_s(client, time.monotonic())
        if wait > 0:
            raise Refused(
                429,
                "rate_limited",
                f"more than {self.settings.ingest_rate_limit_rps:g} requests/s for this key",
                **{"Retry-After": str(max(1, math.ceil(wait)))},
            )
        length = request.content_length
        if length is not None and length > self.settings.ingest_max_body_bytes:
            raise self._too_large()
        pending = self.kafka.pending()
        if pending > self.settings.ingest_max_pending:
            raise unavailable(
                self.settings.ingest_retry_after_s, f"{pending} messages wait for Kafka"
            )
        request[CLIENT] = client
        rid = request.headers.get("X-Request-ID", "")
        request[REQUEST_ID] = rid if _REQUEST_ID.match(rid) else uuid.uuid4().hex[:16]
        return await handler(request)

    async def _body(self, request: web.Request) -> bytes:
        try:
            body = await asyncio.wait_for(request.read(), self.settings.ingest_request_timeout_s)
        except TimeoutError:
            raise Refused(408, "timeout", "the request body did not arrive in time") from None
        except web.HTTPRequestEntityTooLarge:
            raise self._too_large() from None
        except web.RequestPayloadError as exc:  # e.g. a Content-Encoding that does not decode
            detail = f"the body cannot be read: {' '.join(str(exc).split())}"
            raise Refused(400, "invalid_encoding", detail) from None
        request[BODY_READ] = True
        return body

    def _too_large(self) -> Refused:
        return Refused(413, "too_large", f"body over {self.settings.ingest_max_body_bytes} bytes")

    async def post_events(self, request: web.Request) -> web.Response:
        raw = await self._body(request)
        origin = f"http:{request[CLIENT]}:{request[REQUEST_ID]}"
        ndjson = True if request.content_type in NDJSON_TYPES else None
        if request.content_type == "application/json":
            ndjson = False
        try:
            items = split_items(raw, ndjson, self.limits)
        except IngestError as exc:
            return await self._refuse_body(exc, origin, raw, "events")
        now_ms = int(self.clock() * 1000)
        future_ms = int(self.settings.ingest_max_future_s * 1000)
        outcomes = validate_items(items, origin, now_ms, future_ms, self.identifiers)
        return await self._answer(outcomes, request[REQUEST_ID], "events")

    async def post_notify(self, request: web.Request) -> web.Response:
        raw = await self._body(request)
        origin = f"ngsi-ld:{request[CLIENT]}:{request[REQUEST_ID]}"
        try:
            body = loads(raw, self.limits)
            entities = notification_entities(body)
            self.limits.check_items(len(entities), "entities")
        except IngestError as exc:
            return await self._refuse_body(exc, origin, raw, "ngsi-ld")
        now_ms = int(self.clock() * 1000)
        future_ms = int(self.settings.ingest_max_future_s * 1000)
        context, contexts = notification_context(body), ContextCache()
        outcomes: list[Outcome] = []
        for i, entity in enumerate(entities):
            where = f"{origin}#{i}"
            declared = self.identifiers.fields
            try:
                event = ngsi_event(self.ngsi, entity, context, contexts, declared)
            except IngestError as exc:
                outcomes.append(Rejected(exc.reason, str(exc), where, dumps(entity)))
                continue
            event, opted_out = self.identifiers.protect(event)
            outcome = validate_event(event, where, b"", now_ms, future_ms)
            if isinstance(outcome, Rejected):  # the entity as received, not its mapping
                outcome = Rejected(outcome.reason, outcome.detail, where, dumps(entity))
            outcomes.append(OptedOut(outcome) if opted_out else outcome)
        return await self._answer(outcomes, request[REQUEST_ID], "ngsi-ld")

    async def post_onem2m(self, request: web.Request) -> web.Response:
        return await onem2m.notify(self, request)

    async def read_body(self, request: web.Request) -> bytes:
        """The body within the limits (for connectors/sources/onem2m.py)."""
        return await self._body(request)

    async def make_durable(self) -> None:
        """Everything handed to Kafka so far acknowledged, or Refused 503."""
        await self._durable()

    async def _durable(self) -> None:
        try:
            await asyncio.wait_for(self.commit.durable(), self.settings.ingest_request_timeout_s)
        except (TimeoutError, DeliveryError) as exc:
            raise unavailable(
                self.settings.ingest_retry_after_s, f"Kafka did not acknowledge in time: {exc!r}"
            ) from None

    async def _refuse_body(
        self, exc: IngestError, origin: str, raw: bytes, source: str
    ) -> web.Response:
        """A body that is not even a list of items: dead-lettered whole, then 400."""
        self.kafka.reject(Rejected(exc.reason, str(exc), origin, raw))
        await self._durable()
        self.counters[source].rejected[exc.reason] += 1
        return web.json_response({"error": exc.reason, "detail": str(exc)}, status=400)

    async def _answer(self, outcomes: list[Outcome], request_id: str, source: str) -> web.Response:
        """Publish and dead-letter, durably; then the per-item answer.

        An opted-out item is published and dead-lettered nowhere and counted as
        ``opted_out``, but answered as it would have been (accepted with its event id, or
        rejected with its reason): the resident opted out, the sender did nothing wrong
        and must not retry, and the answer does not tell an API key whose identifier
        opted out.
        """
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                self.kafka.accept(outcome)
            elif isinstance(outcome, Rejected):
                self.kafka.reject(outcome)
        await self._durable()
        counters = self.counters[source]
        items: list[dict[str, Any]] = []
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, OptedOut):
                counters.opted_out += 1
                items.append(_item(i, outcome.answer))
                continue
            if isinstance(outcome, Accepted):
                counters.accepted += 1
            else:
                counters.rejected[outcome.reason] += 1
            items.append(_item(i, outcome))
        accepted = sum(1 for item in items if item["status"] == "accepted")
        body = {
            "request_id": request_id,
            "accepted": accepted,
            "rejected": len(outcomes) - accepted,
            "items": items,
        }
        return web.json_response(body, status=202)

    async def health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(self, _request: web.Request) -> web.Response:
        pending = self.kafka.pending()
        problems = []
        if pending > self.settings.ingest_max_pending:
            problems.append(f"{pending} messages wait for Kafka")
        if not self.commit.healthy:
            problems.append("the last Kafka flush failed")
        status = 503 if problems else 200
        return web.json_response(
            {"ready": not problems, "pending": pending, "problems": problems}, status=status
        )

    def counters_dict(self) -> dict[str, Any]:
        return {name: c.as_dict() for name, c in self.counters.items()}

    def report(self) -> Report:
        """Both endpoints' counters so far: items read, published, dead-lettered by reason
        (a body refused whole counts as one item)."""
        report = Report()
        for c in self.counters.values():
            report.published += c.accepted
            report.duplicates += c.duplicates
            report.opted_out += c.opted_out
            report.dead_lettered.update(c.rejected)
        report.rows_read = (
            report.published + report.duplicates + report.opted_out + report.dead_lettered.total()
        )
        return report

    def close(self) -> None:
        """Stop following the opt-out registry (when identifiers are declared)."""
        if self.identifiers.edge is not None:
            self.identifiers.edge.close()

    async def stats(self, _request: web.Request) -> web.Response:
        body = {**self.counters_dict(), "pending": self.kafka.pending()}
        if self.identifiers.edge is not None:  # how many opt-outs apply now (a count only)
            body["optouts"] = len(self.identifiers.edge.optouts)
        return web.json_response(body)

    async def openapi(self, _request: web.Request) -> web.Response:
        document = openapi_document(self.limits, self.settings.ingest_max_body_bytes)
        return web.json_response(document)


def _item(index: int, outcome: Accepted | Rejected) -> dict[str, Any]:
    """One item of a 202 answer."""
    if isinstance(outcome, Accepted):
        return {"index": index, "status": "accepted", "event_id": outcome.event_id}
    return {"index": index, "status": "rejected", "reason": outcome.reason,
            "detail": outcome.detail}  # fmt: skip


def _presented_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    if request.path.startswith("/onem2m/notify") and "api_key" in request.query:
        return request.query["api_key"]  # a CSE sends no headers of ours: the key is in nu
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


# --- OpenAPI ---------------------------------------------------------------------------------


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _response(description: str, schema: str | None = "Error", retry: bool = False) -> Any:
    out: dict[str, Any] = {"description": description}
    if schema:
        out["content"] = _json(_ref(schema))
    if retry:
        out["headers"] = {"Retry-After": {"schema": {"type": "integer"}}}
    return out


_GUARDED = {
    "400": _response(
        "The body cannot be used as a whole, and is dead-lettered whole with `error` as "
        "its reason: `invalid_json` (not JSON, not UTF-8, not an array/Notification "
        "where one is needed) or `too_complex` (over a limit of `x-citystream-limits`: "
        "nesting depth, events per body, characters per string)"
    ),
    "401": _response("Missing or unknown API key"),
    "408": _response("The body did not arrive in time"),
    "413": _response("Body larger than CITYSTREAM_INGEST_MAX_BODY_BYTES"),
    "429": _response("Rate limit of this API key exceeded", retry=True),
    "503": _response("Kafka is slow or unavailable: retry after Retry-After", retry=True),
}


def _limits(limits: JsonLimits, max_body_bytes: int) -> dict[str, Any]:
    """What one request body may hold (the ``x-citystream-limits`` of a request body)."""
    return {
        "maxBodyBytes": max_body_bytes,
        "maxDepth": limits.max_depth,
        "maxItems": limits.max_items,
        "maxStringChars": limits.max_string_chars,
        "description": (
            f"A body is at most {max_body_bytes} bytes (else 413) of UTF-8 JSON, nests "
            f"arrays/objects at most {limits.max_depth} levels deep, holds at most "
            f"{limits.max_items} events (array items, NDJSON lines, NGSI-LD entities) and "
            f"no string (key or value) over {limits.max_string_chars} characters; else "
            "400 too_complex. Set with CITYSTREAM_INGEST_MAX_BODY_BYTES, _MAX_DEPTH, "
            "_MAX_ITEMS and _MAX_STRING_CHARS. An NDJSON line over a limit is rejected "
            "alone (too_complex), like a line that is not JSON (invalid_json)."
        ),
    }


_DEFAULT_BODY_BYTES: int = Settings.model_fields["ingest_max_body_bytes"].default


def openapi_document(
    limits: JsonLimits = DEFAULT_LIMITS, max_body_bytes: int = _DEFAULT_BODY_BYTES
) -> dict[str, Any]:
    """The service's OpenAPI 3.1 document; request schemas come from the pydantic models.

    ``limits`` and ``max_body_bytes`` are the service's own (the defaults: the settings').
    """
    bounds = _limits(limits, max_body_bytes)
    event_schemas = {
        model.__name__: model.model_json_schema(ref_template="#/components/schemas/{model}")
        for model in (TrafficEvent, AirEvent, ParkingEvent)
    }
    any_event = {
        "oneOf": [_ref(name) for name in event_schemas],
        "discriminator": {
            "propertyName": "domain",
            "mapping": {
                "traffic": "#/components/schemas/TrafficEvent",
                "air": "#/components/schemas/AirEvent",
                "parking": "#/components/schemas/ParkingEvent",
            },
        },
    }
    item = {
        "type": "object",
        "required": ["index", "status"],
        "properties": {
            "index": {"type": "integer"},
            "status": {"enum": ["accepted", "rejected"]},
            "event_id": {"type": "string", "description": "domain:sensor:event time (ms)"},
            "reason": {"type": "string", "description": "dead-letter reason code"},
            "detail": {"type": "string"},
        },
    }
    result = {
        "type": "object",
        "required": ["request_id", "accepted", "rejected", "items"],
        "properties": {
            "request_id": {"type": "string"},
            "accepted": {"type": "integer"},
            "rejected": {"type": "integer"},
            "items": {"type": "array", "items": _ref("ItemResult")},
        },
    }
    notification = {
        "type": "object",
        "description": "NGSI-LD Notification (normalized or keyValues entities in `data`)",
        "required": ["data"],
        "properties": {
            "id": {"type": "string"},
            "type": {"const": "Notification"},
            "subscriptionId": {"type": "string"},
            "notifiedAt": {"type": "string"},
            "data": {"type": "array", "items": {"type": "object"}, "maxItems": limits.max_items},
        },
    }
    error = {
        "type": "object",
        "required": ["error", "detail"],
        "properties": {"error": {"type": "string"}, "detail": {"type": "string"}},
    }
    post_ok = {"202": _response("Per-item acceptance; accepted items are durable", "IngestResult")}
    security: list[dict[str, list[str]]] = [{"apiKey": []}, {"bearer": []}]
    return {
        "openapi": "3.1.0",
        "info": {"title": "citystream ingest", "version": "1"},
        "paths": {
            "/v1/events": {
                "post": {
                    "operationId": "postEvents",
                    "summary": "Canonical events, as a JSON array or NDJSON",
                    "security": security,
                    "requestBody": {
                        "required": True,
                        "description": bounds["description"],
                        "x-citystream-limits": bounds,
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": _ref("Event"),
                                    "maxItems": limits.max_items,
                                }
                            },
                            "application/x-ndjson": {
                                "schema": {"type": "string", "description": "one event a line"}
                            },
                        },
                    },
                    "responses": {**post_ok, **_GUARDED},
                }
            },
            "/ngsi-ld/v1/notify": {
                "post": {
                    "operationId": "postNgsiLdNotification",
                    "summary": "Notifications of an NGSI-LD subscription (Orion-LD)",
                    "security": security,
                    "requestBody": {
                        "required": True,
                        "description": bounds["description"],
                        "x-citystream-limits": bounds,
                        "content": {
                            "application/json": {"schema": _ref("Notification")},
                            "application/ld+json": {"schema": _ref("Notification")},
                        },
                    },
                    "responses": {**post_ok, **_GUARDED},
                }
            },
            **onem2m.openapi_paths(bounds, _GUARDED),
            "/health": {"get": _open("health", "The process is up")},
            "/ready": {"get": _open("ready", "Kafka reachable and not backpressured (else 503)")},
            "/stats": {"get": _open("stats", "Accepted and rejected counts per source")},
            "/openapi.json": {"get": _open("openapi", "This document")},
        },
        "components": {
            "schemas": {
                **event_schemas,
                "Event": any_event,
                "ItemResult": item,
                "IngestResult": result,
                "Notification": notification,
                "Error": error,
            },
            "securitySchemes": {
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _open(name: str, description: str) -> dict[str, Any]:
    return {
        "operationId": name,
        "security": [],
        "responses": {"200": {"description": description, "content": _json({"type": "object"})}},
    }


# --- running it ---------------------------------------------------------------------------


async def serve(service: IngestService, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until ``stop`` is set, then drain: in-flight requests finish first."""
    runner = web.AppRunner(service.app(), access_log=log)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    log.info("HTTP ingest listening on http://%s:%s", host, port)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        service.close()


def build_service(settings: Settings, config: IngestConfig | None) -> IngestService:
    """Connects to the registry and Kafka (fails early, clearly) and reads the keys; with
    declared identifiers, reads the pseudonym keys and starts following the opt-outs."""
    keys = ApiKeys.from_settings(settings)
    declared = config.privacy.identifiers if config else []
    edge = Edge.from_settings(settings, follow=True) if declared else None
    events = EventPublisher(settings, COMPONENT, streams=(AIR, PARKING, ENERGY))
    events.setup()
    side = PublisherSide(events, Identifiers(declared, edge))
    return IngestService(settings, config, side, keys, edge=edge)
