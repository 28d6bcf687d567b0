"""Store-and-forward and ingest on the real embedded stack (Tansu broker, Faust worker, embedded ClickHouse).

Each test gets its own stack, so what lands in ClickHouse is only that test's feed
and the comparison with the brute-force reference is exact.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.paths import FIXTURES, REPO

from tests.support import reference
from genealogy import schemas
from genealogy.client import wait_drained
from genealogy.client import ServiceClient
from genealogy.producers.cfx import CfxContext
from genealogy.producers.ingest import ingest_path, publish_ingest
from genealogy.producers.simulator import Plant
from genealogy.producers.spool import Forwarder, Spool
from tests.support.plant_producer import plant_mark
from tests.support.stack import sql, start_stack, until

pytestmark = pytest.mark.integration

ROOT = REPO

PLANT = dict(units=400, lot_size=100, faulty_units=20, seed=5, batch_size=20)


@pytest.fixture
def stack(tmp_path):
    stack = start_stack(tmp_path)
    yield stack
    stack.stop()


def drained(stack) -> ServiceClient:
    client = ServiceClient.for_settings(stack.settings)
    wait_drained(client, settle_s=4.0, timeout=300)
    return client


def check_plant(client: ServiceClient, plant: Plant) -> None:
    expected = reference.edges(reference.unique(plant.all_events()))
    stored = {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges")}
    assert stored == expected, (len(stored - expected), len(expected - stored))
    ids, keys = sql(client, "SELECT uniqExact(edge_id), uniqExact(child, parent, relation, source_event) FROM edges")[0]
    assert ids == keys
    assert sql(client, "SELECT count() FROM dead_letters") == [[0]]


def test_broker_outage_mid_forwarding_loses_nothing(stack, tmp_path):
    """The broker freezes (SIGSTOP: the embedded Tansu keeps its data in memory, so a real restart
    would lose it) while the forwarder is sending; capture goes on into the spool without waiting."""
    settings = stack.settings
    plant = Plant(**PLANT).generate()
    batches = plant.batches()
    serde = schemas.serde_for(settings)
    spool = Spool(tmp_path / "edge.db", default_topic=settings.topic_capture)
    forwarder = Forwarder(settings, spool)
    stop = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(stop,), daemon=True)
    thread.start()
    broker = stack.procs["broker"]

    def append(batch) -> None:
        spool.append(batch["source"].encode(), serde.encode(schemas.CAPTURE, batch))

    try:
        third = len(batches) // 3
        for batch in batches[:third]:
            append(batch)
            time.sleep(0.01)
        until(lambda: forwarder.delivered > 0, 60, "first acks")
        os.kill(broker.pid, signal.SIGSTOP)
        try:
            # Capture must not depend on the broker: every append returns while it is still frozen.
            appender = threading.Thread(target=lambda: [append(b) for b in batches[third:]], daemon=True)
            appender.start()
            appender.join(60)
            frozen_through = appender.is_alive() is False
            until(lambda: len(spool) >= len(batches) - third, 10, "the rows appended during the outage spooled")
            during = forwarder.backlog()
        finally:
            os.kill(broker.pid, signal.SIGCONT)
        assert frozen_through, "appends waited for the broker: capture must not depend on it"
        assert during["rows"] > 0 and during["delivered"] < len(batches)
        until(lambda: len(spool) == 0, 180, "spool drained after the broker came back", every=0.5)
    finally:
        stop.set()
        thread.join(30)
    assert forwarder.delivered >= len(batches) and spool.high_water() == len(batches)
    check_plant(drained(stack), plant)


def forward_plant(stack, spool_path: Path, pace_ms: float) -> subprocess.Popen:
    argv = [sys.executable, "-m", "tests.support.plant_producer", "--spool", str(spool_path),
            "--units", str(PLANT["units"]), "--lot-size", str(PLANT["lot_size"]), "--faulty-units", str(PLANT["faulty_units"]),
            "--seed", str(PLANT["seed"]), "--batch-size", str(PLANT["batch_size"]), "--pace-ms", str(pace_ms), "--timeout", "240"]
    return subprocess.Popen(argv, cwd=ROOT, env=stack.settings.child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_producer_killed_mid_way_resumes_without_loss(stack, tmp_path):
    plant = Plant(**PLANT).generate()
    total = len(plant.batches())
    spool_path = tmp_path / "edge.db"
    mark = plant_mark(PLANT["seed"], PLANT["units"], PLANT["batch_size"])

    first = forward_plant(stack, spool_path, pace_ms=40)
    with Spool(spool_path) as watch:
        until(lambda: watch.mark(mark) >= total // 3 or first.poll() is not None, 120, "a third of the batches appended")
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        assert first.returncode == -signal.SIGKILL, first.stderr.read()[-2000:]
        appended = watch.mark(mark)
        assert 0 < appended < total
        assert watch.high_water() == appended  # every appended batch is in the spool, each once
        left = len(watch)

    second = forward_plant(stack, spool_path, pace_ms=0)
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    report = json.loads(out.strip().splitlines()[-1])
    assert report["resumed_at"] == appended and report["remaining"] == 0 and report["rows"] == 0
    assert report["delivered"] >= left + total - appended  # what the killed run had not got acked went now
    with Spool(spool_path) as after:
        assert after.high_water() == total and len(after) == 0
    check_plant(drained(stack), plant)


def test_ingest_of_standard_files_lands_with_its_dead_letters(stack, tmp_path):
    settings = stack.settings
    spool = Spool(tmp_path / "edge.db", default_topic=settings.topic_capture)
    # In time order per station, as a gateway would send them (the URN and Digital Link files
    # are the same events, so the second changes nothing).
    files = [("epcis/transformation_urn.json", "epcis"), ("epcis/transformation_dl.jsonld", "epcis"),
             ("epcis/plant_document.jsonld", "epcis"), ("cfx/line1_stations.jsonl", "cfx")]
    events, letters = [], []
    for name, fmt in files:
        result = ingest_path(FIXTURES / name, fmt, cfx_context=CfxContext(unit_item="BRD-100"))
        report = publish_ingest(settings, result, spool, timeout=120)
        assert report.remaining == 0 and report.spooled == len(result.batches) + len(result.dead_letters) + len(result.unknown) + len(result.epcis)
        events += [e for b in result.batches for e in b["events"]]
        letters += result.dead_letters + result.unknown
    client = drained(stack)

    expected = reference.edges(reference.unique(events))
    stored = {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges")}
    assert stored == expected, (len(stored - expected), len(expected - stored))

    rows = sql(client, "SELECT DISTINCT dead_letter_id, stage, topic, offset, reason, event_kind FROM dead_letters")
    # plant_document's two events with nothing for genealogy are no dead letters: they are kept whole in
    # epcis_events (the EPCIS query interface), with every other EPCIS event that was not rejected.
    assert sorted((s, t, o) for _, s, t, o, _, _ in rows) == sorted([
        ("unknown", "line1_stations.jsonl", 2), ("ingest", "line1_stations.jsonl", 13),
        ("ingest", "plant_document.jsonld", 1), ("ingest", "plant_document.jsonld", 1),
        ("unknown", "line1_stations.jsonl", 11)])
    assert {r[0] for r in rows} == {d["dead_letter_id"] for d in letters}
    for _, stage, topic, offset, reason, _ in rows:
        assert reason.startswith(f"{topic}:{offset}"), reason  # file and line
    reasons = " | ".join(r[4] for r in rows)
    assert "#Materials[2]: package REEL-L-0009 kitted onto carrier" in reasons and "#eventList[3]: childEPCs[1]" in reasons
    # The URN and Digital Link transformation files are the same events (one row each), plant_document 6 of 8.
    kept = {e["event_id"] for name, fmt in files if fmt == "epcis" for e in ingest_path(FIXTURES / name, fmt).epcis}
    assert kept and set(sql(client, "SELECT groupUniqArray(event_id) FROM epcis_events")[0][0]) == kept
