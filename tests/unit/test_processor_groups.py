"""Each worker's consumer group follows what it runs, unless set explicitly."""

from __future__ import annotations

from core.settings import Settings
from streams.worker import PROCESSORS, app_id


def test_workers_running_different_processors_get_different_groups() -> None:
    s = Settings()
    assert app_id(s, ["traffic"]) == "citystream-traffic"
    assert app_id(s, ["air", "parking"]) == "citystream-air-parking"
    assert app_id(s, ["traffic"]) != app_id(s, ["air"])


def test_every_processor_is_one_group_and_an_explicit_id_wins() -> None:
    s = Settings()
    assert app_id(s) == app_id(s, list(PROCESSORS)) == "citystream-processors"
    assert app_id(s.model_copy(update={"processor_id": "city-a"}), ["air"]) == "city-a"
