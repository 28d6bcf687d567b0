"""The EPCIS mapper on GS1's own EPCIS 2.0 examples (tests/fixtures/epcis/gs1, copied unchanged from
the gs1/EPCIS repository; SOURCES.md names the commit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from genealogy.domain import ids
from genealogy.domain.derive import derive
from genealogy.producers.epcis import map_epcis
from genealogy.producers.mapping import by_station

GS1 = Path(__file__).parents[1] / "fixtures" / "epcis" / "gs1"
EXAMPLES = sorted(GS1.rglob("*.jsonld"))


def test_every_gs1_example_is_here():
    assert len(EXAMPLES) == 47


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(GS1)))
def test_every_gs1_example_maps_without_an_unexplained_loss(path):
    """Each event of a document is events, a reject with a reason, or counted unknown with a note."""
    doc = json.loads(path.read_text())
    r = map_epcis(doc, origin=path.name)
    assert r.events or r.rejects or r.unknown
    assert all(x.reason for x in r.rejects)
    assert len(r.notes) == r.unknown


@pytest.mark.parametrize("name,output", [
    ("WithErrorDeclaration/ErrorDeclarationAndCorrectiveEvent.jsonld", "class:04012345444445:*"),
    ("WithFullCombinationOfFields/transformation_event_all_possible_fields.jsonld", "class:04012345666663:*"),
])
def test_a_class_level_transformation_output_keeps_the_rest_of_the_event(name, output):
    """A class-level output is a class: node, reported untraceable; the event's other edges still land
    (it used to reject the whole event). Both examples carry an error declaration: the events are
    read here as they were first captured, without it."""
    doc = json.loads((GS1 / name).read_text())
    for raw in doc["epcisBody"]["eventList"]:
        raw.pop("errorDeclaration", None)
    r = map_epcis(doc, origin=name)
    transformed = [e for k, e in r.events if k == "genealogy.LotTransformed"]
    assert transformed and not [x for x in r.rejects if "class-level" in x.reason]
    outputs = {ids.node(**q["node"]) for e in transformed for q in e["outputs"]}
    assert output in outputs and output in r.untraceable
    edges = set()
    for station, events in by_station(r.events).items():
        out = derive({"batch_id": "b", "source": station, "sent_ms": 0, "events": events}, {}, 10_000, 3_600_000,
                     now_ms=2_000_000_000_000)
        assert not [x for x in out.rejected if x.kind == "genealogy.LotTransformed"], out.rejected
        edges |= {(e["child"], e["parent"], e["relation"]) for e in out.edges}
    assert any(parent == output and relation == "transformed" for _, parent, relation in edges)
    # Lot and serial outputs of the same event are there as well.
    assert {p for _, p, rel in edges if rel == "transformed"} == outputs


def test_business_transactions_of_an_event_are_named_by_the_recall():
    """GS1's Example 9.6.1 ships two SGTINs under a purchase order and a despatch advice (with two other
    events of the file): a recall from a shipped object names both, so a recall notice can name the order."""
    from genealogy.domain.recall import recall
    from tests.support.graphs import MemGraph

    doc = json.loads((GS1 / "Example_9.6.1-ObjectEvent.jsonld").read_text())
    r = map_epcis(doc, origin="9.6.1")
    links = [e for k, e in r.events if k == "genealogy.TransactionLinked"]
    assert {(e["transaction"]["item"], e["transaction"]["ident"]) for e in links} == {
        ("po", "http://transaction.acme.com/po/12345678"), ("desadv", "urn:epcglobal:cbv:bt:0614141073467:1152")}
    edges = []
    for station, events in by_station(r.events).items():
        out = derive({"batch_id": "b", "source": station, "sent_ms": 0, "events": events}, {}, 10_000, 3_600_000,
                     now_ms=2_000_000_000_000)
        assert not out.rejected
        edges += [(e["child"], e["parent"], e["relation"], e["event_ms"], e["station"]) for e in out.edges]
    shipped = next(e for e in links if e["transaction"]["item"] == "desadv")["members"][0]
    answer = recall(MemGraph(edges, {}), ids.node(**shipped)).as_dict()
    assert answer["business_transactions"] == sorted({
        "transaction:desadv:urn:epcglobal:cbv:bt:0614141073467:1152", "transaction:po:http://transaction.acme.com/po/12345678"}
        & {parent for child, parent, relation, *_ in edges if relation == "transacted" and child == ids.node(**shipped)})
    assert answer["business_transactions"]


def derived(events) -> list:
    outs = []
    for station, group in by_station(events).items():
        outs.append(derive({"batch_id": "b", "source": station, "sent_ms": 0, "events": group}, {}, 10_000, 3_600_000,
                           now_ms=2_000_000_000_000))
    return outs


def test_an_error_declaration_retracts_exactly_what_the_event_contributed():
    """GS1's Example 9.6.1 with an error declaration: the shipping event re-sent with errorDeclaration.
    It contributes no edge; it takes back the original's edges (the same ids), with reason and corrective ids."""
    doc = json.loads((GS1 / "WithErrorDeclaration/Example_9.6.1-ObjectEvent-with-error-declaration.jsonld").read_text())
    declared = doc["epcisBody"]["eventList"][0]
    r = map_epcis(doc, origin="d")
    [retracted] = [e for k, e in r.events if k == "genealogy.EventRetracted"]
    assert retracted["retracts"] == declared["eventID"] and retracted["reason"] == "incorrect_data"
    assert retracted["corrective_event_ids"] == declared["errorDeclaration"]["correctiveEventIDs"]

    original = json.loads(json.dumps(doc))
    original["epcisBody"]["eventList"] = [{k: v for k, v in declared.items() if k != "errorDeclaration"}]
    first = [e for out in derived(map_epcis(original, origin="o").events) for e in out.edges]
    assert {e["relation"] for e in first} == {"packed", "transacted"}

    outs = derived(r.events)
    kept = {e["source_event"] for out in outs for e in out.edges}
    assert declared["eventID"] not in kept  # the other event of the file still gives its edges
    taken = [x for out in outs for x in out.retractions]
    assert sorted(x["edge_id"] for x in taken) == sorted(e["edge_id"] for e in first)
    assert {(x["kind"], x["declaration"], x["reason"]) for x in taken} == {("edge", f"{declared['eventID']}#declared", "incorrect_data")}


def test_a_declared_commissioning_takes_back_its_unit_rows():
    doc = json.loads((GS1 / "WithFullCombinationOfFields/transformation_event_all_possible_fields.jsonld").read_text())
    r = map_epcis(doc, origin="d")
    [retracted] = [e for k, e in r.events if k == "genealogy.EventRetracted"]
    completions = [e for k, e in retracted["events"] if k == "genealogy.UnitCompleted"]
    units = [x for out in derived(r.events) for x in out.retractions if x["kind"] == "unit"]
    assert completions and sorted((x["child"], x["source_event"]) for x in units) == sorted(
        (ids.node(**c["unit"]), c["event_id"]) for c in completions)
