"""One settings object for every process of the pipeline.

Every field can be set by an environment variable ``GENEALOGY_<FIELD>`` (for
example ``GENEALOGY_BOOTSTRAP_SERVERS``); CLI flags override the environment.
Child processes of the embedded stack receive the resolved settings through
the same variables, so a worker started by hand behaves like one started by
``genealogy up``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GENEALOGY_", extra="ignore")

    data_dir: Path = Field(default=Path("genealogy-data"), description="Embedded stack state: ClickHouse files, logs, pid/port file")

    # Kafka. Empty bootstrap_servers means: use the embedded Tansu broker on broker_port.
    bootstrap_servers: str = ""
    broker_port: int = 19092
    # Where the embedded broker keeps its log: "objectstore" = Tansu's s3:// engine over the local
    # durable object store (genealogy.objectstore) under data_dir/broker, so topics, offsets and the
    # join state's changelogs survive any stop; "memory" = Tansu's memory:// (lost at every stop).
    broker_storage: Literal["objectstore", "memory"] = "objectstore"
    objectstore_port: int = Field(default=0, description="Loopback port of the broker's object store; 0 = a free one")
    broker_trim_s: float = Field(default=30.0, description=(
        "How often the embedded stack deletes the durable broker's record batches that every consumer is past "
        "(genealogy.retention); 0 = never, and the broker's log and fetch cost grow with the whole history"))
    broker_trim_min_batches: int = Field(default=200, description="A partition is trimmed once this many of its batches can go")
    changelog_checkpoint_records: int = Field(default=20_000, description=(
        "A worker re-sends its join state of a partition to the changelog once the table wrote this many records "
        "there (and at least as many as it has keys) since the last time, so the changelog before it can be trimmed "
        "(genealogy.retention); 0 = never"))
    broker_fsync: bool = Field(default=True, description=(
        "The object store fsyncs each object (and its directory) before acknowledging it: a power cut loses "
        "nothing acknowledged. Off: a kill -9 still loses nothing (the page cache survives it), a power cut may"))
    # Kafka security (docs/security.md#kafka): the librdkafka options every client of the pipeline gets
    # (producers, the sink, admin and offset readers), and the same for Faust's aiokafka clients.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = Field(default="", repr=False)
    kafka_ssl_ca_location: str = Field(default="", description="CA bundle (PEM) that signed the brokers' certificates")
    kafka_ssl_certificate_location: str = Field(default="", description="Client certificate (PEM), for mutual TLS")
    kafka_ssl_key_location: str = Field(default="", description="Client key (PEM), for mutual TLS")
    kafka_ssl_key_password: str = Field(default="", repr=False)
    partitions: int = 4
    topic_capture: str = "genealogy.capture"
    topic_edges: str = "genealogy.edges"
    topic_dead_letters: str = "genealogy.dead-letters"
    # Every captured EPCIS event as its JSON (key: event id), for the EPCIS query interface (GET /events).
    topic_epcis: str = "genealogy.epcis"
    schema_registry_url: str = Field(default="", description="Confluent Schema Registry; empty = the repository's own schemas with fixed ids")
    # Tansu 0.6, the embedded broker, differs from Kafka in two ways that break Faust's table
    # hand-over between workers, so workers on it are configured around them:
    # * it reports a partition's high watermark as the base offset of its last record batch plus
    #   one; Faust restores a table by reading its changelog up to that mark, so workers read the
    #   changelogs' true end from the log instead (streams.tansu).
    # * a worker learns of a rebalance only from its next heartbeat, and Tansu hands the partition
    #   to the newcomer meanwhile, so both process it for up to one heartbeat interval. Heartbeats
    #   every 0.3 s shrink that window. (The reel changes tests/test_faults.py's join/leave run
    #   used to lose came mostly from Faust skipping messages around rebalances: streams.progress.)
    # None = on for the embedded broker, off for an external one (assumed Kafka).
    tansu_broker: bool | None = None

    # Streaming join.
    app_id: str = "genealogy"
    workers: int = 1
    grace_ms: int = Field(default=10_000, description="How long the join waits for out-of-order material events")
    retention_ms: int = Field(default=6 * 3600 * 1000, description=(
        "Material history kept behind the watermark for late unit completions. Must also cover, in event time, what a "
        "restarted worker replays (its group's uncommitted tail), or replayed completions are dead-lettered as late"))
    idle_flush_s: float = Field(default=2.0, description="Wall-clock idle time after which a quiet station's pending completions are resolved")
    session_timeout_s: float = Field(default=10.0, description="A worker silent this long leaves the group and its partitions move")
    worker_stall_check_s: float = Field(default=5.0, description=(
        "A worker that got nothing from an assigned capture partition this long checks it against the "
        "partition's end, and reads what its consumer skipped (see streams.progress)"))

    fetch_wait_ms: int = Field(default=100, description=(
        "Longest a consumer's fetch waits for data (workers and sink). Kafka answers as soon as data is there; "
        "Tansu waits this long, and Faust's own 1,500 ms put seconds on the way from capture to ClickHouse"))

    # ClickHouse. Empty dsn means: embedded chdb engine under data_dir/clickhouse.
    clickhouse_dsn: str = ""
    sink_group: str = "genealogy-sink"
    sink_batch_rows: int = 50_000
    sink_flush_s: float = 0.5
    late_correction_s: float = Field(default=10.0, description=(
        "The service corrects what late events changed (genealogy reprocess) this often; 0 = only by hand"))

    # Query service.
    http_host: str = "127.0.0.1"
    http_port: int = 8642
    # Request bodies larger than these are answered 413; JSON nested deeper than json_max_depth 400.
    sql_max_body_bytes: int = Field(default=64 * 1024, description="Largest POST /sql body")
    capture_max_body_bytes: int = Field(default=8 * 1024 * 1024, description="Largest POST /capture and /events body")
    json_max_depth: int = Field(default=64, description="Deepest JSON nesting a request body may have")

    # Analyst SQL (POST /sql, genealogy sql): its own ClickHouse sessions, capped (docs/security.md).
    analyst_dsn: str = Field(default="", description=(
        "ClickHouse for analyst queries, e.g. the read-only `analyst` user of deploy/clickhouse-analyst.sql; "
        "empty = the store's (embedded: sessions of their own on the same engine)"))
    analyst_sessions: int = Field(default=2, description="Analyst queries that can run at once")
    analyst_max_execution_s: float = Field(default=10.0, description="An analyst query is stopped after this long")
    analyst_max_memory_bytes: int = 1 << 30
    analyst_max_result_rows: int = 100_000
    analyst_max_result_bytes: int = 64 << 20
    analyst_max_rows_to_read: int = Field(default=0, description="Rows an analyst query may read; 0 = no cap")
    analyst_max_threads: int = Field(default=1, description="Threads an analyst query may use (the rest stay with recall and the sink)")

    # The EPCIS query interface (GET /events ...): its own ClickHouse sessions, capped by ClickHouse
    # (sinks.epcis_query, docs/security.md). A query over a cap answers 413 (QueryTooLarge/-Complex).
    epcis_dsn: str = Field(default="", description=(
        "ClickHouse for EPCIS queries, e.g. the read-only `epcis` user of deploy/clickhouse-epcis.sql (its "
        "settings profile holds the caps); empty = the store's (embedded: sessions of their own, readonly, capped)"))
    epcis_sessions: int = Field(default=2, description="EPCIS queries that can run at once")
    epcis_max_execution_s: float = Field(default=10.0, description="An EPCIS query is stopped after this long")
    epcis_max_memory_bytes: int = Field(default=1 << 30, description="Memory one EPCIS query may use")
    epcis_max_result_rows: int = Field(default=10_000, description="Rows one EPCIS query may answer (a page is at most 1,001)")
    epcis_max_result_bytes: int = Field(default=256 << 20, description="Bytes one EPCIS query may answer")
    epcis_max_rows_to_read: int = Field(default=0, description="Rows one EPCIS query may read; 0 = no cap")
    epcis_max_threads: int = Field(default=2, description="Threads one EPCIS query may use")

    # The sink retries a failed ClickHouse insert (offsets not committed) with backoff up to this long
    # between tries; while it cannot write, /health answers 503.
    sink_retry_max_s: float = 30.0

    # EPCIS 2.0 named queries and webhook subscriptions (genealogy.epcis_subscriptions, docs/internals.md).
    epcis_webhook_allow: str = Field(default="", description=(
        "Comma-separated URL prefixes a subscription's webhook `dest` must start with (scheme, host and port "
        "exact, path a prefix), e.g. https://erp.example.com/epcis/; empty = subscriptions are refused: the "
        "service never posts to an address its operator did not name (SSRF)"))
    epcis_max_named_queries: int = Field(default=100, description="Named queries the service keeps at most")
    epcis_max_subscriptions: int = Field(default=100, description="Subscriptions (over all named queries) at most")
    epcis_max_websockets: int = Field(default=32, description="Open WebSocket subscriptions at most")
    epcis_query_max_body_bytes: int = Field(default=64 * 1024, description="Largest POST /queries and subscription body")
    epcis_webhook_timeout_s: float = Field(default=10.0, description="One webhook POST, connect to answer")
    epcis_webhook_attempts: int = Field(default=4, description=(
        "Tries of one webhook POST (exponential backoff between) before the subscription backs off and "
        "tries the same events again later; nothing is skipped"))
    epcis_webhook_backoff_max_s: float = Field(default=300.0, description="Longest wait of a failing subscription")
    epcis_webhook_batch: int = Field(default=100, description="Events per webhook POST (an EPCISQueryDocument)")
    epcis_webhook_concurrency: int = Field(default=8, description="Webhook deliveries in flight at once")
    epcis_subscription_poll_s: float = Field(default=1.0, description="How often stream subscriptions look for new events")
    epcis_subscription_settle_ms: int = Field(default=2000, description=(
        "A subscription takes an event once it has been in ClickHouse this long: an insert that is still "
        "being written when the subscription reads may carry an earlier insert time than rows already read"))

    # Who may call it (genealogy.auth, docs/security.md).
    auth: Literal["tokens", "off"] = Field(default="tokens", description=(
        "tokens: every route but /health needs a bearer token (roles reader, capture, admin); "
        "off: no tokens, refused unless http_host is a loopback address"))
    tokens_file: Path | None = Field(default=None, description="Hashed API tokens; default <data_dir>/auth/tokens.json")
    http_allowed_hosts: str = Field(default="", description=(
        "Comma-separated host names / addresses clients use to reach the service, besides localhost and "
        "http_host: any other Host header is refused (DNS rebinding)"))
    # A client's token (the CLI against a deployment); never passed on to child processes.
    api_token: str = Field(default="", exclude=True, repr=False)

    # Input limits (producers.ingest, producers.oversize, producers.spool; docs/security.md#limits).
    ingest_max_line_bytes: int = Field(default=16 * 1024 * 1024, description=(
        "A longer input line is a dead letter (excerpt, size, SHA-256; the whole line kept under "
        "<data_dir>/dead-letters), never parsed nor held in memory"))
    ingest_max_document_bytes: int = Field(default=16 * 1024 * 1024, description=(
        "A longer multi-line JSON document is a dead letter the same way"))
    dead_letter_max_payload_bytes: int = Field(default=64 * 1024, description=(
        "A dead letter carries at most this much of its payload (Kafka refuses messages over ~1 MB); the whole "
        "payload goes to <data_dir>/dead-letters/<sha256>"))
    spool_max_attempts: int = Field(default=3, description=(
        "A spool row the broker refuses for good (too large, invalid) this many times is moved to the spool's "
        "quarantine table, so it never blocks the rows behind it"))

    # `genealogy up` starts a child that died again, after a backoff; one that dies more often than this
    # within supervisor_window_s stops the stack (0: the first death of any child stops it).
    supervisor_max_restarts: int = 5
    supervisor_window_s: float = 300.0

    # Set by `genealogy up` for its children: which stack they belong to (reported in /health).
    instance: str = ""

    @property
    def embedded_broker(self) -> bool:
        return not self.bootstrap_servers

    @property
    def is_tansu(self) -> bool:
        return self.embedded_broker if self.tansu_broker is None else self.tansu_broker

    @property
    def worker_heartbeat_s(self) -> float:
        return 0.3 if self.is_tansu else min(3.0, self.session_timeout_s / 3)

    @property
    def kafka_bootstrap(self) -> str:
        return self.bootstrap_servers or f"127.0.0.1:{self.broker_port}"

    @property
    def kafka_config(self) -> dict[str, str]:
        """librdkafka's connection options: bootstrap servers and, when set, TLS and SASL."""
        config = {"bootstrap.servers": self.kafka_bootstrap}
        protocol = self.kafka_security_protocol
        if protocol == "PLAINTEXT":
            return config
        config["security.protocol"] = protocol.lower()
        if protocol.startswith("SASL"):
            config.update({"sasl.mechanism": self.kafka_sasl_mechanism, "sasl.username": self.kafka_sasl_username,
                           "sasl.password": self.kafka_sasl_password})
        if protocol.endswith("SSL"):
            for option, value in (("ssl.ca.location", self.kafka_ssl_ca_location),
                                  ("ssl.certificate.location", self.kafka_ssl_certificate_location),
                                  ("ssl.key.location", self.kafka_ssl_key_location),
                                  ("ssl.key.password", self.kafka_ssl_key_password)):
                if value:
                    config[option] = value
        return config

    @property
    def store_dsn(self) -> str:
        return self.clickhouse_dsn or f"chdb://{(self.data_dir / 'clickhouse').resolve()}"

    @property
    def analyst_store_dsn(self) -> str:
        return self.analyst_dsn or self.store_dsn

    @property
    def epcis_store_dsn(self) -> str:
        return self.epcis_dsn or self.store_dsn

    @property
    def tokens_path(self) -> Path:
        return self.tokens_file or self.data_dir / "auth" / "tokens.json"

    @property
    def service_url(self) -> str:
        # A wildcard bind is reached on loopback: "0.0.0.0" is not a Host the service accepts (genealogy.auth).
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}.get(self.http_host, self.http_host)
        return f"http://{host}:{self.http_port}"

    def child_env(self) -> dict[str, str]:
        """Environment for a child process so that it resolves the same settings."""
        env = dict(os.environ)
        for name, value in self.model_dump().items():
            if value is None:
                env.pop(f"GENEALOGY_{name.upper()}", None)
            else:
                env[f"GENEALOGY_{name.upper()}"] = str(value)
        env["GENEALOGY_DATA_DIR"] = str(self.data_dir.resolve())
        env.pop("GENEALOGY_API_TOKEN", None)  # a client's credential is not the children's business
        return env


def load(**overrides: object) -> Settings:
    """Settings from the environment, with explicit (flag) values on top."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
