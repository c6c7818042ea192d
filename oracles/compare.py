"""Expected KPI rows against stored ones: the verdict every oracle ends with.

A KPI row is keyed by (kpi, scope, entity_id, window_start in epoch ms) and holds
(value, samples). Values match within a relative 1e-9 (sums of floats may be added in a
different order); samples must be equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str, str, int]  # kpi, scope, entity_id, window_start (epoch ms)
Value = tuple[float, int]  # value, samples


@dataclass
class Comparison:
    """Rows in both and equal (matched), only expected (missing), only stored (extra)."""

    matched: int = 0
    missing: list[Key] = field(default_factory=list)
    extra: list[Key] = field(default_factory=list)
    different: list[tuple[Key, Value, Value]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.different)

    def summary(self) -> str:
        """The counts, then the first five keys of each kind of difference."""
        lines = [
            f"matched {self.matched:,}  missing {len(self.missing):,}  "
            f"extra {len(self.extra):,}  different {len(self.different):,}"
        ]
        lines += [f"  missing   {k}" for k in self.missing[:5]]
        lines += [f"  extra     {k}" for k in self.extra[:5]]
        lines += [f"  different {k}: expected {e}, stored {a}" for k, e, a in self.different[:5]]
        return "\n".join(lines)


def compare(expected: dict[Key, Value], actual: dict[Key, Value]) -> Comparison:
    """Row by row; the lists are sorted so a report is the same from run to run."""
    result = Comparison()
    result.missing = sorted(expected.keys() - actual.keys())
    result.extra = sorted(actual.keys() - expected.keys())
    for key in expected.keys() & actual.keys():
        (want, want_n), (got, got_n) = expected[key], actual[key]
        if want_n != got_n or abs(want - got) > 1e-9 * max(1.0, abs(want)):
            result.different.append((key, expected[key], actual[key]))
        else:
            result.matched += 1
    result.different.sort()
    return result
