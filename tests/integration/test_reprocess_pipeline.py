"""Late events on the real stack: a grace far below the feed's disorder makes material events late;
`POST /reprocess` then makes the store equal the brute-force reference over every valid event. And
without anyone asking: a gateway replays the material events it held through a 10-minute outage,
long after the station's watermark passed them; the service corrects the answers by itself."""

import time

import pytest

from tests.support import reference
from genealogy.client import wait_drained
from genealogy.settings import Settings
from genealogy.client import ServiceClient
from genealogy.stack import Stack
from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import Plant
from tests.support.stack import free_port, sql

pytestmark = pytest.mark.integration

GRACE_MS = 500


def start_small_grace_stack(tmp_path, late_correction_s: float = 0) -> Stack:
    s = Settings(data_dir=tmp_path / "stack", broker_port=free_port(), http_port=free_port(), workers=1,
                 idle_flush_s=1.0, sink_flush_s=0.3, grace_ms=GRACE_MS, late_correction_s=late_correction_s)
    stack = Stack(s)
    stack.start()
    return stack


def plant() -> Plant:
    # Disorder ten times the grace: many material events arrive behind the watermark.
    return Plant(units=600, lot_size=200, faulty_units=30, seed=11, batch_size=40, disorder_ms=5_000,
                 duplicate_every=9, bad_events=3, reel_size=150).generate()


def stored_edges(client) -> set:
    return {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges")}


def test_reprocess_recovers_late_events_exactly(tmp_path):
    stack = start_small_grace_stack(tmp_path)
    try:
        p = plant()
        publisher = Publisher(stack.settings)
        publisher.publish(p.batches())
        publisher.flush()
        client = ServiceClient.for_settings(stack.settings, None, timeout=300)
        wait_drained(client, settle_s=4.0, timeout=300)

        bad = {e["event_id"] for _, e in p.all_events() if e["event_id"].startswith("bad-")}
        valid = reference.unique(p.all_events(), skip_ids=bad)
        expected = reference.edges(valid)
        ((late,),) = sql(client, "SELECT uniqExact(dead_letter_id) FROM dead_letters_final WHERE stage = 'late'")
        assert late > 0
        before = stored_edges(client)
        assert before != expected, "the feed should have produced wrong edges through late events"

        code, body = client.post("/reprocess", {})
        assert code == 200, body
        assert body["late_dead_letters"] == late and body["edges_added"] + body["edges_removed"] > 0
        assert body["stations"] and set(body["stations"]) <= set(p.events)
        wait_drained(client, settle_s=2.0, timeout=120)

        assert stored_edges(client) == expected, (len(stored_edges(client) - expected), len(expected - stored_edges(client)))
        by_parent = {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent FROM edges_by_parent")}
        assert by_parent == {(c, pa) for c, pa, _ in expected}
        ids, keys = sql(client, "SELECT uniqExact(edge_id), uniqExact(child, parent, relation, source_event) FROM edges")[0]
        assert ids == keys
        ((n_units,),) = sql(client, "SELECT uniqExact(unit) FROM units")
        assert n_units == len(reference.production_lots(valid))

        code, r = client.get("/recall", lot=p.faulty_lot)
        assert code == 200, r
        assert r["serial_scope"]["count"] == p.faulty_units
        reached = reference.reach_forward(expected, p.faulty_lot)
        assert r["serial_scope"]["units"] == sorted(n for n in reached if n.startswith("serial:"))

        code, again = client.post("/reprocess", {})
        assert code == 200, again
        assert (again["late_dead_letters"], again["edges_added"], again["edges_removed"], again["units_added"]) == (0, 0, 0, 0)
        assert stored_edges(client) == expected
    finally:
        stack.stop()


def test_a_replayed_outage_buffer_is_corrected_without_a_person(tmp_path):
    stack = start_small_grace_stack(tmp_path, late_correction_s=2.0)
    try:
        p = Plant(units=600, lot_size=200, faulty_units=30, seed=13, batch_size=40, reel_size=150).generate()
        # The SMT gateway loses its uplink for 10 minutes of plant time: its reel loads and unloads in that
        # window stay in its buffer while its completions (another gateway, say) go through.
        first = min(e["event_ms"] for _, e in p.events["SMT-1"])
        held = [(k, e) for k, e in p.events["SMT-1"]
                if k in ("genealogy.MaterialLoaded", "genealogy.MaterialUnloaded") and first + 300_000 <= e["event_ms"] < first + 900_000]
        assert len(held) >= 4, "the window must hold reel changes"
        held_ids = {e["event_id"] for _, e in held}
        live = [dict(b, events=[ke for ke in b["events"] if ke[1]["event_id"] not in held_ids]) for b in p.batches()]
        publisher = Publisher(stack.settings)
        publisher.publish([b for b in live if b["events"]])
        client = ServiceClient.for_settings(stack.settings, None, timeout=300)
        wait_drained(client, settle_s=3.0, timeout=300)

        # Back online: the gateway replays its buffer.
        publisher.publish([{"batch_id": "SMT-1-replay", "source": "SMT-1", "sent_ms": held[-1][1]["event_ms"], "events": held}])
        expected = reference.edges(reference.unique(p.all_events()))
        deadline = time.monotonic() + 180
        while stored_edges(client) != expected and time.monotonic() < deadline:
            time.sleep(1)
        stored = stored_edges(client)
        assert stored == expected, (len(stored - expected), len(expected - stored))
        ((late,),) = sql(client, "SELECT uniqExact(dead_letter_id) FROM dead_letters_final WHERE stage = 'late'")
        assert late >= len(held) // 2, "the replayed events should have been late"
        status = client.get("/status")[1]["late_correction"]
        assert status["runs"] > 0 and status["corrections"] > 0 and status["last_error"] is None
    finally:
        stack.stop()
