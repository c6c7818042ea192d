"""NGSI-LD on the real KPIs of the shipped Aarhus day (the ``api_stack`` fixture: the real
processors and ClickHouse sink on chDB, the API over the sink's query endpoint).

What the API answers is checked against the kpi table read here with the test's own SQL
and aggregated in Python: nothing of api/ngsi_ld.py computes the expected values.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from rdflib import Graph, URIRef

from api.app import create_app
from api.config import build_context
from api.context import Role
from api.ngsi_ld import SeriesId
from connectors.sinks.clickhouse.backend import backend_for
from families.registry import KPIS
from tests.api.conftest import ApiStack

DOCS = Path(__file__).resolve().parents[2] / "docs" / "open-data.md"
SDM = "https://smartdatamodels.org/dataModel.KeyPerformanceIndicator/"
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"
CITY_SERIES = "urn:ngsi-ld:KeyPerformanceIndicator:aarhus:traffic.vehicle_count:city:aarhus"
DAY = datetime(2014, 8, 2, tzinfo=UTC)
ANALYST = ApiStack.headers(Role.analyst)


def sql(stack: ApiStack, text: str, **parameters: Any) -> list[list[Any]]:
    """The test's own read of the stored KPIs (the sink's backend, not the API's code)."""
    database = next(iter(stack.context.cities.values())).database
    return backend_for(stack.settings).read(text, parameters, database=database).rows


def stored(stack: ApiStack, kpi: str, scope: str, entity: str) -> list[tuple[datetime, float, int]]:
    """(window start, value, samples) of a series' latest revisions, oldest first."""
    rows = sql(
        stack,
        "SELECT toUnixTimestamp64Milli(window_start), value, samples FROM kpi FINAL "
        "WHERE kpi = {k:String} AND scope = {s:String} AND entity_id = {e:String} "
        "ORDER BY window_start",
        k=kpi,
        s=scope,
        e=entity,
    )
    return [(datetime.fromtimestamp(int(r[0]) / 1000, UTC), float(r[1]), int(r[2])) for r in rows]


def z(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def temporal(stack: ApiStack, entity_id: str, headers: dict[str, str] | None = None, **params):
    return stack.client.get(
        f"/ngsi-ld/v1/temporal/entities/{quote(entity_id, safe=':')}",
        params=params,
        headers=ANALYST if headers is None else headers,
    )


# --- entities -----------------------------------------------------------------------


def test_listing_counts_and_pages_every_series(api_stack: ApiStack):
    expected = {
        tuple(r) for r in sql(api_stack, "SELECT DISTINCT kpi, scope, entity_id FROM kpi FINAL")
    }
    assert len(expected) > 100  # the day has segments, districts, car parks, the city
    first = api_stack.client.get(
        "/ngsi-ld/v1/entities",
        params={"type": "KeyPerformanceIndicator", "count": "true", "limit": 3},
        headers=ANALYST,
    )
    assert first.status_code == 200, first.text
    assert int(first.headers["NGSILD-Results-Count"]) == len(expected)
    assert len(first.json()) == 3
    assert 'rel="next"' in first.headers["Link"]
    seen: list[str] = []
    offset = 0
    while True:
        page = api_stack.client.get(
            "/ngsi-ld/v1/entities",
            params={"type": "KeyPerformanceIndicator", "limit": 1000, "offset": offset},
            headers=ANALYST,
        )
        assert page.status_code == 200, page.text
        seen += [e["id"] for e in page.json()]
        if 'rel="next"' not in page.headers.get("Link", ""):
            break
        offset += 1000
    assert len(seen) == len(set(seen)) == len(expected)
    prefix = "urn:ngsi-ld:KeyPerformanceIndicator:aarhus:"
    assert {(k, s, e) for k, s, e in (i.removeprefix(prefix).split(":") for i in seen)} == {
        (k, quote(s, safe=""), quote(e, safe="")) for k, s, e in expected
    }


def test_entity_carries_the_latest_window_and_the_model(api_stack: ApiStack):
    answer = api_stack.client.get(f"/ngsi-ld/v1/entities/{CITY_SERIES}", headers=ANALYST)
    assert answer.status_code == 200, answer.text
    entity = answer.json()
    start, value, _ = stored(api_stack, "traffic.vehicle_count", "city", "aarhus")[-1]
    assert entity["id"] == CITY_SERIES and entity["type"] == "KeyPerformanceIndicator"
    assert entity["kpiValue"]["value"] == value
    assert entity["kpiValue"]["observedAt"] == z(start)
    assert entity["calculationPeriod"]["value"]["from"] == z(start)
    assert entity["calculationPeriod"]["value"]["to"] == z(start + timedelta(minutes=15))
    assert entity["calculationFormula"]["value"] == KPIS["traffic.vehicle_count"].formula
    assert entity["organization"]["value"] == "City of Aarhus"
    assert entity["category"]["value"] == ["quantitative"]
    assert entity["aggregatedData"]["value"][0]["entityType"] == "TrafficFlowObserved"
    assert "location" not in entity  # the city series has no single place


def test_segment_and_district_entities_have_a_location(api_stack: ApiStack):
    segment, district = (
        sql(
            api_stack,
            "SELECT any(entity_id) FROM kpi FINAL WHERE kpi = 'traffic.vehicle_count' "
            "AND scope = {s:String} AND entity_id != 'unknown'",
            s=scope,
        )[0][0]
        for scope in ("segment", "district")
    )
    for scope, entity_id, kind in (
        ("segment", segment, "LineString"),
        ("district", district, "Point"),
    ):
        urn = (
            f"urn:ngsi-ld:KeyPerformanceIndicator:aarhus:traffic.vehicle_count:{scope}:{entity_id}"
        )
        entity = api_stack.client.get(f"/ngsi-ld/v1/entities/{urn}", headers=ANALYST).json()
        assert entity["location"]["type"] == "GeoProperty"
        assert entity["location"]["value"]["type"] == kind


def test_unknown_series_is_resource_not_found(api_stack: ApiStack):
    urn = "urn:ngsi-ld:KeyPerformanceIndicator:aarhus:traffic.vehicle_count:segment:nowhere"
    for path in (f"/ngsi-ld/v1/entities/{urn}", f"/ngsi-ld/v1/temporal/entities/{urn}"):
        answer = api_stack.client.get(path, headers=ANALYST)
        assert answer.status_code == 404
        assert answer.json()["type"] == ERRORS + "ResourceNotFound"


def test_entity_part_with_slash_and_colon_reaches_the_route(api_stack: ApiStack):
    """An encoded '/' or ':' in an entity name stays inside the id (here: no such series)."""
    urn = SeriesId("aarhus", "service.requests_opened", "category", "Lights: Out/Repair").urn
    assert "%2F" in urn and "%3A" in urn
    for path in (f"/ngsi-ld/v1/entities/{urn}", f"/ngsi-ld/v1/temporal/entities/{urn}"):
        answer = api_stack.client.get(path, headers=ANALYST)
        assert answer.status_code == 404, answer.text
        assert answer.json()["type"] == ERRORS + "ResourceNotFound"
        assert "Lights: Out/Repair" in answer.json()["detail"] or urn in answer.json()["detail"]


def test_id_encoded_as_a_whole_path_segment(api_stack: ApiStack):
    encoded = quote(CITY_SERIES, safe="")
    assert encoded.startswith("urn%3Angsi-ld%3A")
    answer = api_stack.client.get(f"/ngsi-ld/v1/entities/{encoded}", headers=ANALYST)
    assert answer.status_code == 200, answer.text
    assert answer.json()["id"] == CITY_SERIES


def test_unknown_city_is_resource_not_found(api_stack: ApiStack):
    listing = api_stack.client.get(
        "/ngsi-ld/v1/entities", params={"type": "KeyPerformanceIndicator", "city": "atlantis"}
    )
    other = CITY_SERIES.replace(":aarhus:", ":atlantis:", 1)
    single = api_stack.client.get(f"/ngsi-ld/v1/entities/{other}")
    for answer in (listing, single):
        assert answer.status_code == 404
        assert answer.json()["type"] == ERRORS + "ResourceNotFound"


def test_other_type_is_empty_and_no_type_is_bad_request(api_stack: ApiStack):
    other = api_stack.client.get("/ngsi-ld/v1/entities", params={"type": "Building"})
    assert other.status_code == 200 and other.json() == []
    none = api_stack.client.get("/ngsi-ld/v1/entities")
    assert none.status_code == 400
    assert none.json()["type"] == ERRORS + "BadRequestData"
    assert none.json()["parameter"] == "type"
    too_many = api_stack.client.get(
        "/ngsi-ld/v1/entities", params={"type": "KeyPerformanceIndicator", "limit": "5000"}
    )
    assert too_many.status_code == 403 and too_many.json()["parameter"] == "limit"


# --- temporal ---------------------------------------------------------------------


def test_temporal_instances_are_the_stored_windows(api_stack: ApiStack):
    start, end = DAY + timedelta(hours=6), DAY + timedelta(hours=9)
    answer = temporal(api_stack, CITY_SERIES, timerel="between", timeAt=z(start), endTimeAt=z(end))
    assert answer.status_code == 200, answer.text
    expected = [
        (z(t), v)
        for t, v, _ in stored(api_stack, "traffic.vehicle_count", "city", "aarhus")
        if start <= t < end
    ]
    assert len(expected) == 12
    got = [(i["observedAt"], i["value"]) for i in answer.json()["kpiValue"]]
    assert got == expected
    simplified = temporal(
        api_stack,
        CITY_SERIES,
        timerel="between",
        timeAt=z(start),
        endTimeAt=z(end),
        format="temporalValues",
    ).json()["kpiValue"]
    assert [(t, v) for v, t in simplified["values"]] == expected
    last = temporal(api_stack, CITY_SERIES, timerel="before", timeAt=z(end), lastN="2").json()
    assert [(i["observedAt"], i["value"]) for i in last["kpiValue"]] == expected[-2:]


def _aggregate(values: list[float]) -> dict[str, float]:
    return {
        "totalCount": len(values),
        "distinctCount": len(set(values)),
        "sum": math.fsum(values),
        "avg": math.fsum(values) / len(values),
        "min": min(values),
        "max": max(values),
        "stddev": statistics.pstdev(values),
        "sumsq": math.fsum(v * v for v in values),
    }


@pytest.mark.parametrize(
    ("kpi", "scope", "period", "hours"),
    [
        ("traffic.vehicle_count", "city", "PT1H", 1),
        ("traffic.avg_speed_kmh", "district", "PT3H", 3),
        ("air.aqi", "city", "P1D", 24),
        ("parking.occupancy_pct", "car_park", "PT0S", 24),
    ],
)
def test_aggregated_values_equal_the_stored_windows_aggregated(
    api_stack: ApiStack, kpi: str, scope: str, period: str, hours: int
):
    entity = sql(
        api_stack,
        "SELECT entity_id FROM kpi FINAL WHERE kpi = {k:String} AND scope = {s:String} "
        "AND entity_id != 'unknown' GROUP BY entity_id ORDER BY count() DESC, entity_id LIMIT 1",
        k=kpi,
        s=scope,
    )[0][0]
    windows = stored(api_stack, kpi, scope, entity)
    start, end = DAY, DAY + timedelta(days=1)
    periods: dict[int, list[float]] = defaultdict(list)
    for t, value, _ in windows:
        if start <= t < end:
            periods[int((t - start) / timedelta(hours=hours))].append(value)
    assert periods, f"no {kpi} windows of {scope} {entity} on the day"
    methods = "totalCount,distinctCount,sum,avg,min,max,stddev,sumsq"
    urn = f"urn:ngsi-ld:KeyPerformanceIndicator:aarhus:{kpi}:{scope}:{quote(entity, safe='')}"
    answer = temporal(
        api_stack,
        urn,
        timerel="between",
        timeAt=z(start),
        endTimeAt=z(end),
        aggrMethods=methods,
        aggrPeriodDuration=period,
        format="aggregatedValues",
    )
    assert answer.status_code == 200, answer.text
    got = answer.json()["kpiValue"]
    assert got["type"] == "Property"
    for method in methods.split(","):
        triples = got[method]
        assert len(triples) == len(periods), method
        for (value, at, until), index in zip(triples, sorted(periods), strict=True):
            assert at == z(start + timedelta(hours=hours * index))
            assert until == z(min(start + timedelta(hours=hours * (index + 1)), end))
            expected = _aggregate(periods[index])[method]
            assert value == pytest.approx(expected, rel=1e-9, abs=1e-9), (method, index)


def test_public_caller_gets_small_cells_suppressed(api_stack: ApiStack):
    """A window from fewer than k samples is null for the public; so is an aggregation
    period whose windows hold fewer than k samples together (as the series API's buckets),
    while a period with enough is shown in full."""
    assert not api_stack.settings.api_suppression_k_per_kpi  # the default k applies
    k = api_stack.settings.api_suppression_k
    tumbling = [name for name, kpi in KPIS.items() if kpi.window == "tumbling 15 min"]
    found = sql(
        api_stack,
        "SELECT kpi, scope, entity_id FROM kpi FINAL WHERE kpi IN {t:Array(String)} "
        "GROUP BY kpi, scope, entity_id "
        "HAVING countIf(samples < {k:UInt32}) > 0 AND countIf(samples >= {k:UInt32}) > 0 "
        "ORDER BY kpi, scope, entity_id LIMIT 1",
        k=k,
        t=tumbling,
    )
    assert found, f"no series of the day has windows both under and over k={k}"
    kpi, scope, entity = found[0]
    urn = SeriesId("aarhus", kpi, scope, entity).urn
    end = DAY + timedelta(days=1)
    windows = [w for w in stored(api_stack, kpi, scope, entity) if DAY <= w[0] < end]
    params = {"timerel": "between", "timeAt": z(DAY), "endTimeAt": z(end)}
    public = temporal(api_stack, urn, headers={}, **params).json()["kpiValue"]
    analyst = temporal(api_stack, urn, **params).json()["kpiValue"]
    assert [i["value"] for i in analyst] == [v for _, v, _ in windows]
    assert [i["value"] for i in public] == [v if n >= k else None for _, v, n in windows]
    assert None in [i["value"] for i in public]

    aggregated = {"aggrMethods": "sum", "format": "aggregatedValues", **params}
    per_window = temporal(api_stack, urn, headers={}, aggrPeriodDuration="PT15M", **aggregated)
    shown = [(at, value) for value, at, _ in per_window.json()["kpiValue"]["sum"]]
    assert shown == [(z(t), v if n >= k else None) for t, v, n in windows]
    whole_day = temporal(api_stack, urn, headers={}, **aggregated).json()["kpiValue"]
    assert sum(n for *_, n in windows) >= k
    assert whole_day["sum"][0][0] == pytest.approx(math.fsum(v for _, v, _ in windows))


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"timerel": "during", "timeAt": "2014-08-02T00:00:00Z"}, "timerel"),
        ({"timerel": "between", "timeAt": "2014-08-02T00:00:00Z"}, "endTimeAt"),
        ({"timerel": "after", "timeAt": "2 August"}, "timeAt"),
        ({"timerel": "before"}, "timeAt"),
        (
            {"timerel": "between", "timeAt": "2014-08-02T00:00:00Z",
             "endTimeAt": "2014-08-03T00:00:00Z", "aggrMethods": "avg",
             "aggrPeriodDuration": "an hour", "format": "aggregatedValues"},
            "aggrPeriodDuration",
        ),
        (
            {"timerel": "between", "timeAt": "2014-08-02T00:00:00Z",
             "endTimeAt": "2014-08-03T00:00:00Z", "aggrMethods": "median",
             "format": "aggregatedValues"},
            "aggrMethods",
        ),
        ({"aggrMethods": "sum", "format": "aggregatedValues"}, "timerel"),  # unbounded
        ({"lastN": "-1"}, "lastN"),
        ({"options": "everything"}, "options"),
    ],
)  # fmt: skip
def test_bad_parameters_are_problem_details(api_stack: ApiStack, params, parameter):
    answer = temporal(api_stack, CITY_SERIES, **params)
    assert answer.status_code == 400, answer.text
    problem = answer.json()
    assert problem["type"] == ERRORS + "BadRequestData"
    assert problem["parameter"] == parameter
    assert problem["status"] == 400 and problem["detail"]


def test_bad_entity_id_is_bad_request_data(api_stack: ApiStack):
    answer = temporal(api_stack, "urn:ngsi-ld:Vehicle:1")
    assert answer.status_code == 400 and answer.json()["type"] == ERRORS + "BadRequestData"


def test_too_long_aggregation_is_refused(api_stack: ApiStack):
    answer = temporal(
        api_stack,
        CITY_SERIES,
        timerel="between",
        timeAt="2014-08-02T00:00:00Z",
        endTimeAt="2014-09-02T00:00:00Z",
        aggrMethods="sum",
        aggrPeriodDuration="PT15M",
        format="aggregatedValues",
    )
    assert answer.status_code == 403
    assert answer.json()["type"] == ERRORS + "TooManyResults"


def test_long_range_is_paged(api_stack: ApiStack):
    """More windows than a page holds: 206, one page, and where it ends; walking the pages
    with timeAt after the last gives every window once."""
    settings = api_stack.context.settings.model_copy(update={"api_page_size": 10})
    app = create_app(build_context(settings))
    expected = [
        (z(t), v) for t, v, _ in stored(api_stack, "traffic.vehicle_count", "city", "aarhus")
    ]
    assert len(expected) > 10
    got: list[tuple[str, float]] = []
    with TestClient(app) as client:
        at = "2014-08-01T00:00:00Z"
        while True:
            answer = client.get(
                f"/ngsi-ld/v1/temporal/entities/{CITY_SERIES}",
                params={"timerel": "after", "timeAt": at},
                headers=ANALYST,
            )
            page = [(i["observedAt"], i["value"]) for i in answer.json()["kpiValue"]]
            got += page
            if answer.status_code == 200:
                break
            assert answer.status_code == 206 and len(page) == 10
            first, last = page[0][0], page[-1][0]
            assert answer.headers["Content-Range"] == f"date-time {first}-{last}/*"
            at = z(datetime.fromisoformat(last) + timedelta(milliseconds=1))
    assert got == expected


# --- content negotiation and the contexts ---------------------------------------


def test_link_header_and_json_ld_body_reference_local_contexts(api_stack: ApiStack):
    plain = api_stack.client.get(f"/ngsi-ld/v1/entities/{CITY_SERIES}", headers=ANALYST)
    assert plain.headers["content-type"].startswith("application/json")
    assert "@context" not in plain.json()
    link = re.search(
        r'<([^>]+)>; rel="http://www.w3.org/ns/json-ld#context"', plain.headers["Link"]
    )
    assert link is not None
    base = str(api_stack.client.base_url)
    assert link.group(1).startswith(base + "/ngsi-ld/contexts/")
    linked = api_stack.client.get(link.group(1))
    assert linked.status_code == 200
    assert linked.headers["content-type"].startswith("application/ld+json")

    ld = api_stack.client.get(
        f"/ngsi-ld/v1/entities/{CITY_SERIES}", headers={**ANALYST, "Accept": "application/ld+json"}
    )
    assert ld.headers["content-type"].startswith("application/ld+json")
    contexts = ld.json()["@context"]
    assert all(url.startswith(base + "/ngsi-ld/contexts/") for url in contexts)
    documents = [api_stack.client.get(url) for url in contexts]
    assert all(d.status_code == 200 for d in documents)
    for document in documents:  # self-contained: no context of theirs points elsewhere
        assert not any(isinstance(c, str) for c in _as_list(document.json()["@context"]))

    # Expanded with the served contexts inlined (no network): the model's IRIs come out.
    entity = {**ld.json(), "@context": [d.json()["@context"] for d in documents]}
    graph = Graph().parse(data=json.dumps(entity), format="json-ld")
    subject = URIRef(CITY_SERIES)
    assert (subject, None, URIRef(SDM + "KeyPerformanceIndicator")) in graph
    assert any(graph.objects(subject, URIRef(SDM + "kpiValue")))
    assert any(graph.objects(subject, URIRef(SDM + "calculationFormula")))


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_unacceptable_media_type(api_stack: ApiStack):
    answer = api_stack.client.get(
        "/ngsi-ld/v1/entities",
        params={"type": "KeyPerformanceIndicator"},
        headers={"Accept": "text/html"},
    )
    assert answer.status_code == 406
    assert answer.json()["type"] == ERRORS + "NotAcceptable"


def test_only_shipped_contexts_are_served(api_stack: ApiStack):
    assert api_stack.client.get("/ngsi-ld/contexts/../app.py").status_code == 404
    assert api_stack.client.get("/ngsi-ld/contexts/other.jsonld").status_code == 404


def test_accesses_are_audited(api_stack: ApiStack):
    before = len(api_stack.audit.records)
    api_stack.client.get(f"/ngsi-ld/v1/entities/{CITY_SERIES}", headers=ANALYST)
    record = api_stack.audit.records[before]
    assert record.endpoint == "/ngsi-ld/v1/entities/{id}" and record.role == "analyst"


# --- the docs' examples, as written ---------------------------------------------------


def doc_examples() -> list[tuple[str, str]]:
    """(section, request path) of every ``GET`` in an ``http`` block of docs/open-data.md."""
    out, section = [], ""
    blocks = re.split(r"^```", DOCS.read_text(), flags=re.M)
    for index, block in enumerate(blocks):
        if index % 2 == 0:
            headings = re.findall(r"^#+ (.+)$", block, flags=re.M)
            section = headings[-1] if headings else section
        elif block.startswith("http\n"):
            out += [
                (section, line[4:].strip())
                for line in block.splitlines()
                if line.startswith("GET ")
            ]
    return out


def test_docs_have_examples():
    assert len(doc_examples()) >= 8


@pytest.mark.parametrize(("section", "path"), doc_examples())
def test_doc_example(api_stack: ApiStack, section: str, path: str):
    answer = api_stack.client.get(path, headers=ANALYST)
    expected = 400 if section == "Errors" else 200
    assert answer.status_code == expected, answer.text
    if expected == 400:
        assert answer.json()["type"] == ERRORS + "BadRequestData"


def test_doc_answers_show_real_values(api_stack: ApiStack):
    """The values docs/open-data.md shows are what the examples answer on the shipped day."""
    text = DOCS.read_text()
    instances = temporal(
        api_stack, CITY_SERIES, timerel="between", timeAt="2014-08-02T06:00:00Z",
        endTimeAt="2014-08-02T07:00:00Z",
    ).json()["kpiValue"]  # fmt: skip
    assert len(instances) == 4 and "(four windows)" in text
    for instance in instances[:2]:
        shown = f'"value": {instance["value"]}, "observedAt": "{instance["observedAt"]}"'
        assert shown in text
    aggregated = temporal(
        api_stack, CITY_SERIES, timerel="between", timeAt="2014-08-02T00:00:00Z",
        endTimeAt="2014-08-03T00:00:00Z", aggrMethods="totalCount,sum,avg",
        aggrPeriodDuration="PT1H", format="aggregatedValues",
    ).json()["kpiValue"]  # fmt: skip
    for method in ("totalCount", "sum", "avg"):
        assert f'"{method}": [{json.dumps(aggregated[method][0])}, "..."]' in text
