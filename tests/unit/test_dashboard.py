"""The dashboard's files as the API serves them: content types, the strict CSP, no escape
from api/static/, and the vendored libraries matching web/package-lock.json."""

from __future__ import annotations

import json
import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api.context import ApiContext, City
from api.dashboard import STATIC, content_security_policy, router
from core.settings import Settings
from tests.conftest import REPO


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    cities = {
        "aarhus": City("aarhus", "Aarhus", "Europe/Copenhagen", "db_a", "a."),
        "boston": City("boston", "Boston", "America/New_York", "db_b", "b."),
    }
    app.state.context = ApiContext(settings=Settings(), cities=cities, reader=None)  # type: ignore[arg-type]
    app.include_router(router)
    return TestClient(app)


def test_page_and_its_files_with_their_content_types(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert page.headers["content-security-policy"].startswith("default-src 'self';")
    assert page.headers["x-content-type-options"] == "nosniff"
    referenced = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert len(referenced) >= 6
    expected = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for path in referenced:
        response = client.get(path)
        assert response.status_code == 200, path
        suffix = path[path.rindex(".") :]
        assert response.headers["content-type"].startswith(expected[suffix]), path


def test_page_loads_nothing_from_another_origin() -> None:
    html = (STATIC / "index.html").read_text()
    assert not re.search(r'(?:src|href)="(?:https?:)?//', html)
    assert "<style" not in html and " style=" not in html  # the CSP refuses inline styles
    assert "<script>" not in html  # ...and inline scripts


def test_config_names_the_cities_for_the_selector(client: TestClient) -> None:
    body = client.get("/static/config.json").json()
    assert body["cities"] == [
        {"id": "aarhus", "name": "Aarhus"},
        {"id": "boston", "name": "Boston"},
    ]
    assert body["tile_url"] is None


def test_etag_makes_a_refresh_cost_nothing(client: TestClient) -> None:
    first = client.get("/static/app.js")
    again = client.get("/static/app.js", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


@pytest.mark.parametrize(
    "path",
    ["/static/../dashboard.py", "/static/%2e%2e/dashboard.py", "/static/nope.js", "/static/"],
)
def test_nothing_outside_static_is_served(client: TestClient, path: str) -> None:
    assert client.get(path).status_code == 404


def test_tile_origin_allowed_for_images_only() -> None:
    policy = content_security_policy("https://{s}.tiles.example.org/{z}/{x}/{y}.png")
    assert "img-src 'self' https://*.tiles.example.org;" in policy
    assert policy.startswith("default-src 'self';")
    assert content_security_policy("javascript:alert(1)") == content_security_policy(None)


def test_vendored_libraries_match_the_lock_file() -> None:
    lock = json.loads((REPO / "web" / "package-lock.json").read_text())
    manifest = json.loads((STATIC / "vendor" / "manifest.json").read_text())
    assert set(manifest) == {"leaflet", "uplot"}
    for name, entry in manifest.items():
        assert entry["version"] == lock["packages"][f"node_modules/{name}"]["version"]
        for file in entry["files"]:
            assert (STATIC / "vendor" / name / file).stat().st_size > 0
        assert "LICENSE" in entry["files"]
