"""Temporal join of one station: which materials were on the station when a unit completed.

Rule: a unit completed at station S at time t consumed every material whose
last load/unload on a slot of S at or before t is a load. Intervals are
half-open, ``[loaded, unloaded)``; when a load and an unload share a
timestamp the load sorts last, so a reel change at t feeds the unit at t from
the new reel only.

Events arrive out of order. The station's watermark is the largest event time
seen minus the grace period. A completion is resolved once the watermark has
passed it, so every material event that could change its answer has had the
grace period to arrive; the result is deterministic for any arrival order whose
disorder stays within the grace period. A material event older than the
watermark may change answers already given: it is reported as late (dead
letter; ``genealogy reprocess`` corrects the answers given before it arrived)
and it is still applied to the state, so that answers given from then on are
right (without it, a late unload would leave its reel "loaded" for every later
unit). Replays of an event already in the state are recognised by event id and
ignored, which is what makes at-least-once redelivery harmless.

The state is stored in a table (a Faust table in the worker, any mapping in
tests) as small JSON-able pieces: one meta record per station, one record per
slot (its materials' histories), and a fixed ring of buckets of pending
completions (100 ms of event time each, wrapping around). After each batch only
the pieces that changed are written back, so the changelog traffic per batch
stays small however busy the station is; a piece emptied by the batch is not
written at all, since the meta record no longer lists it, so completions resolved
within their own batch cost no write. Pieces are overwritten, never deleted: the
key space is bounded (slots + ring per station) and the changelog has no
tombstones. The meta record is written last; a piece it does not list is
ignored, so a crash between writes leaves a state that the replayed batch
rebuilds. History older than ``watermark - retention`` is folded to what is
still loaded, which bounds state by the number of slots, not by time.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass

UNLOAD, LOAD = 0, 1  # sort rank at equal timestamps: the load wins
PENDING_BUCKET_MS = 100
PENDING_RING = 1024  # buckets per station; entries carry their own time, so a wrap just shares a list
# History is folded once the horizon has moved this far (at most retention/16): folding walks every
# slot's history, and doing it on every event cost a tenth of the worker's join time.
FOLD_STEP_MS = 60_000
SEP = "\x1e"
# Unloads that name a package only (its identifier, not its slot or item) are kept under this slot
# name, so that a load of the package that arrives after its unload still gets it.
PACKAGE_SLOT = "\x1d"


@dataclass(frozen=True, slots=True)
class Completion:
    event_id: str
    event_ms: int
    unit: str
    production_lot: str
    work_order: str
    operator: str


@dataclass(frozen=True, slots=True)
class Consumption:
    """Material consumed by a unit; ``load_event_id`` names the load that put it on the slot."""
    material: str
    slot: str
    load_event_id: str
    completion: Completion


@dataclass(frozen=True, slots=True)
class Late:
    event_id: str
    reason: str


def new_state() -> dict:
    # max_ms: newest event time seen; horizon: history before it was folded
    # materials: "slot\x1fmaterial" -> sorted [event_ms, rank, event_id]
    # pending: ring bucket -> sorted unresolved completions [event_ms, event_id, unit, lot, work_order, operator]
    return {"max_ms": None, "horizon": None, "materials": {}, "pending": {}}


def _slot_key(station: str, slot: str) -> str:
    return f"{station}{SEP}s{SEP}{slot}"


def _bucket_key(station: str, bucket: int) -> str:
    return f"{station}{SEP}p{SEP}{bucket}"


def _bucket(event_ms: int) -> int:
    return (event_ms // PENDING_BUCKET_MS) % PENDING_RING


MIN_MS, MAX_MS = -(2**63), 2**63 - 1


def _time(entry: list) -> int:
    return entry[0]


def _slot_of(material_key: str) -> str:
    return material_key.split("\x1f", 1)[0]


def _ident(material_key: str) -> str:
    """The identifier of a material key's node (``slot\x1fkind:item:ident``)."""
    material = material_key.split("\x1f", 1)[1]
    parts = material.split(":", 2)
    return parts[2] if len(parts) == 3 else material


class StationJoin:
    def __init__(self, state: dict, grace_ms: int, retention_ms: int):
        self.state = state
        self.grace_ms = grace_ms
        self.retention_ms = retention_ms
        self._dirty_materials: set[str] = set()
        self._dirty_buckets: set[int] = set()
        self._dirty_meta = False
        # No pending completion is before _due: the ring is walked only once the watermark has passed it,
        # and only from there.
        self._due = min((b[0][0] for b in state["pending"].values() if b), default=None)
        # (from_ms, until_ms, loaded): what is on the slots at any time in [from_ms, until_ms). Units
        # complete in time order between reel changes, so most completions reuse the previous answer.
        self._loaded: tuple[int, int, list[tuple[str, str, str]]] | None = None

    @classmethod
    def load(cls, table: Mapping, station: str, grace_ms: int, retention_ms: int) -> "StationJoin":
        meta = table.get(station)
        state = new_state()
        if meta is not None:
            state["max_ms"], state["horizon"] = meta["max_ms"], meta["horizon"]
            for slot in meta["slots"]:
                state["materials"].update(table.get(_slot_key(station, slot)) or {})
            for bucket in meta["buckets"]:
                entries = table.get(_bucket_key(station, bucket))
                if entries:
                    state["pending"][bucket] = entries
        return cls(state, grace_ms, retention_ms)

    def save(self, table: MutableMapping, station: str) -> None:
        """Write back the pieces this join changed, then the meta record that lists them."""
        if not (self._dirty_meta or self._dirty_materials or self._dirty_buckets):
            return
        materials, pending = self.state["materials"], self.state["pending"]
        by_slot: dict[str, dict] = {}
        for key, history in materials.items():
            by_slot.setdefault(_slot_of(key), {})[key] = history
        # An emptied piece is not written: the meta record stops listing it, and load reads only listed
        # pieces. Most completions are added and resolved within one batch; they cost no write at all.
        for slot in {_slot_of(k) for k in self._dirty_materials} & by_slot.keys():
            table[_slot_key(station, slot)] = by_slot[slot]
        for bucket in self._dirty_buckets & pending.keys():
            table[_bucket_key(station, bucket)] = pending[bucket]
        table[station] = {"max_ms": self.state["max_ms"], "horizon": self.state["horizon"],
                          "slots": sorted(by_slot), "buckets": sorted(pending)}
        self._dirty_materials.clear()
        self._dirty_buckets.clear()
        self._dirty_meta = False

    @property
    def watermark(self) -> int | None:
        max_ms = self.state["max_ms"]
        return None if max_ms is None else max_ms - self.grace_ms

    @property
    def pending(self) -> int:
        return sum(len(b) for b in self.state["pending"].values())

    # --- events ---------------------------------------------------------------

    def material(self, event_id: str, event_ms: int, slot: str, material: str, loaded: bool) -> list[Consumption] | Late:
        key = f"{slot}\x1f{material}"
        if not self._record(key, event_ms, LOAD if loaded else UNLOAD, event_id):
            return []
        if loaded:  # unloads of this package by identifier that came first
            for unload_ms, _, unload_id in self.state["materials"].get(f"{PACKAGE_SLOT}\x1f{_ident(key)}", ()):
                if unload_ms > event_ms:
                    self._unload_at(key, unload_ms, unload_id)
        return self._late_or_advance(event_id, event_ms, "material event")

    def package_unloaded(self, event_id: str, event_ms: int, package: str) -> list[Consumption] | Late:
        """An unload naming the package only: every material of the station with that identifier that is
        loaded at event_ms is unloaded then, whatever its slot; a load of it that comes later (disorder
        within the grace) is unloaded by it too (``material``)."""
        if not self._record(f"{PACKAGE_SLOT}\x1f{package}", event_ms, UNLOAD, event_id):
            return []
        for other in list(self.state["materials"]):
            if not other.startswith(PACKAGE_SLOT) and _ident(other) == package:
                self._unload_at(other, event_ms, event_id)
        return self._late_or_advance(event_id, event_ms, "package unload")

    def _record(self, key: str, event_ms: int, rank: int, event_id: str) -> bool:
        """Add a load or unload to a history; False for a replay. A replay names the same key: only that
        history can hold it. (A set of every id in the state, rebuilt per batch, was 28% of a worker's
        time with a 10 s grace at 10,000 events/s.)"""
        history = self.state["materials"].setdefault(key, [])
        if any(entry[2] == event_id for entry in history):
            return False
        insort(history, [event_ms, rank, event_id])
        self._loaded = None
        self._dirty_materials.add(key)
        self._dirty_meta = True
        return True

    def _late_or_advance(self, event_id: str, event_ms: int, what: str) -> list[Consumption] | Late:
        wm = self.watermark
        if wm is not None and event_ms < wm:
            return Late(event_id, f"{what} at {event_ms} is {wm - event_ms} ms behind the station watermark {wm} "
                                  f"(grace {self.grace_ms} ms): applied from now on; earlier answers need `genealogy reprocess`")
        return self._advance(event_ms)

    def _unload_at(self, key: str, event_ms: int, event_id: str) -> None:
        """Unload the material of ``key`` at event_ms if it is loaded just before (a load at the same instant
        sorts after the unload, so it stays)."""
        history = self.state["materials"][key]
        if any(entry[2] == event_id for entry in history):
            return
        i = bisect_right(history, event_ms, key=_time)
        if i and history[i - 1][1] == LOAD and history[i - 1][0] < event_ms:
            insort(history, [event_ms, UNLOAD, event_id])
            self._dirty_materials.add(key)

    def completed(self, c: Completion) -> list[Consumption] | Late:
        bucket = _bucket(c.event_ms)
        if any(p[1] == c.event_id for p in self.state["pending"].get(bucket, ())):
            return []  # a replay of a pending completion: the same event time, so the same bucket
        wm = self.watermark
        if wm is not None and c.event_ms < wm:
            horizon = self.state["horizon"]
            if horizon is not None and c.event_ms < horizon:
                return Late(c.event_id, f"unit completion at {c.event_ms} is older than the retained material history (from {horizon})")
            # The state at c.event_ms is final (later material events that old are rejected), so answer now.
            return self._consumed(c) + self._advance(c.event_ms)
        insort(self.state["pending"].setdefault(bucket, []), [c.event_ms, c.event_id, c.unit, c.production_lot, c.work_order, c.operator])
        self._dirty_buckets.add(bucket)
        self._due = c.event_ms if self._due is None else min(self._due, c.event_ms)
        self._dirty_meta = True
        return self._advance(c.event_ms)

    def heartbeat(self, event_ms: int) -> list[Consumption]:
        return self._advance(event_ms)

    # --- internals --------------------------------------------------------------

    def _advance(self, event_ms: int) -> list[Consumption]:
        if self.state["max_ms"] is not None and event_ms <= self.state["max_ms"]:
            return []
        self.state["max_ms"] = event_ms
        self._dirty_meta = True
        wm = event_ms - self.grace_ms
        out: list[Consumption] = []
        if self._due is not None and self._due < wm:
            out = self._resolve(wm)
        self._fold(wm - self.retention_ms)
        return out

    def _resolve(self, wm: int) -> list[Consumption]:
        """Answer every pending completion before the watermark, in time order."""
        pending = self.state["pending"]
        first, last = self._due // PENDING_BUCKET_MS, (wm - 1) // PENDING_BUCKET_MS
        if last - first < PENDING_RING:
            # Every pending completion is at or after _due, so the ready ones sit in the buckets of [_due, wm).
            buckets = [b for b in (k % PENDING_RING for k in range(first, last + 1)) if b in pending]
        else:  # the watermark moved by a whole ring: any bucket may hold ready completions
            buckets = [b for _, b in sorted((entries[0][0], b) for b, entries in pending.items())]
        out: list[Consumption] = []
        for bucket in buckets:
            entries = pending[bucket]
            ready = 0
            while ready < len(entries) and entries[ready][0] < wm:
                ready += 1
            if not ready:
                continue  # a later lap of the ring
            for p in entries[:ready]:
                out.extend(self._consumed(Completion(p[1], p[0], p[2], p[3], p[4], p[5])))
            del entries[:ready]
            if not entries:
                del pending[bucket]
            self._dirty_buckets.add(bucket)
        self._due = wm if pending else None  # a lower bound is enough: nothing before wm is left
        return out

    def _consumed(self, c: Completion) -> list[Consumption]:
        return [Consumption(material, slot, load_event_id, c) for slot, material, load_event_id in self._loaded_at(c.event_ms)]

    def _loaded_at(self, t: int) -> list[tuple[str, str, str]]:
        """(slot, material, load event id) of every material on the station at t, sorted."""
        cached = self._loaded
        if cached is not None and cached[0] <= t < cached[1]:
            return cached[2]
        since, until, loaded = MIN_MS, MAX_MS, []
        for key, history in self.state["materials"].items():
            i = bisect_right(history, t, key=_time)  # entries at or before t decide
            if i < len(history):
                until = min(until, history[i][0])
            if i:
                last = history[i - 1]
                since = max(since, last[0])
                if last[1] == LOAD:
                    slot, material = key.split("\x1f", 1)
                    loaded.append((slot, material, last[2]))
        loaded.sort()
        self._loaded = (since, until, loaded)
        return loaded

    def _fold(self, horizon: int) -> None:
        old = self.state["horizon"]
        if old is not None and horizon - old < min(FOLD_STEP_MS, self.retention_ms // 16):
            return
        self.state["horizon"] = horizon
        self._loaded = None
        materials = self.state["materials"]
        for key in list(materials):
            history = materials[key]
            cut = 0
            while cut < len(history) and history[cut][0] < horizon:
                cut += 1
            if cut == 0:
                continue
            last = history[cut - 1]
            kept = ([last] if last[1] == LOAD else []) + history[cut:]
            self._dirty_materials.add(key)
            if kept:
                materials[key] = kept
            else:
                del materials[key]
