"""The join state rebuilt from the store equals the state the stream holds, for random feeds and cut
points: what genealogy.join_recovery writes to the changelog when the broker has lost it."""

from __future__ import annotations

import itertools
import json
from datetime import datetime, timezone

from hypothesis import HealthCheck, given, settings, strategies as st

from genealogy import schemas
from genealogy.domain.derive import derive, replay
from genealogy.join_recovery import JoinRecovery
from genealogy.settings import Settings
from genealogy.sinks.writer import CAPTURE_COLUMNS
from tests.domain.test_join import GRACE, NOW, station_log

SERDE = schemas.local_serde()
topics = itertools.count()


def as_stations(log, names):
    """One station log per name (the same shape, ids and station renamed), arrivals interleaved."""
    _, arrival, cuts = log
    out = []
    for i, (kind, e) in enumerate(arrival):
        name = names[i % len(names)]
        out.append((kind, {**e, "station": name, "event_id": f"{name}/{e['event_id']}"}))
    return out, cuts


def batches_of(arrival, cuts):
    """Capture batches as gateways send them: per station, cut at the given points."""
    bounds = [0, *cuts, len(arrival)]
    batches = []
    for n, (a, b) in enumerate(zip(bounds, bounds[1:])):
        chunk = arrival[a:b]
        for station in sorted({e["station"] for _, e in chunk}):
            events = [ke for ke in chunk if ke[1]["station"] == station]
            batches.append({"batch_id": f"b{n}-{station}", "source": station, "sent_ms": 0, "events": events})
    return batches


def stream_state(batches):
    """What a worker holds after these batches: derive into its table, through JSON as the changelog does."""
    table: dict = {}
    for batch in batches:
        derive(batch, table, GRACE, 10**9, now_ms=NOW)
        table = json.loads(json.dumps(table))
    return table


def store(writer, topic: str, batches) -> None:
    """The sink's capture rows for these batches: partition by station, offsets and times in arrival order."""
    offsets: dict[int, int] = {}
    rows = []
    for n, batch in enumerate(batches):
        partition = hash(batch["source"]) % 2
        offsets[partition] = offsets.get(partition, -1) + 1
        rows.append([batch["source"], datetime.fromtimestamp(1_767_000_000 + n, tz=timezone.utc), topic, partition,
                     offsets[partition], SERDE.encode(schemas.CAPTURE, batch)])
    writer.insert("capture_batches", CAPTURE_COLUMNS, rows)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(station_log(), st.lists(st.sampled_from(["ST-A", "ST-B", "ST-C"]), min_size=1, max_size=3, unique=True),
       st.data())
def test_the_state_rebuilt_from_the_store_equals_the_streams(writer, read_model, log, names, data):
    arrival, cuts = as_stations(log, names)
    batches = batches_of(arrival, cuts)
    cut = data.draw(st.integers(0, len(batches)), label="batches handled before the broker was lost")
    topic = f"capture-{next(topics)}"
    store(writer, topic, batches[:cut])

    recovery = JoinRecovery(Settings(topic_capture=topic, grace_ms=GRACE, retention_ms=10**9), read_model, SERDE)
    rebuilt = json.loads(json.dumps(replay(recovery.batches(), GRACE, 10**9, now_ms=NOW)))
    assert rebuilt == stream_state(batches[:cut])


def test_history_is_read_in_the_order_the_workers_handled_it(writer, read_model):
    """Pages along the primary key: per station, by time then offset, whatever the insert order."""
    topic = "capture-order"
    rows = [["S2", datetime.fromtimestamp(1_767_000_000 + t, tz=timezone.utc), topic, 0, o, f"S2-{t}-{o}".encode()]
            for t, o in [(5, 3), (1, 0), (1, 1), (3, 2)]]
    rows += [["S1", datetime.fromtimestamp(1_767_000_000 + t, tz=timezone.utc), topic, 1, o, f"S1-{t}-{o}".encode()]
             for t, o in [(2, 0), (9, 1)]]
    writer.insert("capture_batches", CAPTURE_COLUMNS, rows)
    writer.insert("capture_batches", CAPTURE_COLUMNS, rows[:2])  # redelivered: read once
    got = [payload.decode() for _, payload in read_model.capture_history(topic, page=2)]
    assert got == ["S1-2-0", "S1-9-1", "S2-1-0", "S2-1-1", "S2-3-2", "S2-5-3"]
