"""Pseudonym keys on the real stack (#16): the same case id gives the same pseudonym in
every process under one key and a new one after a rotation; an opt-out recorded under the
old key still drops the case; an access request finds the case under both keys."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from citystream.verify import read_topic
from connectors.sources.city_files import city_replay
from core.city import load_pack
from core.privacy import optout
from core.privacy.edge import pseudonymiser
from core.settings import Settings
from families.registry import ensure_topics
from tests.integration.test_rights_boston import BOSTON, month_rows, write_csv
from trust.rights.access import access

pytestmark = pytest.mark.integration
K1 = "k1=" + "first-secret-" * 3
K2 = "k2=" + "second-secret-" * 3


def replay(settings: Settings, file: Path) -> tuple[int, int]:
    pack = load_pack(BOSTON)
    source = city_replay(settings, pack, pack.source("requests"), file)
    source.setup()
    report = source.run()
    return report.published, report.opted_out


def test_rotation_gives_new_pseudonyms_and_keeps_opt_outs(
    settings: Settings, tmp_path: Path
) -> None:
    header, rows = month_rows()
    col = {name: i for i, name in enumerate(header)}
    kept, gone = rows[0], rows[1]  # both closed: two events each
    assert kept[col["CLOSED_DT"]] and gone[col["CLOSED_DT"]]
    file = write_csv(tmp_path / "two.csv", header, [kept, gone])
    case, opted = kept[col["CASE_ENQUIRY_ID"]], gone[col["CASE_ENQUIRY_ID"]]

    old = settings.model_copy(update={"city": BOSTON, "privacy_pseudonym_keys": SecretStr(K1)})
    new = old.model_copy(update={"privacy_pseudonym_keys": SecretStr(f"{K2},{K1}")})
    ensure_topics(old)
    optout.record(old, pseudonymiser(old), "request_id", opted)

    assert replay(old, file) == (2, 2)
    assert replay(new, file) == (2, 2)  # the opt-out made under k1 still matches under k2

    ids = [e["request_id"] for e in read_topic(old, "city.service_requests.v1")]
    under_k1 = pseudonymiser(old).pseudonym("request_id", case)
    under_k2 = pseudonymiser(new).pseudonym("request_id", case)
    assert under_k1.startswith("k1:") and under_k2.startswith("k2:") and under_k1 != under_k2
    assert sorted(ids) == sorted([under_k1] * 2 + [under_k2] * 2)

    export = access(new, case)
    assert export["pseudonyms"] == [under_k2, under_k1]
    assert sorted(e["record"]["request_id"] for e in export["events"]) == sorted(ids)
    assert {e["identity"] for e in export["events"]} == {case}
    assert opted not in json.dumps(read_topic(old, "city.service_requests.v1"), default=str)
