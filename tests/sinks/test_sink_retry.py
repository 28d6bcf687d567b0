"""The sink never dies silently: a failed insert is retried, offsets stay uncommitted, and the
reason is what /health says."""

import threading
from contextlib import contextmanager

from genealogy import schemas
from genealogy.service import Service
from genealogy.settings import Settings
from genealogy.sinks.kafka_sink import KafkaSink, Rows


class FlakyWriter:
    def __init__(self, failures):
        self.failures, self.calls = failures, 0

    @contextmanager
    def batch(self):  # a flush is one batch of writes (Writer.batch)
        yield

    def insert_derived(self, table, columns):
        pass

    def insert(self, table, columns, rows):
        self.calls += 1
        if self.calls <= self.failures:
            raise ConnectionError("Code: 164. DB::Exception: Cannot execute query in readonly mode")


class Consumer:
    def __init__(self):
        self.commits = 0

    def commit(self, asynchronous=False):
        self.commits += 1

    def close(self):
        pass


def sink(writer, **overrides):
    s = Settings(sink_retry_max_s=0.01, **overrides)
    k = KafkaSink(s, writer, schemas.serde_for(s))
    k.consumer.close()
    k.consumer = Consumer()
    return k


def rows():
    r = Rows()
    r.capture.append(["S", None, "t", 0, 0, b""])
    return r


def test_a_failed_insert_is_retried_and_committed_only_once_in():
    writer = FlakyWriter(failures=3)
    k = sink(writer)
    assert k._flush(rows(), threading.Event())
    assert k.retries == 3 and k.consumer.commits == 1 and k.failing is None
    assert writer.calls == 3 + 2  # three failed tries stop at capture_batches; the fourth inserts both


def test_while_it_cannot_write_the_sink_says_why_and_commits_nothing():
    writer = FlakyWriter(failures=10**9)
    k = sink(writer)
    stop = threading.Event()
    seen = []
    thread = threading.Thread(target=lambda: seen.append(k._flush(rows(), stop)), daemon=True)
    thread.start()
    while k.retries < 3:
        pass
    assert "readonly" in k.failing and k.consumer.commits == 0
    service = Service.__new__(Service)  # health() needs only these
    service.settings, service.sink, service.stop, service.died = k.settings, k, stop, {}
    service.threads, service.join_recovery = [threading.current_thread()], None
    ok, body = service.health()
    assert not ok and "cannot write to ClickHouse" in body["reason"]
    stop.set()
    thread.join(timeout=10)
    assert seen == [False] and k.consumer.commits == 0


def test_a_dead_sink_thread_is_unhealthy():
    k = sink(FlakyWriter(0))
    dead = threading.Thread(target=lambda: None, name="kafka-sink")
    dead.start()
    dead.join()
    service = Service.__new__(Service)
    service.settings, service.sink, service.stop = k.settings, k, threading.Event()
    service.died, service.threads = {"kafka-sink": "RuntimeError: boom"}, [dead]
    service.join_recovery = None
    ok, body = service.health()
    assert not ok and "died" in body["reason"] and "boom" in body["reason"]


def test_a_sink_that_dies_is_reported_and_stops_the_process_for_the_supervisor(monkeypatch):
    """genealogy serve exits 1 when the sink thread dies, so `genealogy up` restarts it from the committed offsets."""
    k = sink(FlakyWriter(0))
    kills = []
    monkeypatch.setattr("genealogy.service.os.kill", lambda pid, sig: kills.append(sig))
    service = Service.__new__(Service)
    service.settings, service.sink, service.stop, service.died, service.exit_code = k.settings, k, threading.Event(), {}, 0
    service.join_recovery = None
    service.exit_on_sink_death = True

    def broken(stop):
        raise RuntimeError("a bug in the sink")

    thread = threading.Thread(target=lambda: service._guarded("kafka-sink", broken), name="kafka-sink")
    service.threads = [thread]
    thread.start()
    thread.join()
    ok, body = service.health()
    assert not ok and "a bug in the sink" in body["reason"]
    assert service.exit_code == 1 and len(kills) == 1
