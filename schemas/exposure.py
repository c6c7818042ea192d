"""What the read API serves, by path, in terms of the data contracts (docs/privacy.md#checks).

Every path of the API's OpenAPI document is declared here, as serving the public role
(:data:`PUBLIC_API`: the schemas whose records, or fields of them, it may show to anyone) or as
closed to it (:data:`NOT_PUBLIC_API`: the least role that may call it). The contract check
(tests/unit/test_governance.py) fails when a path is declared nowhere, or when a public path
serves a schema with a personal field whose contract does not allow ``public-api``; the
governance report (docs/governance.md) lists both. An API module may import these to say
what it serves; a new route adds its line here.
"""

from __future__ import annotations

PUBLIC_API: dict[str, tuple[str, ...]] = {
    "/v1/kpis": (),  # the KPI catalogue: definitions, no data
    "/v1/kpis/{kpi}/series": ("kpi_record.avsc",),
    "/v1/map/{layer}": (
        "kpi_record.avsc",
        "district.avsc",
        "road_segment.avsc",
        "car_park.avsc",
    ),
    "/v1/equity": ("kpi_record.avsc", "district.avsc"),
    "/v1/alerts": ("alert.avsc",),
    "/v1/status": ("kpi_record.avsc",),  # freshness: the newest window per domain
    "/v1/stream": ("kpi_record.avsc", "alert.avsc"),
    "/ngsi-ld/v1/entities": (
        "kpi_record.avsc",
        "district.avsc",
        "road_segment.avsc",
        "car_park.avsc",
    ),
    "/ngsi-ld/v1/entities/{entity_id}": (
        "kpi_record.avsc",
        "district.avsc",
        "road_segment.avsc",
        "car_park.avsc",
    ),
    "/ngsi-ld/v1/temporal/entities/{entity_id}": ("kpi_record.avsc",),
    "/ngsi-ld/contexts/{name}": (),  # JSON-LD contexts: vocabulary, no data
    "/catalog": (),  # the DCAT catalogue: dataset descriptions, no data
    "/v1/audit/checkpoint": ("audit_checkpoint.avsc",),  # signed tree heads: no personal data
    # WoT Thing Descriptions of sensors: from the reference data of segments and car parks
    "/v1/things/{thing}": ("road_segment.avsc", "car_park.avsc"),
}

# Paths the public role cannot call, with the least role that can (api/context.py Role).
NOT_PUBLIC_API: dict[str, str] = {
    "/v1/audit/proof": "auditor",
}
