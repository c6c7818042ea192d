"""Contract files (``contracts/*.toml``): what a supplier is paid against.

A contract names its city, the kind of period it is judged over (a calendar month or an
ISO week, in the city's local time) and its targets: a KPI of the catalogue, a scope and
entity, a comparison with a threshold, and payment tiers. Validation is strict and every
error names the key at fault (``targets[1].comparison: ...``), because a contract that
parses into something other than what its author meant would be paid wrongly.
The format is documented in contracts/README.md and docs/statements.md.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trust.statements.rules import RULES, rule_for

COMPARISONS = (">=", ">", "<=", "<", "==")
PERIODS = ("month", "week")


class ContractError(ValueError):
    """A contract that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Tier:
    """A payment tier: applies when ``value <comparison> threshold`` (no condition: always)."""

    name: str
    payment: str
    comparison: str | None = None
    threshold: float | None = None

    def applies(self, value: float) -> bool:
        if self.comparison is None or self.threshold is None:
            return True
        return compares(value, self.comparison, self.threshold)


@dataclass(frozen=True)
class Target:
    id: str
    kpi: str
    scope: str
    entity: str
    comparison: str
    threshold: float
    description: str = ""
    tiers: tuple[Tier, ...] = ()

    def met(self, value: float | None) -> bool:
        return value is not None and compares(value, self.comparison, self.threshold)

    def tier(self, value: float | None) -> Tier | None:
        """The first tier that applies to ``value`` (no value: only an unconditional one)."""
        for tier in self.tiers:
            if value is None:
                if tier.comparison is None:
                    return tier
            elif tier.applies(value):
                return tier
        return None


@dataclass(frozen=True)
class Contract:
    id: str
    title: str
    city: str
    period: str  # month | week
    buyer: str
    supplier: str
    targets: tuple[Target, ...]
    file: str  # the file's name
    sha256: str  # of the file's bytes


def compares(value: float, comparison: str, threshold: float) -> bool:
    """``value <comparison> threshold``."""
    if comparison == ">=":
        return value >= threshold
    if comparison == ">":
        return value > threshold
    if comparison == "<=":
        return value <= threshold
    if comparison == "<":
        return value < threshold
    if comparison == "==":
        return value == threshold
    raise ValueError(f"unknown comparison {comparison!r}")


def load_contract(path: Path) -> Contract:
    """The contract in ``path``; :class:`ContractError` naming the key when it is not valid."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ContractError(f"{path}: cannot read the contract ({exc.strerror})") from exc
    return parse_contract(data, path.name)


def parse_contract(data: bytes, name: str = "contract.toml") -> Contract:
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ContractError(f"{name}: not valid TOML: {exc}") from exc
    top = _Keys(doc, name, "")
    period = top.text("period")
    if period not in PERIODS:
        raise ContractError(f"{name}: period: must be one of {', '.join(PERIODS)}, not {period!r}")
    targets = doc.get("targets")
    if not isinstance(targets, list) or not targets:
        raise ContractError(f"{name}: targets: at least one [[targets]] table is required")
    parsed = tuple(_target(t, name, f"targets[{i}].") for i, t in enumerate(targets))
    ids = [t.id for t in parsed]
    if len(set(ids)) != len(ids):
        raise ContractError(f"{name}: targets: ids must be unique, got {ids}")
    contract = Contract(
        id=top.text("id"),
        title=top.text("title"),
        city=top.text("city"),
        period=period,
        buyer=top.text("buyer", ""),
        supplier=top.text("supplier", ""),
        targets=parsed,
        file=name,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    top.no_others({"targets"})
    return contract


def _target(raw: Any, name: str, where: str) -> Target:
    if not isinstance(raw, dict):
        raise ContractError(f"{name}: {where.rstrip('.')}: must be a table")
    keys = _Keys(raw, name, where)
    kpi = keys.text("kpi")
    if kpi not in RULES:
        raise ContractError(
            f"{name}: {where}kpi: {kpi!r} has no period rule; contracts may use "
            f"{', '.join(sorted(RULES))}"
        )
    scope = keys.text("scope")
    try:
        rule_for(kpi, scope)
    except ValueError as exc:
        raise ContractError(f"{name}: {where}scope: {exc}") from exc
    tiers = raw.get("tiers", [])
    if not isinstance(tiers, list):
        raise ContractError(f"{name}: {where}tiers: must be an array of tables")
    target = Target(
        id=keys.text("id"),
        kpi=kpi,
        scope=scope,
        entity=keys.text("entity"),
        comparison=keys.comparison("comparison"),
        threshold=keys.number("threshold"),
        description=keys.text("description", ""),
        tiers=tuple(_tier(t, name, f"{where}tiers[{i}].") for i, t in enumerate(tiers)),
    )
    keys.no_others({"tiers"})
    return target


def _tier(raw: Any, name: str, where: str) -> Tier:
    if not isinstance(raw, dict):
        raise ContractError(f"{name}: {where.rstrip('.')}: must be a table")
    keys = _Keys(raw, name, where)
    has_condition = "comparison" in raw or "threshold" in raw
    tier = Tier(
        name=keys.text("name"),
        payment=keys.text("payment"),
        comparison=keys.comparison("comparison") if has_condition else None,
        threshold=keys.number("threshold") if has_condition else None,
    )
    keys.no_others(set())
    return tier


class _Keys:
    """Typed reads of one TOML table that remember what was read, to refuse unknown keys."""

    def __init__(self, table: dict[str, Any], name: str, where: str) -> None:
        self.table, self.name, self.where = table, name, where
        self.read: set[str] = set()

    def _fail(self, key: str, message: str) -> ContractError:
        return ContractError(f"{self.name}: {self.where}{key}: {message}")

    def text(self, key: str, default: str | None = None) -> str:
        self.read.add(key)
        value = self.table.get(key, default)
        if value is None:
            raise self._fail(key, "is required")
        if not isinstance(value, str) or (default is None and not value.strip()):
            raise self._fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def number(self, key: str) -> float:
        self.read.add(key)
        value = self.table.get(key)
        if value is None:
            raise self._fail(key, "is required")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._fail(key, f"must be a number, not {value!r}")
        return float(value)

    def comparison(self, key: str) -> str:
        value = self.text(key)
        if value not in COMPARISONS:
            raise self._fail(key, f"must be one of {' '.join(COMPARISONS)}, not {value!r}")
        return value

    def no_others(self, nested: set[str]) -> None:
        unknown = sorted(set(self.table) - self.read - nested)
        if unknown:
            raise self._fail(unknown[0], "unknown key (a typo?)")
