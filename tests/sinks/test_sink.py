"""What the stream derived, as columns (schemas.DERIVED), into the real embedded ClickHouse through the sink's
routing: the same rows as the row-by-row EdgeBatch earlier workers wrote, and a corrupt message is a dead letter."""

import pytest

from genealogy import schemas
from genealogy.settings import Settings
from genealogy.producers.simulator import Plant
from genealogy.sinks.kafka_sink import KafkaSink, Rows
from genealogy.domain.derive import derive
from genealogy.schemas import derived_messages

NOW = 1_767_600_000_000 + 10**10
TABLES = ["edges", "edges_by_parent", "units", "lot_members", "units_by_station", "nodes", "station_facts", "dead_letters"]
EDGES_SQL = """SELECT edge_id, child, parent, relation, toUnixTimestamp64Milli(event_time), station, operator, work_order,
                      parent_lot, quantity, source_event FROM edges ORDER BY edge_id"""
UNITS_SQL = "SELECT unit, production_lot, toUnixTimestamp64Milli(completed_at), event_id FROM units ORDER BY event_id"
FACTS_SQL = "SELECT event_id, kind, toUnixTimestamp64Milli(event_time), subject, detail FROM station_facts ORDER BY event_id"


class Message:
    """The part of confluent_kafka.Message the sink reads (a real one needs a broker: tests/test_pipeline.py)."""

    def __init__(self, topic: str, value: bytes, offset: int):
        self._topic, self._value, self._offset = topic, value, offset

    def error(self):
        return None

    def topic(self):
        return self._topic

    def value(self):
        return self._value

    def key(self):
        return b"ST"

    def partition(self):
        return 0

    def offset(self):
        return self._offset

    def timestamp(self):
        return (1, 1_767_600_000_000)


@pytest.fixture(scope="module")
def derived():
    """A small plant's derivation, with scrapped units and machine states (facts) in it."""
    states, outs = {}, []
    for b in Plant(units=400, lot_size=100, faulty_units=10, batch_size=60).generate().batches():
        out = derive(b, states, grace_ms=0, retention_ms=10**12, now_ms=NOW)
        assert not out.rejected
        outs.append((b["batch_id"], out))
    assert sum(len(o.facts) for _, o in outs) and sum(len(o.units) for _, o in outs)
    return outs


def sink_into(writer, messages: list[bytes]) -> Rows:
    """The sink's routing and insert of these edges-topic messages into emptied tables (no broker: no commit)."""
    settings = Settings()
    sink = KafkaSink(settings, writer, schemas.local_serde())  # its consumer stays unsubscribed
    rows = Rows()
    for offset, value in enumerate(messages):
        sink._route(Message(settings.topic_edges, value, offset), rows)
    for t in TABLES:
        writer.connection.command(f"TRUNCATE TABLE {t}")
    rows.insert_into(writer)
    sink.consumer.close()
    return rows


def stored(read_model) -> tuple:
    return read_model.rows(EDGES_SQL), read_model.rows(UNITS_SQL), read_model.rows(FACTS_SQL)


def test_columns_round_trip_through_avro(derived):
    serde = schemas.local_serde()
    for batch_id, out in derived[:20]:
        for message in derived_messages(batch_id, out, rows=7):
            data = serde.encode(schemas.DERIVED, message)
            assert int.from_bytes(data[1:5], "big") == schemas.LOCAL_IDS[schemas.DERIVED] == 14
            assert serde.decode(data) == (schemas.DERIVED, message)
        chunks = list(derived_messages(batch_id, out, rows=7))
        assert [e for m in chunks for e in m["edges"]["edge_id"]] == [e["edge_id"] for e in out.edges]


def test_the_sink_stores_columns_as_it_stored_rows(writer, read_model, derived):
    """A rolling upgrade leaves EdgeBatch messages of older workers in the topic: both kinds land alike."""
    serde = schemas.local_serde()
    as_columns = [serde.encode(schemas.DERIVED, m) for b, out in derived for m in derived_messages(b, out)]
    as_rows = [serde.encode(schemas.EDGES, {"batch_id": b, "edges": out.edges, "units": out.units, "facts": out.facts})
               for b, out in derived]
    sink_into(writer, as_columns)
    from_columns = stored(read_model)
    sink_into(writer, as_rows)
    from_rows = stored(read_model)
    expected_edges = sorted((e["edge_id"], e["child"], e["parent"], e["relation"], e["event_ms"], e["station"], e["operator"],
                             e["work_order"], e["parent_lot"], e["quantity"], e["source_event"]) for _, o in derived for e in o.edges)
    assert from_columns == from_rows
    assert [tuple(r) for r in from_columns[0]] == expected_edges
    assert len(from_columns[1]) == sum(len(o.units) for _, o in derived)
    assert len(from_columns[2]) == sum(len(o.facts) for _, o in derived)
    # the materialized views ran on the columnar insert too
    assert read_model.rows("SELECT count() FROM edges_by_parent")[0][0] == len(expected_edges)


def test_columns_of_different_lengths_are_a_dead_letter_and_nothing_else_of_it_lands(writer, read_model, derived):
    serde = schemas.local_serde()
    batch_id, out = next((b, o) for b, o in derived if o.edges and o.units)
    good, bad = list(derived_messages(batch_id, out))[0], list(derived_messages(batch_id, out))[0]
    bad["edges"]["child"] = bad["edges"]["child"][:-1]
    rows = sink_into(writer, [serde.encode(schemas.DERIVED, bad), serde.encode(schemas.DERIVED, good)])
    assert len(rows.dead) == 1 and "columns of different lengths" in rows.dead[0][2] and rows.dead[0][5] == 0
    assert len(read_model.rows(EDGES_SQL)) == len(good["edges"]["edge_id"])  # the good message only
    assert len(read_model.rows(UNITS_SQL)) == len(good["units"]["unit"])


def test_impossible_times_clamp_to_the_epoch(writer, read_model):
    serde = schemas.local_serde()
    edge = {"edge_id": 1, "child": "lot:A:1", "parent": "serial:P:1", "relation": "installed", "event_ms": -5,
            "station": "ST", "operator": "", "work_order": "", "parent_lot": "", "quantity": 1.0, "source_event": "e"}
    message = {"batch_id": "b", "edges": schemas.columns([edge, {**edge, "edge_id": 2, "event_ms": 10**15}], "edges"),
               "units": schemas.columns([], "units"), "facts": schemas.columns([], "facts"),
               "retractions": schemas.columns([], "retractions"), "unpacked": schemas.columns([], "unpacked")}
    sink_into(writer, [serde.encode(schemas.DERIVED, message)])
    assert [r[4] for r in read_model.rows(EDGES_SQL)] == [0, 0]


class KeyedMessage(Message):
    def __init__(self, topic: str, key: bytes | None, value: bytes, offset: int):
        super().__init__(topic, value, offset)
        self._key = key

    def key(self):
        return self._key


def test_epcis_events_land_once_per_event_id_and_a_bad_one_is_a_dead_letter(writer, read_model):
    """The sink's route for settings.topic_epcis: an event's JSON -> one epcis_events row per event id
    (a re-sent event replaces its row); not JSON, no event id or no eventTime -> a sink dead letter."""
    import json

    settings = Settings()
    sink = KafkaSink(settings, writer, schemas.local_serde())
    for t in ("epcis_events", "dead_letters"):
        writer.connection.command(f"TRUNCATE TABLE {t}")
    event = {"type": "ObjectEvent", "eventTime": "2026-01-05T08:00:00Z", "recordTime": "2026-01-06T08:00:00Z",
             "action": "OBSERVE", "epcList": ["urn:epc:id:sgtin:0614141.107346.2017"],
             "sensorElementList": [{"sensorReport": [{"type": "Temperature", "value": 5}]}]}
    later = {**event, "recordTime": "2026-01-07T08:00:00Z"}
    rows = Rows()
    for offset, (key, value) in enumerate([(b"ev-1", json.dumps(event).encode()), (b"ev-1", json.dumps(later).encode()),
                                           (b"ev-2", b"not json"), (None, json.dumps(event).encode()),
                                           (b"ev-3", json.dumps({"type": "ObjectEvent"}).encode())]):
        sink._route(KeyedMessage(settings.topic_epcis, key, value, offset), rows)
    assert len(rows.epcis) == 2 and len(rows.dead) == 3
    rows.insert_into(writer)
    assert read_model.rows("SELECT event_id, toUnixTimestamp64Milli(record_time), epcs_norm, sensor_elements != '' "
                           "FROM epcis_events FINAL") == [("ev-1", 1767772800000, ["serial:10614141073464:2017"], 1)]
    assert sorted(r[0] for r in read_model.rows("SELECT offset FROM dead_letters WHERE stage = 'sink'")) == [2, 3, 4]
