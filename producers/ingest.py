"""Genealogy ingest: GS1 EPCIS 2.0 / IPC-CFX files and feeds -> capture batches and dead letters.

Input is JSON or JSON-LD text: one document (an EPCISDocument, or a single
event or message, pretty-printed or not) or JSON lines (one event or message
per line), or a mix. ``JsonValues`` cuts the text into JSON values and knows the
line each one starts on. Each value goes through ``producers.epcis.map_epcis``
(each event of a document on its own, so rejects and unknowns keep their raw
event) or ``producers.cfx.map_cfx`` (one ``CfxContext`` along the feed, so an
unload finds its earlier load).

What comes out (``IngestResult``):

* ``batches``: CaptureBatch dicts, one station per batch (the Kafka key and
  the join's partitioning), a station's events sorted by event time (stable, so
  events of one instant keep their input order), at most ``batch_size`` events
  each. ``batch_id`` is ``ingest:<origin>#<n>``: the same file ingested twice
  gives the same ids.
* ``dead_letters``: DeadLetter records (``schemas/dead_letter.avsc``), stage
  ``ingest``, one per mapper reject and per value that is not JSON. ``reason``
  is ``<origin>:<line>[#<field>]: <why>``; ``topic`` is the origin (the file
  name; there is no Kafka topic yet), ``partition`` 0 (there is none, and the
  column is unsigned), ``offset`` the line the value starts on, ``source`` /
  ``event_id`` / ``event_kind`` what the raw input says (CFX Source, UniqueID,
  MessageName; EPCIS readPoint, eventID, type). ``payload`` is the raw bytes
  of the line or document, except for one event of a multi-event document,
  which is that event re-serialised as JSON, so it can be re-ingested alone.
  ``dead_letter_id`` hashes stage, reason and payload: re-ingesting a file
  does not add dead letters.
* ``unknown``: input a mapper recognised but has nothing to say about for
  genealogy (a CFX EnergyConsumed, a CFX reel kitted onto a carrier). Not an error, but
  nothing is dropped silently: each is kept raw as a DeadLetter-shaped record
  with stage ``unknown`` and the mapper's note as reason. ``publish_ingest``
  sends them to the dead-letter topic too (``keep_unknown``), where they can
  be counted apart (``WHERE stage = 'unknown'``) and replayed once a mapping
  exists.
  An EPCIS event (an unpacking, a plain observation) is the exception: one that is not rejected
  and has a type and a zoned eventTime is kept whole (below), so its "nothing for genealogy" is
  counted in ``unknown`` but not sent as a dead letter.
* ``epcis``: every EPCIS event that was not rejected (mapped or unknown: a plain ObjectEvent with
  sensor data too), as {``event_id``, ``json``}: the event as captured with the repository's
  ``recordTime`` (``genealogy.domain.epcis_event``), key = its event id (``epcis.event_id_of``).
  ``spool_rows`` sends them to ``settings.topic_epcis`` as UTF-8 JSON; the sink keeps them in
  ``epcis_events`` for the EPCIS query interface (``GET /events``).
* ``untraceable``: class-level node ids seen (no lot or serial).
* ``counts``: values, events, batches, rejects, unknown, untraceable, kept (EPCIS events kept).

``ingest_lines`` / ``ingest_path`` read to the end; ``bridge`` reads a
never-ending feed (stdin, ``follow(path)``) and yields a result every
``max_events`` events or ``max_ms``; ``spool_ingest`` / ``publish_ingest`` /
``run_bridge`` put results through the durable spool to Kafka.
"""

from __future__ import annotations

import hashlib
import json
import queue
import re
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from genealogy import schemas
from genealogy.domain import epcis_event
from genealogy.settings import Settings
from genealogy.producers import epcis
from genealogy.producers.cfx import CfxContext, map_cfx
from genealogy.producers.mapping import Bad, Event, MapResult, by_station
from genealogy.producers.oversize import Oversize, PayloadStore, capped_lines
from genealogy.producers.spool import Forwarder, Spool

FORMATS = ("epcis", "cfx")
# The caps' defaults are the settings' (GENEALOGY_INGEST_MAX_LINE_BYTES, ..._DOCUMENT_BYTES).
MAX_LINE = Settings.model_fields["ingest_max_line_bytes"].default
MAX_DOCUMENT = Settings.model_fields["ingest_max_document_bytes"].default
EXCERPT = 4096


# --- JSON values out of lines ------------------------------------------------------------

@dataclass(slots=True)
class Value:
    line: int                  # 1-based line the value starts on
    text: str                  # as read (undecodable bytes kept as surrogates, see Ingestor.feed)
    data: Any = None
    error: str = ""            # why it is not a JSON value; empty when it is

    @property
    def raw(self) -> bytes:
        return self.text.encode("utf-8", "surrogateescape")


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')


class JsonValues:
    """Feed lines, get complete JSON values (or malformed ones, with the reason) as they close.

    A line that parses alone is a value (JSON lines, the fast path). Otherwise lines are
    collected until their brackets balance (a pretty-printed document). A line ending inside
    a string is malformed (JSON strings cannot span lines), and so is a one-line value (more
    than a lone bracket) still open when the next line is a whole value: a truncated JSON line.
    """

    def __init__(self, max_document: int = MAX_DOCUMENT, store: PayloadStore | None = None) -> None:
        self._n = 0
        self._open: list[str] = []
        self._start = 0
        self._depth = 0
        # A document over max_document: only its excerpt, size and hash are kept (the whole of it
        # streamed into the store, when there is one) while its brackets are counted to its end.
        self.max_document, self.store = max_document, store
        self._size = 0
        self._over: dict | None = None

    def feed(self, line: str) -> list[Value]:
        self._n += 1
        line = line.rstrip("\r\n")
        out: list[Value] = []
        if self._over is not None:
            return self._feed_over(line)
        alone = _loads(line) if line[:1] in "{[" else None
        if len(self._open) == 1 and self._open[0].strip() not in ("{", "[") and alone is not None:
            out.append(self._close("not JSON: not closed before the next line starts a new value"))
        if not self._open:
            if not line.strip():
                return out
            if alone is not None:
                out.append(Value(self._n, line, alone[0]))
                return out
            self._start = self._n
        self._open.append(line)
        self._size += len(line) + 1
        if self._size > self.max_document:
            self._overflow()
            out.extend(self._feed_over(line, counted=True))
            return out
        bare = _STRINGS.sub("", line)
        if '"' in bare:
            out.append(self._close(f"not JSON: {'the line' if self._n == self._start else f'line {self._n}'} ends inside a string"))
            return out
        self._depth += bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")
        if self._depth <= 0:
            text = "\n".join(self._open)
            try:
                data = json.loads(text)
            except ValueError as exc:
                out.append(self._close(f"not JSON: {exc}"))
            else:
                out.append(Value(self._start, text, data))
                self._reset()
        return out

    def close(self) -> list[Value]:
        """End of input: a value still open is malformed."""
        if self._over is not None:
            return [self._close_over("the input ends before the document is closed")]
        return [self._close("not JSON: the input ends before the value is closed")] if self._open else []

    def skip_line(self) -> int:
        """Count a line that is not fed (an oversize one); returns its number."""
        self._n += 1
        return self._n

    def interrupt(self, reason: str) -> list[Value]:
        """Something that is not a line of the open value came (an oversize line): close it as malformed."""
        if self._over is not None:
            return [self._close_over(reason)]
        return [self._close(f"not JSON: {reason}")] if self._open else []

    def _overflow(self) -> None:
        """The open value just passed max_document: from now on only hash (and keep aside) its text.
        Without a store (input already in memory: an HTTP body) the text is kept for the dead letter,
        and spool_rows puts it aside (fit_dead_letter)."""
        text = "\n".join(self._open).encode("utf-8", "surrogateescape")
        writer = self.store.writer().__enter__() if self.store is not None else None
        self._over = {"excerpt": text[:EXCERPT], "size": 0, "hash": hashlib.sha256(), "writer": writer,
                      "whole": [] if writer is None else None}
        self._open = []
        self._write_over(text)

    def _write_over(self, data: bytes) -> None:
        over = self._over
        over["size"] += len(data)
        over["hash"].update(data)
        if over["writer"] is not None:
            over["writer"].write(data)
        else:
            over["whole"].append(data)

    def _feed_over(self, line: str, counted: bool = False) -> list[Value]:
        """A line of a document over the limit: hashed (and kept aside; ``counted``: it already
        is), its brackets counted so that the document's end is found."""
        if not counted:
            self._write_over(b"\n" + line.encode("utf-8", "surrogateescape"))
        bare = _STRINGS.sub("", line)
        if '"' in bare:
            return [self._close_over(f"line {self._n} ends inside a string")]
        self._depth += bare.count("{") + bare.count("[") - bare.count("}") - bare.count("]")
        return [self._close_over("")] if self._depth <= 0 else []

    def _close_over(self, also: str) -> Value:
        over, self._over = self._over, None
        kept = None
        if over["writer"] is not None:
            over["writer"].__exit__(None, None, None)
            kept = over["writer"].path
        oversize = Oversize(over["excerpt"], over["size"], over["hash"].hexdigest(), kept)
        reason = (f"document of {oversize.describe(self.max_document, 'GENEALOGY_INGEST_MAX_DOCUMENT_BYTES')}"
                  + (f"; {also}" if also else ""))
        text = over["excerpt"] if over["whole"] is None else b"".join(over["whole"])
        value = Value(self._start, text.decode("utf-8", "surrogateescape"), error=reason)
        self._reset()
        return value

    def _close(self, reason: str) -> Value:
        value = Value(self._start, "\n".join(self._open), error=reason)
        self._reset()
        return value

    def _reset(self) -> None:
        self._open, self._depth, self._size = [], 0, 0


def _loads(text: str) -> tuple[Any] | None:
    try:
        return (json.loads(text),)
    except ValueError:
        return None


# --- mapping ------------------------------------------------------------------------------

@dataclass
class IngestResult:
    batches: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)   # stage "ingest": errors
    unknown: list[dict] = field(default_factory=list)        # stage "unknown": not errors, kept raw
    untraceable: list[str] = field(default_factory=list)
    epcis: list[dict] = field(default_factory=list)          # EPCIS events kept whole: {event_id, json}
    unknown_kept: int = 0                                    # unknowns among them (no dead letter)
    values: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return {"values": self.values, "events": sum(len(b["events"]) for b in self.batches), "batches": len(self.batches),
                "rejects": len(self.dead_letters), "unknown": len(self.unknown) + self.unknown_kept,
                "untraceable": len(self.untraceable), "kept": len(self.epcis)}

    def __bool__(self) -> bool:
        return bool(self.values or self.batches or self.dead_letters or self.unknown or self.epcis)


class Ingestor:
    """Incremental ingest of one feed: ``feed`` lines, ``take`` what was mapped so far."""

    def __init__(self, fmt: str, origin: str, *, batch_size: int = 500, batch_prefix: str | None = None,
                 cfx_context: CfxContext | None = None, max_line: int = MAX_LINE, max_document: int = MAX_DOCUMENT,
                 store: PayloadStore | None = None):
        if fmt not in FORMATS:
            raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.fmt, self.origin, self.batch_size = fmt, origin, batch_size
        self.batch_prefix = batch_prefix or f"ingest:{origin}"
        self.context = cfx_context or CfxContext()
        self.max_line, self.store = max_line, store
        self._values = JsonValues(max_document, store)
        self._batches = 0
        self._pending = IngestResult()
        self._events: list[Event] = []

    @property
    def pending_events(self) -> int:
        return len(self._events)

    @property
    def pending_values(self) -> int:
        return self._pending.values

    @property
    def has_pending(self) -> bool:
        return bool(self._events or self._pending)

    def feed(self, line: str | bytes | Oversize) -> None:
        payload = None
        if isinstance(line, (str, bytes)) and len(line) > self.max_line:
            payload = line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line
            line = self._oversize(payload)
            if line.kept is not None:
                payload = None
        if isinstance(line, Oversize):
            # Never parsed: a line over the cap is a dead letter whatever it holds. Its payload is the
            # excerpt (the store has the whole line), or the whole line when it was in memory anyway
            # and no store was given (spool_rows then keeps it aside: too big for a Kafka message).
            for value in self._values.interrupt("an oversize line came before the value was closed"):
                self._value(value)
            n = self._values.skip_line()
            reason = f"line of {line.describe(self.max_line, 'GENEALOGY_INGEST_MAX_LINE_BYTES')}"
            text = (payload or line.excerpt).decode("utf-8", "surrogateescape")
            self._value(Value(n, text, error=reason))
            return
        if isinstance(line, bytes):
            # surrogateescape: undecodable bytes survive into the dead letter's payload unchanged
            line = line.decode("utf-8", "surrogateescape")
        for value in self._values.feed(line):
            self._value(value)

    def _oversize(self, line: bytes) -> Oversize:
        """A long line already in memory (an HTTP body): kept aside whole when there is a store."""
        if self.store is not None:
            sha, path = self.store.keep(line)
            return Oversize(line[:EXCERPT], len(line), sha, path)
        return Oversize(line[:EXCERPT], len(line), hashlib.sha256(line).hexdigest(), None)

    def close(self) -> None:
        for value in self._values.close():
            self._value(value)

    def take(self, now_ms: int | None = None) -> IngestResult:
        """Everything mapped since the last take, with the events cut into station batches."""
        result, self._pending = self._pending, IngestResult()
        events, self._events = self._events, []
        sent_ms = int(time.time() * 1000) if now_ms is None else now_ms
        for station, group in by_station(events).items():
            group.sort(key=lambda ke: ke[1]["event_ms"])
            for n in range(0, len(group), self.batch_size):
                self._batches += 1
                result.batches.append({"batch_id": f"{self.batch_prefix}#{self._batches:06d}", "source": station,
                                       "sent_ms": sent_ms, "events": group[n:n + self.batch_size]})
        return result

    def _value(self, value: Value) -> None:
        self._pending.values += 1
        where = f"{self.origin}:{value.line}"
        if not value.error:
            try:
                value.raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                value.error = f"not UTF-8 text: {exc}"
        if value.error:
            self._dead("ingest", f"{where}: {value.error}", value, value.raw)
            return
        if self.fmt == "cfx":
            self._mapped(map_cfx(value.data, origin=where, context=self.context), value, value.data, value.raw)
            return
        try:
            # The document's events one by one (the mapper's own split, so origins are the same),
            # so that a reject or an unknown keeps its own raw event.
            items = epcis._event_list(value.data, where)
        except Bad as exc:
            self._dead("ingest", f"{where}: {exc}", value, value.raw, value.data)
            return
        for item_where, item in items:
            payload = value.raw if item is value.data else json.dumps(item, ensure_ascii=False).encode()
            identities: dict[int, str] = {}
            mapped = epcis.map_epcis(item, origin=item_where, identities=identities)
            context = value.data.get("@context") if item is not value.data and isinstance(value.data, dict) else None
            kept = not mapped.rejects and self._keep_epcis(item, identities.get(id(item)), context)
            self._mapped(mapped, value, item, payload, kept)

    def _keep_epcis(self, item: Any, event_id: str | None, context: Any = None) -> bool:
        """Keep an EPCIS event whole for the query interface; False when it cannot be (no eventTime ...).
        An event of a document without a @context of its own takes the document's (its namespaces)."""
        if event_id is None:
            return False
        try:
            epcis_event.columns(item)
        except epcis_event.BadEvent:
            return False
        kept = epcis_event.with_record_time(item, int(time.time() * 1000))
        if context is not None and "@context" not in kept:
            kept = {"@context": context, **kept}
        self._pending.epcis.append({"event_id": event_id, "json": json.dumps(kept, ensure_ascii=False).encode()})
        return True

    def _mapped(self, mapped: MapResult, value: Value, raw: Any, payload: bytes, kept: bool = False) -> None:
        self._events.extend(mapped.events)
        for reject in mapped.rejects:
            self._dead("ingest", f"{reject.origin}: {reject.reason}", value, payload, raw)
        self._pending.untraceable.extend(n for n in mapped.untraceable if n not in self._pending.untraceable)
        if kept:  # the event itself is kept (epcis_events): its "nothing for genealogy" is counted, not dead-lettered
            self._pending.unknown_kept += len(mapped.notes)
            return
        for note in mapped.notes:  # one note per unknown (producers.mapping contract); already names where
            self._dead("unknown", note, value, payload, raw)

    def _dead(self, stage: str, reason: str, value: Value, payload: bytes, raw: Any = None) -> None:
        source, event_id, kind = _describe(self.fmt, raw)
        record = {
            "dead_letter_id": hashlib.blake2b(f"{stage}\0{reason}\0".encode() + payload, digest_size=12).hexdigest(),
            "stage": stage, "reason": reason, "topic": self.origin, "partition": 0, "offset": value.line,
            "source": source, "event_id": event_id, "event_kind": kind, "payload": payload,
            "occurred_ms": int(time.time() * 1000),
        }
        (self._pending.unknown if stage == "unknown" else self._pending.dead_letters).append(record)


def _describe(fmt: str, raw: Any) -> tuple[str, str, str]:
    """(source, event id, kind) as the raw input names them, for the dead letter's columns."""
    if not isinstance(raw, dict):
        return "", "", ""
    text = lambda v: v.strip() if isinstance(v, str) else ""  # noqa: E731
    if fmt == "cfx":
        return text(raw.get("Source")), text(raw.get("UniqueID")), text(raw.get("MessageName"))
    place = raw.get("readPoint") or raw.get("bizLocation")
    source = text(place.get("id") if isinstance(place, dict) else place)
    return source, text(raw.get("eventID")), text(raw.get("type") or raw.get("@type"))


def ingest_lines(lines: Iterable[str | bytes] | IO, fmt: str, origin: str, *, batch_size: int = 500,
                 cfx_context: CfxContext | None = None, now_ms: int | None = None) -> IngestResult:
    """A whole input (lines of text or bytes, or an open file) -> one IngestResult."""
    ingestor = Ingestor(fmt, origin, batch_size=batch_size, cfx_context=cfx_context)
    for line in lines:
        ingestor.feed(line)
    ingestor.close()
    return ingestor.take(now_ms)


def ingest_path(path: str | Path, fmt: str, origin: str | None = None, **kwargs) -> IngestResult:
    """A file, or "-" for stdin. The origin (in reasons and batch ids) defaults to the file's name."""
    if str(path) == "-":
        return ingest_lines(sys.stdin.buffer, fmt, origin or "stdin", **kwargs)
    with open(path, "rb") as f:
        return ingest_lines(f, fmt, origin or Path(path).name, **kwargs)


# --- long-running bridge ------------------------------------------------------------------

_END = object()


def bridge(lines: Iterable[str | bytes], fmt: str, origin: str, *, max_events: int = 500, max_ms: int = 1000,
           session: str | None = None, cfx_context: CfxContext | None = None,
           stop: threading.Event | None = None) -> Iterator[IngestResult]:
    """Map a feed that does not end (stdin, ``follow(path)``): yields a result once ``max_events``
    events are pending or ``max_ms`` after the first pending item, and a last one at the end of
    the input or when ``stop`` is set. Lines are read on a daemon thread, so a quiet feed still
    yields on time. Batch ids carry ``session`` (default: the start time), so a restarted bridge
    does not reuse the ids of an earlier run."""
    session = session or str(int(time.time() * 1000))
    ingestor = Ingestor(fmt, origin, batch_size=max_events, batch_prefix=f"ingest:{origin}@{session}",
                        cfx_context=cfx_context)
    inbox: queue.Queue = queue.Queue(maxsize=10_000)  # bounded: a slow spool slows the reader, never drops

    def read() -> None:
        try:
            for line in lines:
                inbox.put(line)
        finally:
            inbox.put(_END)

    threading.Thread(target=read, name=f"bridge-reader:{origin}", daemon=True).start()
    first_pending: float | None = None  # monotonic time the oldest pending item was mapped
    while not (stop and stop.is_set()):
        try:
            line = inbox.get(timeout=0.1)  # short, so that `stop` and `max_ms` are seen on a quiet feed
        except queue.Empty:
            line = None
        if line is _END:
            break
        if line is not None:
            ingestor.feed(line)
            if first_pending is None and ingestor.has_pending:
                first_pending = time.monotonic()
        due = first_pending is not None and time.monotonic() - first_pending >= max_ms / 1000
        if ingestor.pending_events >= max_events or due:
            yield ingestor.take()
            first_pending = None
    ingestor.close()
    last = ingestor.take()
    if last:
        yield last


def follow(path: str | Path, stop: threading.Event, poll_s: float = 0.2) -> Iterator[bytes]:
    """Complete lines of a file that is being appended to (tail -f from the start), until ``stop``.
    A last line without its newline is held back until the writer finishes it."""
    with open(path, "rb") as f:
        partial = b""
        while not stop.is_set():
            chunk = f.readline()
            if not chunk:
                stop.wait(poll_s)
                continue
            partial += chunk
            if partial.endswith(b"\n"):
                yield partial
                partial = b""


# --- to Kafka, through the spool -------------------------------------------------------------

def payload_store(settings: Settings) -> PayloadStore:
    """Where whole payloads too big for a dead letter are kept: <data_dir>/dead-letters/<sha256>."""
    return PayloadStore(settings.data_dir / "dead-letters")


def fit_dead_letter(settings: Settings, record: dict) -> dict:
    """A dead letter small enough for Kafka: a payload over dead_letter_max_payload_bytes is kept
    whole in the payload store and the record carries its excerpt, size, hash and file."""
    payload, limit = record["payload"], settings.dead_letter_max_payload_bytes
    if len(payload) <= limit:
        return record
    sha, path = payload_store(settings).keep(payload)
    note = f" [payload of {len(payload):,} bytes cut to {limit:,}; sha256 {sha}; full payload in {path}]"
    return {**record, "payload": payload[:limit], "reason": record["reason"][:4096] + note}


def spool_rows(settings: Settings, result: IngestResult, serde: schemas.Serde | None = None,
               keep_unknown: bool = True) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of every batch (key = station) and every dead letter (key = origin)."""
    serde = serde or schemas.serde_for(settings)
    rows = [(settings.topic_capture, b["source"].encode(), serde.encode(schemas.CAPTURE, b)) for b in result.batches]
    letters = [fit_dead_letter(settings, d) for d in result.dead_letters + (result.unknown if keep_unknown else [])]
    rows += [(settings.topic_dead_letters, d["topic"].encode(), serde.encode(schemas.DEAD_LETTER, d)) for d in letters]
    rows += [(settings.topic_epcis, e["event_id"].encode(), e["json"]) for e in result.epcis]
    return rows


def spool_ingest(settings: Settings, result: IngestResult, spool: Spool, *, serde: schemas.Serde | None = None,
                 keep_unknown: bool = True) -> list[int]:
    """Append a result to the spool in one transaction (all of it or nothing); returns the row ids."""
    return spool.append_many(spool_rows(settings, result, serde, keep_unknown))


@dataclass
class PublishReport:
    spooled: int        # rows this call appended
    remaining: int      # rows still in the spool afterwards (0 = everything acked by the broker)
    backlog: dict       # Forwarder.backlog()
    counts: dict        # IngestResult.counts


def publish_ingest(settings: Settings, result: IngestResult, spool: Spool, *, timeout: float = 60.0,
                   keep_unknown: bool = True, serde: schemas.Serde | None = None) -> PublishReport:
    """Spool a result, then forward the spool until it is empty or ``timeout`` passes. Rows not
    acked by then stay spooled and go with the next forward; nothing is lost either way."""
    ids = spool_ingest(settings, result, spool, serde=serde, keep_unknown=keep_unknown)
    forwarder = Forwarder(settings, spool)
    try:
        remaining = forwarder.forward_all(timeout)
    finally:
        forwarder.close(timeout=1.0)  # forward_all has waited already
    return PublishReport(len(ids), remaining, forwarder.backlog(), result.counts)


def publish_path(settings: Settings, path: str | Path, fmt: str, spool: Spool, *, origin: str | None = None,
                 cfx_context: CfxContext | None = None, timeout: float = 60.0, chunk_values: int = 5_000,
                 reasons: int = 20) -> dict:
    """``genealogy ingest`` of one file (or "-"), in bounded memory whatever its size: lines are read
    with the line cap (``capped_lines``), mapped and spooled ``chunk_values`` values at a time while a
    forwarder drains the spool to Kafka beside it; then up to ``timeout`` s more for the broker's acks.
    Returns the counts, the first ``reasons`` reject reasons and the rows still spooled."""
    origin = origin or ("stdin" if str(path) == "-" else Path(path).name)
    serde = schemas.serde_for(settings)
    store = payload_store(settings)
    ingestor = Ingestor(fmt, origin, cfx_context=cfx_context, max_line=settings.ingest_max_line_bytes,
                        max_document=settings.ingest_max_document_bytes, store=store)
    totals: dict[str, int] = {}
    first_reasons: list[str] = []

    def spool_chunk() -> None:
        chunk = ingestor.take()
        if not chunk:
            return
        spool_ingest(settings, chunk, spool, serde=serde)
        for k, v in chunk.counts.items():
            totals[k] = totals.get(k, 0) + v
        first_reasons.extend(d["reason"] for d in chunk.dead_letters[: max(0, reasons - len(first_reasons))])

    forwarder = Forwarder(settings, spool)
    forwarding = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(forwarding,), name="spool-forwarder", daemon=True)
    thread.start()
    try:
        f = sys.stdin.buffer if str(path) == "-" else open(path, "rb")
        try:
            for line in capped_lines(f, settings.ingest_max_line_bytes, store, EXCERPT):
                ingestor.feed(line)
                if ingestor.pending_values >= chunk_values:
                    spool_chunk()
            ingestor.close()
            spool_chunk()
        finally:
            if f is not sys.stdin.buffer:
                f.close()
    finally:
        forwarding.set()
        thread.join()
    try:
        remaining = forwarder.forward_all(timeout)
    finally:
        forwarder.close(timeout=1.0)
    return {"counts": {k: totals.get(k, 0) for k in ("values", "events", "batches", "rejects", "unknown", "untraceable", "kept")},
            "reasons": first_reasons, "remaining": remaining, "quarantined": forwarder.quarantined_now,
            "backlog": forwarder.backlog()}


def run_bridge(settings: Settings, lines: Iterable[str | bytes], fmt: str, origin: str, spool: Spool,
               stop: threading.Event, *, max_events: int = 500, max_ms: int = 1000, keep_unknown: bool = True,
               on_chunk=lambda result, forwarder: None, drain_timeout: float = 30.0,
               cfx_context: CfxContext | None = None) -> dict:
    """The long-running bridge: map a feed, spool each chunk, forward continuously on a second
    thread, until the input ends or ``stop`` is set. Returns the totals and the final backlog."""
    serde = schemas.serde_for(settings)
    forwarder = Forwarder(settings, spool)
    forwarding = threading.Event()
    thread = threading.Thread(target=forwarder.run, args=(forwarding,), name="spool-forwarder", daemon=True)
    thread.start()
    totals: dict[str, int] = {}
    try:
        for chunk in bridge(lines, fmt, origin, max_events=max_events, max_ms=max_ms, stop=stop, cfx_context=cfx_context):
            spool_ingest(settings, chunk, spool, serde=serde, keep_unknown=keep_unknown)
            for k, v in chunk.counts.items():
                totals[k] = totals.get(k, 0) + v
            on_chunk(chunk, forwarder)
    finally:
        forwarding.set()
        thread.join()
    remaining = forwarder.forward_all(drain_timeout)
    forwarder.close(timeout=1.0)  # forward_all has waited already
    return {"counts": totals, "remaining": remaining, "backlog": forwarder.backlog()}
