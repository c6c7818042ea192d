"""MQTT source: OGC SensorThings observations and plain JSON events from a broker into Kafka.

Subscribes with QoS 1 on a persistent session and acknowledges a message (PUBACK) only
after what it became is durable in Kafka, so nothing valid is lost when this process or
Kafka stops: the broker redelivers whatever was not acknowledged. Redeliveries are
dropped by an explicit, bounded memory of recent (topic, payload) pairs; the processor's
de-duplication on (segment, event time) catches any that outlive it.

Topic formats (per subscription in the config file):

- ``sensorthings``: ``.../Datastreams(<id>)/Observations`` with a body holding
  ``phenomenonTime`` (instant, or interval whose end is used), ``result`` and optionally
  ``resultTime`` and ``parameters`` (``parameters.unit`` is checked and converted). The
  mapping file says which sensor and domain a Datastream is; an object ``result`` fills
  several fields at once, a scalar one fills one field and is joined with the other
  Datastreams of the same sensor and phenomenonTime.
  ``.../MultiDatastreams(<id>)/Observations``: the result is an array, one canonical
  field per position (an air reading's five pollutants in one observation).
- ``events``: canonical events (an object, an array or NDJSON), as ``POST /v1/events``.

Payloads are bounded as HTTP bodies are (``CITYSTREAM_INGEST_MAX_BODY_BYTES``, then the
JSON limits of :class:`JsonLimits`); over a bound they are dead-lettered whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import paho.mqtt.client as mqtt

from connectors.publishing import AIR, PARKING, EventPublisher, Rejected
from connectors.sources.base import Progress, Report
from connectors.sources.ingest_common import (
    DEFAULT_LIMITS,
    DOMAINS,
    INCOMPLETE_OBSERVATION,
    INVALID_EVENT,
    INVALID_TIMESTAMP,
    TOO_LARGE,
    UNKNOWN_DATASTREAM,
    Accepted,
    DatastreamMapping,
    Identifiers,
    IngestConfig,
    IngestError,
    JsonLimits,
    OptedOut,
    RecentKeys,
    SourceCounters,
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
from core.privacy.edge import Edge
from core.settings import Settings

COMPONENT = "mqtt-ingest"
log = logging.getLogger(__name__)
_DATASTREAM_TOPIC = re.compile(
    r"(?:^|/)(?P<multi>Multi)?Datastreams\((?P<id>[^()]*)\)/Observations$"
)


# --- SensorThings mapping (pure) -----------------------------------------------------


def datastream_id(topic: str) -> str | None:
    """``v1.1/Datastreams(42)/Observations`` -> "42" (quotes of string ids removed)."""
    found = datastream_ref(topic)
    return found[1] if found else None


def datastream_ref(topic: str) -> tuple[bool, str] | None:
    """(is a MultiDatastream, id) of an Observations topic."""
    match = _DATASTREAM_TOPIC.search(topic)
    return (bool(match.group("multi")), match.group("id").strip("'\"")) if match else None


@dataclass(frozen=True)
class Part:
    """What one observation contributes to a canonical event."""

    domain: str
    sensor: str
    event_time: str
    event_ms: int
    values: dict[str, Any]
    # raw values of declared identifiers (#16), for the opt-out check only: never shown
    identity: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.domain, self.sensor, self.event_ms)

    def event(self, values: dict[str, Any]) -> dict[str, Any]:
        spec = DOMAINS[self.domain]
        return {
            "domain": self.domain,
            spec.sensor_field: self.sensor,
            "event_time": self.event_time,
            **values,
        }


def observation_part(config: IngestConfig, topic: str, body: Any) -> tuple[Part, bool]:
    """One SensorThings observation as a Part, and whether it is complete on its own."""
    ref = datastream_ref(topic)
    mapping = config.datastream(ref[1], ref[0]) if ref is not None else None
    if mapping is None:
        kind = "MultiDatastream" if ref and ref[0] else "Datastream"
        ds_id = ref[1] if ref else None
        raise IngestError(UNKNOWN_DATASTREAM, f"{kind} {ds_id!r} is not in the mapping file")
    if not isinstance(body, dict) or "result" not in body:
        raise IngestError(INVALID_EVENT, "an Observation needs a JSON object with `result`")
    when = body.get("phenomenonTime") or body.get("resultTime")
    try:
        event_time = parse_time(when)
    except ValueError as exc:
        raise IngestError(INVALID_TIMESTAMP, f"phenomenonTime: {exc}") from exc
    values = _result_values(mapping, body["result"], body.get("parameters"))
    part = Part(
        mapping.domain, mapping.sensor, str(when), int(event_time.timestamp() * 1000), values
    )
    return part, mapping.field is None


def _result_values(mapping: DatastreamMapping, result: Any, parameters: Any) -> dict[str, Any]:
    kinds = DOMAINS[mapping.domain].quantities
    if mapping.components is not None:
        if not isinstance(result, list) or len(result) != len(mapping.components):
            n = len(mapping.components)
            raise IngestError(
                INVALID_EVENT, f"MultiDatastream {mapping.id}: result must be an array of {n}"
            )
        return {
            target: convert(value, kinds[target], mapping.units.get(target), target)
            for target, value in zip(mapping.components, result, strict=True)
            if target
        }
    if mapping.result is not None:
        if not isinstance(result, dict):
            raise IngestError(INVALID_EVENT, f"Datastream {mapping.id}: result must be an object")
        return {
            target: convert(result[member], kinds[target], mapping.units.get(target), member)
            for member, target in mapping.result.items()
            if member in result
        }
    target = mapping.field or ""
    unit = mapping.unit
    if isinstance(parameters, dict) and isinstance(parameters.get("unit"), str):
        unit = parameters["unit"]
    return {target: convert(result, kinds[target], unit, f"Datastream {mapping.id} result")}


@dataclass
class _Pending:
    part: Part
    values: dict[str, Any]
    raws: list[bytes]
    tokens: list[Any]
    since: float
    identity: dict[str, str] = field(default_factory=dict)


Joined = tuple[dict[str, Any], list[Any], dict[str, str]]  # event, tokens, identity


@dataclass
class Joiner:
    """Joins scalar observations of one sensor and phenomenonTime into one event."""

    timeout_s: float
    pending: dict[tuple[str, str, int], _Pending] = field(default_factory=dict)

    def add(self, part: Part, raw: bytes, token: Any, now: float) -> Joined | None:
        """The canonical event, its tokens and its parts' declared identifiers once every
        required field is there."""
        entry = self.pending.get(part.key)
        if entry is None:
            entry = self.pending[part.key] = _Pending(part, {}, [], [], now)
        clash = [k for k in part.values if k in entry.values and entry.values[k] != part.values[k]]
        if clash:
            raise IngestError(INVALID_EVENT, f"conflicting second value for {', '.join(clash)}")
        entry.values.update(part.values)
        entry.identity.update(part.identity)
        entry.raws.append(raw)
        entry.tokens.append(token)
        if not DOMAINS[part.domain].missing(entry.values):
            del self.pending[part.key]
            return part.event(entry.values), entry.tokens, entry.identity
        return None

    def expired(self, now: float) -> list[tuple[Rejected, list[Any]]]:
        """Observations still incomplete after the timeout, as dead letters."""
        return [(rejected, tokens) for rejected, tokens, _identity in self.expired_parts(now)]

    def expired_parts(self, now: float) -> list[tuple[Rejected, list[Any], dict[str, str]]]:
        """As :meth:`expired`, with their parts' declared identifiers (for the opt-out)."""
        out = []
        for key in [k for k, p in self.pending.items() if now - p.since >= self.timeout_s]:
            entry = self.pending.pop(key)
            missing = DOMAINS[entry.part.domain].missing(entry.values)
            detail = f"no {', '.join(missing)} within {self.timeout_s:.0f}s for {key}"
            raw = b"\n".join(entry.raws)
            rejected = Rejected(INCOMPLETE_OBSERVATION, detail, "mqtt:join", raw)
            out.append((rejected, entry.tokens, entry.identity))
        return out


# --- the source ------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    mid: int
    qos: int

    @property
    def token(self) -> tuple[int, int]:
        """What acknowledging this message takes."""
        return (self.mid, self.qos)


Outcome = Accepted | Rejected | OptedOut


class MqttIngest:
    """Maps MQTT messages to canonical events; Kafka and the broker are injected.

    A payload is bounded as an HTTP body is: ``max_payload_bytes`` (None: no bound),
    then ``limits`` on its JSON; over a bound it is dead-lettered (``too_large``,
    ``too_complex``). The mapping's declared identifiers (``[privacy]``) are pseudonymised
    as soon as an observation is read, and an opted-out one becomes :class:`OptedOut`;
    their tools (``identifiers.edge``) are set by the source's ``setup``.
    """

    def __init__(
        self,
        config: IngestConfig,
        max_future_ms: int,
        limits: JsonLimits = DEFAULT_LIMITS,
        max_payload_bytes: int | None = None,
    ) -> None:
        self.config = config
        self.max_future_ms = max_future_ms
        self.limits = limits
        self.max_payload_bytes = max_payload_bytes
        self.recent = RecentKeys(config.mqtt.dedup_window)
        self.joiner = Joiner(config.mqtt.join_timeout_s)
        self.formats = [(s.filter, s.format) for s in config.mqtt.subscriptions]
        self.identifiers = Identifiers(config.privacy.identifiers)

    def handle(self, msg: Message, now: float) -> tuple[list[Outcome], list[Any]] | None:
        """Outcomes of one message and the tokens (mids) they settle; None: a duplicate.

        A scalar observation still waiting for its partners settles nothing yet.
        """
        key = hashlib.blake2b(msg.topic.encode() + b"\0" + msg.payload, digest_size=16).digest()
        if self.recent.seen(key):
            return None
        origin = f"mqtt:{msg.topic}"
        if self.max_payload_bytes is not None and len(msg.payload) > self.max_payload_bytes:
            detail = f"payload of {len(msg.payload)} bytes, over {self.max_payload_bytes}"
            return [Rejected(TOO_LARGE, detail, origin, msg.payload)], [msg.token]
        fmt = next((f for flt, f in self.formats if mqtt.topic_matches_sub(flt, msg.topic)), None)
        now_ms = int(now * 1000)
        if fmt == "events":
            return self._events(msg, origin, now_ms), [msg.token]
        try:
            return self._observation(msg, origin, now, now_ms)
        except IngestError as exc:
            return [Rejected(exc.reason, str(exc), origin, msg.payload)], [msg.token]

    def _events(self, msg: Message, origin: str, now_ms: int) -> list[Outcome]:
        try:
            items = split_items(msg.payload, limits=self.limits)
        except IngestError as exc:
            return [Rejected(exc.reason, str(exc), origin, msg.payload)]
        return list(validate_items(items, origin, now_ms, self.max_future_ms, self.identifiers))

    def _observation(
        self, msg: Message, origin: str, now: float, now_ms: int
    ) -> tuple[list[Outcome], list[Any]]:
        body = loads(msg.payload, self.limits)
        part, complete = observation_part(self.config, msg.topic, body)
        part = self._protected(part, body)
        if complete:
            event = part.event(part.values)
            outcome = validate_event(event, origin, msg.payload, now_ms, self.max_future_ms)
            return [self._unless_opted_out(outcome, part.identity)], [msg.token]
        joined = self.joiner.add(part, msg.payload, msg.token, now)
        if joined is None:
            return [], []
        event, tokens, identity = joined
        raw = dumps(event)
        outcome = validate_event(event, origin, raw, now_ms, self.max_future_ms)
        return [self._unless_opted_out(outcome, identity)], tokens

    def _protected(self, part: Part, body: dict[str, Any]) -> Part:
        """``part`` with its sensor as a pseudonym when the domain's sensor field is declared,
        and the raw declared identifiers (the sensor, ``parameters``) kept for the opt-out."""
        if not self.identifiers.fields:
            return part
        sensor_field = DOMAINS[part.domain].sensor_field
        parameters = body.get("parameters")
        found = dict(parameters) if isinstance(parameters, dict) else {}
        identity = self.identifiers.identity({**found, sensor_field: part.sensor})
        sensor = identity.get(sensor_field)
        pseudonym = self.identifiers.pseudonym(sensor_field, sensor) if sensor else None
        return replace(part, sensor=pseudonym or part.sensor, identity=identity)

    def _unless_opted_out(self, outcome: Accepted | Rejected, identity: dict[str, str]) -> Outcome:
        return OptedOut(outcome) if self.identifiers.opted_out(identity) else outcome

    def expired(self, now: float) -> list[tuple[Outcome, list[Any]]]:
        """Incomplete observations past the timeout: dead letters, unless opted out."""
        return [
            (self._unless_opted_out(rejected, identity), tokens)
            for rejected, tokens, identity in self.joiner.expired_parts(now)
        ]


class MqttSource:
    """Runs the broker connection (paho's thread) and the Kafka side (the caller's thread).

    paho's thread only queues messages; the caller's thread maps and publishes them, then
    flushes Kafka and acknowledges every settled message id, every ``flush_every``
    messages or ``flush_interval_ms``.
    """

    def __init__(self, settings: Settings, config: IngestConfig) -> None:
        self.settings = settings
        self.config = config
        self.ingest = MqttIngest(
            config,
            int(settings.ingest_max_future_s * 1000),
            JsonLimits.from_settings(settings),
            settings.ingest_max_body_bytes,
        )
        self.counters = SourceCounters()
        self.connects = 0
        self.messages = 0
        self._inbox: queue.Queue[Message] = queue.Queue(maxsize=50_000)
        self._stop = threading.Event()
        self._unacked: list[Any] = []
        self._subscribed = threading.Event()
        self.status_topic = config.mqtt.status_topic.format(client_id=config.mqtt.client_id)
        self.edge: Edge | None = None

    def setup(self, events: EventPublisher | None = None) -> None:
        """Connect to Kafka and the registry, and start the broker connection.

        With declared identifiers, first the privacy edge: the pseudonym keys, and the
        opt-out registry read to its end and then followed while the source runs.
        """
        if self.ingest.identifiers.fields and self.edge is None:
            self.edge = Edge.from_settings(self.settings, follow=True)
            self.ingest.identifiers.edge = self.edge
        if events is None:
            events = EventPublisher(self.settings, COMPONENT, streams=(AIR, PARKING))
            events.setup()
        self.events = events
        self.client = self._client()
        cfg = self.config.mqtt
        self.client.connect_async(cfg.host, cfg.port, cfg.keepalive_s)
        self.client.loop_start()

    def _client(self) -> mqtt.Client:
        cfg = self.config.mqtt
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            clean_session=not cfg.persistent_session,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if self.settings.mqtt_username:
            password = self.settings.mqtt_password
            client.username_pw_set(
                self.settings.mqtt_username, password.get_secret_value() if password else None
            )
        if self.settings.mqtt_ca_file is not None:
            # TLS 1.2+, the broker's certificate checked against this CA and its host name
            client.tls_set(ca_certs=str(self.settings.mqtt_ca_file))
        client.reconnect_delay_set(cfg.reconnect_min_s, cfg.reconnect_max_s)
        client.will_set(self.status_topic, self._status("offline"), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def _status(self, state: str) -> bytes:
        """Retained status: ``online`` once subscribed (with counters), ``offline`` (will);
        with declared identifiers, how many opt-outs the source applies now."""
        body = {"state": state, **self.counters.as_dict(), "messages": self.messages}
        if self.edge is not None:
            body["optouts"] = len(self.edge.optouts)
        return json.dumps(body).encode()

    def publish_status(self, state: str = "online") -> mqtt.MQTTMessageInfo:
        return self.client.publish(self.status_topic, self._status(state), qos=1, retain=True)

    def _on_connect(self, client: mqtt.Client, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            log.warning("MQTT connect refused: %s (paho retries with backoff)", reason)
            return
        self.connects += 1
        cfg = self.config.mqtt
        client.subscribe([(s.filter, int(cfg.qos)) for s in cfg.subscriptions])
        log.info(
            "MQTT connected to %s:%s (session present: %s), subscribing to %s",
            cfg.host,
            cfg.port,
            flags.session_present,
            ", ".join(s.filter for s in cfg.subscriptions),
        )

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, _mid: int, codes: Any, _p: Any) -> None:
        refused = [str(code) for code in codes if code.is_failure]
        if refused:
            log.error("MQTT subscription refused: %s", ", ".join(refused))
            return
        log.info("MQTT subscribed; status on %s", self.status_topic)
        self.publish_status()
        self._subscribed.set()

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._subscribed.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting with backoff", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        # Blocks when the Kafka side falls behind: TCP backpressure to the broker.
        self._inbox.put(Message(msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    def stop(self) -> None:
        self._stop.set()

    def report(self) -> Report:
        """The counters so far: messages read (one may hold several events, or part of
        one), events published, duplicates dropped, dead letters by reason."""
        c = self.counters
        return Report(self.messages, c.accepted, dead_lettered=Counter(c.rejected),
                      duplicates=c.duplicates, opted_out=c.opted_out)  # fmt: skip

    def run(self, progress: Progress | None = None) -> Report:
        """Until :meth:`stop`: publish, flush, acknowledge; then disconnect cleanly.

        ``progress`` has the report after each flush. The retained status (counters of
        what is durable in Kafka) is refreshed after flushes, at most every
        ``status_interval_s``.
        """
        cfg = self.config.mqtt
        last_flush = last_status = time.monotonic()
        since_flush = 0
        try:
            while not self._stop.is_set():
                since_flush += self._drain(cfg.flush_every - since_flush)
                now = time.monotonic()
                if (
                    since_flush >= cfg.flush_every
                    or now - last_flush >= cfg.flush_interval_ms / 1000
                ):
                    self._settle_expired()
                    if since_flush or self._unacked:
                        self._flush_and_ack()
                        if progress:
                            progress(self.report(), False)
                    since_flush, last_flush = 0, now
                if self._subscribed.is_set() and now - last_status >= cfg.status_interval_s:
                    self.publish_status()
                    last_status = now
            self._drain(self._inbox.qsize())
            self._flush_and_ack()
            if self._subscribed.is_set():
                self.publish_status("offline").wait_for_publish(5.0)
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            if self.edge is not None:
                self.edge.close()
        report = self.report()
        if progress:
            progress(report, True)
        return report

    def _drain(self, limit: int) -> int:
        handled = 0
        while handled < max(1, limit):
            try:
                msg = self._inbox.get(timeout=0.01 if handled == 0 else 0)
            except queue.Empty:
                break
            handled += 1
            self._handle(msg)
        return handled

    def _handle(self, msg: Message) -> None:
        self.messages += 1
        result = self.ingest.handle(msg, time.time())
        counters = self.counters
        if result is None:
            counters.duplicates += 1
            self._unacked.append(msg.token)
            return
        outcomes, tokens = result
        for outcome in outcomes:
            self._settle(outcome)
        self._unacked.extend(tokens)

    def _settle(self, outcome: Outcome) -> None:
        """Publish, dead-letter (minimised, #16: no raw payload), or drop an opted-out one."""
        counters = self.counters
        if isinstance(outcome, Accepted):
            publish_accepted(self.events, outcome)
            counters.accepted += 1
        elif isinstance(outcome, OptedOut):  # kept nowhere, only counted
            counters.opted_out += 1
        else:
            self.events.reject(fit_dead_letter(minimised(outcome, self.ingest.identifiers)))
            counters.rejected[outcome.reason] += 1

    def _settle_expired(self) -> None:
        for outcome, tokens in self.ingest.expired(time.time()):
            self._settle(outcome)
            self._unacked.extend(tokens)

    def _flush_and_ack(self) -> None:
        """Kafka has everything handled so far, then the broker may forget it."""
        self.events.flush()  # DeliveryError propagates: nothing is acknowledged then
        for mid, qos in self._unacked:
            self.client.ack(mid, qos)
        self._unacked.clear()


class ProgressLog:
    """Logs the report at most every ``interval_s`` (a ``progress`` callback of ``run``)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0

    def __call__(self, report: Report, done: bool) -> None:
        if time.monotonic() >= self._next:
            self._next = time.monotonic() + self.interval_s
            log.info(
                "MQTT ingest: %d messages, %d published, %d duplicates, %d opted out, "
                "dead-lettered %s",
                report.rows_read,
                report.published,
                report.duplicates,
                report.opted_out,
                dict(report.dead_lettered),
            )
