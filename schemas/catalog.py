"""What a topic is (its schema, key and retention), and the core's own topics.

The whole catalogue is the families registry's (``families/registry.py`` TOPICS): every
KPI family declares its topics with the family, and the registry adds the core's
(:data:`CORE_TOPICS`) to them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

AVRO_DIR = Path(__file__).parent / "avro"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    schema_file: str
    key: str
    doc: str
    compacted: bool = False
    internal: bool = False
    single_partition: bool = False
    retention_ms: int | None = None  # shorter than the contract's retention (transport only)
    # Holds personal data (docs/privacy.md#checks): for the city's own services, not the
    # public; an internal topic (processor and sink plumbing) is never public either.
    restricted: bool = False

    @property
    def public(self) -> bool:
        """Whether anyone may subscribe: neither plumbing nor restricted."""
        return not (self.internal or self.restricted)


# The topics of the core rather than of a KPI family: every processor writes KPIs and dead
# letters, the sink reads KPI batches, the alerts processor writes alerts. A family's topics
# are declared with the family (families/), and the registry adds these to them.
CORE_TOPICS: dict[str, TopicSpec] = {
    spec.name: spec
    for spec in (
        TopicSpec(
            "city.kpi.v1",
            "kpi_record.avsc",
            key="kpi|scope|entity_id|window_start",
            doc="KPI values per window; a higher revision replaces a lower one",
            retention_ms=7 * 86_400_000,  # a week's buffer: ClickHouse keeps the values
        ),
        TopicSpec(
            "city.kpi.batches.v1",
            "kpi_batch.avsc",
            key="producing stage and partition",
            doc="Sink input: the same KPI records, many per message, column-wise",
            internal=True,
        ),
        TopicSpec(
            "city.privacy.optouts.v1",
            "privacy_optout.avsc",
            key="the identifier's pseudonym under the active key",
            doc="Opt-out registry: identifiers (as pseudonyms) whose observations sources drop "
            "at ingest; compacted (docs/rights.md)",
            compacted=True,
            internal=True,
        ),
        TopicSpec(
            "city.alerts.v1",
            "alert.avsc",
            key="type|entity_id",
            doc="Alerts for downstream services: one message per raise or clear; compacted, "
            "so the latest transition per type and entity is the current alert state",
            compacted=True,
        ),
        TopicSpec(
            "city.dlq.v1",
            "dead_letter.avsc",
            key="reason",
            doc="Dead letters: rejected input with reason, origin and raw payload",
            restricted=True,
        ),
        TopicSpec(
            "city.audit.v1",
            "audit_record.avsc",
            key="none (one partition: the order is the audit log's order)",
            doc="Audit log: one record per data access or governance change; the leaves of an "
            "append-only Merkle log (docs/audit.md), kept forever",
            single_partition=True,
            restricted=True,
            retention_ms=-1,
        ),
        TopicSpec(
            "city.audit.checkpoints.v1",
            "audit_checkpoint.avsc",
            key="none (one partition)",
            doc="Signed checkpoints of the audit log: tree size, root hash, time, Ed25519; kept "
            "forever",
            single_partition=True,
            retention_ms=-1,
        ),
    )
}


@cache
def load_schema(schema_file: str) -> dict[str, Any]:
    """The schema as JSON; parsed once per process."""
    result: dict[str, Any] = json.loads((AVRO_DIR / schema_file).read_text())
    return result
