"""Waiting for Kafka and the schema registry at process start, loudly.

A service started before its dependencies (a pod beside a restarting broker, a registry
still booting) should say what it waits for and keep trying for a while, not crash-loop
with a stack trace; and give up with a clear message when the wait is over.
"""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient

from core.settings import Settings

log = logging.getLogger(__name__)


class ServiceUnavailable(RuntimeError):
    pass


class CredentialsRejected(ServiceUnavailable):
    """The service answered and refused our credentials: waiting will not help."""


def _kafka_reachable(settings: Settings) -> None:
    refused: list[KafkaError] = []

    def on_error(error: KafkaError) -> None:
        if error.code() == KafkaError._AUTHENTICATION:
            refused.append(error)

    admin = AdminClient(settings.kafka_config(error_cb=on_error, log_level=0))
    try:
        admin.list_topics(timeout=5)
    except KafkaException:
        admin.poll(0)  # serves the error callbacks
        if refused:
            raise CredentialsRejected(
                f"Kafka at {settings.kafka_bootstrap_servers} refused the "
                f"{settings.kafka_sasl_mechanism or 'SASL'} login of user "
                f"{settings.kafka_sasl_username!r} ({refused[0].str()}). Check "
                "CITYSTREAM_KAFKA_SASL_USERNAME / CITYSTREAM_KAFKA_SASL_PASSWORD."
            ) from None
        raise


def _registry_reachable(settings: Settings) -> None:
    request = urllib.request.Request(f"{settings.schema_registry_url}/subjects")
    if settings.schema_registry_basic_auth:
        import base64

        token = base64.b64encode(settings.schema_registry_basic_auth.get_secret_value().encode())
        request.add_header("Authorization", f"Basic {token.decode()}")
    with urllib.request.urlopen(request, timeout=5) as response:
        response.read()


def _wait(name: str, where: str, probe: Callable[[], None], deadline: float) -> None:
    delay = 0.5
    while True:
        try:
            probe()
            return
        except CredentialsRejected:
            raise
        except Exception as exc:  # any failure to reach it means: not there yet
            left = deadline - time.monotonic()
            if left <= 0:
                raise ServiceUnavailable(
                    f"{name} at {where} is not reachable ({exc}); gave up after waiting. "
                    f"Check the address, or raise CITYSTREAM_STARTUP_TIMEOUT_S."
                ) from exc
            log.warning("waiting for %s at %s: %s; retrying in %.1fs (%.0fs left)",
                        name, where, exc, delay, left)  # fmt: skip
            time.sleep(min(delay, max(left, 0.1)))
            delay = min(delay * 2, 10.0)


def wait_for_services(settings: Settings, registry: bool = True) -> None:
    """Block until Kafka (and the registry) answer, or raise ServiceUnavailable."""
    deadline = time.monotonic() + settings.startup_timeout_s
    _wait("Kafka", settings.kafka_bootstrap_servers, lambda: _kafka_reachable(settings), deadline)
    if registry:
        _wait("the schema registry", settings.schema_registry_url,
              lambda: _registry_reachable(settings), deadline)  # fmt: skip
