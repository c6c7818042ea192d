"""OPC UA source: the variables of a plant's server (energy meters, counters) into Kafka.

A mapping file names the variables (node ids) and what each one is: the sensor (meter,
segment, car park), its canonical field and unit, and constant fields (a meter's
district). The source subscribes to them (asyncua), and every data change becomes the
canonical event of its domain with the server's **SourceTimestamp** as its event time,
through the same validation as MQTT and HTTP (``connectors/sources/ingest_common.py``);
what cannot be used is dead-lettered with its reason (``bad_status``, ``invalid_event``,
``invalid_timestamp``, ``unknown_node``, ...).

Exactness: an event's id is derived from the node's sensor and the source timestamp
(``energy:<meter>:<ms>``), so the value a server sends again after a reconnect (the
initial value of a new subscription) is the same event: the source drops it when it
remembers it, the processor de-duplicates it otherwise. Nothing is buffered without
bound: data changes wait in a bounded queue, and while it is full the subscription's
publish callback waits too, so the client sends no further Publish requests and the
server holds the notifications (OPC UA's own flow control) until Kafka catches up.

Security: ``Basic256Sha256`` with ``SignAndEncrypt`` and a client certificate; the
server's certificate must be one of ``trusted_server_certificates`` (or issued by one of
them), checked before a session is opened. A user name and password come from the
mapping file (``username``, and ``password_file``: a file such as a mounted secret).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
import tomllib
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from asyncua import Client, ua
from asyncua.common.subscription import Subscription
from asyncua.crypto import security_policies
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    Strict,
    ValidationError,
    field_validator,
)

from connectors.publishing import AIR, ENERGY, PARKING, EventPublisher, Rejected
from connectors.sources.base import Progress, Report
from connectors.sources.ingest_common import (
    DOMAINS,
    FUTURE_TIMESTAMP,
    INVALID_EVENT,
    INVALID_TIMESTAMP,
    Accepted,
    DomainRecord,
    IngestError,
    RecentKeys,
    SensorId,
    SourceCounters,
    convert,
    event_id,
    fit_dead_letter,
    minimised,
    parse_time,
    publish_accepted,
    short_repr,
    validate_event,
)
from connectors.sources.mqtt import Joiner, Part
from core.settings import Settings

COMPONENT = "opcua-ingest"
log = logging.getLogger(__name__)

# --- dead-letter reasons of this source (docs/industrial.md) -------------------------------
BAD_STATUS = "bad_status"
UNKNOWN_NODE = "unknown_node"


class UntrustedServerError(RuntimeError):
    """The server's certificate is not trusted: the source refuses to connect (no retry)."""


class AccessRefusedError(RuntimeError):
    """The server refused our identity or certificate: retrying would not help."""


# Status codes of a refused identity or certificate: fatal, not a reason to reconnect.
REFUSALS = {
    "BadUserAccessDenied",
    "BadIdentityTokenInvalid",
    "BadIdentityTokenRejected",
    "BadSecurityChecksFailed",
    "BadCertificateInvalid",
    "BadCertificateUntrusted",
    "BadCertificateUriInvalid",
    "BadSecurityPolicyRejected",
}


# --- the energy domain (families/energy: energy_reading.avsc) -----------------------------


class EnergyEvent(BaseModel):
    """A meter's consumption since its previous reading, as the energy KPIs count it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="EnergyEvent")

    domain: Literal["energy"]
    meter_id: SensorId
    district: SensorId = Field(description="The meter's district (postal code)")
    event_time: datetime
    kwh: Annotated[float, Strict(), Field(ge=0, le=1e9)] = Field(
        description="kWh consumed since the meter's previous reading"
    )

    @field_validator("event_time", mode="before")
    @classmethod
    def _time(cls, value: object) -> datetime:
        return parse_time(value)


ENERGY_UNITS = {"kWh": 1.0, "KWH": 1.0, "Wh": 0.001, "WHR": 0.001, "MWh": 1000.0, "MWH": 1000.0}


def validate(
    data: dict[str, Any], origin: str, raw: bytes, now_ms: int, max_future_ms: int
) -> Accepted | Rejected:
    """:func:`validate_event` for the ingest domains, and the same gate for energy."""
    if data.get("domain") != "energy":
        return validate_event(data, origin, raw, now_ms, max_future_ms)
    try:
        model = EnergyEvent.model_validate(data)
    except ValidationError as exc:
        timing = any(e["loc"][:1] == ("event_time",) for e in exc.errors())
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:10]
        )
        return Rejected(INVALID_TIMESTAMP if timing else INVALID_EVENT, detail, origin, raw)
    event_ms = int(model.event_time.timestamp() * 1000)
    if event_ms > now_ms + max_future_ms:
        ahead = (event_ms - now_ms) / 1000
        return Rejected(FUTURE_TIMESTAMP, f"event_time is {ahead:.0f}s in the future", origin, raw)
    eid = event_id("energy", model.meter_id, event_ms)
    record = {
        "event_id": eid,
        "meter_id": model.meter_id,
        "district": model.district,
        "event_time": event_ms,
        "event_time_ms": event_ms,
        "kwh": model.kwh,
    }
    return Accepted(DomainRecord(ENERGY, record, origin), eid)


# --- the mapping file ----------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class NodeMapping(_Strict):
    """One OPC UA variable: which sensor and canonical field its value is."""

    node_id: str = Field(description='e.g. "ns=2;s=Plant.Meter01.Energy" or "ns=2;i=1001"')
    domain: str
    sensor: str
    field: str
    unit: str | None = None
    constants: dict[str, str | int | float] = Field(default_factory=dict)

    @field_validator("sensor", mode="before")
    @classmethod
    def _text(cls, value: object) -> object:
        return str(value) if isinstance(value, int) else value


class OpcUaConnection(_Strict):
    endpoint: str = "opc.tcp://127.0.0.1:4840/"
    security: Literal["None", "Basic256Sha256_SignAndEncrypt"] = "Basic256Sha256_SignAndEncrypt"
    certificate: Path | None = Field(None, description="client certificate (DER or PEM)")
    private_key: Path | None = Field(None, description="the client certificate's key (PEM)")
    trusted_server_certificates: list[Path] = Field(
        default_factory=list, description="server certificates or CAs to trust (DER or PEM)"
    )
    username: str | None = Field(None, description="user of a user/password identity")
    password_file: Path | None = Field(
        None, description="file holding the password (e.g. a mounted secret); never logged"
    )
    application_uri: str = Field(
        "urn:citystream:opcua-ingest", description="must match the client certificate's URI"
    )
    publishing_interval_ms: int = Field(500, ge=10)
    sampling_interval_ms: float = Field(0, ge=0, description="0: as fast as the server can")
    queue_size: int = Field(100, ge=1, description="data changes the server keeps per node")
    request_timeout_s: float = Field(10.0, gt=0)
    reconnect_min_s: float = Field(1.0, gt=0)
    reconnect_max_s: float = Field(30.0, gt=0)
    max_pending: int = Field(10_000, ge=1, description="data changes waiting for Kafka")
    flush_every: int = Field(5000, ge=1, description="data changes between Kafka flushes")
    flush_interval_ms: int = Field(200, ge=1)
    dedup_window: int = Field(1_000_000, ge=1, description="(node, source time) remembered")
    join_timeout_s: float = Field(60.0, gt=0)


class OpcUaConfig(_Strict):
    opcua: OpcUaConnection = Field(default_factory=lambda: OpcUaConnection.model_validate({}))
    nodes: list[NodeMapping] = Field(default_factory=list)

    def model_post_init(self, _context: Any) -> None:
        seen: set[str] = set()
        for node in self.nodes:
            _check_node(node)
            key = ua.NodeId.from_string(node.node_id).to_string()
            if key in seen:
                raise ValueError(f"node {node.node_id}: mapped twice")
            seen.add(key)
        if self.opcua.security != "None":
            missing = [
                name for name in ("certificate", "private_key") if getattr(self.opcua, name) is None
            ]
            if missing or not self.opcua.trusted_server_certificates:
                missing += (
                    []
                    if self.opcua.trusted_server_certificates
                    else ["trusted_server_certificates"]
                )
                raise ValueError(f"security {self.opcua.security} needs {', '.join(missing)}")


def _check_node(node: NodeMapping) -> None:
    where = f"node {node.node_id}"
    try:
        ua.NodeId.from_string(node.node_id)
    except Exception as exc:  # asyncua raises several types for a bad string
        raise ValueError(f"{where}: not a node id ({exc})") from None
    if node.domain == "energy":
        if node.field != "kwh":
            raise ValueError(f"{where}: an energy node fills `kwh`")
        if node.unit is not None and node.unit not in ENERGY_UNITS:
            raise ValueError(f"{where}: unit {node.unit!r} is not an energy unit")
        if "district" not in node.constants:
            raise ValueError(f"{where}: an energy meter needs constants.district")
        return
    if node.domain not in DOMAINS:
        known = ", ".join([*DOMAINS, "energy"])
        raise ValueError(f"{where}: unknown domain {node.domain!r} (known: {known})")
    kinds = DOMAINS[node.domain].quantities
    if node.field not in kinds:
        raise ValueError(f"{where}: {node.field!r} is not a value field of {node.domain}")
    convert(0, kinds[node.field], node.unit, where)  # the unit is checked here


def load_config(path: Path) -> OpcUaConfig:
    """Read and check a mapping file; relative file names are relative to it."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        config = OpcUaConfig.model_validate(data)
    except (OSError, tomllib.TOMLDecodeError, ValidationError, ValueError) as exc:
        raise ValueError(f"opcua config {path}: {exc}") from exc
    conn = config.opcua
    base = path.parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else p if p.is_absolute() else base / p

    conn.certificate = resolve(conn.certificate)
    conn.password_file = resolve(conn.password_file)
    conn.private_key = resolve(conn.private_key)
    conn.trusted_server_certificates = [
        p if p.is_absolute() else base / p for p in conn.trusted_server_certificates
    ]
    return config


def read_password(conn: OpcUaConnection) -> SecretStr | None:
    """The password of ``password_file`` (its first line), kept as a secret."""
    if conn.password_file is None:
        return None
    try:
        text = conn.password_file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"opcua password_file: {exc}") from exc
    return SecretStr(text.splitlines()[0] if text else "")


# --- one data change -> canonical event (pure) ---------------------------------------------


@dataclass(frozen=True, slots=True)
class Change:
    """One data change as the server sent it."""

    node_id: str
    value: Any
    status: str  # the status code's name, e.g. "Good", "BadSensorFailure"
    good: bool
    source_time: datetime | None
    server_time: datetime | None

    def raw(self) -> bytes:
        """The change as JSON, for its dead letter."""
        value = self.value
        plain = isinstance(value, str | int | bool | type(None)) or (
            isinstance(value, float) and math.isfinite(value)
        )
        if not plain:
            value = repr(value)
        body = {
            "node_id": self.node_id,
            "value": value,
            "status": self.status,
            "source_timestamp": _iso(self.source_time),
            "server_timestamp": _iso(self.server_time),
        }
        return json.dumps(body, separators=(",", ":")).encode()


def _iso(when: datetime | None) -> str | None:
    return None if when is None else _aware(when).isoformat()


def _aware(when: datetime) -> datetime:
    """asyncua gives UTC times, naive or aware depending on the version."""
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def change_of(node_id: str, value: ua.DataValue) -> Change:
    status = value.StatusCode if value.StatusCode is not None else ua.StatusCode()
    variant = value.Value
    return Change(
        node_id=node_id,
        value=None if variant is None else variant.Value,
        status=status.name,
        good=status.is_good(),
        source_time=value.SourceTimestamp,
        server_time=value.ServerTimestamp,
    )


class OpcUaIngest:
    """Maps data changes to canonical events (no I/O): status, time, value, dedup, join."""

    def __init__(self, config: OpcUaConfig, endpoint: str, max_future_ms: int) -> None:
        self.by_node = {ua.NodeId.from_string(n.node_id).to_string(): n for n in config.nodes}
        self.endpoint = endpoint
        self.max_future_ms = max_future_ms
        self.recent = RecentKeys(config.opcua.dedup_window)
        self.joiner = Joiner(config.opcua.join_timeout_s)

    def handle(self, change: Change, now: float) -> list[Accepted | Rejected] | None:
        """The outcomes of one change; None: a change already handled (a redelivery)."""
        origin = f"opcua:{self.endpoint}#{change.node_id}"
        mapping = self.by_node.get(change.node_id)
        if mapping is None:
            detail = f"node {change.node_id} is not in the mapping file"
            return [Rejected(UNKNOWN_NODE, detail, origin, change.raw())]
        if change.source_time is not None:
            ms = int(_aware(change.source_time).timestamp() * 1000)
            if self.recent.seen((change.node_id, ms)):
                return None
        try:
            event = self._event(mapping, change)
        except IngestError as exc:
            return [Rejected(exc.reason, str(exc), origin, change.raw())]
        now_ms = int(now * 1000)
        if mapping.domain == "energy" or not DOMAINS[mapping.domain].missing(event):
            return [validate(event, origin, change.raw(), now_ms, self.max_future_ms)]
        return self._join(mapping, event, change, origin, now)

    def _event(self, mapping: NodeMapping, change: Change) -> dict[str, Any]:
        if not change.good:
            raise IngestError(BAD_STATUS, f"status {change.status}: the value is not Good")
        if change.source_time is None:
            raise IngestError(INVALID_TIMESTAMP, "the data change has no SourceTimestamp")
        value = self._value(mapping, change.value)
        sensor_field = "meter_id" if mapping.domain == "energy" else _sensor_field(mapping)
        return {
            "domain": mapping.domain,
            sensor_field: mapping.sensor,
            "event_time": _aware(change.source_time).isoformat(),
            **mapping.constants,
            mapping.field: value,
        }

    @staticmethod
    def _value(mapping: NodeMapping, value: Any) -> Any:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise IngestError(
                INVALID_EVENT,
                f"{mapping.field}: expected a number, got {type(value).__name__} "
                f"{short_repr(value)}",
            )
        if mapping.domain == "energy":
            factor = ENERGY_UNITS[mapping.unit] if mapping.unit else 1.0
            return float(value) * factor
        kind = DOMAINS[mapping.domain].quantities[mapping.field]
        return convert(value, kind, mapping.unit, mapping.field)

    def _join(
        self, mapping: NodeMapping, event: dict[str, Any], change: Change, origin: str, now: float
    ) -> list[Accepted | Rejected]:
        """A node that fills part of an event waits for the others of its sensor and time."""
        event_ms = int(_aware(change.source_time or datetime.now(UTC)).timestamp() * 1000)
        values = {k: v for k, v in event.items() if k in DOMAINS[mapping.domain].quantities}
        part = Part(mapping.domain, mapping.sensor, event["event_time"], event_ms, values)
        try:
            joined = self.joiner.add(part, change.raw(), None, now)
        except IngestError as exc:
            return [Rejected(exc.reason, str(exc), origin, change.raw())]
        if joined is None:
            return []
        full = {**joined[0], **mapping.constants}
        raw = json.dumps(full, separators=(",", ":"), default=str).encode()
        return [validate(full, origin, raw, int(now * 1000), self.max_future_ms)]

    def expired(self, now: float) -> list[Rejected]:
        return [rejected for rejected, _tokens in self.joiner.expired(now)]


def _sensor_field(mapping: NodeMapping) -> str:
    return DOMAINS[mapping.domain].sensor_field


# --- security ------------------------------------------------------------------------------


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def fingerprint(cert: x509.Certificate) -> str:
    return cert.fingerprint(hashes.SHA256()).hex(":")


def check_trusted(server_der: bytes, trusted: list[Path]) -> x509.Certificate:
    """The server's certificate if it is one of ``trusted`` or issued by one of them.

    Raises :class:`UntrustedServerError` naming the certificate otherwise: a client that
    encrypted to an unknown key would hand its password to whoever answers.
    """
    cert = x509.load_der_x509_certificate(server_der)
    now = datetime.now(UTC)
    for path in trusted:
        anchor = load_certificate(path)
        if anchor == cert or _issued_by(cert, anchor):
            if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                raise UntrustedServerError(
                    f"the OPC UA server's certificate ({cert.subject.rfc4514_string()}) "
                    f"is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%d} to "
                    f"{cert.not_valid_after_utc:%Y-%m-%d})"
                )
            return cert
    names = ", ".join(str(p) for p in trusted) or "(none)"
    raise UntrustedServerError(
        f"the OPC UA server's certificate is not trusted: {cert.subject.rfc4514_string()}, "
        f"SHA-256 {fingerprint(cert)}; trusted are {names}. Refusing to connect. If this is "
        "the right server, add its certificate (or its CA) to trusted_server_certificates"
    )


def _issued_by(cert: x509.Certificate, anchor: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(anchor)
    except (ValueError, TypeError, Exception):  # signature or issuer mismatch
        return False
    return cert != anchor and cert.issuer == anchor.subject


async def secure_client(
    conn: OpcUaConnection, username: str | None, password: str | None
) -> Client:
    """A client for ``conn``: security set after the server's certificate is checked."""
    client = Client(conn.endpoint, timeout=conn.request_timeout_s)
    client.application_uri = conn.application_uri
    client.name = client.description = "citystream OPC UA ingest"
    if username:
        client.set_user(username)
        if password is not None:
            client.set_password(password)
    if conn.security == "None":
        return client
    endpoints = await Client(
        conn.endpoint, timeout=conn.request_timeout_s
    ).connect_and_get_server_endpoints()
    mode = ua.MessageSecurityMode.SignAndEncrypt
    uri = security_policies.SecurityPolicyBasic256Sha256.URI
    chosen = [e for e in endpoints if e.SecurityMode == mode and e.SecurityPolicyUri == uri]
    if not chosen:
        offered = ", ".join(
            f"{e.SecurityPolicyUri.rpartition('#')[2]}/{e.SecurityMode.name}" for e in endpoints
        )
        raise UntrustedServerError(
            "the OPC UA server offers no Basic256Sha256 SignAndEncrypt endpoint "
            f"(offered: {offered})"
        )
    server_der = _first_certificate(chosen[0].ServerCertificate)
    check_trusted(server_der, conn.trusted_server_certificates)
    assert conn.certificate is not None and conn.private_key is not None  # checked at load
    await client.set_security(
        security_policies.SecurityPolicyBasic256Sha256,
        str(conn.certificate),
        str(conn.private_key),
        server_certificate=server_der,
        mode=mode,
    )
    return client


def _first_certificate(der: bytes) -> bytes:
    """A server may send its chain; the first certificate is its own."""
    length = int.from_bytes(der[2:4], "big") + 4
    return der[:length]


# --- the source ----------------------------------------------------------------------------


class _FlowControlled(Subscription):
    """A subscription whose publish callback waits for room in a bounded queue.

    asyncua's publish loop awaits this callback before it acknowledges and asks for more,
    so a full queue holds the server back instead of growing a buffer here.
    """

    inbox: asyncio.Queue[Change]

    async def publish_callback(self, publish_result: ua.PublishResult) -> None:
        self.last_publish_at = time.monotonic()
        message = publish_result.NotificationMessage
        if message.NotificationData is None:
            return
        self.last_sequence_number = int(message.SequenceNumber)
        for notification in message.NotificationData:
            if not isinstance(notification, ua.DataChangeNotification):
                continue
            for item in notification.MonitoredItems:
                data = self._monitored_items.get(item.ClientHandle)
                if data is None or data.node is None:
                    log.warning("OPC UA: a data change for unknown handle %s", item.ClientHandle)
                    continue
                await self.inbox.put(change_of(data.node.nodeid.to_string(), item.Value))


class OpcUaSource:
    """Subscribes, reconnects with backoff, and publishes what the subscription delivers.

    One asyncio loop (in the caller's thread, inside :meth:`run`) holds the connection
    and a publisher task; the publisher flushes Kafka in a worker thread so the OPC UA
    keep-alives go on while Kafka is slow.
    """

    def __init__(
        self, settings: Settings, config: OpcUaConfig, password: SecretStr | None = None
    ) -> None:
        """``password``: the user's, read by :func:`read_password` at the entry point."""
        self.settings = settings
        self.config = config
        self.password = password
        conn = config.opcua
        self.ingest = OpcUaIngest(config, conn.endpoint, int(settings.ingest_max_future_s * 1000))
        self.counters = SourceCounters()
        self.changes = 0
        self.connects = 0
        self.subscribed = threading.Event()
        self._stop = threading.Event()
        self._reported_unknown: set[str] = set()

    def setup(self, events: EventPublisher | None = None) -> None:
        """Connect to Kafka and the registry (the OPC UA server is connected in ``run``)."""
        if events is None:
            events = EventPublisher(self.settings, COMPONENT, streams=(ENERGY, AIR, PARKING))
            events.setup()
        self.events = events

    def stop(self) -> None:
        self._stop.set()

    def report(self) -> Report:
        c = self.counters
        return Report(self.changes, c.accepted, dead_lettered=Counter(c.rejected),
                      duplicates=c.duplicates)  # fmt: skip

    def run(self, progress: Progress | None = None) -> Report:
        """Until :meth:`stop`. An untrusted server or a refused identity raises
        :class:`UntrustedServerError` / :class:`AccessRefusedError` at once (no retry)."""
        asyncio.run(self._main(progress))
        report = self.report()
        if progress:
            progress(report, True)
        return report

    async def _main(self, progress: Progress | None) -> None:
        inbox: asyncio.Queue[Change] = asyncio.Queue(maxsize=self.config.opcua.max_pending)
        publisher = asyncio.create_task(self._publish(inbox, progress))
        try:
            await self._connect_loop(inbox)
        finally:
            self._stop.set()
            await publisher

    async def _connect_loop(self, inbox: asyncio.Queue[Change]) -> None:
        conn = self.config.opcua
        delay = conn.reconnect_min_s
        while not self._stop.is_set():
            try:
                await self._session(inbox)
                delay = conn.reconnect_min_s
            except UntrustedServerError:
                raise
            except ua.UaStatusCodeError as exc:
                name = ua.StatusCode(exc.code).name
                if name in REFUSALS:
                    raise AccessRefusedError(
                        f"the OPC UA server {conn.endpoint} refused the connection: {name} "
                        "(check username/password_file, and that the server trusts our "
                        "certificate)"
                    ) from exc
                log.warning("OPC UA %s: %s; reconnecting in %.1fs", conn.endpoint, name, delay)
                await self._sleep(delay)
                delay = min(delay * 2, conn.reconnect_max_s)
            except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
                log.warning("OPC UA %s: %s; reconnecting in %.1fs", conn.endpoint, exc, delay)
                await self._sleep(delay)
                delay = min(delay * 2, conn.reconnect_max_s)

    async def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    async def _session(self, inbox: asyncio.Queue[Change]) -> None:
        """One connection: subscribe to every mapped node, then wait for a loss or stop."""
        conn = self.config.opcua
        secret = self.password.get_secret_value() if self.password else None
        client = await secure_client(conn, conn.username, secret)
        lost = asyncio.Event()

        async def on_lost(exc: Exception) -> None:
            log.warning("OPC UA connection lost: %r", exc)
            lost.set()

        client.connection_lost_callback = on_lost
        await client.connect(auto_reconnect=False)
        try:
            self.connects += 1
            await self._subscribe(client, inbox)
            log.info(
                "OPC UA connected to %s, %d nodes subscribed", conn.endpoint, len(self.config.nodes)
            )
            while not self._stop.is_set() and not lost.is_set():
                await asyncio.sleep(0.1)
            if lost.is_set():
                raise ConnectionError("the OPC UA connection was lost")
        finally:
            self.subscribed.clear()
            await _quietly_disconnect(client)

    async def _subscribe(self, client: Client, inbox: asyncio.Queue[Change]) -> None:
        conn = self.config.opcua
        params = ua.CreateSubscriptionParameters()
        params.RequestedPublishingInterval = conn.publishing_interval_ms
        params.RequestedLifetimeCount = 10000
        params.RequestedMaxKeepAliveCount = client.get_keepalive_count(conn.publishing_interval_ms)
        params.MaxNotificationsPerPublish = 10000
        params.PublishingEnabled = True
        params.Priority = 0
        sub = _FlowControlled(client.uaclient.session, params)
        sub.inbox = inbox
        await sub.init()
        nodes = [client.get_node(n.node_id) for n in self.config.nodes]
        handles = await sub.subscribe_data_change(
            nodes,
            sampling_interval=ua.Double(conn.sampling_interval_ms),
            queuesize=conn.queue_size,
        )
        for node, handle in zip(self.config.nodes, handles, strict=True):
            if isinstance(handle, ua.StatusCode):
                await self._unknown_node(node, handle, inbox)
        self.subscribed.set()

    async def _unknown_node(
        self, node: NodeMapping, status: ua.StatusCode, inbox: asyncio.Queue[Change]
    ) -> None:
        """A mapped node the server refuses: dead-lettered once per process, and logged."""
        log.error("OPC UA node %s cannot be subscribed: %s", node.node_id, status.name)
        if node.node_id in self._reported_unknown:
            return
        self._reported_unknown.add(node.node_id)
        await inbox.put(Change(f"!{node.node_id}", status.name, status.name, False, None, None))

    async def _publish(self, inbox: asyncio.Queue[Change], progress: Progress | None) -> None:
        conn = self.config.opcua
        since_flush, last_flush = 0, time.monotonic()
        while not (self._stop.is_set() and inbox.empty()):
            try:
                change = await asyncio.wait_for(inbox.get(), timeout=0.05)
            except TimeoutError:
                change = None
            if change is not None:
                self._handle(change)
                since_flush += 1
            now = time.monotonic()
            if since_flush >= conn.flush_every or (
                now - last_flush >= conn.flush_interval_ms / 1000
            ):
                for rejected in self.ingest.expired(time.time()):
                    self._reject(rejected)
                if since_flush:
                    await asyncio.to_thread(self.events.flush)  # Kafka slow: the queue fills
                    if progress:
                        progress(self.report(), False)
                since_flush, last_flush = 0, now
        await asyncio.to_thread(self.events.flush)

    def _handle(self, change: Change) -> None:
        self.changes += 1
        if change.node_id.startswith("!"):  # a node the server does not have
            node_id = change.node_id[1:]
            origin = f"opcua:{self.config.opcua.endpoint}#{node_id}"
            detail = f"node {node_id} cannot be subscribed: {change.status}"
            self._reject(Rejected(UNKNOWN_NODE, detail, origin, change.raw()))
            return
        outcomes = self.ingest.handle(change, time.time())
        if outcomes is None:
            self.counters.duplicates += 1
            return
        for outcome in outcomes:
            if isinstance(outcome, Accepted):
                publish_accepted(self.events, outcome)
                self.counters.accepted += 1
            else:
                self._reject(outcome)

    def _reject(self, rejected: Rejected) -> None:
        # #16: as the HTTP and MQTT ingest, the change's JSON shape with only the values of
        # canonical, time, unit and type fields (a node id or a free-text value: names only)
        self.events.reject(fit_dead_letter(minimised(rejected)))
        self.counters.rejected[rejected.reason] += 1


async def _quietly_disconnect(client: Client) -> None:
    """Close a connection that may already be gone; a failure here changes nothing."""
    try:
        await asyncio.wait_for(client.disconnect(), timeout=5)
    except (OSError, TimeoutError, ConnectionError, ua.UaError) as exc:
        log.debug("OPC UA disconnect: %r", exc)


class ProgressLog:
    """Logs the report at most every ``interval_s`` (a ``progress`` callback of ``run``)."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._next = 0.0

    def __call__(self, report: Report, done: bool) -> None:
        if done or time.monotonic() >= self._next:
            self._next = time.monotonic() + self.interval_s
            log.info(
                "OPC UA ingest: %d data changes, %d published, %d duplicates, dead-lettered %s",
                report.rows_read,
                report.published,
                report.duplicates,
                dict(report.dead_lettered),
            )


def main(settings: Settings, config_path: Path) -> int:
    """`citystream ingest opcua --config FILE`: run until SIGTERM/SIGINT; 1 when refused."""
    import signal

    config = load_config(config_path)
    source = OpcUaSource(settings, config, read_password(config.opcua))
    source.setup()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: source.stop())
    try:
        source.run(ProgressLog())
    except (UntrustedServerError, AccessRefusedError) as exc:
        print(f"error: {exc}", flush=True)
        return 1
    print(f"opcua ingest stopped: {source.counters.as_dict()}, {source.changes} data changes")
    return 0
