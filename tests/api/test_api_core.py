"""The read API's core on the real Aarhus day: catalogue, problems, keys and roles."""

from __future__ import annotations

from api.context import Role
from families.registry import KPIS
from tests.api.conftest import ApiStack


def test_the_catalogue_lists_every_kpi_with_unit_formula_window_and_scopes(
    api_stack: ApiStack,
) -> None:
    answer = api_stack.client.get("/v1/kpis")
    assert answer.status_code == 200
    kpis = {k["name"]: k for k in answer.json()["kpis"]}
    assert set(kpis) == set(KPIS)
    speed = kpis["traffic.avg_speed_kmh"]
    assert speed["unit"] == "km/h" and speed["scopes"] == ["segment", "district", "city"]


def test_the_sink_serves_the_real_day(api_stack: ApiStack) -> None:
    city = api_stack.context.city()
    result = api_stack.context.reader.read(
        "SELECT count() AS n, uniqExact(kpi) AS kpis FROM kpi_latest"
        " WHERE window_start >= {day:DateTime64(3)}",
        {"day": "2014-08-01 22:00:00"},
        database=city.database,
    )
    [[rows, kpis]] = result.rows
    assert rows > 10_000 and kpis >= 10


def test_an_unknown_path_is_a_404_problem(api_stack: ApiStack) -> None:
    answer = api_stack.client.get("/v1/nothing")
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert answer.json()["status"] == 404


def test_an_unknown_key_is_401_and_no_key_is_public(api_stack: ApiStack) -> None:
    answer = api_stack.client.get("/v1/kpis", headers={"X-API-Key": "wrong"})
    assert answer.status_code == 401 and answer.json()["parameter"] == "Authorization"
    assert api_stack.client.get("/v1/kpis", headers=api_stack.headers(Role.analyst)).is_success
    assert api_stack.audit.records[-1].key_id == "analyst-key"
