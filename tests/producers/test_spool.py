"""The edge spool and ingest without a broker: durability, ack semantics, ordering, the forwarder's
bookkeeping (against a scripted producer and against no broker at all), and ingest's cutting and mapping."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from tests.support.paths import FIXTURES, REPO

from genealogy import schemas
from genealogy.settings import Settings
from genealogy.producers.cfx import CfxContext, map_cfx_lines
from genealogy.producers.epcis import map_epcis
from genealogy.producers.ingest import JsonValues, bridge, follow, ingest_lines, ingest_path, run_bridge, spool_rows
from genealogy.producers.spool import Forwarder, Spool

ROOT = REPO



def rows(n: int, prefix: str = "v") -> list[tuple[str, bytes, bytes]]:
    return [("t", f"k{i % 3}".encode(), f"{prefix}{i}".encode()) for i in range(n)]


# --- spool ------------------------------------------------------------------------------

def test_durable_mode_and_reopen(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        assert spool._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert spool._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        ids = spool.append_many(rows(5))
        spool.append(b"key", b"value")  # default topic
    with Spool(path) as again:
        assert len(again) == 6
        got = again.pending(100)
        assert [r.id for r in got] == ids + [ids[-1] + 1]
        assert [(r.topic, r.key, r.value) for r in got] == rows(5) + [("genealogy.capture", b"key", b"value")]


def test_an_append_that_returned_survives_sigkill(tmp_path):
    """The producer prints an id only after append returned, then is killed without any cleanup."""
    path = tmp_path / "s.db"
    code = (f"import os, signal, sys\nfrom genealogy.producers.spool import Spool\n"
            f"s = Spool({str(path)!r})\n"
            "for i in range(200):\n"
            "    print(s.append(b'k', b'v%d' % i), flush=True)\n"
            "os.kill(os.getpid(), signal.SIGKILL)\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == -signal.SIGKILL
    printed = [int(x) for x in run.stdout.split()]
    assert len(printed) == 200
    with Spool(path) as spool:
        assert [r.id for r in spool.pending(1000)] == printed
        assert [r.value for r in spool.pending(1000)] == [b"v%d" % i for i in range(200)]


def test_ack_deletes_exactly_the_acked_rows_and_ids_are_never_reused(tmp_path):
    path = tmp_path / "s.db"
    with Spool(path) as spool:
        ids = spool.append_many(rows(6))
        assert spool.ack([ids[1], ids[3], 10_000]) == 2  # an unknown id is ignored
        assert [r.id for r in spool.pending(10)] == [ids[0], ids[2], ids[4], ids[5]]
        assert spool.ack([ids[1]]) == 0                  # acking twice is harmless
        spool.ack([ids[4], ids[5]])                      # the newest rows go
    with Spool(path) as spool:
        new = spool.append(b"k", b"late")
        assert new == ids[-1] + 1                        # not a reused id: a late ack cannot hit it
        assert spool.high_water() == new
        spool.ack([r.id for r in spool.pending(10)])
        assert len(spool) == 0 and not spool.has_pending() and spool.high_water() == new


def test_pending_is_append_order_and_pages(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        ids = [spool.append(b"k", b"%d" % i) for i in range(10)]
        ids += spool.append_many(rows(10, "m"))
        assert ids == sorted(ids)
        first = spool.pending(7)
        rest = spool.pending(100, after_id=first[-1].id)
        assert [r.id for r in first + rest] == ids
        assert spool.has_pending(upto=ids[0]) and not spool.has_pending(upto=ids[0] - 1)


def test_append_many_is_all_or_nothing_with_its_mark(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        spool.append_many(rows(2), mark=("progress", 2))

        def broken():
            yield from rows(3)
            raise RuntimeError("producer crashed mid-batch")

        with pytest.raises(RuntimeError):
            spool.append_many(broken(), mark=("progress", 5))
        assert len(spool) == 2 and spool.mark("progress") == 2 and spool.mark("other", -1) == -1


def test_concurrent_appenders_in_other_processes(tmp_path):
    path = tmp_path / "s.db"
    Spool(path).close()
    code = (f"import sys\nfrom genealogy.producers.spool import Spool\n"
            f"s = Spool({str(path)!r})\n"
            "for i in range(100):\n"
            "    s.append(sys.argv[1].encode(), b'%d' % i)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, f"p{n}"]) for n in range(3)]
    with Spool(path) as spool:
        for i in range(100):
            spool.append(b"main", b"%d" % i)
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    with Spool(path) as spool:
        got = spool.pending(1000)
    assert Counter(r.key for r in got) == {b"main": 100, b"p0": 100, b"p1": 100, b"p2": 100}
    for key in (b"main", b"p0"):  # each appender's rows keep its order
        assert [r.value for r in got if r.key == key] == [b"%d" % i for i in range(100)]


# --- forwarder --------------------------------------------------------------------------

class Err:
    def __init__(self, text: str):
        self.text = text

    def fatal(self) -> bool:
        return False

    def __str__(self) -> str:
        return self.text


class Msg:
    def __init__(self, topic: str):
        self._topic = topic

    def topic(self) -> str:
        return self._topic


class ScriptedProducer:
    """Stands in for confluent_kafka.Producer: delivers on poll(), failing the values in `fail` once."""

    def __init__(self, fail: set[bytes] = frozenset(), capacity: int = 10**6):
        self.sent: list[bytes] = []
        self.queue: list = []
        self.fail = set(fail)
        self.capacity = capacity

    def produce(self, topic, key=None, value=None, on_delivery=None):
        if len(self.queue) >= self.capacity:
            raise BufferError("queue full")
        self.sent.append(value)
        self.queue.append((topic, value, on_delivery))

    def poll(self, timeout=0):
        queue, self.queue = self.queue, []
        for topic, value, callback in queue:
            if value in self.fail:
                self.fail.discard(value)
                callback(Err("_MSG_TIMED_OUT"), Msg(topic))
            else:
                callback(None, Msg(topic))
        return len(queue)

    def flush(self, timeout=0):
        self.poll()
        return 0


def scripted_forwarder(spool: Spool, producer: ScriptedProducer, **kwargs) -> Forwarder:
    forwarder = Forwarder(Settings(broker_port=1), spool, backoff_s=(0.05, 0.2), **kwargs)
    forwarder.producer = producer
    return forwarder


def test_forwarder_deletes_only_acked_rows_and_resends_a_failed_one_in_order(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        spool.append_many(rows(10))
        producer = ScriptedProducer(fail={b"v3"})
        forwarder = scripted_forwarder(spool, producer)
        forwarder.pump()
        assert [r.value for r in spool.pending(100)] == [b"v3"]  # everything else was acked and deleted
        assert forwarder.backlog()["failures"] == 1 and "_MSG_TIMED_OUT" in forwarder.backlog()["last_error"]
        assert forwarder.forward_all(timeout=5) == 0
        assert producer.sent == [b"v%d" % i for i in range(10)] + [b"v3"]
        assert forwarder.backlog()["rows"] == 0 and forwarder.delivered == 10


def test_forwarder_window_bounds_what_is_in_flight(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        spool.append_many(rows(25))
        producer = ScriptedProducer()
        forwarder = scripted_forwarder(spool, producer, window=10)
        forwarder._fill()
        assert len(producer.queue) == 10 and forwarder.backlog()["in_flight"] == 10
        forwarder._fill()  # nothing acked yet: nothing more goes out
        assert len(producer.sent) == 10
        assert forwarder.forward_all(timeout=5) == 0
        assert producer.sent == [b"v%d" % i for i in range(25)]


def test_forwarder_survives_a_full_producer_queue(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        spool.append_many(rows(30))
        producer = ScriptedProducer(capacity=4)
        forwarder = scripted_forwarder(spool, producer)
        assert forwarder.forward_all(timeout=5) == 0
        assert producer.sent == [b"v%d" % i for i in range(30)]


def dead_port() -> int:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_forwarder_without_a_broker_keeps_everything_spooled(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        spool.append_many(rows(20))
        forwarder = Forwarder(Settings(broker_port=dead_port()), spool)
        started = time.monotonic()
        assert forwarder.forward_all(timeout=2) == 20
        assert time.monotonic() - started < 10
        backlog = forwarder.backlog()
        assert backlog["rows"] == 20 and backlog["delivered"] == 0 and backlog["last_error"]
        forwarder.close(timeout=0.5)
        assert len(spool) == 20


def test_run_forwards_rows_appended_while_running(tmp_path):
    with Spool(tmp_path / "s.db") as spool:
        producer = ScriptedProducer()
        forwarder = scripted_forwarder(spool, producer)
        stop = threading.Event()
        thread = threading.Thread(target=forwarder.run, args=(stop, 0.05))
        thread.start()
        for i in range(5):
            spool.append(b"k", b"%d" % i)
            time.sleep(0.1)
        deadline = time.monotonic() + 5
        while len(spool) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        thread.join(5)
        assert len(spool) == 0 and producer.sent == [b"%d" % i for i in range(5)]


# --- ingest: cutting text into JSON values ----------------------------------------------------

def values(text: str):
    splitter = JsonValues()
    out = [v for line in text.splitlines(keepends=True) for v in splitter.feed(line)] + splitter.close()
    return [(v.line, v.data if not v.error else "ERR") for v in out]


def test_json_lines_and_pretty_documents():
    assert values('{"a": 1}\n\n{"b": [1,\n  2]}\n[3]\n') == [(1, {"a": 1}), (3, {"b": [1, 2]}), (5, [3])]
    doc = json.dumps({"x": {"y": ["}", "{", "\\\""]}, "z": 1}, indent=2)
    assert values(doc + "\n" + doc) == [(1, json.loads(doc)), (1 + doc.count("\n") + 1, json.loads(doc))]
    assert values('[\n{"a": 1}\n]\n') == [(1, [{"a": 1}])]


def test_malformed_values_are_cut_at_the_right_line():
    text = '{"a": 1}\n{"b": "cut\n{"c": {"d": 1}\n{"e": 2}\nnot json\n{"f": [\n'
    assert values(text) == [(1, {"a": 1}), (2, "ERR"), (3, "ERR"), (4, {"e": 2}), (5, "ERR"), (6, "ERR")]


# --- ingest: mapping, dead letters, batches ---------------------------------------------------

def canonical(events):
    return Counter(json.dumps(e, sort_keys=True) for e in events)


def test_ingest_gives_the_mappers_events_in_station_batches():
    cfx = ingest_path(FIXTURES / "cfx/line1_stations.jsonl", "cfx", cfx_context=CfxContext(unit_item="BRD-100"), batch_size=5)
    lines = (FIXTURES / "cfx/line1_stations.jsonl").read_text().splitlines()
    expected = map_cfx_lines(lines, origin="line1_stations.jsonl", context=CfxContext(unit_item="BRD-100"))
    assert canonical(e for b in cfx.batches for e in b["events"]) == canonical(expected.events)
    for b in cfx.batches:
        assert {e["station"] for _, e in b["events"]} == {b["source"]} and len(b["events"]) <= 5
        assert [e["event_ms"] for _, e in b["events"]] == sorted(e["event_ms"] for _, e in b["events"])
    assert [b["batch_id"] for b in cfx.batches] == [f"ingest:line1_stations.jsonl#{n:06d}" for n in range(1, len(cfx.batches) + 1)]

    doc = ingest_path(FIXTURES / "epcis/plant_document.jsonld", "epcis")
    expected = map_epcis(json.loads((FIXTURES / "epcis/plant_document.jsonld").read_text()), origin="x")
    assert canonical(e for b in doc.batches for e in b["events"]) == canonical(expected.events)
    assert doc.untraceable == expected.untraceable
    # 8 events: 2 rejected, 6 kept whole for the EPCIS query interface (1 of them says nothing for genealogy;
    # the unpacking is an Unpacked event).
    assert doc.counts == {"values": 1, "events": 12, "batches": 3, "rejects": 2, "unknown": 1, "untraceable": 1, "kept": 6}


def test_rejects_and_unknowns_are_dead_letters_naming_file_line_and_field():
    cfx = ingest_path(FIXTURES / "cfx/line1_stations.jsonl", "cfx")
    lines = (FIXTURES / "cfx/line1_stations.jsonl").read_bytes().splitlines(keepends=True)
    by_line = {d["offset"]: d for d in cfx.dead_letters}
    assert set(by_line) == {13}
    assert by_line[13]["reason"].startswith("line1_stations.jsonl:13: not JSON")
    assert all(d["stage"] == "ingest" and d["topic"] == "line1_stations.jsonl" for d in cfx.dead_letters)
    # A package kitted onto a carrier (no station slot: the SDK's MaterialsLoaded case 2) is not an error;
    # the message is kept, with why it loaded nothing yet, like a message with no genealogy mapping.
    kitted, energy = sorted(cfx.unknown, key=lambda u: u["offset"])
    assert (kitted["stage"], kitted["offset"], kitted["event_kind"]) == ("unknown", 2, "CFX.Materials.Storage.MaterialsLoaded")
    assert "kitted onto carrier FEEDER-8MM-119" in kitted["reason"]
    assert kitted["payload"] == lines[1].rstrip(b"\n")  # the whole message, replayable
    assert (energy["stage"], energy["offset"], energy["event_kind"]) == ("unknown", 11, "CFX.ResourcePerformance.EnergyConsumed")

    doc = ingest_path(FIXTURES / "epcis/plant_document.jsonld", "epcis")
    reasons = sorted(d["reason"] for d in doc.dead_letters)
    assert reasons[0].startswith("plant_document.jsonld:1#eventList[3]: childEPCs[1]: ")
    assert reasons[1].startswith("plant_document.jsonld:1#eventList[7]: eventTime: ")
    assert all(json.loads(d["payload"])["type"] in ("AggregationEvent", "TransformationEvent") for d in doc.dead_letters)
    # An EPCIS event with nothing for genealogy (a plain observation) is no dead letter: it is
    # kept whole, with every other event that was not rejected, for the EPCIS query interface.
    assert doc.unknown == [] and doc.counts["unknown"] == 1
    events = json.loads((FIXTURES / "epcis/plant_document.jsonld").read_text())["epcisBody"]["eventList"]
    kept = [json.loads(e["json"]) for e in doc.epcis]
    assert [{k: v for k, v in e.items() if k not in ("recordTime", "@context")} for e in kept] == \
        [{k: v for k, v in e.items() if k != "recordTime"} for i, e in enumerate(events) if i not in (3, 7)]
    assert all(e["recordTime"].endswith("Z") for e in kept)

    again = ingest_path(FIXTURES / "cfx/line1_stations.jsonl", "cfx")  # same input, same ids: no new dead letters
    assert [d["dead_letter_id"] for d in again.dead_letters + again.unknown] == \
        [d["dead_letter_id"] for d in cfx.dead_letters + cfx.unknown]


def test_a_line_that_is_not_utf8_keeps_its_bytes():
    good = b'{"MessageName": "CFX.Heartbeat", "TimeStamp": "2026-03-02T08:00:00Z", "UniqueID": "u", "Source": "S", "MessageBody": {}}\n'
    bad = b'{"MessageName": "CFX.Heartbeat", "Source": "\xff\xfe"}\n'
    result = ingest_lines([good, bad, good], "cfx", "feed")
    [dead] = result.dead_letters
    assert dead["payload"] == bad.rstrip(b"\n") and dead["offset"] == 2 and "UTF-8" in dead["reason"]
    assert result.counts["events"] == 2


def test_spool_rows_encode_with_the_contracts():
    settings = Settings()
    result = ingest_path(FIXTURES / "cfx/line1_stations.jsonl", "cfx")
    serde = schemas.local_serde()
    out = spool_rows(settings, result, serde)
    capture = [r for r in out if r[0] == settings.topic_capture]
    letters = [r for r in out if r[0] == settings.topic_dead_letters]
    assert len(capture) == len(result.batches) and len(letters) == 3
    assert [serde.decode(v, expect=schemas.CAPTURE)[1] for _, _, v in capture] == result.batches
    assert {serde.decode(v, expect=schemas.DEAD_LETTER)[1]["stage"] for _, _, v in letters} == {"ingest", "unknown"}
    assert len(spool_rows(settings, result, serde, keep_unknown=False)) == len(out) - len(result.unknown) == len(out) - 2


def test_bridge_yields_by_size_by_time_and_at_the_end():
    lines = (FIXTURES / "cfx/line1_stations.jsonl").read_text().splitlines()
    before_pause = ingest_lines(lines[:7], "cfx", "x").counts["events"]  # 9: chunks of 3 and 4 by size, 2 left over
    resumed = threading.Event()  # set by the consumer once the quiet feed's pending events came out on time

    def feed():
        yield from lines[:7]
        resumed.wait(30)  # a quiet feed: what is pending must go out after max_ms, not wait for more input
        yield from lines[7:]

    chunks = []
    for chunk in bridge(feed(), "cfx", "stdin", max_events=3, max_ms=200, session="s1"):
        chunks.append((resumed.is_set(), chunk))
        if sum(c.counts["events"] for _, c in chunks) == before_pause:
            resumed.set()
    assert sum(c.counts["events"] for _, c in chunks) == 14
    assert sum(c.counts["rejects"] for _, c in chunks) == 1 and sum(c.counts["unknown"] for _, c in chunks) == 2
    # A line's events stay in one chunk (a WorkCompleted gives several), so a chunk cut by size holds
    # max_events or a few more; its batches never hold more.
    assert all(len(b["events"]) <= 3 for _, c in chunks for b in c.batches)
    assert [c.counts["events"] for _, c in chunks][:2] == [3, 4]
    # Size cuts the first chunks, time the one before the pause (fewer than max_events), the end the last.
    paused = [c for after, c in chunks if not after]
    assert sum(c.counts["events"] for c in paused) == before_pause and paused[-1].counts["events"] < 3
    assert any(after for after, _ in chunks)
    ids = [b["batch_id"] for _, c in chunks for b in c.batches]
    assert len(set(ids)) == len(ids) and all(i.startswith("ingest:stdin@s1#") for i in ids)


def test_bridge_stops_on_request_even_when_the_feed_is_silent():
    stop, released = threading.Event(), threading.Event()

    def silent():
        yield '{"MessageName": "CFX.Heartbeat", "TimeStamp": "2026-03-02T08:00:00Z", "UniqueID": "u", "Source": "S", "MessageBody": {}}'
        released.wait(60)  # silent until the test ends; the reader thread then finishes

    try:
        threading.Timer(0.5, stop.set).start()
        chunks = list(bridge(silent(), "cfx", "stdin", max_ms=100, stop=stop))
        assert stop.is_set() and not released.is_set()  # it returned on the stop, with the feed still silent
        assert sum(c.counts["events"] for c in chunks) == 1
    finally:
        released.set()


def test_follow_yields_complete_lines_of_a_growing_file(tmp_path):
    path = tmp_path / "feed.jsonl"
    path.write_bytes(b"")
    stop = threading.Event()

    def writer():
        with open(path, "ab") as f:
            f.write(b"one\ntw")
            f.flush()
            time.sleep(0.4)
            f.write(b"o\nthree\n")
            f.flush()
        time.sleep(0.4)
        stop.set()

    threading.Thread(target=writer).start()
    assert list(follow(path, stop, poll_s=0.05)) == [b"one\n", b"two\n", b"three\n"]


def test_run_bridge_spools_everything_while_the_broker_is_away(tmp_path):
    settings = Settings(broker_port=dead_port())
    lines = (FIXTURES / "cfx/line1_stations.jsonl").read_text().splitlines()
    with Spool(tmp_path / "s.db") as spool:
        out = run_bridge(settings, lines, "cfx", "line1", spool, threading.Event(), max_events=4, max_ms=100,
                         drain_timeout=1.0)
        assert out["counts"]["events"] == 14 and out["counts"]["rejects"] == 1 and out["counts"]["unknown"] == 2
        assert out["remaining"] == len(spool) == out["backlog"]["rows"]
        serde = schemas.local_serde()
        decoded = [serde.decode(r.value)[1] for r in spool.pending(1000)]
    assert sum(len(d["events"]) for d in decoded if "events" in d) == 14
    assert sorted(d["stage"] for d in decoded if "stage" in d) == ["ingest", "unknown", "unknown"]
