"""Minimisation at the edge: coarse locations, and dead letters that explain without copying.

**The grid.** A resident-linked event (a 311 request) keeps its district and a *geohash
of 6 characters* instead of its coordinates: a cell of 0.0055° latitude × 0.011°
longitude, about 610 m × 910 m in Boston (42.3° N), roughly a few dozen blocks. Why
geohash-6: it is a public, parameter-free standard (Niemeyer 2008) that any consumer
and the independent oracle can recompute in a dozen lines without a library; its cells
nest (a 5-character prefix is the 4.9 km cell holding it), so a coarser view needs no
recomputation; and at 6 characters a cell holds hundreds of addresses, while the
7-character cell (150 m) would come close to a single building. H3 (hexagons) was
considered: equal-area cells are nicer for maps, but it is a compiled dependency for a
field no KPI uses. The geocoder's "unlocated" point of a city pack has no cell.

**Dead letters.** A rejected JSON payload is kept as its shape: the names of its fields,
and values only of the fields that explain a rejection and identify no one (``keep``:
the canonical measurement and time fields); every other value becomes ``"<dropped>"``,
so an address, a name or free text sent along never reaches ``city.dlq.v1``. A declared
identifier (``identifiers``, with the source's ``pseudonymise``) keeps its pseudonym
instead of its value, wherever it appears (an NGSI-LD attribute's ``value`` too). A payload
that is not JSON (or too deep, or too large to parse) is replaced by its size and SHA-256
(enough to match a resend).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

GRID = "geohash-6"
CELL_CHARS = 6
DROPPED = "<dropped>"
_BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz"


def geohash(lat: float, lon: float, chars: int = CELL_CHARS) -> str:
    """The geohash of (lat, lon): alternately halve longitude and latitude, 5 bits a char."""
    lat_lo, lat_hi, lon_lo, lon_hi = -90.0, 90.0, -180.0, 180.0
    out: list[str] = []
    bits = value = 0
    even = True  # the first bit halves longitude
    while len(out) < chars:
        if even:
            mid = (lon_lo + lon_hi) / 2
            value = value * 2 + (lon >= mid)
            lon_lo, lon_hi = (mid, lon_hi) if lon >= mid else (lon_lo, mid)
        else:
            mid = (lat_lo + lat_hi) / 2
            value = value * 2 + (lat >= mid)
            lat_lo, lat_hi = (mid, lat_hi) if lat >= mid else (lat_lo, mid)
        even = not even
        bits += 1
        if bits == 5:
            out.append(_BASE32[value])
            bits = value = 0
    return "".join(out)


def coarse_cell(
    lat: float | None, lon: float | None, unlocated: Collection[tuple[float, float]] = ()
) -> str | None:
    """The event's coarse cell; None without coordinates or at an unlocated point."""
    if lat is None or lon is None:
        return None
    if any(abs(lat - a) < 1e-9 and abs(lon - b) < 1e-9 for a, b in unlocated):
        return None
    return geohash(lat, lon)


Pseudonymise = Callable[[str, object], str | None]  # (field, value) -> pseudonym or None


def minimal_payload(
    raw: bytes | str,
    keep: Collection[str],
    max_bytes: int = 1 << 20,
    identifiers: Collection[str] = (),
    pseudonymise: Pseudonymise | None = None,
) -> bytes:
    """``raw`` as a dead letter may keep it: its JSON shape, values of ``keep`` fields only,
    and of ``identifiers`` their pseudonyms (``pseudonymise``; None from it: dropped).

    Input that is not JSON, nests too deep or exceeds ``max_bytes`` (not parsed at all)
    is kept as its size and SHA-256 only.
    """
    data = raw.encode(errors="backslashreplace") if isinstance(raw, str) else raw
    if len(data) <= max_bytes:
        try:
            shaper = _Shaper(frozenset(keep), frozenset(identifiers), pseudonymise)
            shape = shaper.shape(json.loads(data))
            return json.dumps(shape, separators=(",", ":")).encode()
        except (ValueError, RecursionError):
            pass
    digest = hashlib.sha256(data).hexdigest()
    return (
        f"<{len(data)} bytes not kept: not JSON, too deep or too large; sha256 {digest}>".encode()
    )


@dataclass(frozen=True)
class _Shaper:
    keep: frozenset[str]
    identifiers: frozenset[str] = frozenset()
    pseudonymise: Pseudonymise | None = None

    def shape(self, value: Any, kept: bool = False) -> Any:
        """Names everywhere; a value only inside a ``keep`` field (an NGSI-LD attribute's
        ``value`` under it too), and only a number or a short text; an identifier's value
        as its pseudonym."""
        if isinstance(value, dict):
            return {str(k): self._member(str(k), v, kept) for k, v in value.items()}
        if isinstance(value, list):
            return [self.shape(v, kept) for v in value]
        if kept and (value is None or isinstance(value, bool | int | float)):
            return value
        if kept and isinstance(value, str) and len(value) <= 64:
            return value
        return DROPPED

    def _member(self, name: str, value: Any, kept: bool) -> Any:
        if name in self.identifiers:
            return self._identifier(name, value)
        return self.shape(value, kept or name in self.keep)

    def _identifier(self, name: str, value: Any) -> Any:
        """A declared identifier: its pseudonym; an NGSI-LD attribute's value or object."""
        if isinstance(value, dict):
            return {
                str(k): self._identifier(name, v)
                if k in ("value", "object")
                else self._member(str(k), v, False)
                for k, v in value.items()
            }
        pseudonym = self.pseudonymise(name, value) if self.pseudonymise else None
        return DROPPED if pseudonym is None else pseudonym
