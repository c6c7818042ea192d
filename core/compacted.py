"""Compacted topics followed into memory in full: reference data, the opt-out registry.

Here in ``core`` rather than ``streams`` because the processors (reference data,
``streams/``) and the long-running sources (the opt-out registry, ``core/privacy/optout.py``)
both follow a compacted topic, and the layers let both import ``core`` only.

Every worker needs every segment (enrichment happens wherever a reading lands), so this
reads all partitions without a consumer group instead of being a partitioned table: a
GlobalKTable. :meth:`CompactedTable.refresh` reads a topic to its end before processing
starts; :meth:`CompactedTable.follow` then applies updates as they arrive on a background
thread, so the hot path only reads a dict and never waits for Kafka.

The one synchronous step left is :meth:`CompactedTable.wait_for_keys`: a key the table has
never heard of waits once, at most ``KEY_WAIT_S``, until everything on the topic at that
moment is applied. A source that flushes its reference records before its first event (the
replays do) then has them applied before the event is processed, whatever the follower's
timing, as the synchronous re-read before the follower did; a key that is still unknown
afterwards is handled by the domain's rule (district ``unknown``) and never waits again.

Where a re-read's time went (profiled): a consumer's ListOffsets request queues on its
broker connection behind the consumer's own long-poll fetch (``fetch.wait.max.ms``, 500 ms),
and the old refresh asked for every partition in turn: 6 partitions, 3 s for no news. End
offsets now come from an admin client (its own connection, every partition in one request,
about a millisecond) and the follower's applied offsets are kept in Python.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from core.kafka import TopicUnavailable, retrying, wait_for_topic
from schemas.serde import AvroSerde, SerdeError

log = logging.getLogger(__name__)

Rejection = Callable[[bytes, str, str, str], None]  # payload, reason, detail, origin
KEY_WAIT_S = 1.0  # longest synchronous wait an unknown key may cause, once per key
MAX_WAITED_KEYS = 100_000  # beyond this many distinct unknown keys, new ones never wait
LOG_EVERY_S = 60.0  # at most one summary log line per table this often
_POLL_S = 0.2  # the follower's consume timeout: how soon it notices close()


@dataclass
class FollowStats:
    """What following a topic cost; served in the processors' /citystream/stats."""

    known: int = 0  # keys in the table now
    loaded: int = 0  # records applied by refresh() (start-up, synchronous)
    background_updates: int = 0  # records applied by the follower thread afterwards
    unknown_keys: int = 0  # distinct keys looked up before the table had them
    waits: int = 0  # synchronous catch-ups (at most one per unknown key)
    wait_ms: float = 0.0  # time spent in them, in all
    wait_timeouts: int = 0  # catch-ups that gave up at their bound
    follow_errors: int = 0  # consume errors the follower logged and went on after

    def as_dict(self, prefix: str = "reference_") -> dict[str, Any]:
        return {f"{prefix}{k}": round(v, 3) if isinstance(v, float) else v
                for k, v in asdict(self).items()}  # fmt: skip


class CompactedTable:
    """Latest value per key of a compacted topic.

    ``data`` is replaced whole (never changed in place) while the follower runs, so a
    reader that takes ``table.data`` once holds a consistent snapshot without a lock.
    ``version`` goes up with every change, for readers that act on changes (the alerts
    processor re-checks requests waiting for their category).
    """

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
        self.version = 0
        self.stats = FollowStats()
        self._consumer = Consumer(
            {
                **consumer_config,
                "group.id": f"reference-{uuid.uuid4().hex}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                # a position reset (offset out of range) must re-read, never skip to the end:
                # re-applying a record is harmless, missing one is not
                "auto.offset.reset": "earliest",
            }
        )
        self._admin = AdminClient(consumer_config)
        self._partitions: list[int] | None = None
        self._applied: dict[int, int] = {}  # partition: next offset not yet applied
        self._changed = threading.Condition()
        self._waited: set[str] = set()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._logged_at = time.monotonic()
        self._logged_stats = FollowStats()

    # --- start-up: read to the end ------------------------------------------------------

    def refresh(self, timeout: float = 30.0) -> int:
        """Read up to the current end of every partition; returns how many records changed.

        Synchronous: for start-up (before :meth:`follow`) and one-shot reads (the alerts'
        restore). While the follower runs, use :meth:`catch_up` instead.
        """
        if self._thread is not None:
            raise RuntimeError(f"reference topic {self.topic} is followed: use catch_up()")
        deadline = time.monotonic() + timeout
        ends, changed = self._end_offsets(timeout), 0
        while True:
            while not self._reached(ends):
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"reference topic {self.topic}: not read up to {ends} within "
                        f"{timeout:.0f}s (applied {self._applied})"
                    )
                changed += self._poll(_POLL_S, in_place=True)
            # Confirmed by a second look (about a millisecond): on a loaded broker a start-up
            # read once stopped three records short of what had been flushed before it.
            confirmed = self._end_offsets(timeout)
            if self._reached(confirmed):
                break
            log.info("reference %s: end offsets moved from %s to %s", self.topic, ends, confirmed)
            ends = confirmed
        self.stats.loaded += changed
        return changed

    def _ensure_assigned(self, timeout: float) -> list[int]:
        """Partitions of the topic, assigned from the beginning on the first call.

        A topic created a moment before, or a broker just restarted, is waited for (with a
        bound) instead of failing on the first UNKNOWN_TOPIC_OR_PART.
        """
        if self._partitions is None:
            meta = wait_for_topic(self._consumer, self.topic, timeout)
            self._partitions = sorted(meta.partitions)
            self._consumer.assign(
                [TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self._partitions]
            )
        return self._partitions

    def _end_offsets(self, timeout: float) -> dict[int, int]:
        """Every partition's end offset in one admin request (not behind a fetch)."""
        partitions = self._ensure_assigned(timeout)
        wanted = {TopicPartition(self.topic, p): OffsetSpec.latest() for p in partitions}

        def ask() -> dict[int, int]:
            futures = self._admin.list_offsets(wanted, request_timeout=max(0.5, timeout))
            return {tp.partition: int(f.result().offset) for tp, f in futures.items()}

        # retried: right after a broker (re)start a partition may have no leader yet
        return retrying(f"end offsets of {self.topic}", timeout, ask)

    def _reached(self, ends: dict[int, int]) -> bool:
        return all(self._applied.get(p, 0) >= end for p, end in ends.items())

    # --- following -------------------------------------------------------------------

    def follow(self) -> None:
        """Apply updates as they arrive, on a daemon thread, until :meth:`close`."""
        if self._thread is None:
            self._ensure_assigned(30.0)
            self._thread = threading.Thread(
                target=self._follow, name=f"reference {self.topic}", daemon=True
            )
            self._thread.start()

    def _follow(self) -> None:
        while not self._stopping.is_set():
            try:
                self.stats.background_updates += self._poll(_POLL_S, in_place=False)
            except Exception:  # keep the last good data and go on: logged and counted
                self.stats.follow_errors += 1
                log.exception("reference %s: following failed; retrying", self.topic)
                self._stopping.wait(1.0)
            self._maybe_log()

    def _poll(self, timeout: float, in_place: bool) -> int:
        """Apply one consume() worth of records; returns how many changed the table."""
        # consume(n, timeout) waits for n messages or the timeout: wait for the first one
        # only, then take what is already fetched, so an update is applied as it arrives.
        first = self._consumer.poll(timeout)
        if first is None:
            return 0
        messages = [first, *self._consumer.consume(num_messages=10_000, timeout=0)]
        data = self.data if in_place else dict(self.data)
        changed, reached = 0, {}
        for msg in messages:
            error = msg.error()
            partition = msg.partition() or 0
            if error is None:
                changed += self._apply(data, msg)
                reached[partition] = (msg.offset() or 0) + 1
            elif error.code() == KafkaError._PARTITION_EOF:
                reached[partition] = msg.offset() or 0
            else:
                self.stats.follow_errors += 1
                log.warning("reference %s: %s", self.topic, error.str())
        with self._changed:
            if changed:
                self.data = data  # one reference swap: readers see all of it or none
                self.version += 1
            for partition, offset in reached.items():
                self._applied[partition] = max(self._applied.get(partition, 0), offset)
            self.stats.known = len(self.data)
            self._changed.notify_all()
        return changed

    def _apply(self, data: dict[str, Any], msg: Any) -> int:
        key = (msg.key() or b"").decode("utf-8", "replace")
        value = msg.value()
        if value is None:  # tombstone: the entity was retired
            return 1 if data.pop(key, None) is not None else 0
        origin = f"{msg.topic()}/{msg.partition()}/{msg.offset()}"
        try:
            data[key] = self.to_value(self.serde.decode(value))
        except SerdeError as exc:
            self.on_reject(value, exc.reason, str(exc), origin)
            return 0
        except (KeyError, TypeError, ValueError) as exc:
            self.on_reject(value, "invalid_reference", repr(exc), origin)
            return 0
        return 1

    # --- the bounded synchronous wait ----------------------------------------------------

    def catch_up(self, timeout: float = KEY_WAIT_S) -> bool:
        """Until every record on the topic now is applied, at most ``timeout``; measured.

        With nothing new this costs one admin request (about a millisecond). Returns False
        if the bound ran out (or Kafka did not answer in time): the caller goes on.
        """
        started = time.monotonic()
        try:
            if self._thread is None:  # not followed: read synchronously
                self.refresh(timeout)
                caught_up = True
            else:
                ends = self._end_offsets(timeout)
                with self._changed:
                    left = max(0.0, timeout - (time.monotonic() - started))
                    caught_up = self._changed.wait_for(lambda: self._reached(ends), left)
        except (KafkaException, TopicUnavailable, TimeoutError) as exc:
            log.warning("reference %s: could not catch up: %s", self.topic, exc)
            caught_up = False
        self.stats.waits += 1
        self.stats.wait_ms += 1000 * (time.monotonic() - started)
        self.stats.wait_timeouts += 0 if caught_up else 1
        return caught_up

    def needs_wait(self, keys: Iterable[str]) -> bool:
        """True if a key is unknown and was never waited for (cheap: for the hot path)."""
        data, waited = self.data, self._waited
        return any(k not in data and k not in waited for k in keys)

    def wait_for_keys(self, keys: Iterable[str], timeout: float = KEY_WAIT_S) -> bool:
        """One bounded :meth:`catch_up` if a key is unknown and was never waited for.

        Each key waits at most once, so a sensor whose reference record never comes costs
        one wait, not one per reading. Returns True if there was nothing to wait for or
        the table caught up.
        """
        data = self.data
        fresh = {k for k in keys if k not in data and k not in self._waited}
        if not fresh:
            return True
        if len(self._waited) >= MAX_WAITED_KEYS:
            return False
        self._waited.update(fresh)
        self.stats.unknown_keys = len(self._waited)
        return self.catch_up(timeout)

    def _maybe_log(self) -> None:
        """A summary line when something changed, at most every LOG_EVERY_S (not per batch)."""
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S or self.stats == self._logged_stats:
            return
        s = self.stats
        log.info(
            "reference %s: %d known; %d updates applied in the background, %d unknown keys, "
            "%d waits (%.0f ms in all, %d timed out)",
            self.topic, s.known, s.background_updates, s.unknown_keys, s.waits, s.wait_ms,
            s.wait_timeouts,
        )  # fmt: skip
        self._logged_at, self._logged_stats = now, FollowStats(**asdict(s))

    def close(self) -> None:
        """Stop the follower, then close its consumer."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(10.0)
        self._consumer.close()
