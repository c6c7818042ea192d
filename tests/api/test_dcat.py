"""The DCAT catalogue against the DCAT-AP 3 SHACL shapes shipped in api/shapes/.

The shapes are the SEMIC release's own file (nothing fetched); pyshacl runs with RDFS
inference, as the shapes expect (their ranges say rdfs:Resource). The negative tests show
that the validation is not vacuous: a catalogue missing a mandatory property fails.
"""

from __future__ import annotations

import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
from pyshacl import validate
from rdflib import Graph, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF

from api.dcat import (
    SHAPES_FILE,
    TABLES,
    Publication,
    catalog_graph,
    negotiate,
    published_topics,
    serialise,
)
from families.registry import KPIS, TOPICS
from tests.api.conftest import ApiStack

BASE = "http://api.example:8000"


def publication() -> Publication:
    return Publication(
        base_url=BASE,
        city_id="aarhus",
        city_name="Aarhus",
        kpis=tuple(KPIS.values()),
        topics=tuple(TOPICS.values()),
        topic_prefix="",
        kafka_bootstrap="kafka.example:9092",
    )


@cache
def shapes() -> Graph:
    return Graph().parse(SHAPES_FILE, format="turtle")


def conforms(graph: Graph) -> tuple[bool, str]:
    ok, _, text = validate(
        graph, shacl_graph=shapes(), inference="rdfs", advanced=True, allow_warnings=True
    )
    return bool(ok), str(text)


def test_shapes_file_is_the_dcat_ap_3_release():
    text = SHAPES_FILE.read_text()
    assert "https://semiceu.github.io/DCAT-AP/releases/3.0.0" in text
    assert (SHAPES_FILE.parent / "LICENSE.md").is_file()
    assert (SHAPES_FILE.parent / "README.md").is_file()


@pytest.mark.parametrize("fmt", ["turtle", "jsonld"])
def test_catalogue_conforms_to_dcat_ap_3(fmt):
    """Serialised and parsed back (as a harvester reads it), it conforms."""
    body = serialise(catalog_graph(publication()), fmt)
    graph = Graph().parse(data=body, format="turtle" if fmt == "turtle" else "json-ld")
    ok, report = conforms(graph)
    assert ok, report


def test_catalogue_lists_every_kpi_table_and_public_topic():
    graph = catalog_graph(publication())
    datasets = set(graph.subjects(RDF.type, DCAT.Dataset))
    identifiers = {str(graph.value(d, DCTERMS.identifier)) for d in datasets}
    assert set(KPIS) <= identifiers
    assert {table for table, *_ in TABLES} <= identifiers
    public = {t.name for t in published_topics(TOPICS.values())}
    assert public <= identifiers
    assert "city.kpi.v1" in public and "city.kpi.batches.v1" not in public
    assert "city.dlq.v1" not in identifiers  # raw rejected input is not open data
    assert len(datasets) == len(KPIS) + len(TABLES) + len(public)
    catalog = URIRef(f"{BASE}/catalog")
    assert set(graph.objects(catalog, DCAT.dataset)) == datasets


def test_kpi_dataset_says_formula_unit_resolution_and_how_to_get_it():
    graph = catalog_graph(publication())
    node = URIRef(f"{BASE}/catalog#kpi-traffic.vehicle_count")
    kpi = KPIS["traffic.vehicle_count"]
    description = str(graph.value(node, DCTERMS.description))
    assert kpi.formula in description and kpi.unit in description
    assert str(graph.value(node, DCAT.temporalResolution)) == "PT15M"
    urls = {str(graph.value(d, DCAT.accessURL)) for d in graph.objects(node, DCAT.distribution)}
    assert f"{BASE}/v1/kpis/traffic.vehicle_count/series" in urls
    assert f"{BASE}/ngsi-ld/v1/entities?type=KeyPerformanceIndicator" in urls


@pytest.mark.parametrize(
    ("subject", "prop"),
    [
        ("catalog", DCTERMS.description),  # Catalog: description, publisher, title
        ("catalog", DCTERMS.title),
        ("catalog", DCTERMS.publisher),
        ("kpi-traffic.vehicle_count", DCTERMS.title),  # Dataset: description, title
        ("kpi-air.aqi", DCTERMS.description),
        ("api", DCAT.endpointURL),  # DataService: endpoint URL, title
        ("publisher", FOAF.name),  # Agent: name
    ],
)
def test_missing_mandatory_property_fails_validation(subject, prop):
    graph = catalog_graph(publication())
    node = URIRef(f"{BASE}/catalog" if subject == "catalog" else f"{BASE}/catalog#{subject}")
    assert (node, prop, None) in graph
    graph.remove((node, prop, None))
    ok, report = conforms(graph)
    assert not ok
    assert "MinCountConstraintComponent" in report
    assert str(node) in report


def test_distribution_without_access_url_fails_validation():
    graph = catalog_graph(publication())
    distribution = next(graph.subjects(RDF.type, DCAT.Distribution))
    graph.remove((distribution, DCAT.accessURL, None))
    ok, report = conforms(graph)
    assert not ok and str(distribution) in report


@pytest.mark.parametrize(
    ("accept", "fmt", "chosen"),
    [
        (None, None, "jsonld"),
        ("text/turtle", None, "turtle"),
        ("application/ld+json", None, "jsonld"),
        ("text/html, text/turtle;q=0.9", None, "turtle"),
        ("*/*", None, "jsonld"),
        ("text/turtle", "jsonld", "jsonld"),  # ?format= wins
        ("text/html", None, None),  # 406
        (None, "rdfxml", None),
    ],
)
def test_negotiation(accept, fmt, chosen):
    assert negotiate(accept, fmt) == chosen


# --- served by the API over the real Aarhus day ---------------------------------------


@pytest.mark.parametrize(
    ("headers", "params", "media", "parse_as"),
    [
        ({"Accept": "text/turtle"}, {}, "text/turtle", "turtle"),
        ({}, {}, "application/ld+json", "json-ld"),
        ({"Accept": "text/turtle"}, {"format": "jsonld"}, "application/ld+json", "json-ld"),
        ({}, {"format": "turtle"}, "text/turtle", "turtle"),
    ],
)
def test_served_catalogue_conforms(api_stack: ApiStack, headers, params, media, parse_as):
    answer = api_stack.client.get("/catalog", headers=headers, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith(media)
    graph = Graph().parse(data=answer.text, format=parse_as)
    ok, report = conforms(graph)
    assert ok, report
    base = str(api_stack.client.base_url)
    assert (URIRef(f"{base}/catalog"), RDF.type, DCAT.Catalog) in graph
    prefix = api_stack.settings.topic_prefix
    topic = URIRef(f"{base}/catalog#topic-{prefix}city.kpi.v1")
    assert (topic, RDF.type, DCAT.Dataset) in graph


def test_catalogue_refuses_what_it_cannot_give(api_stack: ApiStack):
    html = api_stack.client.get("/catalog", headers={"Accept": "text/html"})
    assert html.status_code == 406
    rdfxml = api_stack.client.get("/catalog", params={"format": "rdfxml"})
    assert rdfxml.status_code == 400 and rdfxml.json()["parameter"] == "format"


def test_docs_validation_command_accepts_the_served_catalogue(api_stack: ApiStack, tmp_path):
    """docs/open-data.md's pyshacl command, as written there, on the served Turtle."""
    docs = (Path(__file__).resolve().parents[2] / "docs" / "open-data.md").read_text()
    command = next(line for line in docs.splitlines() if line.startswith(".venv/bin/pyshacl "))
    args = command.split()[1:]
    assert args[-1] == "catalog.ttl"
    answer = api_stack.client.get("/catalog", params={"format": "turtle"})
    (tmp_path / "catalog.ttl").write_text(answer.text)
    shapes = str(SHAPES_FILE.relative_to(SHAPES_FILE.parents[2]))
    args = [str(SHAPES_FILE) if a == shapes else a for a in args]
    cli = Path(sys.executable).parent / "pyshacl"
    done = subprocess.run([str(cli), *args], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Conforms: True" in done.stdout
