"""OPC UA ingest security on a real asyncua server that offers only Basic256Sha256
SignAndEncrypt and a user/password identity: certificates generated here (cryptography),
the source in-process, real Kafka.

A trusted server and the right password deliver readings; an untrusted server
certificate and a wrong password are refused at once, with errors that say why.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from asyncua import ua
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from connectors.sources.opcua import (
    AccessRefusedError,
    OpcUaSource,
    UntrustedServerError,
    fingerprint,
    load_certificate,
    load_config,
    read_password,
)
from core.settings import Settings
from families.registry import ensure_topics, register_schemas
from tests.conftest import free_port
from tests.integration.test_ingest_http import read_topic
from tests.integration.test_ingest_opcua import (
    T0,
    PlantServer,
    Users,
    Write,
    meter_node,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.integration
METERS = 5
CLIENT_URI = "urn:citystream:opcua-ingest"


def certificate(directory: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed OPC UA application certificate (DER) and its key (PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.der", directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.DER))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    server_cert, server_key = certificate(d, "plant", "urn:citystream:test-plant", True)
    other_cert, _ = certificate(d, "impostor", "urn:citystream:impostor", True)
    client_cert, client_key = certificate(d, "ingest", CLIENT_URI, False)
    (d / "password").write_text("s3cret-meter-reader\n")
    (d / "wrong-password").write_text("guess\n")
    return {
        "server_cert": server_cert,
        "server_key": server_key,
        "other_cert": other_cert,
        "client_cert": client_cert,
        "client_key": client_key,
        "password": d / "password",
        "wrong_password": d / "wrong-password",
    }


@pytest.fixture(scope="module")
def plant(pki: dict[str, Path]) -> Iterator[PlantServer]:
    server = PlantServer(
        free_port(),
        meters=METERS,
        security=(pki["server_cert"], pki["server_key"]),
        users=Users("meter-reader", "s3cret-meter-reader"),
    )
    server.start([Write(meter_node(i), float(i), T0) for i in range(METERS)])
    yield server
    server.stop()


def nodes() -> str:
    return "".join(
        f'[[nodes]]\nnode_id = "{meter_node(i)}"\ndomain = "energy"\nsensor = "meter-{i:03}"\n'
        f'field = "kwh"\nconstants = {{ district = "8000" }}\n\n'
        for i in range(METERS)
    )


def secure_config(
    path: Path, plant: PlantServer, pki: dict[str, Path], trusted: str, password: str
) -> Path:
    extra = f"""
security = "Basic256Sha256_SignAndEncrypt"
certificate = "{pki["client_cert"]}"
private_key = "{pki["client_key"]}"
trusted_server_certificates = ["{pki[trusted]}"]
application_uri = "{CLIENT_URI}"
username = "meter-reader"
password_file = "{pki[password]}"
"""
    write_config(path, plant.endpoint, extra, nodes())
    return path


def source_for(settings: Settings, config_path: Path) -> OpcUaSource:
    ensure_topics(settings)
    register_schemas(settings)
    config = load_config(config_path)
    source = OpcUaSource(settings, config, read_password(config.opcua))
    source.setup()
    return source


def test_sign_and_encrypt_with_user_and_password_delivers(
    settings: Settings, plant: PlantServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    source = source_for(
        settings, secure_config(tmp_path / "ok.toml", plant, pki, "server_cert", "password")
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            source.run()
        except BaseException as exc:  # handed to the test thread
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        wait_until(lambda: source.counters.accepted >= METERS or bool(errors), lambda: "no data")
        assert not errors, errors
        plant.write([Write(meter_node(0), 7.5, T0 + dt.timedelta(minutes=15))])
        wait_until(lambda: source.counters.accepted == METERS + 1, lambda: "no data change")
    finally:
        source.stop()
        thread.join(30)
    assert not errors, errors
    records = read_topic(settings, "city.energy.v1")
    assert sorted(r["kwh"] for r in records) == [*(float(i) for i in range(METERS)), 7.5]
    assert source.connects == 1


def test_an_untrusted_server_certificate_is_refused(
    settings: Settings, plant: PlantServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    source = source_for(
        settings, secure_config(tmp_path / "bad.toml", plant, pki, "other_cert", "password")
    )
    with pytest.raises(UntrustedServerError) as refused:
        source.run()
    message = str(refused.value)
    assert "not trusted" in message and "CN=plant" in message
    assert fingerprint(load_certificate(pki["server_cert"])) in message
    assert source.connects == 0 and source.counters.accepted == 0


def test_a_wrong_password_is_refused(
    settings: Settings, plant: PlantServer, pki: dict[str, Path], tmp_path: Path
) -> None:
    source = source_for(
        settings,
        secure_config(tmp_path / "pw.toml", plant, pki, "server_cert", "wrong_password"),
    )
    with pytest.raises(AccessRefusedError) as refused:
        source.run()
    assert "refused the connection" in str(refused.value)
    assert "guess" not in str(refused.value)  # the password is never shown
    assert source.counters.accepted == 0


def test_the_security_mode_is_checked_when_the_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "incomplete.toml"
    path.write_text('[opcua]\nendpoint = "opc.tcp://127.0.0.1:4840/"\n', encoding="utf-8")
    with pytest.raises(ValueError, match="needs certificate, private_key"):
        load_config(path)
    assert ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt  # the one mode we speak
