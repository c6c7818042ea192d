"""Optional authenticated listeners of the local broker: SCRAM-SHA-512, and SCRAM over TLS.

Off unless ``StackConfig.scram_port`` / ``tls_port`` is set, so the PLAINTEXT listener the
normal tests use is unchanged. The stack's SCRAM user and password are generated once per
data dir into ``kafka/scram-credentials.json`` (mode 0600) and created on the broker through
the admin API after every start; the TLS CA and the broker certificate are generated with
``cryptography`` when first needed (``kafka/tls/``). Nothing here logs a password.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import secrets
from pathlib import Path

from infra.config import StackConfig
from infra.errors import StackError

MECHANISM = "SCRAM-SHA-512"
USERNAME = "citystream"
_JAAS = "org.apache.kafka.common.security.scram.ScramLoginModule required;"


def _dir(cfg: StackConfig) -> Path:
    return cfg.data_dir / "kafka"


def enabled(cfg: StackConfig) -> bool:
    return cfg.scram_port is not None or cfg.tls_port is not None


def credentials(cfg: StackConfig) -> tuple[str, str]:
    """The stack's SCRAM user and password, generated on first use."""
    path = _dir(cfg) / "scram-credentials.json"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"username": USERNAME, "password": secrets.token_urlsafe(24)}, out)
    data = json.loads(path.read_text(encoding="utf-8"))
    return str(data["username"]), str(data["password"])


def ca_file(cfg: StackConfig) -> Path:
    """PEM of the CA that signed the broker's TLS certificate (clients' ssl.ca.location)."""
    return _dir(cfg) / "tls" / "ca.pem"


def broker_pem(cfg: StackConfig) -> Path:
    """Key, certificate and CA of the local brokers (Kafka's TLS listener, Mosquitto's)."""
    return _dir(cfg) / "tls" / "broker.pem"


def ensure_certificates(cfg: StackConfig) -> None:
    """A CA and a broker certificate for ``connect_host``/localhost, unless already there."""
    if ca_file(cfg).is_file() and broker_pem(cfg).is_file():
        return
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def build(subject: str, issuer: x509.Name | None, key: ec.EllipticCurvePrivateKey,
              signer: ec.EllipticCurvePrivateKey, ca: bool) -> x509.Certificate:  # fmt: skip
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(issuer or name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=825))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            hosts = {cfg.connect_host, "127.0.0.1", "localhost"}
            names: list[x509.GeneralName] = []
            for host in sorted(hosts):
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = build("citystream local CA", None, ca_key, ca_key, ca=True)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build("citystream local broker", ca_cert.subject, key, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_file(cfg).parent.mkdir(parents=True, exist_ok=True)
    broker = broker_pem(cfg)
    fd = os.open(broker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:  # Kafka's PEM keystore: key, then the chain
        out.write(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
        out.write(cert.public_bytes(pem) + ca_cert.public_bytes(pem))
    ca_file(cfg).write_bytes(ca_cert.public_bytes(pem))


def listener_properties(cfg: StackConfig) -> dict[str, str]:
    """The template fields of server.properties for the enabled listeners."""
    bind, host = cfg.bind_host, cfg.connect_host
    listeners = [
        f"PLAINTEXT://{bind}:{cfg.kafka_port}",
        f"CONTROLLER://{bind}:{cfg.controller_port}",
    ]
    advertised = [f"PLAINTEXT://{host}:{cfg.kafka_port}"]
    protocols = ["PLAINTEXT:PLAINTEXT", "CONTROLLER:PLAINTEXT"]
    extra: list[str] = []
    if cfg.scram_port is not None:
        listeners.append(f"SCRAM://{bind}:{cfg.scram_port}")
        advertised.append(f"SCRAM://{host}:{cfg.scram_port}")
        protocols.append("SCRAM:SASL_PLAINTEXT")
        extra.append(f"listener.name.scram.scram-sha-512.sasl.jaas.config={_JAAS}")
    if cfg.tls_port is not None:
        ensure_certificates(cfg)
        listeners.append(f"TLS://{bind}:{cfg.tls_port}")
        advertised.append(f"TLS://{host}:{cfg.tls_port}")
        protocols.append("TLS:SASL_SSL")
        extra += [
            f"listener.name.tls.scram-sha-512.sasl.jaas.config={_JAAS}",
            "listener.name.tls.ssl.keystore.type=PEM",
            f"listener.name.tls.ssl.keystore.location={broker_pem(cfg)}",
        ]
    if extra:
        extra.insert(0, f"sasl.enabled.mechanisms={MECHANISM}")
    return {
        "listeners": ",".join(listeners),
        "advertised_listeners": ",".join(advertised),
        "protocol_map": ",".join(protocols),
        "security_extra": "\n".join(extra),
    }


def ensure_user(cfg: StackConfig) -> None:
    """Create (or reset) the stack's SCRAM user through the PLAINTEXT listener."""
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    username, password = credentials(cfg)
    admin = AdminClient({"bootstrap.servers": cfg.bootstrap_servers, "log_level": 0})
    upsert = UserScramCredentialUpsertion(
        username,
        ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096),
        password.encode(),
        secrets.token_bytes(16),
    )
    for future in admin.alter_user_scram_credentials([upsert], request_timeout=30).values():
        try:
            future.result()
        except Exception as exc:
            raise StackError(f"kafka: could not create the SCRAM user {username!r}: {exc}") from exc
