"""`citystream city …`: check, scaffold, load, replay and verify a city pack.

- ``validate DIR``: every problem of the pack, each with its file and line (or feature);
  exit 1 if there is any.
- ``init DIR``: a small, valid, commented pack to start from.
- ``load DIR``: the pack's reference data (districts, service categories, road segments,
  car parks) to the compacted reference topics, and nothing else: a deployment fed live
  over MQTT or HTTP can know its segments without replaying a file.
- ``replay DIR [--source NAME] [--file PATH]``: the reference data, then the sources.
- ``verify DIR [--file PATH]``: the 311 oracle (oracles/boston_311.py) against ClickHouse.

DIR defaults to CITYSTREAM_CITY.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

ACTIONS = ("validate", "init", "load", "replay", "verify")


def add_city_parser(
    sub: Any, add_common: Callable[[argparse.ArgumentParser], None]
) -> argparse.ArgumentParser:
    """The ``city`` command and its actions, on the CLI's subparsers."""
    city = sub.add_parser("city", help="city packs: validate, init, load, replay, verify")
    city.add_argument("action", choices=ACTIONS)
    city.add_argument("directory", nargs="?", type=Path, help="the pack (default: CITYSTREAM_CITY)")
    city.add_argument("--source", help="replay: only this source of the pack")
    city.add_argument("--file", type=Path, help="replay/verify: this file instead of the source's")
    city.add_argument("--speed", type=float, help="replay: N× real time (default: at once)")
    init = city.add_argument_group("init")
    init.add_argument("--id", dest="city_id", help="the city id (default: the directory's name)")
    init.add_argument("--name", dest="city_name", help="the city's name")
    init.add_argument("--timezone", default="UTC", help="IANA time zone (default UTC)")
    add_common(city)
    return city


def cmd_city(args: argparse.Namespace) -> int:
    from citystream.cli import city_namespace, flag_settings

    settings = flag_settings(args)  # init and validate must not need a valid pack
    directory = args.directory or settings.city
    if directory is None:
        print(
            "citystream city: give the pack's directory (or set CITYSTREAM_CITY)", file=sys.stderr
        )
        return 2
    if args.action == "init":
        return init_pack(directory, args.city_id, args.city_name, args.timezone)
    if args.action == "validate":
        return validate(directory)
    settings = city_namespace(settings, directory)  # the city's topics and database
    if args.action == "load":
        return load(settings, directory)
    if args.action == "replay":
        return replay(settings, directory, args.source, args.file, args.speed)
    return verify(settings, directory, args.file)


# --- validate ------------------------------------------------------------------------


def pack_problems(directory: Path) -> list[str]:
    """Every problem of the pack, as lines 'file[:line][: feature]: message'."""
    from connectors.sources.city_files import parser_for
    from core.city import Problem, check_pack, source_column_problems

    pack, problems = check_pack(directory)
    if pack is not None:
        for source in pack.spec.sources:
            try:
                extra = parser_for(source).columns
            except ValueError as exc:
                problems.append(Problem("city.toml", f"source {source.name!r}: {exc}"))
                continue
            if extra:  # a registered parser's own columns (declared ones are checked already)
                problems += source_column_problems(pack, source, extra)
    return [str(p) for p in dict.fromkeys(problems)]


def validate(directory: Path) -> int:
    from core.city import load_pack

    problems = pack_problems(directory)
    for problem in problems:
        print(problem)
    if problems:
        print(f"{directory}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    pack = load_pack(directory)
    layer = pack.layer
    districts = f"{len(layer.district_names())} district polygons" if layer else "attribute"
    print(
        f"{directory}: OK: {pack.id} ({pack.spec.name}, {pack.spec.timezone}); districts: "
        f"{districts}; sources: {', '.join(s.name for s in pack.spec.sources) or 'none'}"
    )
    return 0


# --- init ----------------------------------------------------------------------------

CITY_TOML = """\
# A citystream city pack. Check it with `citystream city validate {directory}`;
# the format is described in docs/cities.md.

id = "{id}"  # the city scope's entity_id: lower case letters, digits, _ and -
name = "{name}"
timezone = "{timezone}"  # IANA zone of the city's local times

# Where a location's district comes from: polygons (GeoJSON or GeoPackage, WGS84) whose
# `name_property` names the district, or `attribute = true` (a `district` column in the
# reference files and sources). A point in no polygon is in district "unknown".
[districts]
file = "districts.geojson"
name_property = "name"
unlocated = [[0.0, 0.0]]  # [lat, lon] points meaning "no real location" (a geocoder's default)

# Reference data: canonical field = file column (unmapped fields use their own name).
[reference.service_categories]
file = "service_categories.csv"  # category,name,sla_minutes

# File sources: one table per file. A declarative service source is one request per row.
[[sources]]
name = "requests"
domain = "service"
file = "requests.csv"
id_column = "id"
time_format = "%Y-%m-%d %H:%M:%S"  # strptime format, or "iso"
# timezone = "{timezone}"  # default: the city's

[sources.columns]
category = "type"
opened_at = "opened"
closed_at = "closed"  # optional: empty while open
sla_due_at = "due"  # optional: the request's own due time; else the category's SLA
latitude = "lat"  # optional: with longitude, places the request in a district
longitude = "lon"
"""

DISTRICTS = """\
{"type": "FeatureCollection", "features": [
{"type": "Feature", "properties": {"name": "North"}, "geometry": {"type": "Polygon", "coordinates": [[[10.0, 50.5], [10.5, 50.5], [10.5, 51.0], [10.0, 51.0], [10.0, 50.5]]]}},
{"type": "Feature", "properties": {"name": "South"}, "geometry": {"type": "Polygon", "coordinates": [[[10.0, 50.0], [10.5, 50.0], [10.5, 50.5], [10.0, 50.5], [10.0, 50.0]]]}}
]}
"""  # noqa: E501

CATEGORIES = "category,name,sla_minutes\npothole,Pothole,2880\nnoise,Noise complaint,120\n"
REQUESTS = """\
id,opened,closed,due,type,lat,lon,address
r-1,2024-03-04 09:00:00,2024-03-04 10:30:00,,noise,50.75,10.25,1 Example Street
r-2,2024-03-04 09:10:00,,2024-03-06 09:10:00,pothole,50.25,10.25,2 Example Street
r-3,2024-03-04 09:20:00,2024-03-05 08:00:00,2024-03-05 09:20:00,pothole,0.0,0.0,unknown
"""


def init_pack(directory: Path, city_id: str | None, name: str | None, timezone: str) -> int:
    """Write a small valid pack; never overwrites an existing one."""
    from core.city import NAME

    if (directory / "city.toml").exists():
        print(f"citystream city init: {directory}/city.toml exists already", file=sys.stderr)
        return 1
    city = city_id or directory.resolve().name.lower().replace(" ", "-")
    if not NAME.match(city):
        print(f"citystream city init: {city!r} is not a city id (give --id)", file=sys.stderr)
        return 2
    directory.mkdir(parents=True, exist_ok=True)
    files = {
        "city.toml": CITY_TOML.format(
            id=city, name=name or city.title(), timezone=timezone, directory=directory
        ),
        "districts.geojson": DISTRICTS,
        "service_categories.csv": CATEGORIES,
        "requests.csv": REQUESTS,
    }
    for file, text in files.items():
        (directory / file).write_text(text, encoding="utf-8")
    print(f"{directory}: a city pack for {city!r}; next: citystream city validate {directory}")
    return validate(directory)


# --- load, replay, verify ------------------------------------------------------------


def load(settings: Any, directory: Path, skip: tuple[str, ...] = ()) -> int:
    """The pack's reference data to its topics; ``skip``: kinds the replayed sources publish."""
    from connectors.sources.city_files import publish_reference
    from core.city import CityPackError, load_pack
    from core.startup import wait_for_services
    from families.registry import ensure_topics

    try:
        pack = load_pack(directory)
    except CityPackError as exc:
        print(exc, file=sys.stderr)
        return 1
    wait_for_services(settings)
    ensure_topics(settings)
    try:
        report = publish_reference(settings, pack, skip)
    except ValueError as exc:
        print(f"citystream city load: nothing published:\n{exc}", file=sys.stderr)
        return 1
    counts = ", ".join(f"{kind} {n:,}" for kind, n in report.published.items()) or "nothing"
    by_sources = f" ({', '.join(skip)}: by their sources)" if skip else ""
    print(f"{pack.id}: reference data published: {counts}{by_sources}")
    return 0


def replay(
    settings: Any, directory: Path, only: str | None, file: Path | None, speed: float | None
) -> int:
    import signal

    from citystream.replay import reconciles, run_replays
    from connectors.sources.city_files import city_replay, describe, parser_for
    from core.city import CityPackError, load_pack

    try:
        pack = load_pack(directory)
        sources = [pack.source(only)] if only else list(pack.spec.sources)
        # reference kinds a source's replay publishes itself are not published twice
        own = tuple(dict.fromkeys(k for s in sources for k in parser_for(s).publishes))
    except (CityPackError, KeyError, ValueError) as exc:
        print(f"citystream city replay: {exc}", file=sys.stderr)
        return 2
    if file is not None and len(sources) != 1:
        print("citystream city replay: --file needs --source (the source it replaces)")
        return 2
    if code := load(settings, directory, own):
        return code
    replays = {s.name: city_replay(settings, pack, s, file, speed) for s in sources}
    for source in replays.values():
        source.setup()

    def stop(*_: object) -> None:
        for r in replays.values():
            r.stop()

    signal.signal(signal.SIGTERM, stop)
    reports = run_replays(replays, paced=speed is not None)
    for name, report in reports.items():
        ok = "OK" if reconciles(report) else "MISMATCH"
        print(f"{name:10} {describe(report)}  [{ok}]")
    return 0 if all(reconciles(r) for r in reports.values()) else 1


def verify(settings: Any, directory: Path, file: Path | None) -> int:
    from citystream.verify import stored_kpis
    from oracles.boston_311 import expected_for_pack
    from oracles.compare import compare

    expected = expected_for_pack(directory, file, settings.window_minutes)
    result = compare(expected, stored_kpis(settings, "service."))
    print(result.summary())
    print("verify: OK" if result.ok else "verify: DIFFERENCES FOUND")
    return 0 if result.ok else 1
