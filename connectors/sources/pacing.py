"""Pacing of sources: event time in step with wall time, or a cap on events per second."""

from __future__ import annotations

import time


class Pacer:
    """Keeps event time and wall time in step at ``speed``× real time."""

    def __init__(self, speed: float) -> None:
        self.speed = speed
        self.first_event_ms: int | None = None
        self.first_wall = 0.0

    def _due(self, event_ms: int) -> float:
        if self.first_event_ms is None:
            self.first_event_ms, self.first_wall = event_ms, time.monotonic()
        return self.first_wall + (event_ms - self.first_event_ms) / 1000.0 / self.speed

    def wait_needed(self, event_ms: int) -> bool:
        return self._due(event_ms) > time.monotonic() + 0.01

    def sleep(self, event_ms: int) -> None:
        time.sleep(max(0.0, self._due(event_ms) - time.monotonic()))


class RateCap:
    """At most ``per_second`` events per second on average since the first one.

    ``wait_needed`` is checked per event and is cheap; the caller flushes its partial
    batches before ``sleep`` so that nothing waits in a buffer while the source idles.
    """

    def __init__(self, per_second: float) -> None:
        self.per_second = per_second
        self.count = 0
        self.started: float | None = None

    def _due(self) -> float:
        if self.started is None:
            self.started = time.monotonic()
        return self.started + self.count / self.per_second

    def wait_needed(self) -> bool:
        self.count += 1
        return self._due() > time.monotonic() + 0.01

    def sleep(self) -> None:
        time.sleep(max(0.0, self._due() - time.monotonic()))
