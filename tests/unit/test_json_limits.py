"""Bounded JSON (issue #19): what one body may cost, checked before json.loads; and every
hostile input the fuzz test found answered with a reason, never an exception.

The nesting and string scans are checked against plain reference implementations on
seeded random inputs: exact on JSON, and never under the parser's real depth on garbage.
"""

from __future__ import annotations

import json
import random
import time
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from connectors.publishing import Rejected
from connectors.sources import ngsi_context
from connectors.sources.http_ingest import ApiKeys, openapi_document
from connectors.sources.ingest_common import (
    DEFAULT_LIMITS,
    IngestError,
    JsonLimits,
    convert,
    dumps,
    fit_dead_letter,
    loads,
    split_items,
)
from connectors.sources.mqtt import MqttIngest
from core.settings import Settings
from tests.hostile import Hostile, longest
from tests.unit.test_http_ingest import KEY, FakeKafka, entity, event, notification, run
from tests.unit.test_mqtt_mapping import EXAMPLE, FUTURE_MS, NOW, msg, observation, only

SMALL = JsonLimits(max_depth=4, max_items=3, max_string_chars=16)


def reason(raw: bytes, limits: JsonLimits = DEFAULT_LIMITS) -> str:
    """``ok`` or the IngestError reason of :func:`loads`; any other exception fails."""
    try:
        loads(raw, limits)
    except IngestError as exc:
        return exc.reason
    return "ok"


# --- nesting -------------------------------------------------------------------------------


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


@pytest.mark.parametrize("limit", [2, 4, 32])
def test_depth_is_exact_at_the_limit(limit: int) -> None:
    limits = JsonLimits(max_depth=limit)
    assert reason(nested(limit), limits) == "ok"
    assert reason(nested(limit + 1), limits) == "too_complex"
    mixed = ('{"a":[' * limit)[: 6 * limit] + "1" + "]}" * limit  # 2 levels per {"a":[
    assert reason(mixed.encode(), JsonLimits(max_depth=2 * limit)) == "ok"
    assert reason(mixed.encode(), JsonLimits(max_depth=2 * limit - 1)) == "too_complex"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 3000 + b"]" * 3000,  # the bodies
        b"[" * 200_000,  # never closed
        b'{"a":' * 50_000,
        b"[[]" * 100_000,  # deep by steps, never two opens in a row at the end
        b"[{}," * 1000 + b"[" * 40 + b"]" * 40 + b"]",
    ],
)
def test_deep_bodies_are_too_complex_not_a_recursion_error(body: bytes) -> None:
    assert reason(body) == "too_complex"


def test_brackets_in_strings_do_not_count_and_escaped_quotes_do_not_end_strings() -> None:
    assert reason(json.dumps(["[" * 100, "{" * 100]).encode()) == "ok"
    assert reason(json.dumps(['\\"' + "[" * 100]).encode()) == "ok"  # \\" then brackets
    assert reason(b'["\\\\", ' + nested(40) + b"]") == "too_complex"  # \\ ends in the string
    assert reason(b'["\\"' + b"[" * 40 + b'"]') == "ok"  # \" does not end it


def json_depth(raw: bytes) -> int:
    """Deepest level the parser can reach before its first error (reference)."""
    depth = deepest = 0
    inside = escaped = False
    for char in raw.decode("latin-1"):
        if inside:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                inside = False
        elif char == '"':
            inside = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
            if depth < 0:
                break
        elif char == "\\":
            break
    return deepest


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth_of, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth_of, value.values()), default=0)
    return 0


def random_value(rng: random.Random, depth: int, chars: str) -> Any:
    roll = rng.random()
    if depth > 0 and roll < 0.35:
        return [random_value(rng, depth - 1, chars) for _ in range(rng.randint(0, 3))]
    if depth > 0 and roll < 0.7:
        return {
            "".join(rng.choices(chars, k=rng.randint(0, 6))): random_value(rng, depth - 1, chars)
            for _ in range(rng.randint(0, 3))
        }
    if roll < 0.8:
        return rng.random() * 10 ** rng.randint(0, 30)
    return "".join(rng.choices(chars, k=rng.randint(0, 24)))


def test_depth_scan_is_exact_on_json_and_never_under_on_garbage() -> None:
    rng = random.Random(19)
    for _ in range(20_000):  # garbage: never lets the parser deeper than the limit
        raw = "".join(rng.choices('[]{}"\\a,:', k=rng.randint(0, 30))).encode()
        if json_depth(raw) > SMALL.max_depth:
            assert reason(raw, SMALL) == "too_complex", raw
    for _ in range(5_000):  # JSON, strings full of brackets, quotes and escapes
        value = random_value(rng, rng.randint(0, 8), '[]{}"\\ab\u00e9\n')
        raw = json.dumps(value, ensure_ascii=rng.random() < 0.5).encode()
        deep = depth_of(value) > SMALL.max_depth
        assert (reason(raw, JsonLimits(max_depth=4)) == "too_complex") == deep, raw


# --- strings ---------------------------------------------------------------------------------


def test_string_length_counts_characters_of_keys_and_values() -> None:
    limits = JsonLimits(max_string_chars=16)
    assert reason(json.dumps(["x" * 16]).encode(), limits) == "ok"
    assert reason(json.dumps(["x" * 17]).encode(), limits) == "too_complex"
    assert reason(json.dumps({"k" * 17: 1}).encode(), limits) == "too_complex"
    # 16 characters written as 32 or 96 bytes are 16 characters
    assert reason(json.dumps(["\u00e9" * 16], ensure_ascii=False).encode(), limits) == "ok"
    assert reason(json.dumps(["\u00e9" * 16]).encode(), limits) == "ok"
    assert reason(json.dumps(["\n" * 17]).encode(), limits) == "too_complex"
    # long runs outside strings are not strings
    assert reason(b"[" + b" " * 5000 + b"1" * 300 + b"]", limits) == "ok"
    assert reason(json.dumps(list(range(2000)), indent=40).encode(), limits) == "ok"


def test_string_scan_is_exact_on_json() -> None:
    rng = random.Random(4096)
    limits = JsonLimits(max_depth=100, max_string_chars=16)
    for _ in range(5_000):
        value = random_value(rng, rng.randint(0, 5), '[]{}"\\ab\u00e9\n\U0001f600')
        raw = json.dumps(
            value, ensure_ascii=rng.random() < 0.5, indent=rng.choice([None, 0, 30])
        ).encode()
        assert (reason(raw, limits) == "too_complex") == (longest(value) > 16), raw


# --- encodings, numbers, what a body is ------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"\xef\xbb\xbf[1]", "ok"),  # a UTF-8 BOM is skipped
        (b'["\xff"]', "invalid_json"),
        ('[{"domain": "traffic"}]'.encode("utf-16"), "invalid_json"),  # RFC 8259: UTF-8
        (b"[NaN, Infinity, -Infinity]", "ok"),  # the models refuse them per item
        (b"[" + b"9" * 5000 + b"]", "invalid_json"),  # over Python's 4,300 digits
        (b"[1e999999]", "ok"),  # inf: the model refuses it
        (b"", "invalid_json"),
        (b'["\\ud800"]', "ok"),  # a lone surrogate parses; pydantic refuses it
        (b'["' + b"[" * 100, "invalid_json"),  # unterminated string
    ],
)
def test_encodings_and_numbers(raw: bytes, expected: str) -> None:
    assert reason(raw) == expected


def test_items_per_body_and_a_single_body_that_is_not_json() -> None:
    limits = JsonLimits(max_items=3)
    assert len(split_items(b"[{},{},{}]", limits=limits)) == 3
    with pytest.raises(IngestError) as over:
        split_items(b"[{},{},{},{}]", limits=limits)
    assert over.value.reason == "too_complex"
    with pytest.raises(IngestError, match="4 lines"):
        split_items(b"{}\n{}\n{}\n{}\n", ndjson=True, limits=limits)
    with pytest.raises(IngestError) as whole:  # one object, not JSON: the body as a whole
        split_items(b"{oops")
    assert whole.value.reason == "invalid_json"
    lines = split_items(b'{"a": 1}\n' + nested(40) + b"\n{oops", ndjson=True)
    assert [getattr(item, "reason", "ok") for item, _raw in lines] == [
        "ok",
        "too_complex",
        "invalid_json",
    ]


def test_hostile_bodies_cost_about_their_bytes() -> None:
    """A megabyte of the worst shapes is refused (or parsed) in milliseconds."""
    bodies = [
        b"[" * 1_000_000,
        b"[" * 500_000 + b"]" * 500_000,
        b"[[]" * 333_333,
        b'["' + b"x" * 1_000_000 + b'"]',
        json.dumps(["\u00e9" * 4096] * 60, ensure_ascii=False).encode(),
        b"[" + b" " * 1_000_000 + b"]",
        b'{"a":[' + b"1," * 300_000 + b"1]}",
    ]
    started = time.perf_counter()
    outcomes = [reason(body) for body in bodies]
    assert time.perf_counter() - started < 2.0  # about 50 ms on a laptop; generous for CI
    assert outcomes == ["too_complex"] * 4 + ["ok"] * 3


# --- what the connectors make of hostile values ----------------------------------------------


def test_conversions_refuse_numbers_beyond_floats() -> None:
    for value, kind, unit in ((10**400, "count", None), (1e308, "aqi:co", "ppm")):
        with pytest.raises(IngestError) as err:
            convert(value, kind, unit, "x")
        assert err.value.reason == "invalid_event"
    with pytest.raises(IngestError) as unit_err:
        convert(1, "speed", ["KMH"], "x")  # an unhashable unitCode
    assert unit_err.value.reason == "wrong_unit"


def test_dead_letters_fit_kafka_and_utf8() -> None:
    big = Rejected("invalid_json", "not JSON", "http:a:b", b"x" * 2_000_000)
    fitted = fit_dead_letter(big)
    assert len(fitted.raw) == 512 * 1024 and "first 524288 of 2000000 bytes" in fitted.detail
    odd = fit_dead_letter(Rejected("unknown_entity", "no sensor for \ud800", "o", "\udfff"))
    assert odd.detail == "no sensor for \\ud800" and odd.raw == b"\\udfff"
    small = Rejected("invalid_json", "d", "o", b"{")
    assert fit_dead_letter(small) is small
    assert dumps({"a": "\ud800"}) == b'{"a":"\\ud800"}'


def test_details_stay_short_whatever_the_event() -> None:
    from connectors.sources.ingest_common import validate_event

    many = {**event(), **{f"k{i}": i for i in range(5000)}}
    rejected = validate_event(many, "o", b"", int(NOW * 1000), FUTURE_MS)
    assert isinstance(rejected, Rejected) and rejected.detail.endswith("and 4990 more")
    huge = validate_event({"domain": ["x" * 10_000] * 100}, "o", b"", 0, 0)
    assert isinstance(huge, Rejected) and len(huge.detail) < 200
    long = fit_dead_letter(Rejected("invalid_event", "d" * 100_000, "o" * 5000, b""))
    assert len(long.detail) == 4096 and len(long.origin) == 1024


# --- HTTP (fake Kafka) -------------------------------------------------------------------


def test_http_answers_every_hostile_body_with_a_reason() -> None:
    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        async def post(path: str, body: bytes, **headers: str) -> tuple[int, Any]:
            resp = await client.post(path, data=body, headers={**KEY, **headers})
            return resp.status, await resp.json()

        status, answer = await post("/v1/events", b"[" * 3000 + b"]" * 3000)
        assert (status, answer["error"]) == (400, "too_complex")
        status, answer = await post("/ngsi-ld/v1/notify", b'{"data":' + b"[" * 3000)
        assert (status, answer["error"]) == (400, "too_complex")
        status, answer = await post("/v1/events", b"{oops")
        assert (status, answer["error"]) == (400, "invalid_json")
        status, answer = await post("/v1/events", json.dumps([event()] * 4).encode())
        assert (status, answer["error"]) == (400, "too_complex")
        ndjson = json.dumps(event()).encode() + b"\n" + b"[" * 50
        status, answer = await post(
            "/v1/events", ndjson, **{"Content-Type": "application/x-ndjson"}
        )
        assert status == 202
        assert [i.get("reason") for i in answer["items"]] == [None, "too_complex"]
        odd = entity("TrafficFlowObserved-normalized.jsonld")
        odd["intensity"] = {"type": ["Property"], "value": 5}  # unhashable attribute type
        huge = entity("TrafficFlowObserved-keyvalues.jsonld")
        huge.update(id="urn:ngsi-ld:TrafficFlowObserved:aarhus:158895", intensity=10**400)
        unit = entity("TrafficFlowObserved-normalized.jsonld")
        unit["averageVehicleSpeed"] = {"type": "Property", "value": 5, "unitCode": ["KMH"]}
        status, answer = await post(
            "/ngsi-ld/v1/notify", json.dumps(notification(odd, huge, unit)).encode()
        )
        assert status == 202
        reasons = [i.get("reason") for i in answer["items"]]
        assert reasons[1:] == ["invalid_event", "wrong_unit"], answer
        resp = await client.post("/v1/events", data=b"[]", headers={"X-API-Key": "\udcff"})
        assert resp.status == 401
        document = await (await client.get("/openapi.json")).json()
        limits = document["paths"]["/v1/events"]["post"]["requestBody"]["x-citystream-limits"]
        assert limits["maxDepth"] == 8 and limits["maxItems"] == 3

    kafka = run(scenario, ingest_max_depth=8, ingest_max_items=3)
    whole = [r for r in kafka.rejected if "#" not in r.origin]
    assert [r.reason for r in whole] == [
        "too_complex",
        "too_complex",
        "invalid_json",
        "too_complex",
    ]


def test_a_notification_context_is_resolved_once_per_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    resolve = ngsi_context.active_terms

    def counting(context: Any) -> Any:
        calls.append(context)
        return resolve(context)

    monkeypatch.setattr(ngsi_context, "active_terms", counting)
    context = [{f"term{i}": f"https://example.org/{i}" for i in range(2000)}]
    body = {**notification(*[entity("TrafficFlowObserved-keyvalues.jsonld")] * 200)}
    body["@context"] = context
    for item in body["data"]:
        item.pop("@context", None)

    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        resp = await client.post("/ngsi-ld/v1/notify", data=json.dumps(body), headers=KEY)
        assert resp.status == 202

    run(scenario)
    assert len(calls) == 1


def test_api_keys_with_bytes_that_are_not_utf8_never_match() -> None:
    keys = ApiKeys({"a": "k"})
    assert keys.client("\udcff") is None and keys.client("k") == "a"


def test_openapi_says_the_limits() -> None:
    document = openapi_document(JsonLimits(max_depth=7, max_items=9, max_string_chars=99), 4096)
    body = document["paths"]["/ngsi-ld/v1/notify"]["post"]["requestBody"]
    assert body["x-citystream-limits"]["maxStringChars"] == 99
    assert (
        "too_complex" in document["paths"]["/v1/events"]["post"]["responses"]["400"]["description"]
    )
    assert document["components"]["schemas"]["Notification"]["properties"]["data"]["maxItems"] == 9


# --- MQTT -------------------------------------------------------------------------------------


def test_mqtt_payloads_are_bounded_like_bodies() -> None:
    from connectors.sources.ingest_common import load_config

    limits = JsonLimits(max_depth=4, max_items=3, max_string_chars=24)
    ingest = MqttIngest(load_config(EXAMPLE), FUTURE_MS, limits, max_payload_bytes=4096)
    cases = [
        (observation(1, b"[" * 500), "too_complex"),
        (msg("citystream/events/x", b"[" * 500), "too_complex"),
        (msg("citystream/events/x", b"{}\n" * 4), "too_complex"),
        (observation(1, b" " * 5000), "too_large"),
        (
            observation(
                1, {"phenomenonTime": "2014-08-02T06:15:00Z", "result": {"vehicleCount": 10**400}}
            ),
            "invalid_event",
        ),
        (observation(1, {"phenomenonTime": "x" * 25, "result": 1}), "too_complex"),
    ]
    for i, (message, expected) in enumerate(cases):
        out = only(ingest.handle(message, NOW + i))
        assert isinstance(out, Rejected) and out.reason == expected, (i, out)


def test_settings_carry_the_limits() -> None:
    limits = JsonLimits.from_settings(
        Settings(ingest_max_depth=8, ingest_max_items=5, ingest_max_string_chars=100)
    )
    assert limits == JsonLimits(max_depth=8, max_items=5, max_string_chars=100)
    assert JsonLimits.from_settings(Settings()) == DEFAULT_LIMITS


# --- the fuzz test's generator against the service (fake Kafka; the real stack: see
# tests/integration/test_ingest_fuzz.py) -------------------------------------------------


def test_seeded_hostile_requests_get_documented_answers() -> None:
    hostile = Hostile(seed=1919, api_key=KEY["X-API-Key"])
    requests = [hostile.request() for _ in range(400)]
    wrong: list[str] = []

    async def scenario(client: TestClient[Any, Any], kafka: FakeKafka) -> None:
        for i, request in enumerate(requests):
            headers = {
                k: v.decode("latin-1") if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
            try:
                resp = await client.post(request.path, data=request.content, headers=headers)
                answer = await resp.read()
            except aiohttp.ClientError as exc:
                wrong.append(f"#{i} {request.kind}: {exc!r}")
                continue
            if resp.status not in request.expect:
                wrong.append(f"#{i} {request.kind}: {resp.status} {answer[:200]!r}")

    kafka = run(scenario, ingest_rate_limit_rps=1e6, ingest_rate_burst=10**6)
    assert not wrong, "\n".join(wrong)
    assert kafka.readings and kafka.rejected
