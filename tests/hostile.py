"""Seeded hostile input for the ingest (issue #19): what a hostile client sends.

:class:`Hostile` makes HTTP requests for ``POST /v1/events`` and
``POST /ngsi-ld/v1/notify`` and MQTT payloads for the SensorThings and events topics:
random bytes, broken and truncated JSON, wrong types, NaN, unicode (lone surrogates,
NUL, emoji), huge numbers, extra and missing fields, deep and wide nesting, long
strings, bodies over the limits, hostile NGSI-LD ``@context`` values, odd encodings and
missing or wrong API keys, mixed with valid events. The same seed makes the same input.

Each request says which answers are acceptable (``expect``); every one is either a
valid answer (202) or a documented refusal (400, 401, 413), never a 5xx.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from families.air.domain import POLLUTANTS

REPO = Path(__file__).resolve().parent.parent
NGSI = REPO / "tests/fixtures/ngsi-ld"
SEGMENTS = ["158895", "187509", "190744", "195041", "195552", "197274"]
MAX_BODY = 1_048_576  # the default CITYSTREAM_INGEST_MAX_BODY_BYTES
DEPTH = 32  # the default CITYSTREAM_INGEST_MAX_DEPTH
ITEMS = 10_000  # the default CITYSTREAM_INGEST_MAX_ITEMS
CHARS = 4096  # the default CITYSTREAM_INGEST_MAX_STRING_CHARS
ODD_TEXT = [
    "",
    " ",
    "\u0000",
    "\ud800",  # a lone surrogate (json.dumps writes it as an escape)
    "\udfff\ud800",
    "\U0001f697\U0001f6a6",
    "\u202eRTL",
    "\u200b",
    "ﬃ",
    "null",
    "NaN",
    "[[[[",
    '"}]',
    "\\",
    "urn:ngsi-ld:TrafficFlowObserved:aarhus:158895",
    "x" * (CHARS - 1),
    "x" * CHARS,
    "x" * (CHARS + 1),
    "é" * (CHARS + 1),
]
ODD_NUMBERS: list[Any] = [
    0,
    -1,
    2.5,
    -0.0,
    1e308,
    -1e308,
    5e-324,
    2**53 + 1,
    2**63,
    10**30,
    10**400,
    float("nan"),
    float("inf"),
    float("-inf"),
    True,
    None,
]
ODD_TIMES = [
    "2016-12-07T11:05:00",  # no offset
    "2016-12-07T11:05:00+14:00",
    "2099-01-01T00:00:00Z",  # the future
    "0001-01-01T00:00:00Z",
    "9999-12-31T23:59:59-14:00",
    "2016-12-07T11:00:00Z/2016-12-07T11:15:00Z",
    "/",
    "yesterday",
    "2016-02-30T00:00:00Z",
    1481108700000,
]
CONTENT_TYPES = [
    None,
    "application/json",
    "application/x-ndjson",
    "application/ld+json",
    "application/json; charset=latin-1",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/json;;; q=",
]


def depth_of(value: Any) -> int:
    """Arrays/objects nested in a JSON value (``[{}]`` is 2)."""
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def longest(value: Any) -> int:
    """Characters of the longest string (key or value) in a JSON value."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return max(map(longest, value), default=0)
    if isinstance(value, dict):
        return max([*map(len, value), *map(longest, value.values())], default=0)
    return 0


def within_limits(value: Any) -> bool:
    return depth_of(value) <= DEPTH and longest(value) <= CHARS


@dataclass
class Request:
    """One HTTP request and the answers it may get."""

    path: str
    content: bytes
    headers: dict[str, str | bytes] = field(default_factory=dict)
    expect: frozenset[int] = frozenset({202, 400})
    kind: str = ""
    chunked: bool = False  # sent without Content-Length


class Hostile:
    """Seeded generator of hostile (and some valid) ingest input."""

    def __init__(self, seed: int, api_key: str) -> None:
        self.rng = random.Random(seed)
        self.api_key = api_key
        self.fixtures = {
            path.name: json.loads(path.read_text()) for path in sorted(NGSI.glob("*.jsonld"))
        }

    # --- values ---------------------------------------------------------------------------

    def event_time(self) -> str:
        return f"2016-12-07T{self.rng.randint(6, 12):02}:{self.rng.randint(0, 59):02}:00Z"

    def valid_event(self) -> dict[str, Any]:
        rng = self.rng
        domain = rng.choice(["traffic", "traffic", "air", "parking"])
        if domain == "traffic":
            event: dict[str, Any] = {
                "domain": "traffic",
                "segment_id": rng.choice(SEGMENTS),
                "event_time": self.event_time(),
                "vehicle_count": rng.randint(0, 60),
                "avg_speed_kmh": round(rng.uniform(0, 130), 2),
            }
            if rng.random() < 0.3:
                event["avg_measured_time_s"] = rng.randint(0, 600)
        elif domain == "air":
            event = {
                "domain": "air",
                "sensor_id": rng.choice(SEGMENTS),
                "event_time": self.event_time(),
                **{name: round(rng.uniform(0, 500), 1) for name in POLLUTANTS},
            }
        else:
            total = rng.randint(1, 900)
            event = {
                "domain": "parking",
                "car_park_id": rng.choice(["NORREPORT", "BUSGADEHUSET", "SALLING"]),
                "event_time": self.event_time(),
                "total_spaces": total,
            }
            key = rng.choice(["vehicle_count", "available_spaces"])
            event[key] = rng.randint(0, total)
        return event

    def odd_value(self, depth: int = 2) -> Any:
        rng = self.rng
        roll = rng.random()
        if roll < 0.35:
            return rng.choice(ODD_NUMBERS)
        if roll < 0.7:
            return rng.choice(ODD_TEXT)
        if depth <= 0 or roll < 0.8:
            return rng.choice([[], {}, [1, "a"], {"value": 1}, {"@value": "x"}])
        if roll < 0.9:
            return [self.odd_value(depth - 1) for _ in range(rng.randint(0, 4))]
        return {rng.choice(ODD_TEXT)[:40]: self.odd_value(depth - 1) for _ in range(3)}

    def mutated_event(self) -> dict[str, Any]:
        rng = self.rng
        event = self.valid_event()
        for _ in range(rng.randint(1, 3)):
            name = rng.choice([*event, "domain", "event_time", "extra", rng.choice(ODD_TEXT)])
            action = rng.random()
            if action < 0.2:
                event.pop(name, None)
            elif action < 0.45:
                event["event_time"] = rng.choice(ODD_TIMES)
            elif action < 0.55:
                event["domain"] = rng.choice(["noise", "Traffic", ["traffic"], 1, None, "air"])
            elif action < 0.65:
                event[name] = self.nested(rng.randint(DEPTH - 3, DEPTH + 2))
            else:
                event[name] = self.odd_value()
        return event

    def nested(self, depth: int, leaf: Any = 0) -> Any:
        value = leaf
        for _ in range(depth):
            value = [value] if self.rng.random() < 0.5 else {"a": value}
        return value

    def dumps(self, value: Any) -> bytes:
        """JSON as clients write it: escaped or raw unicode, NaN literals, some spacing."""
        rng = self.rng
        indent = rng.choice([None, None, 0, 2])
        text = json.dumps(value, ensure_ascii=rng.random() < 0.5, indent=indent, allow_nan=True)
        try:
            return text.encode()
        except UnicodeEncodeError:  # a lone surrogate: escaped (raw it is not UTF-8)
            return json.dumps(value, indent=indent, allow_nan=True).encode()

    def corrupt(self, raw: bytes) -> bytes:
        rng = self.rng
        cut = rng.randrange(max(1, len(raw)))
        choice = rng.randrange(7)
        if choice == 0:
            return raw[:cut]
        if choice == 1:
            return raw[:cut] + bytes([rng.randrange(256)]) + raw[cut + 1 :]
        if choice == 2:
            return raw[:cut] + rng.randbytes(rng.randint(1, 8)) + raw[cut:]
        if choice == 3:
            return b"\xef\xbb\xbf" + raw  # a UTF-8 BOM (accepted)
        if choice == 4:
            return raw.decode(errors="replace").encode("utf-16")
        if choice == 5:
            return raw.replace(b",", b",,", 1)
        return raw + b"]"

    # --- bodies -------------------------------------------------------------------------

    def events_body(self) -> tuple[bytes, str | None, frozenset[int], str]:
        """(body, content type, acceptable statuses, kind) for POST /v1/events."""
        rng = self.rng
        roll = rng.random()
        events = [
            self.valid_event() if rng.random() < 0.5 else self.mutated_event()
            for _ in range(rng.choice([1, 1, 2, 5, 20]))
        ]
        any_status = frozenset({202, 400})
        if roll < 0.30:
            expect = frozenset({202} if within_limits(events) else {400})
            return self.dumps(events), "application/json", expect, "events"
        if roll < 0.40:
            lines = [self.dumps(e).replace(b"\n", b"") for e in events]
            for _ in range(rng.randint(0, 3)):
                odd = rng.choice(
                    [b"{oops", b"[" * 3000, b"\xff\xfe", b"null", b"   ", b"[]", b"\r"]
                )
                lines.insert(rng.randint(0, len(lines)), odd)
            return b"\n".join(lines), "application/x-ndjson", frozenset({202}), "ndjson"
        if roll < 0.55:
            return self.corrupt(self.dumps(events)), rng.choice(CONTENT_TYPES), any_status, "broken"
        if roll < 0.65:
            depth = rng.choice([DEPTH - 1, DEPTH, DEPTH + 1, 100, 1000, 3000, 50_000])
            opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}"), (b"[{}, [", b"]]")])
            closed = rng.random() < 0.7
            body = opener * depth + (closer * depth if closed else b"")
            levels = depth * (2 if opener == b"[{}, [" else 1)
            fine = closed and opener == b"[" and levels <= DEPTH  # [[...[]...]]: one item
            return body, "application/json", frozenset({202} if fine else {400}), "deep"
        if roll < 0.68:
            count = rng.choices([ITEMS, ITEMS + 1, 3 * ITEMS], weights=[1, 10, 10])[0]
            item = rng.choice([b"{}", b"0", b'"x"', b"[]"])
            body = b"[" + b",".join([item] * count) + b"]"
            return body, "application/json", frozenset({202 if count <= ITEMS else 400}), "wide"
        if roll < 0.80:
            text = rng.choice(["x", "\u00e9", "\\n", "\U0001f600"]) * rng.choice(
                [CHARS, CHARS + 1, 20_000]
            )
            event = self.valid_event()
            event[rng.choice(["status", "extra", text])] = text
            expect = frozenset({202} if len(text) <= CHARS else {400})
            return json.dumps([event]).encode(), "application/json", expect, "long string"
        if roll < 0.92:
            body = rng.choice(
                [
                    b"",
                    b" \n\t ",
                    b"null",
                    b"true",
                    b"0",
                    b"-",
                    b'"text"',
                    b"{}",
                    b"[]",
                    b"[NaN]",
                    b"[1e999999]",
                    b"[" + b"9" * 5000 + b"]",
                    b"\x00" * 10,
                    rng.randbytes(rng.randint(1, 3000)),
                ]
            )
            return body, rng.choice(CONTENT_TYPES), any_status, "odd body"
        if roll < 0.95:  # thousands of complaints about one event; a huge domain value
            event = self.valid_event()
            event.update({f"k{i}": i for i in range(rng.choice([100, 40_000]))})
            if rng.random() < 0.5:
                event["domain"] = self.nested(DEPTH - 3, ["x" * 1000] * 200)
            return json.dumps([event]).encode(), "application/json", frozenset({202}), "many keys"
        return self.dumps(self.odd_value(4)), "application/json", any_status, "odd value"

    def notification(self) -> tuple[bytes, frozenset[int], str]:
        """(body, acceptable statuses, kind) for POST /ngsi-ld/v1/notify."""
        rng = self.rng
        entities = []
        for _ in range(rng.choice([1, 1, 2, 4])):
            entity = json.loads(json.dumps(self.fixtures[rng.choice(sorted(self.fixtures))]))
            if entity.get("type") == "TrafficFlowObserved":
                entity["id"] = f"urn:ngsi-ld:TrafficFlowObserved:aarhus:{rng.choice(SEGMENTS)}"
            for _ in range(rng.randint(0, 3)):
                name = rng.choice([*entity, "@context", "unitCode"])
                attribute = entity.get(name)
                roll = rng.random()
                if isinstance(attribute, dict) and roll < 0.4:
                    attribute[rng.choice(["type", "value", "unitCode", "observedAt", "object"])] = (
                        self.odd_value()
                    )
                elif name == "@context" or roll < 0.55:
                    entity["@context"] = self.context()
                else:
                    entity[name] = self.odd_value()
            entities.append(entity)
        body: Any = {
            "id": "urn:ngsi-ld:Notification:fuzz",
            "type": "Notification",
            "subscriptionId": "urn:ngsi-ld:Subscription:fuzz",
            "notifiedAt": "2016-12-07T11:30:00.000Z",
            "data": entities,
        }
        roll = rng.random()
        if roll < 0.15:
            body["@context"] = self.context()
        elif roll < 0.22:
            body["data"] = self.odd_value()
        elif roll < 0.28:
            body = entities  # a bare entity list is accepted too
        elif roll < 0.33:
            count = rng.choices([ITEMS, ITEMS + 1], weights=[1, 10])[0]
            body["data"] = [{"id": "urn:x", "type": "T"}] * count
            expect = frozenset({202} if count <= ITEMS else {400})
            return json.dumps(body).encode(), expect, "ngsi wide"
        elif roll < 0.38:
            body["data"] = [self.nested(DEPTH + 5)]
            return json.dumps(body).encode(), frozenset({400}), "ngsi deep"
        raw = self.dumps(body)
        if rng.random() < 0.1:
            return self.corrupt(raw), frozenset({202, 400}), "ngsi broken"
        return raw, frozenset({202, 400}), "ngsi"

    def context(self) -> Any:
        rng = self.rng
        choices: list[Callable[[], Any]] = [
            lambda: "https://example.org/unknown-context.jsonld",
            lambda: "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
            lambda: ["https://smartdatamodels.org/context.jsonld", 5],
            lambda: [[["nested"]]],
            lambda: {"@vocab": 5, "intensity": {"@id": ["x"]}, "flow": None},
            lambda: {"intensity": "https://smartdatamodels.org/dataModel.Transportation/x"},
            lambda: {f"t{i}": f"ex:{i}" for i in range(rng.choice([10, 2000]))},
            lambda: [{f"p{i}": "https://example.org/"} for i in range(rng.choice([5, 500]))],
            lambda: self.odd_value(),
            lambda: self.nested(DEPTH - 4, "x"),
        ]
        return rng.choice(choices)()

    def request(self) -> Request:
        """One hostile request; about one in ten carries a missing or wrong key."""
        rng = self.rng
        headers = {"X-API-Key": self.api_key}
        roll = rng.random()
        if roll < 0.25:
            content, expect, kind = self.notification()
            path = "/ngsi-ld/v1/notify"
            headers["Content-Type"] = rng.choice(["application/ld+json", "application/json"])
        else:
            content, ctype, expect, kind = self.events_body()
            path = "/v1/events"
            if ctype is not None:
                headers["Content-Type"] = ctype
        request = Request(path, content, headers, expect, kind)
        extra = rng.random()
        if extra < 0.03:  # over the byte limit, with and without Content-Length
            request.content = rng.randbytes(64) * (MAX_BODY // 64 + rng.randint(1, 64))
            request.expect, request.kind = frozenset({413}), "too large"
            request.chunked = rng.random() < 0.5
        elif extra < 0.04:  # garbage just under the limit: dead-lettered, not too big for Kafka
            request.content = b"[" + b"x" * (MAX_BODY - 2) + b"]"
            request.headers["Content-Type"] = "application/json"  # one body, not NDJSON
            request.expect, request.kind = frozenset({400}), "near limit"
        elif extra < 0.08:
            request.headers["Content-Encoding"] = rng.choice(["gzip", "gzip", "deflate", "zstd"])
            if rng.random() < 0.5 and request.headers["Content-Encoding"] == "gzip":
                request.content = gzip.compress(request.content)
            else:
                request.content = rng.randbytes(40)
                request.expect = frozenset({400})
            request.kind += " encoded"
        elif extra < 0.10:
            odd_ids: list[str | bytes] = ["", "x" * 500, "é".encode(), "../.", "a b"]
            request.headers["X-Request-ID"] = rng.choice(odd_ids)
        if rng.random() < 0.1 and request.kind != "too large":
            del request.headers["X-API-Key"]
            bad = rng.choice(["", "wrong", b"\xff\xfe", "Bearer " + self.api_key, "Bearer"])
            if bad == "Bearer " + self.api_key:
                request.headers["Authorization"] = bad  # a valid way to send the key
            elif bad == "Bearer":
                request.headers["Authorization"] = bad
                request.expect, request.kind = frozenset({401}), "bad key"
            elif bad:
                request.headers["X-API-Key"] = bad
                request.expect, request.kind = frozenset({401}), "bad key"
            else:
                request.expect, request.kind = frozenset({401}), "no key"
        return request

    # --- MQTT -------------------------------------------------------------------------------

    def mqtt(self, datastreams: list[str], events_topic: str) -> tuple[str, bytes]:
        """(topic, payload): SensorThings observations and event payloads, mostly hostile."""
        rng = self.rng
        if rng.random() < 0.35:
            content, _ctype, _expect, _kind = self.events_body()
            return events_topic, content
        ds = rng.choice([*datastreams, "99", "'quoted'", "", "))(("])
        kind = "MultiDatastreams" if ds.startswith("air") else "Datastreams"
        topic = f"v1.1/{kind}({ds})/Observations"
        body: dict[str, Any] = {"phenomenonTime": self.event_time(), "result": 1}
        roll = rng.random()
        if roll < 0.2:
            body["result"] = {"vehicleCount": rng.randint(0, 50), "avgSpeed": 40.0}
        elif roll < 0.3:
            body["result"] = {"occupied": rng.randint(0, 120), "capacity": rng.randint(1, 300)}
        elif roll < 0.45:
            body["result"] = [rng.uniform(0, 400) for _ in range(rng.choice([5, 6, 2]))]
        elif roll < 0.6:
            body["result"] = self.odd_value(3)
        elif roll < 0.7:
            body["phenomenonTime"] = rng.choice(ODD_TIMES)
        elif roll < 0.78:
            body["parameters"] = {"unit": self.odd_value()}
        elif roll < 0.83:
            body["result"] = self.nested(rng.choice([DEPTH - 2, DEPTH + 1]))
        elif roll < 0.86:  # too deep for json.dumps to write: bytes
            deep = b"[" * 5000 + b"]" * rng.choice([5000, 0])
            return topic, b'{"phenomenonTime": "2016-12-07T11:00:00Z", "result": ' + deep + b"}"
        raw = self.dumps(body)
        if rng.random() < 0.15:
            raw = self.corrupt(raw)
        elif rng.random() < 0.05:
            raw = rng.randbytes(rng.randint(0, 300))
        return topic, raw
