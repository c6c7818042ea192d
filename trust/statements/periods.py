"""Contract periods: a calendar month (``2015-01``) or an ISO week (``2014-W31``) in the
city's local time, as the instants [start, end) that a KPI window must start in.

Local midnight is converted with zoneinfo, so a month that holds a daylight-saving change
is as long as the city lived it (January in Boston: 744 hours; March: 743).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MONTH = re.compile(r"^(\d{4})-(\d{2})$")
WEEK = re.compile(r"^(\d{4})-W(\d{2})$")


@dataclass(frozen=True)
class Period:
    label: str  # as given: 2015-01, 2014-W31
    kind: str  # month | week
    timezone: str
    start: datetime  # local, aware
    end: datetime  # local, aware (exclusive)

    @property
    def start_ms(self) -> int:
        return round(self.start.timestamp() * 1000)

    @property
    def end_ms(self) -> int:
        return round(self.end.timestamp() * 1000)

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "kind": self.kind,
            "timezone": self.timezone,
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "start_utc": self.start.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "end_utc": self.end.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        }


def resolve_period(label: str, kind: str, timezone: str) -> Period:
    """The period ``label`` of ``kind`` (month, week) in ``timezone``; ValueError saying
    what a period looks like when it is not one."""
    try:
        zone = ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"timezone {timezone!r} is not a known IANA time zone") from exc
    first, last = _days(label.strip(), kind)
    return Period(
        label=label.strip(),
        kind=kind,
        timezone=timezone,
        start=datetime.combine(first, datetime.min.time(), zone),
        end=datetime.combine(last, datetime.min.time(), zone),
    )


def _days(label: str, kind: str) -> tuple[date, date]:
    """First day of the period and the first day after it."""
    if kind == "month":
        m = MONTH.match(label)
        if not m or not 1 <= int(m.group(2)) <= 12:
            raise ValueError(f"period {label!r}: this contract's periods are months, e.g. 2015-01")
        year, month = int(m.group(1)), int(m.group(2))
        return date(year, month, 1), date(year + month // 12, month % 12 + 1, 1)
    if kind == "week":
        m = WEEK.match(label)
        if not m:
            raise ValueError(
                f"period {label!r}: this contract's periods are ISO weeks, e.g. 2014-W31"
            )
        try:
            monday = date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
        except ValueError as exc:
            raise ValueError(f"period {label!r}: {exc}") from exc
        return monday, monday + timedelta(days=7)
    raise ValueError(f"period kind {kind!r}: must be month or week")
