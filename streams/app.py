"""Builds the one Faust app. Called by the `citystream process` entry point, never at import."""

from __future__ import annotations

import ssl
from pathlib import Path

import faust
from faust.types.auth import CredentialsT

from core.settings import Settings


def kafka_credentials(settings: Settings) -> CredentialsT | None:
    """The same SASL user and TLS trust as every librdkafka client gets from the settings.

    Faust (aiokafka) speaks SASL_SSL when given an ssl context, SASL_PLAINTEXT without.
    """
    context = None
    if settings.kafka_security_protocol.upper() in ("SSL", "SASL_SSL"):
        ca = settings.kafka_ssl_ca_file
        context = ssl.create_default_context(cafile=str(ca) if ca else None)
    if settings.kafka_sasl_mechanism:
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username,
            password=password.get_secret_value() if password else None,
            ssl_context=context,
            mechanism=settings.kafka_sasl_mechanism,
        )
    return faust.SSLCredentials(context) if context else None


def _faust_directory(settings: Settings, app_id: str) -> Path:
    """Faust's own state directory, under the data directory (Faust's default,
    ``<app id>-data`` in the working directory, left one directory per run wherever the
    command was started). Faust creates only the last level, so the parent is made here."""
    parent = settings.data_dir / "faust"
    parent.mkdir(parents=True, exist_ok=True)
    return parent / settings.group(app_id)


def create_app(settings: Settings, app_id: str) -> faust.App:
    """A Faust app whose consumer group is ``app_id`` (after the topic prefix)."""
    credentials = kafka_credentials(settings)
    brokers = ";".join(f"kafka://{b}" for b in settings.kafka_bootstrap_servers.split(","))
    return faust.App(
        settings.group(app_id),
        broker=brokers,
        broker_credentials=credentials,
        store="memory://",
        datadir=str(_faust_directory(settings, app_id)),
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        producer_acks=-1,
        # Input is acked only when its windows are final (see streams/traffic/agents.py);
        # waiting for "all acked" on a rebalance would therefore wait for ever.
        stream_wait_empty=False,
        broker_session_timeout=settings.processor_session_timeout_s,
        broker_heartbeat_interval=settings.processor_session_timeout_s / 4,
        web_host=settings.processor_web_host,
        web_port=settings.processor_web_port,
        web_in_thread=False,
    )
