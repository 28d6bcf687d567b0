"""The Kafka security settings reach every client: librdkafka's options and Faust's credentials."""

from __future__ import annotations

from genealogy.settings import Settings
from genealogy.streams.app import broker_credentials


def test_plaintext_is_just_the_bootstrap_servers():
    assert Settings(bootstrap_servers="k:9092").kafka_config == {"bootstrap.servers": "k:9092"}
    assert broker_credentials(Settings()) is None


def test_sasl_ssl_options(tmp_path):
    s = Settings(bootstrap_servers="k:9093", kafka_security_protocol="SASL_SSL", kafka_sasl_mechanism="SCRAM-SHA-256",
                 kafka_sasl_username="genealogy", kafka_sasl_password="pw", kafka_ssl_ca_location="/etc/ca.pem")
    assert s.kafka_config == {"bootstrap.servers": "k:9093", "security.protocol": "sasl_ssl", "sasl.mechanism": "SCRAM-SHA-256",
                              "sasl.username": "genealogy", "sasl.password": "pw", "ssl.ca.location": "/etc/ca.pem"}
    assert "pw" not in repr(s)
    env = s.child_env()
    assert env["GENEALOGY_KAFKA_SASL_PASSWORD"] == "pw"  # workers started by the stack need it too


def test_faust_gets_the_same_security():
    sasl = broker_credentials(Settings(kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_mechanism="PLAIN",
                                       kafka_sasl_username="u", kafka_sasl_password="p"))
    assert sasl.protocol.value == "SASL_PLAINTEXT" and sasl.mechanism.value == "PLAIN" and sasl.username == "u"
    tls = broker_credentials(Settings(kafka_security_protocol="SSL"))
    assert tls.protocol.value == "SSL" and tls.context is not None


def test_every_client_uses_the_security_options():
    """No Kafka client is built from the bootstrap servers alone (it would ignore TLS and SASL)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    for folder in ("genealogy", "producers", "sinks", "streams"):
        for path in (root / folder).rglob("*.py"):
            assert '"bootstrap.servers": settings.kafka_bootstrap' not in path.read_text(), path
