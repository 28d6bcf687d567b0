"""Error declarations through the sink into the real embedded ClickHouse: what a declared event contributed
leaves the tables answers read, whether the declaration is stored before or after the event, and every
retraction stays on record in `corrections`. The stored edges equal the brute-force reference."""

from __future__ import annotations

import io
import json
from pathlib import Path

import fastavro
import pytest

from genealogy import schemas
from genealogy.domain.derive import derive
from genealogy.domain.ids import gs1_check_digit
from genealogy.producers.epcis import map_epcis
from genealogy.producers.mapping import by_station
from genealogy.settings import Settings
from genealogy.sinks.kafka_sink import KafkaSink, Rows
from genealogy.sinks.writer import Writer
from tests.sinks.test_sink import Message
from tests.support import reference

NOW = 2_000_000_000_000
TABLES = ["edges", "edges_by_parent", "units", "lot_members", "units_by_station", "nodes", "station_facts", "corrections"]
GTIN = "09521141000014"  # of urn:epc:id:sgtin:9521141.000001.*
SSCC_A, SSCC_B = ("0952114100000000" + n + gs1_check_digit("0952114100000000" + n) for n in "12")
PACKING = "urn:epc:id:sgln:9521141.00000.1"


def epcis(*events: dict) -> dict:
    return {"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"], "type": "EPCISDocument",
            "schemaVersion": "2.0", "creationDate": "2026-11-30T08:00:00Z", "epcisBody": {"eventList": list(events)}}


def units(n: int, first: int = 1) -> list[str]:
    return [f"urn:epc:id:sgtin:9521141.000001.U{k}" for k in range(first, first + n)]


def commissioned(eid: str, serials: list[str], lot: str) -> dict:
    return {"type": "ObjectEvent", "eventID": eid, "eventTime": "2026-11-30T08:00:00Z", "eventTimeZoneOffset": "+00:00",
            "epcList": serials, "action": "ADD", "bizStep": "commissioning", "readPoint": {"id": PACKING},
            "ilmd": {"cbvmda:lotNumber": lot}}


def packed(eid: str, serials: list[str], sscc: str, minute: int) -> dict:
    return {"type": "AggregationEvent", "eventID": eid, "eventTime": f"2026-11-30T08:{minute:02d}:00Z",
            "eventTimeZoneOffset": "+00:00", "parentID": f"https://id.gs1.org/00/{sscc}", "childEPCs": serials,
            "action": "ADD", "bizStep": "packing", "readPoint": {"id": PACKING}}


def declared(event: dict, *corrective: str) -> dict:
    return {**event, "errorDeclaration": {"declarationTime": "2026-11-30T09:00:00Z", "reason": "incorrect_data",
                                          "correctiveEventIDs": list(corrective)}}


def capture(doc: dict) -> list:
    r = map_epcis(doc, origin="t")
    assert not r.rejects, r.rejects
    return r.events


def messages(events: list, serde: schemas.Serde) -> list[bytes]:
    out = []
    for station, group in by_station(events).items():
        d = derive({"batch_id": f"b-{station}", "source": station, "sent_ms": 0, "events": group}, {}, 0, 10**12, now_ms=NOW)
        assert not d.rejected, d.rejected
        out += [serde.encode(schemas.DERIVED, m) for m in schemas.derived_messages(f"b-{station}", d)]
    return out


def sink(writer: Writer, data: list[bytes]) -> None:
    settings = Settings()
    s = KafkaSink(settings, writer, schemas.local_serde())
    rows = Rows()
    for offset, value in enumerate(data):
        s._route(Message(settings.topic_edges, value, offset), rows)
    rows.insert_into(writer)
    s.consumer.close()


@pytest.fixture
def fresh(connection):
    for t in TABLES:
        connection.command(f"TRUNCATE TABLE {t}")
    return Writer(connection)  # a new writer: nothing remembered from another test


def stored_edges(read_model) -> set:
    return {tuple(r) for r in read_model.rows("SELECT DISTINCT child, parent, relation FROM edges")}


def by_parent(read_model) -> set:
    return {tuple(r) for r in read_model.rows("SELECT DISTINCT child, parent, relation FROM edges_by_parent")}


SERIALS = units(3)
MADE = commissioned("urn:uuid:c0000000-0000-4000-8000-000000000001", SERIALS, "L1")
INTO_A = packed("urn:uuid:a0000000-0000-4000-8000-000000000001", SERIALS, SSCC_A, 10)
INTO_B = packed("urn:uuid:b0000000-0000-4000-8000-000000000001", SERIALS, SSCC_B, 20)
DECLARED = declared(INTO_A, INTO_B["eventID"])


@pytest.mark.parametrize("declaration_first", [False, True], ids=["declaration-after", "declaration-before"])
def test_a_declared_packing_leaves_the_tables_in_either_order(fresh, read_model, declaration_first):
    serde = schemas.local_serde()
    first, later = epcis(MADE, INTO_A, INTO_B), epcis(DECLARED)
    if declaration_first:
        first, later = later, first
    sink(fresh, messages(capture(first), serde))
    if not declaration_first:  # the declared edges were stored: the declaration must take them out
        assert any(parent.endswith(SSCC_A) for _, parent, _ in stored_edges(read_model))
    sink(fresh, messages(capture(later), serde))

    events = capture(epcis(MADE, INTO_A, INTO_B, DECLARED))
    expected = reference.edges(events)
    assert stored_edges(read_model) == by_parent(read_model) == expected
    assert not any(parent.endswith(SSCC_A) for _, parent, _ in expected) and any(p.endswith(SSCC_B) for _, p, _ in expected)
    rows = read_model.rows("SELECT kind, child, parent, declaration, reason, corrective FROM corrections ORDER BY child")
    assert [(k, c, r, cs) for k, c, _, _, r, cs in rows] == [
        ("edge", f"serial:{GTIN}:U{k}", "incorrect_data", INTO_B["eventID"]) for k in (1, 2, 3)]
    assert {d for *_, d, _, _ in rows} == {f"{INTO_A['eventID']}#declared"}


def test_a_declared_commissioning_takes_back_the_units_and_their_lot(fresh, read_model):
    serde = schemas.local_serde()
    other = commissioned("urn:uuid:c0000000-0000-4000-8000-000000000002", units(2, first=4), "L1")
    sink(fresh, messages(capture(epcis(MADE, other)), serde))
    assert len(read_model.rows("SELECT unit FROM lot_members")) == 5
    sink(fresh, messages(capture(epcis(declared(MADE))), serde))
    left = {u for (u,) in read_model.rows("SELECT unit FROM units")}
    assert left == {f"serial:{GTIN}:U{k}" for k in (4, 5)}
    assert {u for (u,) in read_model.rows("SELECT unit FROM lot_members")} == left
    assert {u for (u,) in read_model.rows("SELECT unit FROM units_by_station")} == left
    assert read_model.rows("SELECT count() FROM corrections WHERE kind = 'unit'") == [(3,)]
    # Sent again (a redelivery), the declared units stay out.
    sink(fresh, messages(capture(epcis(MADE)), serde))
    assert {u for (u,) in read_model.rows("SELECT unit FROM units")} == left


def test_what_earlier_workers_derived_still_lands(fresh, read_model):
    """DerivedColumns v1 (id 4), before the retractions group, is still read by the sink."""
    v1 = fastavro.parse_schema(json.loads((Path(schemas.__file__).parent / "derived_columns.v1.avsc").read_text()))
    out = []
    for message in [schemas.local_serde().decode(m)[1] for m in messages(capture(epcis(MADE, INTO_A)), schemas.local_serde())]:
        message.pop("retractions"), message.pop("unpacked")
        buf = io.BytesIO(b"\x00\x00\x00\x00\x04")
        buf.seek(5)
        fastavro.schemaless_writer(buf, v1, message)
        out.append(buf.getvalue())
    sink(fresh, out)
    assert stored_edges(read_model) == reference.edges(capture(epcis(MADE, INTO_A)))


def test_a_declared_unpacking_did_not_end_the_packing(fresh, read_model):
    """An AggregationEvent DELETE declared erroneous: the units never left carton A, in either order."""
    from genealogy.domain import recall

    out_of_a = {"type": "AggregationEvent", "eventID": "urn:uuid:d0000000-0000-4000-8000-000000000001",
                "eventTime": "2026-11-30T08:15:00Z", "eventTimeZoneOffset": "+00:00",
                "parentID": f"https://id.gs1.org/00/{SSCC_A}", "childEPCs": SERIALS[:1], "action": "DELETE",
                "bizStep": "unpacking", "readPoint": {"id": PACKING}}
    serde = schemas.local_serde()
    sink(fresh, messages(capture(epcis(MADE, INTO_A, out_of_a)), serde))
    assert read_model.rows("SELECT count() FROM unpacked") == [(1,)]
    unit = f"serial:{GTIN}:U1"
    assert recall.trace(read_model, unit)["containment"][0]["to_ms"] is not None
    sink(fresh, messages(capture(epcis(declared(out_of_a))), serde))
    assert read_model.rows("SELECT count() FROM unpacked") == [(0,)]
    assert recall.trace(read_model, unit)["containment"][0]["to_ms"] is None
    sink(fresh, messages(capture(epcis(out_of_a)), serde))  # redelivered after its declaration: stays out
    assert read_model.rows("SELECT count() FROM unpacked") == [(0,)]
    assert read_model.rows("SELECT kind, child FROM corrections") == [("unpack", unit)]
