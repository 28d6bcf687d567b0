"""The simulated plant continued in segments (what long benchmarks stream) is the same plant."""

from tests.support import reference
from genealogy.producers.simulator import FAULTY_ITEM, Plant

KW = dict(lot_size=500, lines=2, reel_size=300)


def test_segments_continue_one_plant():
    whole = Plant(units=4_000, **KW).generate()
    first = Plant(units=2_000, **KW).generate()
    second = Plant(units=2_000, first_unit=2_000, **KW).generate()

    ids = [e["event_id"] for p in (first, second) for _, e in p.all_events()]
    assert len(ids) == len(set(ids)), "event ids repeat across segments: the join would drop them as replays"

    one = reference.edges(whole.all_events())
    both = reference.edges(first.all_events() + second.all_events())
    for relation in ("installed", "transformed"):
        assert {e for e in one if e[2] == relation} == {e for e in both if e[2] == relation}
    # Every unit consumed the same reels and lots, save the faulty capacitor batch: it sits a third
    # of the way into each plant, which depends on the plant's length.
    not_capacitor = lambda edges: {e for e in edges if e[2] == "consumed" and f":{FAULTY_ITEM}:" not in e[0]}  # noqa: E731
    assert not_capacitor(one) == not_capacitor(both) != set()
    # Containers of the second segment do not reuse the first one's names.
    containers = lambda p: {e[1] for e in reference.edges(p.all_events()) if e[2] == "packed"}  # noqa: E731
    assert not containers(first) & containers(second)



def test_a_lingering_gateway_sends_every_event_within_its_linger():
    plant = Plant(units=500, batch_size=50, cycle_ms=5, **KW).generate()
    batches = plant.batches(linger_ms=100)
    for b in batches:
        times = [e["event_ms"] for _, e in b["events"]]
        assert len(times) <= 50 and max(times) - min(times) <= 100 and b["sent_ms"] == max(times)
    # Nothing lost or reordered: per station, the batches are the station's arrivals.
    for station, events in plant.arrivals().items():
        assert [ke for b in batches if b["source"] == station for ke in b["events"]] == events
    # Count-only batches hold quiet stations' events back (the packing station's last cartons waited for the
    # final pack, 30 s later: the freshness bench's p99); lingering ones send them sooner, in more batches.
    assert len(batches) > len(plant.batches())
