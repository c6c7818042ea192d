"""Example subscriber: print citystream's KPI records (and alerts) as JSON lines.

It uses only confluent-kafka, as any downstream service would: a DeserializingConsumer
whose AvroDeserializer looks up each message's writer schema in the registry by the id in
its Confluent framing. Nothing from citystream is imported.

    python examples/kpi_consumer.py --bootstrap-servers 127.0.0.1:9092 \
        --registry-url http://127.0.0.1:8081/apis/ccompat/v7 --group my-service \
        --topic city.kpi.v1 --topic city.alerts.v1 --from-beginning

Topics that do not exist (yet) are reported on stderr and skipped; a message that cannot
be decoded is reported with its topic, partition and offset, and reading goes on.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import datetime
from typing import Any

from confluent_kafka import DeserializingConsumer, KafkaError
from confluent_kafka.error import ConsumeError, KeyDeserializationError, ValueDeserializationError
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--registry-url", default="http://127.0.0.1:8081/apis/ccompat/v7")
    parser.add_argument("--group", default="kpi-consumer-example", help="consumer group id")
    parser.add_argument(
        "--topic", action="append", dest="topics", help="repeatable (default: city.kpi.v1)"
    )
    parser.add_argument("--from-beginning", action="store_true", help="if the group is new")
    parser.add_argument("--max-records", type=int, help="stop after this many records")
    parser.add_argument("--idle-timeout", type=float, help="stop after this long without one")
    return parser.parse_args()


def as_json(value: Any) -> Any:
    """Avro timestamps arrive as datetimes and bytes fields as bytes."""
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def existing_topics(consumer: DeserializingConsumer, wanted: list[str]) -> list[str]:
    known = consumer.list_topics(timeout=10).topics
    for topic in wanted:
        if topic not in known:
            print(f"topic {topic} does not exist (yet): skipped", file=sys.stderr)
    return [topic for topic in wanted if topic in known]


def report(exc: ConsumeError) -> None:
    """An undecodable message is skipped with where it is; a fatal client error ends the run."""
    bad = exc.kafka_message
    where = f"{bad.topic()}/{bad.partition()}/{bad.offset()}" if bad is not None else "?"
    if isinstance(exc, KeyDeserializationError | ValueDeserializationError):
        print(f"skipped undecodable message {where}: {exc}", file=sys.stderr)
    elif isinstance(exc.args[0], KafkaError) and exc.args[0].fatal():
        raise exc
    else:
        print(f"consumer error at {where}: {exc}", file=sys.stderr)


def main() -> int:
    args = parse_args()
    registry = SchemaRegistryClient({"url": args.registry_url})
    consumer = DeserializingConsumer(
        {
            "bootstrap.servers": args.bootstrap_servers,
            "group.id": args.group,
            "auto.offset.reset": "earliest" if args.from_beginning else "latest",
            "key.deserializer": StringDeserializer("utf_8"),
            "value.deserializer": AvroDeserializer(registry),
        }
    )
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    try:
        topics = existing_topics(consumer, args.topics or ["city.kpi.v1"])
        if not topics:
            print("none of the topics exists", file=sys.stderr)
            return 1
        consumer.subscribe(topics)
        printed, last_record = 0, time.monotonic()
        while not stop and (args.max_records is None or printed < args.max_records):
            if args.idle_timeout and time.monotonic() - last_record > args.idle_timeout:
                break
            try:
                msg = consumer.poll(1.0)
            except ConsumeError as exc:
                report(exc)
                continue
            if msg is None:
                continue
            record = {"topic": msg.topic(), "key": msg.key(), "value": msg.value()}
            print(json.dumps(record, default=as_json), flush=True)
            printed, last_record = printed + 1, time.monotonic()
    finally:
        consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
