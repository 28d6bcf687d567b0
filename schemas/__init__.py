"""Avro contracts and the Confluent wire format (magic byte 0, 4-byte schema id, Avro body).

By default the ids come from this repository (``LOCAL_IDS``): stable, no
registry needed, and the same bytes a Confluent client would write. With a
Schema Registry URL the schemas are registered under ``<topic>-value``, and
DERIVED under ``<edges topic>-genealogy.DerivedColumns`` (the edges topic
carries two record types across an upgrade, which one subject's compatibility
check would refuse), and the registry's ids are used instead.

The stream writes what it derived as ``DERIVED`` (columns); ``EDGES``, the same
content row by row, is what earlier workers wrote, and the sink still reads it.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import time
from collections.abc import Mapping, Sequence
from importlib import resources
from typing import Any

import fastavro

CAPTURE = "genealogy.CaptureBatch"
EDGES = "genealogy.EdgeBatch"
DEAD_LETTER = "genealogy.DeadLetter"
DERIVED = "genealogy.DerivedColumns"

_FILES = {CAPTURE: "capture_batch.avsc", EDGES: "edge_batch.avsc", DEAD_LETTER: "dead_letter.avsc",
          DERIVED: "derived_columns.avsc"}
# Fixed ids for the repository's own registry. Never reuse or renumber an id:
# a new version of a schema gets a new id, so old messages stay readable.
LOCAL_IDS = {CAPTURE: 13, EDGES: 2, DEAD_LETTER: 3, DERIVED: 14}
# Earlier versions, read but no longer written: id -> (schema, file). Capture v1 (id 1) had no
# MaterialIdentified or UnitTested; v2 (id 5) appended them to the event union, v3 (id 6) UnitRouted,
# v4 (id 7) EventRetracted, v5 (id 9) Unpacked, v6 (id 11) Associated, v7: an EventRetracted may
# carry an Associated or an Unpacked (a declared DELETE), v8 (id 13) ComponentRemoved.
# DerivedColumns v1 (id 4) had no retractions group, v2 (id 8) no unpacked group, v3 (id 10) no removals.
PAST_IDS = {1: (CAPTURE, "capture_batch.v1.avsc"), 5: (CAPTURE, "capture_batch.v2.avsc"), 6: (CAPTURE, "capture_batch.v3.avsc"),
            7: (CAPTURE, "capture_batch.v4.avsc"), 9: (CAPTURE, "capture_batch.v5.avsc"), 11: (CAPTURE, "capture_batch.v6.avsc"),
            12: (CAPTURE, "capture_batch.v7.avsc"),
            4: (DERIVED, "derived_columns.v1.avsc"), 8: (DERIVED, "derived_columns.v2.avsc"),
            10: (DERIVED, "derived_columns.v3.avsc")}

_HEADER = struct.Struct(">bI")


class DecodeError(ValueError):
    """Bytes that are not a readable message of a known schema; the message says why."""


def schema_text(name: str) -> str:
    return resources.files(__name__).joinpath(_FILES[name]).read_text()


def parsed(name: str, file: str | None = None) -> Any:
    text = resources.files(__name__).joinpath(file).read_text() if file else schema_text(name)
    return fastavro.parse_schema(json.loads(text))


class Serde:
    """Encode/decode records of the contracts under a given id assignment. Writes the current version of
    each; reads the current ones, the earlier versions in ``past`` (id -> (name, parsed schema)), and any
    other id ``lookup`` (a registry) can turn into a schema text."""

    def __init__(self, ids: dict[str, int], past: dict[int, tuple[str, Any]] | None = None, lookup=None):
        self._ids = dict(ids)
        self._schemas = {name: parsed(name) for name in ids}
        self._by_id = {schema_id: (name, self._schemas[name]) for name, schema_id in ids.items()}
        self._by_id.update(past or {})
        self._lookup = lookup

    def _schema(self, schema_id: int) -> tuple[str, Any] | None:
        if schema_id not in self._by_id and self._lookup is not None:
            try:
                schema = fastavro.parse_schema(json.loads(self._lookup(schema_id)))
            except Exception:  # an id the registry does not know, or not Avro: the caller says "unknown"
                return None
            self._by_id[schema_id] = (schema["name"], schema)
        return self._by_id.get(schema_id)

    def encode(self, name: str, record: dict) -> bytes:
        buf = io.BytesIO()
        buf.write(_HEADER.pack(0, self._ids[name]))
        fastavro.schemaless_writer(buf, self._schemas[name], record)
        return buf.getvalue()

    def decode(self, data: bytes, expect: str | tuple[str, ...] | None = None) -> tuple[str, dict]:
        """(schema name, record); ``expect``: the schema, or schemas, the message must have."""
        if data is None or len(data) < _HEADER.size:
            raise DecodeError(f"message of {0 if data is None else len(data)} bytes is shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != 0:
            raise DecodeError(f"magic byte is {magic}, not 0: not Confluent Avro wire format")
        known = self._schema(schema_id)
        if known is None:
            raise DecodeError(f"unknown schema id {schema_id}")
        name, schema = known
        expected = (expect,) if isinstance(expect, str) else expect
        if expected is not None and name not in expected:
            raise DecodeError(f"schema id {schema_id} is {name}, expected {' or '.join(expected)}")
        try:
            record = fastavro.schemaless_reader(io.BytesIO(data[_HEADER.size:]), schema, return_record_name=True)
        except Exception as exc:  # fastavro raises several types for truncated or corrupt bodies
            raise DecodeError(f"Avro body does not match {name}: {type(exc).__name__}: {exc}") from exc
        return name, record


def _column_names() -> dict[str, tuple[str, ...]]:
    schema = json.loads(schema_text(DERIVED))
    return {f["name"]: tuple(c["name"] for c in f["type"]["fields"]) for f in schema["fields"] if f["name"] != "batch_id"}


# Group (edges, units, facts) -> its columns, in schema order.
COLUMNS = _column_names()


def columns(rows: Sequence[Mapping], group: str) -> dict[str, list]:
    """Rows (dicts with the group's fields) as one list per column, for a DERIVED message."""
    return {name: [row[name] for row in rows] for name in COLUMNS[group]}


def column_lengths(record: Mapping, group: str) -> int:
    """Rows in one group of a decoded DERIVED message; a group whose columns differ in length is corrupt."""
    lengths = {len(record[group][name]) for name in COLUMNS[group]}
    if len(lengths) != 1:
        raise DecodeError(f"{DERIVED} {group}: columns of different lengths {sorted(lengths)}")
    return lengths.pop()


# ~200 bytes an edge: keeps every edges message far below the 1 MB default request size.
EDGE_BATCH_ROWS = 2_000


def derived_messages(batch_id: str, out: Any, rows: int = EDGE_BATCH_ROWS):
    """What was derived, as schemas.DERIVED records (columns) of bounded size: one capture batch can
    resolve many pending units."""
    total = max(len(getattr(out, group)) for group in COLUMNS)
    for n, start in enumerate(range(0, total, rows)):
        yield {"batch_id": f"{batch_id}#{n}",
               **{group: columns(getattr(out, group)[start:start + rows], group) for group in COLUMNS}}


def dead_letter_id(topic: str, partition: int, offset: int, event_id: str = "") -> str:
    """Where a rejected record was: the same message (and event in it) always gets the same id, so a
    redelivered message does not add a dead letter."""
    return hashlib.blake2b(f"{topic}:{partition}:{offset}:{event_id}".encode(), digest_size=12).hexdigest()


def dead_letter(*, stage: str, reason: str, topic: str, partition: int, offset: int, source: str, payload: bytes,
                event_id: str = "", event_kind: str = "", ident: str | None = None,
                occurred_ms: int | None = None) -> dict:
    """A DEAD_LETTER record: what was rejected, where it came from and why. ``ident`` defaults to
    ``dead_letter_id`` of its place; producers that have no Kafka place yet pass their own."""
    return {"dead_letter_id": ident or dead_letter_id(topic, partition, offset, event_id), "stage": stage,
            "reason": reason, "topic": topic, "partition": partition, "offset": offset, "source": source,
            "event_id": event_id, "event_kind": event_kind, "payload": payload,
            "occurred_ms": int(time.time() * 1000) if occurred_ms is None else occurred_ms}


def local_serde() -> Serde:
    return Serde(LOCAL_IDS, {schema_id: (name, parsed(name, file)) for schema_id, (name, file) in PAST_IDS.items()})


def registry_serde(url: str, subjects: dict[str, str]) -> Serde:
    """Register each schema under its subject in a Confluent Schema Registry and use the registry's ids."""
    from confluent_kafka.schema_registry import Schema, SchemaRegistryClient

    client = SchemaRegistryClient({"url": url})
    return Serde({name: client.register_schema(subject, Schema(schema_text(name), "AVRO")) for name, subject in subjects.items()},
                 lookup=lambda schema_id: client.get_schema(schema_id).schema_str)


def serde_for(settings: Any) -> Serde:
    if settings.schema_registry_url:
        return registry_serde(settings.schema_registry_url, {
            CAPTURE: f"{settings.topic_capture}-value", EDGES: f"{settings.topic_edges}-value",
            DERIVED: f"{settings.topic_edges}-{DERIVED}", DEAD_LETTER: f"{settings.topic_dead_letters}-value",
        })
    return local_serde()
