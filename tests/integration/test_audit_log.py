"""The audit log on the real Kafka and registry: append, checkpoint, verify, and tampering.

Records are appended through ``core.audit_append`` (the path every audited access takes),
checkpoints signed with ``citystream audit checkpoint``. Tampered copies of the log are
built from the real records on a topic prefix of their own (the real checkpoints copied
beside them), and ``citystream audit verify`` must fail on each, naming the first bad
record: one modified, deleted, reordered and inserted record, and a truncated log.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from citystream.cli import main
from core.audit_append import (
    AUDIT_TOPIC,
    CHECKPOINT_TOPIC,
    AuditAppender,
    AuditEntry,
    AuditWriteError,
    ensure_audit_topics,
)
from core.kafka import Publisher
from core.settings import Settings
from schemas.catalog import CORE_TOPICS, load_schema
from schemas.registry import SchemaRegistry
from schemas.serde import AvroSerde
from tests.conftest import free_port
from trust.audit.checkpoint import read_checkpoints
from trust.audit.log import build_tree, read_log, read_values
from trust.audit.recorder import LogRecorder
from trust.merkle import verify_consistency, verify_inclusion

pytestmark = pytest.mark.integration

Values = list[bytes]


def cli(settings: Settings, *args: str, prefix: str | None = None) -> int:
    return main(
        [*args, "--topic-prefix", prefix or settings.topic_prefix,
         "--data-dir", str(settings.data_dir)]
    )  # fmt: skip


def entry(i: int) -> AuditEntry:
    return AuditEntry(
        role="analyst" if i % 2 else "public",
        action="read",
        endpoint="/v1/kpis/{kpi}/series",
        parameters={"kpi": "traffic.mean_speed_kmh", "page": i},
        key_id="ana-1" if i % 2 else None,
        sql=f"SELECT {i}",
        rows=i,
        at_ms=1_733_300_000_000 + i,
    )


@pytest.fixture
def signed_log(settings: Settings) -> Settings:
    """13 records under two checkpoints (10, then 13) and one record after them."""
    appender = AuditAppender(settings)
    offsets = [appender.append(entry(i)) for i in range(10)]
    assert offsets == list(range(10))  # leaf index = offset: one partition, in order
    assert cli(settings, "audit", "checkpoint") == 0
    for i in range(10, 13):
        appender.append(entry(i))
    assert cli(settings, "audit", "checkpoint") == 0
    appender.append(entry(13))
    appender.close()
    return settings


def copy_log(settings: Settings, name: str, tamper: Callable[[Values], Values]) -> str:
    """The real log, tampered, and the real checkpoints, under a prefix of their own."""
    prefix = f"{settings.topic_prefix}{name}."
    copy = settings.model_copy(update={"topic_prefix": prefix})
    ensure_audit_topics(copy)
    publisher = Publisher.create(copy)
    for topic in (AUDIT_TOPIC, CHECKPOINT_TOPIC):
        values = [v for _, v in read_values(settings, settings.topic(topic))]
        for value in tamper(values) if topic == AUDIT_TOPIC else values:
            publisher.send(copy.topic(topic), None, value, partition=0)
    publisher.flush()
    return prefix


def modified(values: Values, i: int) -> Values:
    """Record ``i`` re-encoded with another row count (a well-formed record, same schema)."""
    schema_id = struct.unpack(">I", values[i][1:5])[0]
    schema = load_schema(CORE_TOPICS[AUDIT_TOPIC].schema_file)
    serde = AvroSerde(schema, schema_id)
    record = serde.decode(values[i])
    record["rows"] = 0
    return [*values[:i], serde.encode(record), *values[i + 1 :]]


def test_the_intact_log_verifies_and_its_proofs_hold(
    signed_log: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = signed_log
    assert cli(settings, "audit", "verify") == 0
    out = capsys.readouterr().out
    assert "14 records, 2 checkpoints" in out and "13 records covered" in out
    assert "OK" in out and "1 newer records not yet checkpointed" in out
    records = read_log(settings)
    assert [r.record["rows"] for r in records if r.record] == list(range(14))
    tree = build_tree(records)
    first, second = read_checkpoints(settings)
    assert (first.tree_size, second.tree_size) == (10, 13)
    assert verify_consistency(
        10, 13, first.root_hash, second.root_hash, tree.consistency_proof(10, 13)
    )
    for leaf in range(13):
        path = tree.inclusion_proof(leaf, 13)
        assert verify_inclusion(leaf, 13, tree.hashes[leaf], path, second.root_hash)
    # the 14th record gets a checkpoint; then nothing is new, and nothing is signed twice
    assert cli(settings, "audit", "checkpoint") == 0
    assert [c.tree_size for c in read_checkpoints(settings)] == [10, 13, 14]
    assert cli(settings, "audit", "checkpoint") == 0
    assert [c.tree_size for c in read_checkpoints(settings)] == [10, 13, 14]
    assert cli(settings, "audit", "verify") == 0


@pytest.mark.parametrize(
    ("name", "tamper", "expected"),
    [
        ("modify", lambda v: modified(v, 4), "position 4 (offset 4, "),
        ("delete", lambda v: [*v[:4], *v[5:]], "position 4 (offset 4, "),
        ("reorder", lambda v: [*v[:4], v[5], v[4], *v[6:]], "position 4 (offset 4, "),
        ("insert", lambda v: [*v[:4], v[2], *v[4:]], "position 4 (offset 4, "),
        ("truncate", lambda v: v[:8], "position 8: the log ends after 8 records"),
    ],
)
def test_tampering_is_detected_and_the_first_bad_record_named(
    signed_log: Settings,
    capsys: pytest.CaptureFixture[str],
    name: str,
    tamper: Callable[[Values], Values],
    expected: str,
) -> None:
    prefix = copy_log(signed_log, name, tamper)
    capsys.readouterr()
    assert cli(signed_log, "audit", "verify", prefix=prefix) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("first bad record:")]
    assert len(bad) == 1 and expected in bad[0], out
    words = {
        "modify": "(modified)",
        "delete": "(deleted)",
        "reorder": "(reordered)",
        "insert": "(inserted)",
        "truncate": "(truncated)",
    }
    assert words[name] in bad[0]
    assert "FAIL checkpoint" in out
    # the checkpointer will not sign over the tampered log either
    assert cli(signed_log, "audit", "checkpoint", prefix=prefix) == 2


def test_a_forged_checkpoint_fails_its_signature(
    signed_log: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = signed_log
    prefix = f"{settings.topic_prefix}forged."
    copy = settings.model_copy(update={"topic_prefix": prefix})
    ensure_audit_topics(copy)
    registry = SchemaRegistry(copy.registry_config())
    topic = copy.topic(CHECKPOINT_TOPIC)
    schema = load_schema(CORE_TOPICS[CHECKPOINT_TOPIC].schema_file)
    serde = AvroSerde(schema, registry.register(topic, schema))
    publisher = Publisher.create(copy)
    for _, value in read_values(settings, settings.topic(AUDIT_TOPIC)):
        publisher.send(copy.topic(AUDIT_TOPIC), None, value, partition=0)
    for _, value in read_values(settings, settings.topic(CHECKPOINT_TOPIC)):
        record = serde.decode(value)
        record["tree_size"] = 14  # claims the unsigned record too, with the old signature
        publisher.send(topic, None, serde.encode(record), partition=0)
    publisher.flush()
    capsys.readouterr()
    assert cli(settings, "audit", "verify", prefix=prefix) == 1
    assert "signature does not verify with the trusted key" in capsys.readouterr().out


def test_verify_trusts_only_the_given_key(
    signed_log: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = signed_log.model_copy(update={"data_dir": tmp_path / "other"})
    assert cli(other, "audit", "public-key") == 0
    stranger = capsys.readouterr().out.strip()
    assert cli(signed_log, "audit", "verify", "--public-key", stranger) == 1
    assert "signature does not verify" in capsys.readouterr().out


def test_a_failed_audit_write_raises(settings: Settings) -> None:
    """Nothing listens on the bootstrap port: the write is not acknowledged and raises, so
    the audited request fails (the API answers 503, tests/integration/test_audit_api.py)."""
    dead = settings.model_copy(
        update={"kafka_bootstrap_servers": f"127.0.0.1:{free_port()}", "audit_write_timeout_s": 1}
    )
    appender = AuditAppender(dead, timeout_s=1.0)
    with pytest.raises(AuditWriteError):
        appender.append(entry(0))


def test_a_role_change_is_audited(settings: Settings) -> None:
    from datetime import UTC, datetime

    from api.context import AccessRecord

    def access(role: str) -> AccessRecord:
        return AccessRecord("ops-7", role, "/v1/kpis", {}, None, 3, datetime.now(UTC))

    recorder = LogRecorder(settings)
    recorder.record(access("analyst"))
    recorder.record(access("analyst"))
    recorder.close()
    # a new process (the API restarted with the key's role changed) reads the last role
    later = LogRecorder(settings)
    later.record(access("operator"))
    later.close()
    records = [r.record for r in read_log(settings) if r.record]
    assert [(r["action"], r["role"]) for r in records] == [
        ("read", "analyst"),
        ("read", "analyst"),
        ("role_change", "operator"),
        ("read", "operator"),
    ]
    assert records[2]["parameters"] == '{"from":"analyst","to":"operator"}'
    assert records[2]["key_id"] == "ops-7"


def test_serve_signs_checkpoints_at_its_interval(settings: Settings) -> None:
    """The timer citystream serve runs: a checkpoint once the log grew, none while it does
    not (no duplicate sizes), stopped cleanly."""
    import time

    from trust.audit.checkpoint import CheckpointTimer

    appender = AuditAppender(settings)
    for i in range(3):
        appender.append(entry(i))
    timer = CheckpointTimer(settings.model_copy(update={"audit_checkpoint_interval_s": 0.3}))
    timer.start()
    try:
        deadline = time.monotonic() + 60
        while not read_checkpoints(settings) and time.monotonic() < deadline:
            time.sleep(0.3)
        appender.append(entry(3))
        while [c.tree_size for c in read_checkpoints(settings)][-1:] != [4]:
            assert time.monotonic() < deadline, "no checkpoint of the 4th record"
            time.sleep(0.3)
    finally:
        timer.stop()
        appender.close()
    assert [c.tree_size for c in read_checkpoints(settings)] == [3, 4]
    assert timer.failures == 0
