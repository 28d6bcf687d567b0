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
from tests.support import reference

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


# --- AssociationEvent, and GIAI / GRAI / SGLN / GSRN objects -----------------------------------------------
# The node ids below are the Tag Data Standard's rule done by hand (tests/domain/test_ids.py checks the rule):
# a GRAI is '0' + company prefix + asset type + check digit + serial, a GIAI company prefix + reference, an
# SGLN's GLN has its check digit and keeps an extension other than 0, an LGTIN's GTIN its indicator first.
TRAY_987, TRAY_98765 = "asset:grai:04012345555554987", "asset:grai:0401234555555498765"   # returnable assets
SENSOR_1, SENSOR_2 = "asset:giai:400000112345", "asset:giai:400000112346"               # sensor devices
COLD_ROOM = "location:sgln:4012345000023.12"                                              # urn:epc:id:sgln:4012345.00002.12
LOT_123, LOT_456 = "lot:04023333020008:123", "lot:04012345055559:456"
LOT_998877_A, LOT_998877_B = "lot:04023333020008:998877", "lot:04012345123456:998877"
INV = "transaction:inv:urn:epcglobal:cbv:bt:4023333000000:54545"
PO_GDTI, PEDIGREE_GSRN = "transaction:po:urn:epc:id:gdti:0614141.00001.1618034", "transaction:pedigree:urn:epc:id:gsrn:0614141.0000010253"
PO_ACME, DESADV = "transaction:po:http://transaction.acme.com/po/12345678", "transaction:desadv:urn:epcglobal:cbv:bt:0614141073467:1152"


def linked(members, *transactions):
    return {(m, t, "transacted") for m in members for t in transactions}


ASSOCIATION_EXAMPLES = {
    # assembling: a sensor device mounted on a returnable asset
    "AssociationEvent/AssociationEvent-a.jsonld": ({(SENSOR_1, TRAY_987, "associated")}, [], []),
    # installing: a sensor fitted in a location (a cold storage room); the SGLN is the parent
    "AssociationEvent/AssociationEvent-b.jsonld": ({(SENSOR_2, COLD_ROOM, "associated")}, [], []),
    # removing / disassembling (DELETE): associations that end, a note each until intervals exist
    "AssociationEvent/AssociationEvent-c.jsonld": (set(), [], []),  # DELETE (removing): an Unpacked
    "AssociationEvent/AssociationEvent-d.jsonld": (set(), [], []),  # DELETE (disassembling): an Unpacked
    # assembling with quantities: 600 of each of two lots put into a returnable asset
    "AssociationEvent/AssociationEvent-e.jsonld": ({(LOT_123, TRAY_987, "associated"), (LOT_456, TRAY_987, "associated")}, [], []),
    # installing two assets and four of a lot in a returnable asset, under an invoice
    "AssociationEvent/AssociationEvent-f.jsonld": (
        {(c, TRAY_98765, "associated") for c in (SENSOR_1, SENSOR_2, LOT_998877_A)}
        | linked([TRAY_98765, SENSOR_1, SENSOR_2, LOT_998877_A], INV), [], []),
    "AssociationEvent/AssociationEvent-g.jsonld": (set(), [], []),  # DELETE (disassembling): an Unpacked
    "AssociationEvent/AssociationEvent-h.jsonld": (set(), [], []),  # DELETE (disassembling): an Unpacked
    # assembling: two assets, a class (untraceable) and a lot into a returnable asset, two transactions
    "WithFullCombinationOfFields/association_event_all_possible_fields.jsonld": (
        {(c, TRAY_987, "associated") for c in (SENSOR_1, SENSOR_2, "class:04012345987652:*", LOT_998877_B)}
        | linked([TRAY_987, SENSOR_1, SENSOR_2, "class:04012345987652:*", LOT_998877_B], PO_GDTI, PEDIGREE_GSRN),
        [], ["class:04012345987652:*"]),
    # the same installing as f under three transactions (the file shows JSON 'type' disambiguation)
    "Example-Type-sourceOrDestination,measurement,bizTransaction.jsonld": (
        {(c, TRAY_98765, "associated") for c in (SENSOR_1, SENSOR_2, LOT_998877_A)}
        | linked([TRAY_98765, SENSOR_1, SENSOR_2, LOT_998877_A], INV, PO_ACME, DESADV), [], []),
    # healthcare: a patient's service relation (GSRN) linked to a discharge document (GDTI, no type);
    # rail: a wagon (GIAI) linked to a passage. Both were rejected before GSRN and GIAI were identifiers.
    "Example-TransactionEvents-2020_07_03y.jsonld": (
        {("party:gsrn:952520840000000010", "transaction:unspecified:urn:epc:id:gdti:95252084.0001.0003555480001000", "transacted"),
         ("asset:giai:952005385w2", "transaction:passage:http://transaction.examplerail.com/passage/xyz12345", "transacted")},
        [], []),
}


def derived_edges(events) -> set[tuple[str, str, str]]:
    found = set()
    for station, group in by_station(events).items():
        out = derive({"batch_id": "b", "source": station, "sent_ms": 0, "events": group}, {}, 10_000, 3_600_000,
                     now_ms=2_000_000_000_000)
        assert not out.rejected, out.rejected
        found |= {(e["child"], e["parent"], e["relation"]) for e in out.edges}
    return found


@pytest.mark.parametrize("name", sorted(ASSOCIATION_EXAMPLES))
def test_association_examples_map_to_exactly_these_edges(name):
    edges, notes, untraceable = ASSOCIATION_EXAMPLES[name]
    doc = json.loads((GS1 / name).read_text())
    declared = any("errorDeclaration" in e for e in doc["epcisBody"]["eventList"])
    for raw in doc["epcisBody"]["eventList"]:  # the events as first captured (g and all-fields are re-sent declared)
        raw.pop("errorDeclaration", None)
    r = map_epcis(doc, origin=name)
    assert not r.rejects, r.rejects
    if declared:  # as re-sent with the declaration: no edge stays, exactly those edges are taken back
        outs = derived(map_epcis(json.loads((GS1 / name).read_text()), origin=name).events)
        assert not any(out.edges for out in outs)
        taken = [x for out in outs for x in out.retractions]
        assert {(x["child"], x["parent"], x["relation"]) for x in taken if x["kind"] == "edge"} == edges
        deletes = [e for e in doc["epcisBody"]["eventList"] if e.get("action") == "DELETE"]
        assert bool(deletes) == any(x["kind"] == "unpack" for x in taken)  # a declared DELETE: the association never ended
    assert derived_edges(r.events) == reference.edges(r.events) == edges
    assert r.unknown == len(notes) and all(n in note for n, note in zip(notes, r.notes))
    assert r.untraceable == untraceable
    associated = [e for k, e in r.events if k == "genealogy.Associated"]
    assert len(associated) == (1 if any(rel == "associated" for *_, rel in edges) else 0)
    if associated:  # the readPoint is the station, named as its SGLN node is
        read_point = json.loads((GS1 / name).read_text())["epcisBody"]["eventList"][0]["readPoint"]["id"]
        assert "location:" + associated[0]["station"] == ids.normalize(read_point)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: str(p.relative_to(GS1)))
def test_every_gs1_example_derives_the_reference_edges(path):
    """The stream derivation and the brute-force reference agree on every example's mapped events."""
    r = map_epcis(json.loads(path.read_text()), origin=path.name)
    assert derived_edges(r.events) == reference.edges(r.events)


def test_an_association_delete_ends_it_and_never_becomes_an_edge():
    """DELETE with children (h) and without (d): an Unpacked of the parent (the association holds until
    then, like a packing); changing the action of a to DELETE gives no edge but ends a's association."""
    raw = json.loads((GS1 / "AssociationEvent/AssociationEvent-a.jsonld").read_text())
    event = raw["epcisBody"]["eventList"][0]
    assert derived_edges(map_epcis(event, origin="a").events) == {(SENSOR_1, TRAY_987, "associated")}
    for action in ("DELETE", "delete"):
        r = map_epcis(dict(event, action=action), origin="a")
        [(kind, e)] = r.events
        assert kind == "genealogy.Unpacked" and not r.unknown and derived_edges(r.events) == set()
        assert (ids.node(**e["container"]), [ids.node(**c) for c in e["contents"]]) == (TRAY_987, [SENSOR_1])
    observed = map_epcis(dict(event, action="OBSERVE"), origin="a")
    assert derived_edges(observed.events) == {(SENSOR_1, TRAY_987, "associated")}
    for name, children in (("d", 0), ("h", None)):
        doc = json.loads((GS1 / f"AssociationEvent/AssociationEvent-{name}.jsonld").read_text())
        [(kind, e)] = map_epcis(doc, origin=name).events
        expected = doc["epcisBody"]["eventList"][0].get("childEPCs") or []
        assert kind == "genealogy.Unpacked" and len(e["contents"]) == (children if children is not None else len(expected))


@pytest.mark.parametrize("change,reason", [
    ({"parentID": None}, "parentID: missing"),
    ({"childEPCs": []}, "at least one child"),
    ({"action": "MOVE"}, "action"),
    ({"parentID": "urn:epc:class:lgtin:4023333.002000.123"}, "is a lot"),
    ({"childEPCs": ["urn:epc:id:gsrn:95252084.000000001"]}, "only objects are associated"),
    ({"childEPCs": ["urn:epc:id:grai:4012345.55555"]}, "childEPCs[0]: "),
    ({"childEPCs": ["https://id.gs1.org/8003/04012345555554987"]}, "is the parentID itself"),
])
def test_an_association_that_cannot_be_mapped_is_rejected_naming_the_field(change, reason):
    event = json.loads((GS1 / "AssociationEvent/AssociationEvent-a.jsonld").read_text())["epcisBody"]["eventList"][0]
    [reject] = map_epcis({k: v for k, v in {**event, **change}.items() if v is not None}, origin="a").rejects
    assert reason in reject.reason


def test_the_same_association_in_digital_link_form_is_the_same_edge():
    event = json.loads((GS1 / "AssociationEvent/AssociationEvent-b.jsonld").read_text())["epcisBody"]["eventList"][0]
    dl = dict(event, parentID="https://id.gs1.org/414/4012345000023/254/12", childEPCs=["https://id.gs1.org/8004/400000112346"],
              readPoint={"id": "https://id.gs1.org/414/4012345000023"})
    del dl["eventID"]
    assert derived_edges(map_epcis(dl, origin="dl").events) == derived_edges(map_epcis(event, origin="urn").events) \
        == {(SENSOR_2, COLD_ROOM, "associated")}


def test_a_recall_of_something_associated_with_an_asset_lists_the_asset():
    """Lots put into a returnable asset (e) and a sensor in a cold room (b): the recall lists the asset and
    the location, as the brute-force forward reach says; the other relations' lists stay as they were."""
    from genealogy.domain.recall import recall
    from tests.support.graphs import MemGraph

    events = []
    for name in ("AssociationEvent/AssociationEvent-b.jsonld", "AssociationEvent/AssociationEvent-e.jsonld",
                 "Example_9.6.3-AggregationEvent.jsonld"):
        events += map_epcis(json.loads((GS1 / name).read_text()), origin=name).events
    rows = []
    for station, group in by_station(events).items():
        out = derive({"batch_id": "b", "source": station, "sent_ms": 0, "events": group}, {}, 10_000, 3_600_000,
                     now_ms=2_000_000_000_000)
        rows += [(e["child"], e["parent"], e["relation"], e["event_ms"], e["station"]) for e in out.edges]
    graph = MemGraph(rows, {})
    for target in (LOT_123, SENSOR_2, *{c for c, *_ in rows}):
        answer = recall(graph, target).as_dict()
        reached = reference.reach_forward({r[:3] for r in rows}, target)
        assert answer["assets"] == sorted(n for n in reached if n.startswith("asset:"))
        assert answer["locations"] == sorted(n for n in reached if n.startswith("location:"))
        assert answer["containers"] == sorted(n for n in reached if n.startswith("container:"))
    assert recall(graph, LOT_123).as_dict()["assets"] == [TRAY_987]
    assert recall(graph, SENSOR_2).as_dict()["locations"] == [COLD_ROOM]


def test_a_station_and_the_location_node_of_one_sgln_agree():
    """The readPoint's station (epcis.location) and an SGLN parent's node (ids) are parsed by two pieces of
    code: the same GLN and extension must give 'location:' + station, in URN and Digital Link form."""
    from hypothesis import given, strategies as st

    from genealogy.producers.epcis import location

    @given(st.integers(6, 12), st.text("0123456789", min_size=12, max_size=12),
           st.one_of(st.just("0"), st.text("ABCXYZabc0123456789-_", min_size=1, max_size=20)))
    def agree(prefix_len, digits12, extension):
        gln = digits12 + ids.gs1_check_digit(digits12)
        for text in (f"urn:epc:id:sgln:{digits12[:prefix_len]}.{digits12[prefix_len:]}.{extension}",
                     f"https://id.gs1.org/414/{gln}/254/{extension}"):
            assert "location:" + location(text, "readPoint.id") == ids.normalize(text)

    agree()


def test_content_ids_of_events_with_asset_identifiers_are_as_before():
    """Where no event hash can be computed, the content id hashes GIAI, GRAI, GSRN strings as written, as it
    did before they were identifiers: an event stored then keeps its id (its URN and Digital Link forms
    differ, as they did), while a GTIN's forms still hash alike."""
    from genealogy.producers.epcis import content_id

    event = json.loads((GS1 / "AssociationEvent/AssociationEvent-a.jsonld").read_text())["epcisBody"]["eventList"][0]
    as_dl = dict(event, childEPCs=["https://id.gs1.org/8004/400000112345"])
    assert content_id(event) != content_id(as_dl)
    sgtin = dict(event, childEPCs=["urn:epc:id:sgtin:0614141.812345.6789"])
    assert content_id(sgtin) == content_id(dict(event, childEPCs=["https://id.gs1.org/01/80614141123458/21/6789"]))
