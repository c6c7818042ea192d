"""Reference data read from compacted topics into memory, on every worker in full.

Every worker needs every segment (enrichment happens wherever a reading lands), so this
reads all partitions without a consumer group instead of being a partitioned table.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from core.kafka import retrying
from schemas.serde import AvroSerde, SerdeError

log = logging.getLogger(__name__)

Rejection = Callable[[bytes, str, str, str], None]  # payload, reason, detail, origin


class CompactedTable:
    """Latest value per key of a compacted topic; ``refresh`` reads what is new."""

    def __init__(
        self,
        consumer_config: dict[str, Any],
        topic: str,
        serde: AvroSerde,
        to_value: Callable[[dict[str, Any]], Any],
        on_reject: Rejection,
    ) -> None:
        self.topic = topic
        self.serde = serde
        self.to_value = to_value
        self.on_reject = on_reject
        self.data: dict[str, Any] = {}
        self._consumer = Consumer(
            {
                **consumer_config,
                "group.id": f"reference-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )
        self._assigned = False

    def _assign(self, timeout: float) -> list[TopicPartition]:
        meta = self._consumer.list_topics(self.topic, timeout=timeout).topics[self.topic]
        if meta.error is not None:
            raise RuntimeError(f"reference topic {self.topic}: {meta.error}")
        partitions = [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in meta.partitions]
        self._consumer.assign(partitions)
        self._assigned = True
        return partitions

    def refresh(self, timeout: float = 30.0) -> int:
        """Read up to the current end of every partition; returns how many records changed."""
        if not self._assigned:
            self._assign(timeout)
        ends = {}
        for tp in self._consumer.assignment():
            # retried: right after a broker (re)start a partition may have no leader yet
            _, high = retrying(
                f"end offset of {self.topic}", timeout, partial(self._watermarks, tp, timeout)
            )
            ends[tp.partition] = high
        changed = 0
        while any(self._position(p) < high for p, high in ends.items()):
            for msg in self._consumer.consume(num_messages=10_000, timeout=0.1):
                if msg.error() is None:
                    changed += self._apply(msg)
        return changed

    def _watermarks(self, tp: TopicPartition, timeout: float) -> tuple[int, int]:
        low, high = self._consumer.get_watermark_offsets(tp, timeout=timeout)
        return int(low), int(high)

    def _position(self, partition: int) -> int:
        (tp,) = self._consumer.position([TopicPartition(self.topic, partition)])
        return int(tp.offset) if tp.offset >= 0 else 0

    def _apply(self, msg: Any) -> int:
        key = (msg.key() or b"").decode("utf-8", "replace")
        value = msg.value()
        if value is None:  # tombstone: the entity was retired
            return 1 if self.data.pop(key, None) is not None else 0
        origin = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        try:
            self.data[key] = self.to_value(self.serde.decode(value))
        except SerdeError as exc:
            self.on_reject(value, exc.reason, str(exc), origin)
            return 0
        except (KeyError, TypeError, ValueError) as exc:
            self.on_reject(value, "invalid_reference", repr(exc), origin)
            return 0
        return 1

    def close(self) -> None:
        self._consumer.close()
