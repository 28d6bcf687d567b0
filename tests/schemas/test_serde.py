"""Confluent wire format with the repository's schemas."""

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
