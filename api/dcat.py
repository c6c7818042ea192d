"""`GET /catalog`: the published datasets as a W3C DCAT catalogue (the DCAT-AP 3 profile).

Open-data portals (data.europa.eu, CKAN's DCAT harvester, national portals) harvest
DCAT-AP, so describing the KPIs that way lets a city list them without writing a page by
hand. The catalogue is generated from the code that produces the data: one dataset per KPI
of the families registry (its formula, unit, window and scopes), one per ClickHouse KPI
table as the API publishes it (``kpi``, ``kpi_daily``, ``kpi_equity``), and one per
public Kafka topic of the topic catalogue; the read API and the NGSI-LD API are its data
services. Nothing is written by hand, so it cannot drift from what runs.

The graph is built by :func:`catalog_graph`, a pure function of a :class:`Publication`;
the route only gathers the publication (the request's own URL, the city, the settings)
and serialises the graph as JSON-LD or Turtle. ``tests/api/test_dcat.py`` validates it
with pyshacl against the DCAT-AP 3.0.1 shapes shipped in ``api/shapes/``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SKOS, XSD

from api.context import ApiContext, City, get_context
from api.problems import Problem, bad_parameter
from core.kpis import HOPPING, HOURLY, TUMBLING, Kpi
from families.registry import KPIS, TOPICS
from schemas.catalog import TopicSpec

SHAPES_DIR = Path(__file__).resolve().parent / "shapes"
SHAPES_FILE = SHAPES_DIR / "dcat-ap-SHACL.ttl"

VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
EU = "http://publications.europa.eu/resource/authority/"
THEME_SCHEME = URIRef(EU + "data-theme")
ACCESS = URIRef(EU + "access-right/PUBLIC")
RESTRICTED = URIRef(EU + "access-right/RESTRICTED")
FILE_TYPE = EU + "file-type/"
IANA = "https://www.iana.org/assignments/media-types/"
NGSI_LD_SPEC = URIRef("https://www.etsi.org/deliver/etsi_gs/CIM/001_099/009/")
OPENAPI_SPEC = URIRef("https://spec.openapis.org/oas/v3.1.0")
AVRO_SPEC = URIRef("https://avro.apache.org/docs/1.11.1/specification/")

# Each KPI domain's theme in the EU data-theme vocabulary (DCAT-AP's controlled themes).
THEMES: dict[str, tuple[str, str]] = {
    "traffic": ("TRAN", "Transport"),
    "parking": ("TRAN", "Transport"),
    "air": ("ENVI", "Environment"),
    "waste": ("ENVI", "Environment"),
    "energy": ("ENER", "Energy"),
    "devices": ("TECH", "Science and technology"),
    "service": ("GOVE", "Government and public sector"),
    "city": ("REGI", "Regions and cities"),
    "kpi": ("REGI", "Regions and cities"),
    "alerts": ("REGI", "Regions and cities"),
}
_DEFAULT_THEME = ("REGI", "Regions and cities")

# The KPI windows as ISO 8601 durations (dcat:temporalResolution): a window's own length.
RESOLUTIONS = {TUMBLING: "PT15M", HOPPING: "PT1H", HOURLY: "PT1H"}

# The ClickHouse KPI tables, as the read API publishes them (table, title, description,
# the API path and query that serve it).
TABLES: tuple[tuple[str, str, str, str], ...] = (
    (
        "kpi",
        "KPI windows",
        "Every KPI value per window (15 minutes, or the hour of the hourly trends), per "
        "scope and entity, latest revision",
        "/v1/kpis",
    ),
    (
        "kpi_daily",
        "Daily KPI rollup",
        "Every KPI per city-local day: windows, sum, mean, minimum and maximum of the "
        "window values",
        "/v1/kpis",
    ),
    (
        "kpi_equity",
        "KPI equity by district",
        "Each district's KPI value beside the city median",
        "/v1/equity",
    ),
)

# Topics that are not open data even though subscribers may read them: raw rejected input.
NOT_PUBLISHED_TOPICS = frozenset({"city.dlq.v1"})

FORMATS = {"turtle": "text/turtle", "jsonld": "application/ld+json"}


@dataclass(frozen=True)
class Publication:
    """What the catalogue describes, gathered at the entry point (no settings read here)."""

    base_url: str  # the API's public URL, without a trailing slash
    city_id: str
    city_name: str
    kpis: tuple[Kpi, ...]
    topics: tuple[TopicSpec, ...]  # the topic catalogue (internal ones are left out)
    topic_prefix: str = ""
    kafka_bootstrap: str = ""  # first bootstrap server, for the topics' access URLs
    title: str = ""  # the catalogue's title (default: "<city> city KPIs")


def published_topics(topics: Iterable[TopicSpec]) -> list[TopicSpec]:
    """The topics that are datasets: public (not processor plumbing) and not dead letters."""
    return [t for t in topics if not t.internal and t.name not in NOT_PUBLISHED_TOPICS]


class _Builder:
    """Adds the catalogue's nodes to one graph; small methods, one per DCAT class."""

    def __init__(self, pub: Publication) -> None:
        self.pub = pub
        self.g = Graph()
        for prefix, ns in (("dcat", DCAT), ("dct", DCTERMS), ("foaf", FOAF), ("skos", SKOS)):
            self.g.bind(prefix, ns)
        self.g.bind("vcard", VCARD)
        self.base = pub.base_url.rstrip("/")
        self.catalog = URIRef(f"{self.base}/catalog")
        self.publisher = URIRef(f"{self.base}/catalog#publisher")
        self.api = URIRef(f"{self.base}/catalog#api")
        self.ngsi = URIRef(f"{self.base}/catalog#ngsi-ld")

    def add(self, s: URIRef | BNode, p: URIRef, o: URIRef | BNode | Literal) -> None:
        self.g.add((s, p, o))

    def text(self, s: URIRef | BNode, p: URIRef, value: str) -> None:
        self.add(s, p, Literal(value, lang="en"))

    def build(self) -> Graph:
        pub = self.pub
        title = pub.title or f"{pub.city_name} city KPIs"
        self.add(self.catalog, RDF.type, DCAT.Catalog)
        self.text(self.catalog, DCTERMS.title, title)
        self.text(
            self.catalog,
            DCTERMS.description,
            f"Key performance indicators of {pub.city_name} computed by citystream from "
            "the city's sensor and service events: the KPI series, the tables behind "
            "them, and the public event topics",
        )
        homepage = URIRef(f"{self.base}/")
        self.add(self.catalog, FOAF.homepage, homepage)
        self.add(homepage, RDF.type, FOAF.Document)
        for right in (ACCESS, RESTRICTED):
            self.add(right, RDF.type, DCTERMS.RightsStatement)
        for standard in (NGSI_LD_SPEC, OPENAPI_SPEC, AVRO_SPEC):
            self.add(standard, RDF.type, DCTERMS.Standard)
        self.add(self.catalog, DCTERMS.publisher, self.publisher)
        self._publisher()
        self._services()
        for kpi in pub.kpis:
            self.add(self.catalog, DCAT.dataset, self._kpi_dataset(kpi))
        for table in TABLES:
            self.add(self.catalog, DCAT.dataset, self._table_dataset(*table))
        for topic in published_topics(pub.topics):
            self.add(self.catalog, DCAT.dataset, self._topic_dataset(topic))
        return self.g

    def _publisher(self) -> None:
        self.add(self.publisher, RDF.type, FOAF.Agent)
        self.text(self.publisher, FOAF.name, f"City of {self.pub.city_name}")
        self.add(self.publisher, DCTERMS.identifier, Literal(self.pub.city_id))

    def _services(self) -> None:
        api_endpoint = URIRef(f"{self.base}/v1")
        self._service(
            self.api,
            "citystream read API",
            "KPI catalogue, time series (JSON, CSV), maps (GeoJSON), equity, alerts and "
            "status over HTTP; OpenAPI 3.1",
            api_endpoint,
            URIRef(f"{self.base}/openapi.json"),
            OPENAPI_SPEC,
        )
        self._service(
            self.ngsi,
            "citystream NGSI-LD API",
            "Every KPI series as a Smart Data Models KeyPerformanceIndicator entity, with "
            "its temporal and aggregated temporal representation (ETSI GS CIM 009)",
            URIRef(f"{self.base}/ngsi-ld/v1"),
            None,
            NGSI_LD_SPEC,
        )

    def _service(
        self,
        node: URIRef,
        title: str,
        description: str,
        endpoint: URIRef,
        endpoint_description: URIRef | None,
        conforms_to: URIRef,
    ) -> None:
        self.add(node, RDF.type, DCAT.DataService)
        self.text(node, DCTERMS.title, title)
        self.text(node, DCTERMS.description, description)
        self.add(node, DCAT.endpointURL, endpoint)
        if endpoint_description is not None:
            self.add(node, DCAT.endpointDescription, endpoint_description)
        self.add(node, DCTERMS.conformsTo, conforms_to)
        self.add(node, DCTERMS.publisher, self.publisher)
        self.add(node, DCTERMS.accessRights, ACCESS)
        self.add(self.catalog, DCAT.service, node)

    def _theme(self, dataset: URIRef, domain: str) -> None:
        code, label = THEMES.get(domain, _DEFAULT_THEME)
        theme = URIRef(f"{EU}data-theme/{code}")
        self.add(dataset, DCAT.theme, theme)
        self.add(theme, RDF.type, SKOS.Concept)
        self.text(theme, SKOS.prefLabel, label)
        self.add(theme, SKOS.inScheme, THEME_SCHEME)
        self.add(THEME_SCHEME, RDF.type, SKOS.ConceptScheme)
        self.text(THEME_SCHEME, DCTERMS.title, "Data theme")
        self.add(self.catalog, DCAT.themeTaxonomy, THEME_SCHEME)

    def _dataset(self, node: URIRef, title: str, description: str, domain: str) -> None:
        self.add(node, RDF.type, DCAT.Dataset)
        self.text(node, DCTERMS.title, title)
        self.text(node, DCTERMS.description, description)
        self.add(node, DCTERMS.publisher, self.publisher)
        self._theme(node, domain)

    def _kpi_dataset(self, kpi: Kpi) -> URIRef:
        node = URIRef(f"{self.base}/catalog#kpi-{kpi.name}")
        self._dataset(
            node,
            f"{kpi.name} ({self.pub.city_name})",
            f"{kpi.formula}. Unit: {kpi.unit}. Window: {kpi.window}. Scopes: "
            f"{', '.join(kpi.scopes)}.",
            kpi.domain,
        )
        self.add(node, DCTERMS.identifier, Literal(kpi.name))
        for word in (kpi.domain, *kpi.scopes):
            self.text(node, DCAT.keyword, word)
        if kpi.window in RESOLUTIONS:
            self.add(
                node,
                DCAT.temporalResolution,
                Literal(RESOLUTIONS[kpi.window], datatype=XSD.duration),
            )
        self.add(node, DCTERMS.accessRights, ACCESS)
        series = f"{self.base}/v1/kpis/{kpi.name}/series"
        self._distribution(node, "json", series, "JSON", "application/json", self.api)
        self._distribution(node, "csv", series, "CSV", "text/csv", self.api)
        entities = f"{self.base}/ngsi-ld/v1/entities?type=KeyPerformanceIndicator"
        self._distribution(node, "ngsi-ld", entities, "JSON_LD", "application/ld+json", self.ngsi)
        self.add(self.api, DCAT.servesDataset, node)
        self.add(self.ngsi, DCAT.servesDataset, node)
        return node

    def _table_dataset(self, table: str, title: str, description: str, path: str) -> URIRef:
        node = URIRef(f"{self.base}/catalog#table-{table}")
        self._dataset(node, f"{title} ({self.pub.city_name})", description, "kpi")
        self.add(node, DCTERMS.identifier, Literal(table))
        self.text(node, DCAT.keyword, "ClickHouse table")
        self.add(node, DCTERMS.accessRights, ACCESS)
        self._distribution(node, "json", self.base + path, "JSON", "application/json", self.api)
        self.add(self.api, DCAT.servesDataset, node)
        return node

    def _topic_dataset(self, topic: TopicSpec) -> URIRef:
        name = self.pub.topic_prefix + topic.name
        node = URIRef(f"{self.base}/catalog#topic-{name}")
        domain = topic.name.split(".")[1] if topic.name.count(".") >= 2 else "city"
        self._dataset(node, f"Kafka topic {name}", f"{topic.doc}. Key: {topic.key}.", domain)
        self.add(node, DCTERMS.identifier, Literal(name))
        self.text(node, DCAT.keyword, "Kafka topic")
        self.add(node, DCTERMS.accessRights, RESTRICTED)
        bootstrap = self.pub.kafka_bootstrap or "kafka"
        dist = self._distribution(
            node, "avro", f"kafka://{bootstrap}/{name}", None, "application/avro", None
        )
        self.add(dist, DCTERMS.conformsTo, AVRO_SPEC)
        return node

    def _distribution(
        self,
        dataset: URIRef,
        key: str,
        access_url: str,
        file_type: str | None,
        media_type: str,
        service: URIRef | None,
    ) -> URIRef:
        node = URIRef(f"{dataset}/distribution/{key}")
        self.add(node, RDF.type, DCAT.Distribution)
        self.add(node, DCAT.accessURL, URIRef(access_url))
        self.text(node, DCTERMS.title, f"{key.upper()}: {access_url}")
        media = URIRef(IANA + media_type)
        self.add(node, DCAT.mediaType, media)
        self.add(media, RDF.type, DCTERMS.MediaType)
        if file_type is not None:
            fmt = URIRef(FILE_TYPE + file_type)
            self.add(node, DCTERMS["format"], fmt)
            self.add(fmt, RDF.type, DCTERMS.MediaTypeOrExtent)
        if service is not None:
            self.add(node, DCAT.accessService, service)
        self.add(dataset, DCAT.distribution, node)
        return node


def catalog_graph(pub: Publication) -> Graph:
    """The DCAT-AP 3 catalogue of a publication, as an rdflib graph."""
    return _Builder(pub).build()


def serialise(graph: Graph, fmt: str) -> bytes:
    """The graph as Turtle (``turtle``) or JSON-LD (``jsonld``), UTF-8."""
    if fmt == "turtle":
        return graph.serialize(format="turtle").encode()
    context = {"dcat": str(DCAT), "dct": str(DCTERMS), "foaf": str(FOAF), "skos": str(SKOS)}
    return graph.serialize(format="json-ld", context=context, auto_compact=True).encode()


def negotiate(accept: str | None, fmt: str | None) -> str | None:
    """``?format=`` wins; else the first Accept type we serve (any/none: JSON-LD).

    None when the client accepts neither (the route answers 406)."""
    if fmt is not None:
        return fmt if fmt in FORMATS else None
    if not accept:
        return "jsonld"
    for part in accept.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("text/turtle", "application/x-turtle"):
            return "turtle"
        if media in ("application/ld+json", "application/json", "*/*", "application/*"):
            return "jsonld"
    return None


def publication(context: ApiContext, city: City, base_url: str) -> Publication:
    """The publication of ``city`` as this API serves it at ``base_url``."""
    bootstrap = context.settings.kafka_bootstrap_servers.split(",")[0].strip()
    return Publication(
        base_url=base_url.rstrip("/"),
        city_id=city.id,
        city_name=city.name,
        kpis=tuple(KPIS.values()),
        topics=tuple(TOPICS.values()),
        topic_prefix=city.topic_prefix,
        kafka_bootstrap=bootstrap,
    )


router = APIRouter(tags=["DCAT"])


@router.get(
    "/catalog",
    summary="The published datasets as a DCAT-AP 3 catalogue (JSON-LD or Turtle)",
    responses={
        200: {
            "content": {"application/ld+json": {}, "text/turtle": {}},
            "description": "The catalogue; ?format= wins over the Accept header",
        },
        406: {"description": "Neither JSON-LD nor Turtle is acceptable"},
    },
)
def get_catalog(
    request: Request,
    context: Annotated[ApiContext, Depends(get_context)],
    format: Annotated[
        str | None, Query(description="turtle or jsonld (default: from Accept, else jsonld)")
    ] = None,
    city: Annotated[str | None, Query(description="The city (default: the first)")] = None,
) -> Response:
    if format is not None and format not in FORMATS:
        raise bad_parameter("format", f"format {format!r} is not one of {sorted(FORMATS)}")
    chosen = negotiate(request.headers.get("accept"), format)
    if chosen is None:
        raise Problem(406, f"the catalogue is {' or '.join(FORMATS.values())}", parameter="Accept")
    graph = catalog_graph(publication(context, context.city(city), str(request.base_url)))
    return Response(
        serialise(graph, chosen),
        media_type=FORMATS[chosen],
        headers={"Cache-Control": "max-age=300", "Vary": "Accept"},
    )
