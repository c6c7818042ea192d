"""What every source is: the :class:`Source` protocol and its one :class:`Report`.

A source reads rows, events or messages from outside and publishes canonical events to
Kafka; what it cannot use it dead-letters with a reason. The file replays
(``aarhus*.py``, ``city_files.py``) and the simulator run to the end of their input; the
MQTT connector runs until stopped. The HTTP ingest is an aiohttp application rather
than a loop of its own, but reports the same way (``IngestService.report()``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass
class Report:
    """What a source has done so far, or did in all once ``run`` has returned.

    ``rows_read``: rows of a file, simulated events, MQTT messages or HTTP items read.
    ``published``: events published in total; ``per_topic`` splits them by topic where
    the source counts them so (the simulator). ``dead_lettered``: by reason, reference
    rows included. ``duplicates``: events dropped as already seen. ``faults``: faults the
    simulator injected, by kind. ``reference``: reference records published, by kind
    (``road_segments``, ``car_parks``, ``districts``, ``service_categories``).
    """

    rows_read: int = 0
    published: int = 0
    per_topic: Counter[str] = field(default_factory=Counter)
    dead_lettered: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    opted_out: int = 0  # events of opted-out identifiers: dropped, kept nowhere (#16)
    faults: Counter[str] = field(default_factory=Counter)
    reference: Counter[str] = field(default_factory=Counter)
    batches: int = 0  # column-wise batches sent
    seconds: float = 0.0
    fraction_done: float = 0.0  # of the input: file bytes, or simulated event time

    @property
    def rows_per_second(self) -> float:
        return self.rows_read / self.seconds if self.seconds else 0.0


# Called with the report so far, and True once at the end.
Progress = Callable[[Report, bool], None]


@runtime_checkable
class Source(Protocol):
    """Connect in ``setup`` (constructors do no I/O), publish in ``run``, end on ``stop``.

    ``run`` returns at the end of the input, or once ``stop`` was called (from another
    thread or a signal handler): a long-running service's ``run`` runs until then.
    """

    def setup(self) -> None: ...

    def run(self, progress: Progress | None = None) -> Report: ...

    def stop(self) -> None: ...
