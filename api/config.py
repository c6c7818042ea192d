"""Building the :class:`api.context.ApiContext` from settings and city packs (``citystream
serve`` and the tests build it the same way).

A city comes from its pack (``--city DIR``, repeatable; else the ``city`` setting): its id,
name and zone, and the namespace ``citystream serve`` gives it exactly as every other
command does (topic prefix ``<id>.`` and database ``citystream_<id>`` unless set). Without
a pack the city is the shipped one, Aarhus, in the settings' own namespace, and its
reference data (for the maps) is the shipped ``cities/aarhus`` pack's.
"""

from __future__ import annotations

from pathlib import Path

from api.context import ApiContext, AuditRecorder, City, KpiReader
from api.queries import SinkReader, Suppression
from api.security import load_api_keys
from api.stream import LiveFeed
from core.city import load_pack
from core.family import CITY
from core.settings import Settings

SHIPPED_PACK = Path(__file__).resolve().parent.parent / "cities" / "aarhus"


def city_of(settings: Settings) -> City:
    """The city ``settings`` are namespaced for (``settings.city`` is its pack, if any)."""
    if settings.city is None:
        pack = load_pack(SHIPPED_PACK) if SHIPPED_PACK.is_dir() else None
        name, zone = (pack.spec.name, pack.spec.timezone) if pack else (CITY.title(), None)
        return City(
            id=CITY,
            name=name,
            timezone=zone or settings.timezone,
            database=settings.clickhouse_database,
            topic_prefix=settings.topic_prefix,
            pack=pack,
        )
    pack = load_pack(settings.city)
    return City(
        id=pack.id,
        name=pack.spec.name,
        timezone=pack.spec.timezone,
        database=settings.clickhouse_database,
        topic_prefix=settings.topic_prefix,
        pack=pack,
    )


def build_context(
    settings: Settings,
    cities: list[Settings] | None = None,
    *,
    reader: KpiReader | None = None,
    audit: AuditRecorder | None = None,
    live_feed: bool = True,
) -> ApiContext:
    """The context over ``cities`` (each a city's namespaced settings; default: ``settings``).

    Raises ValueError when two cities share an id, a topic prefix or a database: their
    KPIs, alerts and live events would be served as each other's.
    """
    configured = [city_of(s) for s in (cities or [settings])]
    check_apart(configured)
    live = LiveFeed(settings, configured) if live_feed else None
    return ApiContext(
        settings=settings,
        cities={city.id: city for city in configured},
        reader=reader or SinkReader(settings, settings.api_query_time_limit_s),
        audit=audit,
        api_keys=load_api_keys(settings),
        suppression=Suppression.from_settings(settings),
        live=live,
    )


def check_apart(cities: list[City]) -> None:
    """Each city in a namespace of its own (as the sink requires of the cities it writes)."""
    for what, values in (
        ("id", [c.id for c in cities]),
        ("topic prefix", [c.topic_prefix for c in cities]),
        ("database", [c.database for c in cities]),
    ):
        shared = sorted({v for v in values if values.count(v) > 1})
        if shared:
            raise ValueError(f"two cities share the {what} {shared[0]!r}: give each its own")
