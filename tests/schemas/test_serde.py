"""Confluent wire format with the repository's schemas."""

from pathlib import Path

import pytest

from genealogy import schemas
from genealogy.producers.simulator import Plant


def test_capture_batches_round_trip():
    serde = schemas.local_serde()
    for batch in Plant(units=30, lot_size=10, faulty_units=3, batch_size=7, bad_events=3).generate().batches():
        data = serde.encode(schemas.CAPTURE, batch)
        assert data[0] == 0 and int.from_bytes(data[1:5], "big") == schemas.LOCAL_IDS[schemas.CAPTURE]
        assert serde.decode(data) == (schemas.CAPTURE, batch)


@pytest.mark.parametrize("data,reason", [
    (b"\x00\x00", "shorter than"),
    (b"{not avro}", "magic byte"),
    (b"\x00\x00\x00\x00\x63abc", "unknown schema id 99"),
    (b"\x00\x00\x00\x00\x01\x99", "does not match genealogy.CaptureBatch"),
])
def test_undecodable_messages_say_why(data, reason):
    with pytest.raises(schemas.DecodeError, match=reason):
        schemas.local_serde().decode(data)


def test_expecting_another_schema_is_an_error():
    serde = schemas.local_serde()
    data = serde.encode(schemas.EDGES, {"batch_id": "b", "edges": [], "units": []})
    with pytest.raises(schemas.DecodeError, match="expected genealogy.CaptureBatch"):
        serde.decode(data, expect=schemas.CAPTURE)


def test_capture_written_before_v2_stays_readable():
    """Capture v1 (id 1) is what the broker and ClickHouse's capture_batches hold from before the v2
    kinds; the join state's rebuild replays it. New capture is written as v2 (its own id)."""
    import io
    import json

    import fastavro

    v1 = fastavro.parse_schema(json.loads((Path(schemas.__file__).parent / "capture_batch.v1.avsc").read_text()))
    serde = schemas.local_serde()
    for batch in Plant(units=20, lot_size=10, faulty_units=3, batch_size=7).generate().batches():
        buf = io.BytesIO()
        buf.write(b"\x00\x00\x00\x00\x01")
        fastavro.schemaless_writer(buf, v1, batch)
        assert serde.decode(buf.getvalue(), expect=schemas.CAPTURE) == (schemas.CAPTURE, batch)
    assert schemas.LOCAL_IDS[schemas.CAPTURE] not in schemas.PAST_IDS

    v2_only = {"batch_id": "b", "source": "GR-1", "sent_ms": 1, "events": [("genealogy.MaterialIdentified", {
        "event_id": "e", "event_ms": 1_800_000_000_000, "station": "GR-1", "package": {"kind": "lot", "item": "IPN1", "ident": "R1"},
        "supplier_lot": {"kind": "lot", "item": "MPN1", "ident": "L1"}, "supplier": None, "operator": None})]}
    data = serde.encode(schemas.CAPTURE, v2_only)
    assert int.from_bytes(data[1:5], "big") == schemas.LOCAL_IDS[schemas.CAPTURE]
    assert serde.decode(data) == (schemas.CAPTURE, v2_only)

    # Capture v2 (id 5), before UnitRouted, stays readable too.
    v2 = fastavro.parse_schema(json.loads((Path(schemas.__file__).parent / "capture_batch.v2.avsc").read_text()))
    buf = io.BytesIO()
    buf.write(b"\x00\x00\x00\x00\x05")
    fastavro.schemaless_writer(buf, v2, v2_only)
    assert serde.decode(buf.getvalue(), expect=schemas.CAPTURE) == (schemas.CAPTURE, v2_only)


def test_capture_written_before_associated_stays_readable():
    """Capture v3 (id 6, before Associated) is what the broker and capture_batches hold until this version:
    it still decodes, to the same record. New capture (id 13) carries Associated; v3 could not."""
    import io
    import json

    import fastavro

    v3 = fastavro.parse_schema(json.loads((Path(schemas.__file__).parent / "capture_batch.v3.avsc").read_text()))
    serde = schemas.local_serde()
    assert schemas.PAST_IDS[6] == (schemas.CAPTURE, "capture_batch.v3.avsc") and schemas.LOCAL_IDS[schemas.CAPTURE] == 13
    routed = {"batch_id": "b", "source": "AOI-1", "sent_ms": 1, "events": [("genealogy.UnitRouted", {
        "event_id": "e", "event_ms": 1_800_000_000_000, "station": "AOI-1", "unit": {"kind": "serial", "item": "BRD", "ident": "U1"},
        "route": "lane", "name": "2", "note": "WorkStarted.Lane"})]}
    for batch in [routed, *Plant(units=10, lot_size=5, batch_size=7).generate().batches()]:
        buf = io.BytesIO()
        buf.write(b"\x00\x00\x00\x00\x06")
        fastavro.schemaless_writer(buf, v3, batch)
        assert serde.decode(buf.getvalue(), expect=schemas.CAPTURE) == (schemas.CAPTURE, batch)

    associated = {"batch_id": "b", "source": "sgln:4012345000016", "sent_ms": 1, "events": [("genealogy.Associated", {
        "event_id": "e", "event_ms": 1_800_000_000_000, "station": "sgln:4012345000016",
        "parent": {"kind": "asset", "item": "grai", "ident": "04012345555554987"},
        "contents": [{"kind": "asset", "item": "giai", "ident": "400000112345"}], "operator": None})]}
    data = serde.encode(schemas.CAPTURE, associated)
    assert int.from_bytes(data[1:5], "big") == 13
    assert serde.decode(data) == (schemas.CAPTURE, associated)
    with pytest.raises(ValueError):  # the v3 writer has no Associated record
        fastavro.schemaless_writer(io.BytesIO(), v3, associated)


@pytest.mark.parametrize("schema_id", sorted(schemas.PAST_IDS))
def test_every_past_version_stays_readable(schema_id):
    """Whatever an earlier version wrote under its id decodes with this version's serde, to the same record."""
    import io
    import json

    import fastavro

    name, file = schemas.PAST_IDS[schema_id]
    writer = fastavro.parse_schema(json.loads((Path(schemas.__file__).parent / file).read_text()))
    serde = schemas.local_serde()
    if name == schemas.CAPTURE:
        records = list(Plant(units=10, lot_size=5, batch_size=7).generate().batches())
    else:
        records = [{"batch_id": "b", **{f["name"]: {c["name"]: [] for c in f["type"]["fields"]}
                                        for f in writer["fields"] if f["name"] != "batch_id"}}]
    for record in records:
        buf = io.BytesIO()
        buf.write(b"\x00" + schema_id.to_bytes(4, "big"))
        fastavro.schemaless_writer(buf, writer, record)
        assert serde.decode(buf.getvalue(), expect=name) == (name, record)
    assert schema_id not in schemas.LOCAL_IDS.values()
