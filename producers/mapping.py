"""What the plant-standard mappers (``producers.epcis``, ``producers.cfx``) return, and the few helpers they share.

A mapper is a pure function from one standard document or message to our
capture events (``("genealogy.<Record>", {fields})`` tuples, see
``schemas/capture_batch.avsc``). Nothing is ever silently dropped: every input
ends up as events, as a ``Reject`` (kept raw, with a reason naming the field), or
counted in ``unknown`` (recognised but with nothing to say for genealogy; the
caller keeps the raw message) with a line in ``notes`` saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from genealogy.domain import ids

Event = tuple[str, dict]


class Bad(ValueError):
    """Input that cannot be mapped; the message names the field and says why. Becomes a ``Reject``."""


@dataclass(frozen=True, slots=True)
class Reject:
    origin: str   # where it came from, e.g. "plant.json#eventList[3]" or "smt1.jsonl:7#Materials[1]"
    reason: str   # names the field
    raw: Any      # the input as received


@dataclass(slots=True)
class MapResult:
    events: list[Event] = field(default_factory=list)
    rejects: list[Reject] = field(default_factory=list)
    untraceable: list[str] = field(default_factory=list)  # class-level node ids seen (no lot or serial)
    unknown: int = 0
    notes: list[str] = field(default_factory=list)        # why each `unknown` was not mapped

    def add(self, other: "MapResult") -> "MapResult":
        self.events.extend(other.events)
        self.rejects.extend(other.rejects)
        self.untraceable.extend(n for n in other.untraceable if n not in self.untraceable)
        self.unknown += other.unknown
        self.notes.extend(other.notes)
        return self

    def skip(self, note: str) -> None:
        self.unknown += 1
        self.notes.append(note)


def event(kind: str, **fields: Any) -> Event:
    return (f"genealogy.{kind}", fields)


def ref(node_id: str) -> dict:
    """A canonical node id as the Avro NodeRef record."""
    n = ids.parse(node_id)
    return {"kind": n.kind, "item": n.item, "ident": n.ident}


def node(kind: str, item: Any, ident: Any, where: str) -> str:
    """Canonical node id from parts; a bad part raises ``Bad`` naming ``where``."""
    if not isinstance(item, str) or not isinstance(ident, str):
        raise Bad(f"{where}: item and identifier must be strings, got {item!r} and {ident!r}")
    try:
        return ids.node(kind, item, ident)
    except ids.InvalidId as exc:
        raise Bad(f"{where}: {exc}") from None


def by_station(events: list[Event]) -> dict[str, list[Event]]:
    """Events grouped by station, each group in input order: one capture batch per station (the Kafka key)."""
    out: dict[str, list[Event]] = {}
    for kind, e in events:
        out.setdefault(e["station"], []).append((kind, e))
    return out


_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})?")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def epoch_ms(value: Any, where: str) -> int:
    """ISO 8601 time with a UTC offset (any number of fractional digits, as .NET writes seven) -> epoch ms."""
    m = _ISO.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise Bad(f"{where}: {value!r} is not an ISO 8601 date-time")
    if not m.group(3):
        raise Bad(f"{where}: {value!r} has no UTC offset, so the instant is ambiguous")
    offset = "+00:00" if m.group(3).upper() == "Z" else m.group(3)
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    try:
        t = datetime.fromisoformat(f"{m.group(1)}.{fraction}{offset}")
    except ValueError as exc:
        raise Bad(f"{where}: {value!r}: {exc}") from None
    return (t - _EPOCH) // timedelta(milliseconds=1)
