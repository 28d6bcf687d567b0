"""A deterministic, seeded plant: what its stations would report, as capture batches.

The line:

    COAT-1   batch process: resin lot + hardener lot -> coating lot (LotTransformed)
    SMT-1    builds boards; four reel slots of supplier lots, reel changes
    ASSY-1   builds products: installs one board (explicit), consumes from slots
             (capacitor batch, screws, housing, coating lot); the capacitor slot
             is where the brief's faulty supplier batch sits for `faulty_units` units
    PACK-1   products into cartons, cartons onto pallets, pallets onto shipments

`first_unit` continues the same plant from that unit on (a later segment of a long
feed: identifiers, times, lots and loaded materials carry on as if one plant had
made all the units), so a bench can stream a feed far larger than memory.
`lines` copies the line (stations SMT-2, ASSY-2, ...; identifiers prefixed
L2-, ...), which spreads a feed over more stations and so more partitions.
Production lots of `lot_size` units; operators by shift; periodic machine
state changes, heartbeats and a few scrapped units. `disorder_ms` shuffles each
station's events within that bound, `duplicate_every` re-sends events, and
`bad_events` adds invalid ones; the same seed always gives the same events.
Nothing here decides an answer: the pipeline derives every edge from these
events, and tests compare it with a brute-force reference over the same events.
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

BASE_MS = 1_767_600_000_000  # 2026-01-05T08:00:00Z, fixed so runs are reproducible
CYCLE_MS = 2_000

PRODUCT, BOARD = "PRD-500", "BRD-100"
FAULTY_ITEM, FAULTY_LOT = "CAP-47U", "SUP-CAP-0013"
SMT_PARTS = ("RES-10K", "CAP-100N", "IC-MCU", "LED-RED")


def ref(kind: str, item: str, ident: str) -> dict:
    return {"kind": kind, "item": item, "ident": ident}


@dataclass
class Plant:
    units: int = 5_000
    lot_size: int = 5_000
    faulty_units: int = 140
    seed: int = 7
    batch_size: int = 250
    disorder_ms: int = 0
    duplicate_every: int = 0
    bad_events: int = 0
    carton_size: int = 20
    cartons_per_pallet: int = 10
    pallets_per_shipment: int = 5
    reel_size: int = 700
    lines: int = 1
    first_unit: int = 0
    base_ms: int = BASE_MS
    cycle_ms: int = CYCLE_MS
    events: dict[str, list[tuple[str, dict]]] = field(default_factory=lambda: defaultdict(list))

    @property
    def faulty_lot(self) -> str:
        return f"lot:{FAULTY_ITEM}:{FAULTY_LOT}"

    @property
    def first_product_lot(self) -> str:
        return f"lot:{PRODUCT}:PL-{PRODUCT}-0001"

    def _emit(self, station: str, kind: str, **body) -> None:
        self.events[station].append((f"genealogy.{kind}", {"station": station, **body}))

    def generate(self) -> "Plant":
        first, end = self.first_unit, self.first_unit + self.units
        rng = random.Random(self.seed + first)
        # A unit makes fewer than 40 events on a line: later segments' ids start past earlier ones'.
        seq = iter(range(first * self.lines * 40 + 1, 10**10))

        def eid(prefix: str) -> str:
            return f"{prefix}-{next(seq):09d}"

        def operator(t: int) -> str:
            return f"OP-{((t - self.base_ms) // (8 * 3600 * 1000)) % 3 + 1:02d}"

        for ln in range(1, self.lines + 1):
            # Line 1 keeps plain identifiers; other lines prefix theirs so nothing collides.
            tag = "" if ln == 1 else f"L{ln}-"
            # Coating lots come from a batch process before the line starts.
            coat_lots = []
            for n in range(first // 2000 + 1, max(first // 2000 + 2, end // 2000 + 2)):
                t = self.base_ms - 3_600_000 + n * 60_000
                coat = f"{tag}CT-{n:04d}"
                coat_lots.append(coat)
                self._emit(f"COAT-{ln}", "LotTransformed", event_id=eid("coat"), event_ms=t,
                           inputs=[{"node": ref("lot", "RESIN-A", f"{tag}RA-{n:04d}"), "quantity": 20.0},
                                   {"node": ref("lot", "HARDENER-B", f"{tag}HB-{(n + 1) // 2:04d}"), "quantity": 5.0}],
                           outputs=[{"node": ref("lot", "COAT-X", coat), "quantity": 25.0}],
                           work_order=f"{tag}WO-COAT-{n:04d}", operator=operator(t))

            # Capacitor batches at ASSY-1: the faulty one feeds exactly `faulty_units` consecutive units.
            faulty_start = min(self.units // 3, max(0, self.units - self.faulty_units)) if not first else -1
            cap_changes = {0: f"{tag}SUP-CAP-0011", faulty_start: f"{tag}{FAULTY_LOT}", faulty_start + self.faulty_units: f"{tag}SUP-CAP-0014"}

            def change(station: str, slot: str, item: str, new: str, t: int, loaded: dict[str, str]) -> None:
                old = loaded.get(slot)
                if old:
                    self._emit(station, "MaterialUnloaded", event_id=eid("unl"), event_ms=t, slot=slot,
                               material=ref("lot", item, old), operator=operator(t))
                self._emit(station, "MaterialLoaded", event_id=eid("ld"), event_ms=t + 100, slot=slot,
                           material=ref("lot", item, new), operator=operator(t))
                loaded[slot] = new

            smt_loaded: dict[str, str] = {}
            assy_loaded: dict[str, str] = {}
            if first:  # what the units before this segment left loaded
                for k, part in enumerate(SMT_PARTS):
                    smt_loaded[f"S{k + 1}"] = f"{tag}SUP-{part}-{(first - 1 + 97 * k) // self.reel_size + 1:04d}"
                assy_loaded.update(C1=f"{tag}SUP-CAP-0014", SCR=f"{tag}SCR-{(first - 1) // 1000 + 1:04d}",
                                   HSG=f"{tag}HSG-{(first - 1) // 1000 + 1:04d}", COAT=f"{tag}CT-{(first - 1) // 2000 + 1:04d}")
            packed: list[str] = []
            cartons: list[str] = []
            pallets: list[str] = []
            counters = defaultdict(int)

            def pack(t: int, force: bool = False) -> None:
                if packed and (len(packed) >= self.carton_size or force):
                    counters["carton"] += 1
                    carton = f"{tag}CTN-{first + counters['carton']:06d}"
                    self._emit(f"PACK-{ln}", "Packed", event_id=eid("pk"), event_ms=t, container=ref("container", "carton", carton),
                               contents=[ref("serial", PRODUCT, s) for s in packed], operator=operator(t))
                    cartons.append(carton)
                    packed.clear()
                if cartons and (len(cartons) >= self.cartons_per_pallet or force):
                    counters["pallet"] += 1
                    pallet = f"{tag}PAL-{first + counters['pallet']:05d}"
                    self._emit(f"PACK-{ln}", "Packed", event_id=eid("pk"), event_ms=t + 1, container=ref("container", "pallet", pallet),
                               contents=[ref("container", "carton", c) for c in cartons], operator=operator(t))
                    pallets.append(pallet)
                    cartons.clear()
                if pallets and (len(pallets) >= self.pallets_per_shipment or force):
                    counters["shipment"] += 1
                    shipment = f"{tag}SHP-{first + counters['shipment']:05d}"
                    self._emit(f"PACK-{ln}", "Packed", event_id=eid("pk"), event_ms=t + 2, container=ref("shipment", "shipment", shipment),
                               contents=[ref("container", "pallet", p) for p in pallets], operator=operator(t))
                    pallets.clear()

            for i in range(first, end):
                t = self.base_ms + i * self.cycle_ms
                lot_no = i // self.lot_size + 1
                # SMT: reel changes, then the board completes.
                for k, part in enumerate(SMT_PARTS):
                    if (i + 97 * k) % self.reel_size == 0 or part not in smt_loaded.values() and i == 0:
                        change(f"SMT-{ln}", f"S{k + 1}", part, f"{tag}SUP-{part}-{(i + 97 * k) // self.reel_size + 1:04d}", t, smt_loaded)
                board = f"{tag}B{i + 1:08d}"
                self._emit(f"SMT-{ln}", "UnitCompleted", event_id=eid("smt"), event_ms=t + 1_000, unit=ref("serial", BOARD, board),
                           production_lot=f"{tag}PL-{BOARD}-{lot_no:04d}", work_order=f"{tag}WO-{BOARD}-{lot_no:04d}", operator=operator(t))
                # ASSY: material changes, explicit board install, completion.
                ta = t + 30_000
                if i in cap_changes:
                    change(f"ASSY-{ln}", "C1", FAULTY_ITEM, cap_changes[i], ta, assy_loaded)
                if i % 1000 == 0:
                    change(f"ASSY-{ln}", "SCR", "SCR-M3", f"{tag}SCR-{i // 1000 + 1:04d}", ta, assy_loaded)
                    change(f"ASSY-{ln}", "HSG", "HSG-200", f"{tag}HSG-{i // 1000 + 1:04d}", ta, assy_loaded)
                if i % 2000 == 0:
                    change(f"ASSY-{ln}", "COAT", "COAT-X", coat_lots[min(i // 2000 - first // 2000, len(coat_lots) - 1)], ta, assy_loaded)
                product = f"{tag}P{i + 1:08d}"
                self._emit(f"ASSY-{ln}", "ComponentInstalled", event_id=eid("ins"), event_ms=ta + 500, unit=ref("serial", PRODUCT, product),
                           component=ref("serial", BOARD, board), quantity=1.0, operator=operator(ta))
                self._emit(f"ASSY-{ln}", "UnitCompleted", event_id=eid("asy"), event_ms=ta + 1_000, unit=ref("serial", PRODUCT, product),
                           production_lot=f"{tag}PL-{PRODUCT}-{lot_no:04d}", work_order=f"{tag}WO-{PRODUCT}-{lot_no:04d}", operator=operator(ta))
                if rng.random() < 0.002:
                    self._emit(f"ASSY-{ln}", "UnitScrapped", event_id=eid("scr"), event_ms=ta + 1_500, unit=ref("serial", PRODUCT, product),
                               reason="solder bridge at AOI")
                else:
                    packed.append(product)
                    pack(ta + 60_000)
                if i % 500 == 0:
                    self._emit(f"SMT-{ln}", "MachineStateChanged", event_id=eid("st"), event_ms=t + 1_500,
                               state=rng.choice(["Producing", "Producing", "UnscheduledDowntime", "Setup"]), reason=None)
                if i % 50 == 49:
                    for station in (f"SMT-{ln}", f"ASSY-{ln}"):
                        self._emit(station, "StationHeartbeat", event_id=eid("hb"), event_ms=t + 1_999)
            pack(self.base_ms + end * self.cycle_ms + 120_000, force=True)
        self._add_bad_events(rng, eid)
        return self

    def _add_bad_events(self, rng: random.Random, eid) -> None:
        makers = [
            lambda t: ("UnitCompleted", dict(event_id=eid("bad"), event_ms=t, unit=ref("serial", PRODUCT, ""),
                                             production_lot="PL-X", work_order="WO-X", operator=None)),
            lambda t: ("ComponentInstalled", dict(event_id=eid("bad"), event_ms=12, unit=ref("serial", PRODUCT, "P-BAD"),
                                                  component=ref("lot", "X", "Y"), quantity=1.0, operator=None)),
            lambda t: ("Packed", dict(event_id=eid("bad"), event_ms=t, container=ref("serial", PRODUCT, "NOT-A-BOX"),
                                      contents=[ref("serial", PRODUCT, "P00000001")], operator=None)),
        ]
        for n in range(self.bad_events):
            kind, body = makers[n % len(makers)](self.base_ms + rng.randrange(max(1, self.units)) * self.cycle_ms + 30_777)
            self._emit("ASSY-1", kind, **body)

    def arrivals(self) -> dict[str, list[tuple[str, dict]]]:
        """Each station's events in the order its gateway sends them: time order, shuffled within
        `disorder_ms`, with every `duplicate_every`-th event sent twice."""
        rng = random.Random(self.seed + 1)
        out = {}
        for station, events in self.events.items():
            keyed = sorted(events, key=lambda ke: (ke[1]["event_ms"] + (rng.random() * self.disorder_ms), ke[1]["event_id"]))
            if self.duplicate_every:
                dup = []
                for n, ke in enumerate(keyed):
                    dup.append(ke)
                    if n % self.duplicate_every == self.duplicate_every - 1:
                        dup.append(ke)
                keyed = dup
            out[station] = keyed
        return out

    def batches(self, linger_ms: int | None = None) -> list[dict]:
        """Capture batches of all stations, interleaved by time as a plant would send them. A batch is
        sent when it holds `batch_size` events or, with `linger_ms`, when its next event is that much
        younger than its first one (a gateway that does not hold events back longer than that)."""
        batches = []
        for station, events in self.arrivals().items():
            chunks, chunk = [], []
            for ke in events:
                if chunk and (len(chunk) >= self.batch_size
                              or linger_ms is not None and ke[1]["event_ms"] - chunk[0][1]["event_ms"] > linger_ms):
                    chunks.append(chunk)
                    chunk = []
                chunk.append(ke)
            chunks += [chunk] if chunk else []
            for n, chunk in enumerate(chunks):
                batches.append({"batch_id": f"{station}-{self.seed}-{n:07d}", "source": station,
                                "sent_ms": max(e["event_ms"] for _, e in chunk), "events": chunk})
        batches.sort(key=lambda b: (b["sent_ms"], b["batch_id"]))
        return batches

    def all_events(self) -> list[tuple[str, dict]]:
        return [ke for events in self.events.values() for ke in events]
