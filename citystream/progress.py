"""Progress on stderr: a redrawn bar on a terminal, a line every two seconds otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

_last_line = [0.0]


def _bar(fraction: float, width: int = 24) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {fraction:4.0%}"


def replay_progress(label: str = "replay", redraw: bool = True) -> Callable[[Any, bool], None]:
    """A replay's progress callback; ``redraw=False`` when several replays print at once."""

    def show(report: Any, done: bool) -> None:
        dead = sum(report.dead_lettered.values())
        text = (
            f"{label} {_bar(report.fraction_done)} {report.rows_read:>9,} rows  "
            f"{report.published:>9,} published  {dead:>5,} dead-lettered  "
            f"{report.rows_per_second:>8,.0f} rows/s"
        )
        _show(text, done, redraw)

    return show


print_replay_progress = replay_progress()


def print_simulation_progress(report: Any, done: bool) -> None:
    dead = sum(report.dead_lettered.values())
    text = (
        f"simulate {_bar(report.fraction_done)} {report.rows_read:>9,} events  "
        f"{report.published:>9,} published  {dead:>5,} dead-lettered  "
        f"{report.rows_per_second:>8,.0f} events/s"
    )
    _show(text, done)


def _show(text: str, done: bool, redraw: bool = True) -> None:
    if redraw and sys.stderr.isatty():
        print(f"\r{text}", end="\n" if done else "", file=sys.stderr, flush=True)
    elif done or time.monotonic() - _last_line[0] >= 2.0:
        _last_line[0] = time.monotonic()
        print(text, file=sys.stderr, flush=True)
