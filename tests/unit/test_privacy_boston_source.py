"""Boston's 311 source with its privacy tools: the case id pseudonymised in events and dead
letters, the raw id only encrypted with the case's own key, the coordinates a geohash-6
cell, and an opted-out case dropped before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connectors.publishing import Rejected
from connectors.sources.city_files import OptedOut, iter_service_events
from core.city import load_pack
from core.privacy.edge import Edge
from core.privacy.minimise import geohash
from core.privacy.optout import OptOut, OptOuts
from core.privacy.pseudonym import Pseudonymiser, parse_keys
from core.privacy.subject_keys import SubjectKeyStore
from tests.unit.test_boston_311 import BOSTON, CITY_HALL, row, write_rows

KEYS = parse_keys("k1=" + "s" * 32)


def edge(tmp_path: Path, *opted_out: str) -> Edge:
    pseudonyms = Pseudonymiser(KEYS)
    entries = [OptOut("request_id", pseudonyms.every("request_id", i), 0) for i in opted_out]
    return Edge(pseudonyms, SubjectKeyStore(tmp_path / "keys"), OptOuts.of(entries))


def items(tmp_path: Path, tools: Edge, *rows: dict[str, str]) -> list[Any]:
    pack = load_pack(BOSTON)
    path = write_rows(tmp_path / "rows.csv", list(rows))
    return list(iter_service_events(pack, pack.source("requests"), path, edge=tools))


def test_a_case_is_one_pseudonym_across_its_events_and_its_raw_id_only_encrypted(
    tmp_path: Path,
) -> None:
    tools = edge(tmp_path)
    opened, closed = items(
        tmp_path, tools, row("101001240734", "01/05/2015 09:00:00 AM", "01/05/2015 01:20:00 PM")
    )
    pseudonym = tools.pseudonyms.pseudonym("request_id", "101001240734")
    assert opened["request_id"] == closed["request_id"] == pseudonym
    assert (opened["event_id"], closed["event_id"]) == (
        f"{pseudonym}:opened",
        f"{pseudonym}:closed",
    )
    assert opened["cell"] == geohash(42.3574, -71.0648) and len(opened["cell"]) == 6
    for event in (opened, closed):
        text = " ".join(map(str, event.values()))
        assert "101001240734" not in text and "42.35" not in text and "Beacon St" not in text
        assert tools.subject_keys.decrypt(pseudonym, event["subject"]) == "101001240734"


def test_the_unlocated_point_has_no_cell(tmp_path: Path) -> None:
    (event,) = items(tmp_path, edge(tmp_path), row("7", "01/05/2015 09:00:00 AM", at=CITY_HALL))
    assert event["cell"] is None and event["district"] == "unknown"


def test_a_dead_letter_names_the_case_by_its_pseudonym(tmp_path: Path) -> None:
    tools = edge(tmp_path)
    (rejected,) = items(tmp_path, tools, row("101001240999", "13/45/2015 09:00:00 AM"))
    assert isinstance(rejected, Rejected) and rejected.reason == "invalid_timestamp"
    raw = str(rejected.raw)
    assert "101001240999" not in raw and "Beacon St" not in raw and "photo" not in raw
    assert f"CASE_ENQUIRY_ID={tools.pseudonyms.pseudonym('request_id', '101001240999')}" in raw


def test_an_opted_out_case_is_dropped_whole_even_when_invalid(tmp_path: Path) -> None:
    tools = edge(tmp_path, "1", "2")
    out = items(
        tmp_path,
        tools,
        row("1", "01/05/2015 09:00:00 AM", "01/05/2015 10:00:00 AM"),
        row("2", "not a time"),
        row("3", "01/05/2015 09:00:00 AM"),
    )
    assert [type(i).__name__ for i in out] == ["OptedOut", "OptedOut", "OptedOut", "dict"]
    assert [i.status for i in out if isinstance(i, OptedOut)] == ["opened", "closed", "opened"]
    assert out[-1]["request_id"] == tools.pseudonyms.pseudonym("request_id", "3")
    assert tools.subject_keys.has(out[-1]["request_id"])
    assert not tools.subject_keys.has(tools.pseudonyms.pseudonym("request_id", "1"))
