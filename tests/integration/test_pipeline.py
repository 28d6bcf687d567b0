"""End to end on the embedded stack: real Tansu broker, real Faust worker(s), real embedded ClickHouse.

A simulated plant with out-of-order delivery, duplicates, invalid events and a
corrupt message is streamed through; what lands in ClickHouse must equal the
brute-force reference computed from the same capture log.
"""

import json
import os
import subprocess
import sys

import pytest

from genealogy.producers.epcis import map_epcis
from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import Plant
from genealogy.stack import Stack
from tests.support import reference
from tests.support.paths import FIXTURES
from tests.support.stack import ServiceClient, check_against_reference, cli, free_port, sql, start_stack, wait_drained

pytestmark = pytest.mark.integration


def plant() -> Plant:
    return Plant(units=600, lot_size=200, faulty_units=30, seed=11, batch_size=40, disorder_ms=4_000,
                 duplicate_every=9, bad_events=3, reel_size=150).generate()


def run_plant(stack: Stack, p: Plant) -> ServiceClient:
    publisher = Publisher(stack.settings)
    publisher.publish(p.batches())
    publisher.send_raw(b"ASSY-1", b"\x07 not a capture batch")
    publisher.flush()
    client = ServiceClient.for_settings(stack.settings)
    wait_drained(client, settle_s=4.0, timeout=240)
    return client


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """One stack fed with the plant once; the tests that share it only read, or re-send the same feed."""
    stack = start_stack(tmp_path_factory.mktemp("one-worker"))
    try:
        run_plant(stack, plant())
        yield stack
    finally:
        stack.stop()


def test_one_worker_matches_reference(stack):
    check_against_reference(ServiceClient.for_settings(stack.settings), plant())


def test_replaying_the_whole_feed_changes_nothing(stack):
    p = plant()
    client = ServiceClient.for_settings(stack.settings)
    before = sql(client, "SELECT (SELECT uniqExact(edge_id) FROM edges), (SELECT uniqExact(unit) FROM units)")
    code, recall_before = client.get("/recall", lot=p.faulty_lot)
    Publisher(stack.settings).publish(p.batches())
    wait_drained(client, settle_s=4.0, timeout=240)
    assert sql(client, "SELECT (SELECT uniqExact(edge_id) FROM edges), (SELECT uniqExact(unit) FROM units)") == before
    code, recall_after = client.get("/recall", lot=p.faulty_lot)
    recall_before.pop("query_ms"), recall_after.pop("query_ms")
    assert recall_after == recall_before


def test_cli_status_recall_trace_and_sql(stack):
    status = cli(stack, "status", "--json")
    assert status.returncode == 0, status.stderr
    body = json.loads(status.stdout)
    assert body["counts"]["edges"] > 0
    # What the workers' offset check repaired (streams.progress), from their ready files.
    assert {k: type(v) for k, v in body["consumer_repairs"].items()} == {"read_back": int, "redelivered": int}
    # The join state the workers hold (the RSS benchmark reads memory against it).
    assert body["worker_state"]["stations"] > 0 and body["worker_state"]["table_keys"] > body["worker_state"]["stations"]
    human_status = cli(stack, "status").stdout
    assert "consumer repairs" in human_status and "join state" in human_status

    by_bare_id = cli(stack, "recall", "--lot", "SUP-CAP-0013", "--json")
    assert by_bare_id.returncode == 0, by_bare_id.stderr
    body = json.loads(by_bare_id.stdout)
    assert body["target"] == "lot:CAP-47U:SUP-CAP-0013" and body["serial_scope"]["count"] == 30

    human = cli(stack, "recall", "--lot", "SUP-CAP-0013")
    assert "serial-level" in human.stdout and "30" in human.stdout

    missing = cli(stack, "recall", "--lot", "NO-SUCH-LOT", "--json")
    assert missing.returncode == 1 and "NO-SUCH-LOT" in json.loads(missing.stdout)["error"]

    trace = cli(stack, "trace", "--serial", "P00000005", "--json")
    assert trace.returncode == 0 and json.loads(trace.stdout)["supplier_lots"]

    rows = cli(stack, "sql", "SELECT count() FROM units_final WHERE production_lot = {l:String}", "-p", "l=lot:PRD-500:PL-PRD-500-0001", "--json")
    assert json.loads(rows.stdout)["rows"] == [[200]]


def test_two_workers_give_the_same_edges_as_one(tmp_path):
    stack = start_stack(tmp_path, workers=2)
    try:
        p = plant()
        check_against_reference(run_plant(stack, p), p)
    finally:
        stack.stop()


@pytest.mark.parametrize("fmt", ["native", "cfx"])
def test_demo_reproduces_the_brief(tmp_path, fmt):
    """--format cfx: the stations load reels and goods receipt names their supplier lots; the recall of
    the faulty supplier lot goes through its reels to the same units."""
    env = {**os.environ, "GENEALOGY_BROKER_PORT": str(free_port()), "GENEALOGY_HTTP_PORT": str(free_port())}
    run = subprocess.run([sys.executable, "-m", "genealogy.cli", "demo", "--format", fmt, "--json",
                          "--data-dir", str(tmp_path / "demo")], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    body = json.loads(run.stdout)
    assert (body["serial_scope"]["count"], body["lot_scope"]["count"], body["difference"]) == (140, 5000, 4860)
    assert body["store_counts"]["dead_letters"] == 4


def test_process_window_linkage_and_granularity_from_the_cli(stack):
    # ASSY-1 completes a unit every 2 s from 08:00:31; a 200 s window holds 100 of them.
    window = cli(stack, "recall", "--station", "ASSY-1", "--since", "2026-01-05T08:00:30Z",
                 "--until", "2026-01-05T08:03:50Z", "--json")
    assert window.returncode == 0, window.stderr
    body = json.loads(window.stdout)
    products = [u for u in body["serial_scope"]["units"] if u.startswith("serial:PRD-500:")]
    assert len(products) == 100 and body["cartons" if False else "containers"] and body["shipments"]

    bad_window = cli(stack, "recall", "--station", "ASSY-1", "--json")
    assert bad_window.returncode == 2

    link = cli(stack, "linkage", "--json")
    assert link.returncode == 0, link.stderr
    report = json.loads(link.stdout)
    assert report["units"]["total"] == 1_200 and report["units"]["complete_pct"] > 99

    gran = cli(stack, "granularity", "--lot", "SUP-CAP-0013", "--unit-value", "250", "--json")
    assert gran.returncode == 0, gran.stderr
    g = json.loads(gran.stdout)
    assert (g["target"]["serial"], g["target"]["lot"]) == (30, 200)
    assert "granularity" not in cli(stack, "linkage").stderr.lower()


def test_standards_ingest_and_epcis_capture(tmp_path):
    stack = start_stack(tmp_path)
    try:
        standards_ingest_and_epcis_capture(stack)
    finally:
        stack.stop()


def standards_ingest_and_epcis_capture(stack):
    fixtures = str(FIXTURES)
    epcis = cli(stack, "ingest", "--format", "epcis", os.path.join(fixtures, "epcis", "plant_document.jsonld"), "--json")
    assert epcis.returncode == 1, epcis.stderr  # the fixture holds rejects on purpose
    summary = json.loads(epcis.stdout)
    assert summary["files"][0]["events"] > 0 and summary["rejects"] > 0
    assert all(r.startswith("plant_document.jsonld:") for r in summary["files"][0]["reasons"])
    assert summary["remaining_in_spool"] == 0

    cfx = cli(stack, "ingest", "--format", "cfx", os.path.join(fixtures, "cfx", "line1_stations.jsonl"))
    assert cfx.returncode == 1 and "rejected" in cfx.stderr

    client = ServiceClient.for_settings(stack.settings)
    with open(os.path.join(fixtures, "epcis", "transformation_dl.jsonld"), "rb") as f:
        response = client.http.request("POST", f"{client.base_url}/capture", body=f.read(),
                                       headers={**client.headers, "Content-Type": "application/ld+json"})
    assert response.status == 202, response.data
    accepted = json.loads(response.data)
    assert accepted["accepted"]["events"] > 0 and accepted["rejects"] == []
    garbage = client.http.request("POST", f"{client.base_url}/events", body=b"   ", headers=client.headers)
    assert garbage.status == 400
    # GS1's AssociationEvent examples: lots put into a returnable asset (e), a sensor fitted in a cold room (b),
    # the sensor unpaired from an asset (c, DELETE: a note, no edge).
    associations = {}
    for name in "bce":
        with open(FIXTURES / "epcis" / "gs1" / "AssociationEvent" / f"AssociationEvent-{name}.jsonld", "rb") as f:
            body = f.read()
        response = client.http.request("POST", f"{client.base_url}/capture", body=body,
                                       headers={**client.headers, "Content-Type": "application/ld+json"})
        assert response.status == 202, response.data
        associations[name] = map_epcis(json.loads(body), origin=name)

    wait_drained(client, settle_s=4.0, timeout=240)
    rows = sql(client, "SELECT count() FROM dead_letters_final WHERE stage = 'ingest' AND reason LIKE 'plant_document.jsonld:%'")
    assert rows[0][0] == summary["rejects"]
    # The HTTP capture made transformation edges from the Digital Link document.
    assert sql(client, "SELECT count() FROM edges WHERE relation = 'transformed' AND station != 'COAT-1'")[0][0] > 0

    # The associations landed as the brute-force reference says, and a recall of an associated lot lists its asset.
    expected = reference.edges([e for r in associations.values() for e in r.events])
    assert {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges WHERE relation = 'associated'")} \
        == expected and expected
    for child in sorted({c for c, _, _ in expected}):
        code, answer = client.get("/recall", node=child)
        assert code == 200, answer
        reached = reference.reach_forward(expected, child)
        assert answer["assets"] == sorted(n for n in reached if n.startswith("asset:"))
        assert answer["locations"] == sorted(n for n in reached if n.startswith("location:"))
        assert answer["assets"] or answer["locations"]


def test_commands_refuse_a_data_dir_with_no_running_stack(stack, tmp_path):
    """Stack A runs on the default-style ports; a command given data directory B (no stack there)
    must fail clearly and must not feed or ask A."""
    client = ServiceClient.for_settings(stack.settings)
    before = sql(client, "SELECT count() FROM capture_batches")
    env = {**os.environ, **stack.settings.child_env()}  # A's ports: what a user's environment would say
    other = str(tmp_path / "B")
    for args in (["ingest", "--format", "epcis", str(FIXTURES / "epcis" / "transformation_dl.jsonld")],
                 ["status"], ["recall", "--lot", "SUP-CAP-0013"], ["simulate", "--units", "10"]):
        run = subprocess.run([sys.executable, "-m", "genealogy.cli", *args, "--data-dir", other], env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 3, (args, run.stdout, run.stderr)
        assert "no stack is running on" in run.stderr, (args, run.stderr)
    wait_drained(client, settle_s=2.0, timeout=120)
    assert sql(client, "SELECT count() FROM capture_batches") == before
