"""The simulated plant (``producers.simulator``) as its SMT and assembly stations would send it in
IPC-CFX 2.1, for ``genealogy simulate --format cfx`` and ``genealogy demo --format cfx``.

What a CFX line adds over the plant's own events: the stations load *reels* (material packages with
their own identifier), and goods receipt tells which supplier lot each reel came from. Each load of a
supplier lot becomes a reel ``<lot>-R<n>``; a ``MaterialsInitialized`` from ``Stores.GoodsReceipt``
names its ``ManufacturerLotCode``, before the first reel of a lot is loaded for half the lots and
after the run for the others (the relation is not time-bound). The supplier lot node equals the
plant's own lot node (``lot:<part>:<lot>``, no manufacturer part number), so a recall of the faulty
supplier lot reaches the same units as with the plant's own events, through its reels.

Message by message (the classes of the SDK, fields as in producers/cfx.py):

* MaterialLoaded / MaterialUnloaded -> ``MaterialsLoaded`` (``LocationIdentifier`` = slot) /
  ``MaterialsUnloaded`` (the reel's identifier);
* UnitCompleted -> ``WorkStarted`` (``TransactionID`` = the event id, the unit with its part number
  as a ``PartNumber`` a gateway adds, ``WorkOrderIdentifier`` {WorkOrderId, Batch = production lot})
  and ``WorkCompleted`` at the completion time;
* ComponentInstalled of a serial -> ``MaterialsInstalled`` with ``InstalledUnitIdentifier``;
* MachineStateChanged -> ``StationStateChanged`` (numeric SEMI E10 state); UnitScrapped ->
  ``UnitsDisqualified``; StationHeartbeat -> ``Heartbeat``.

Other stations (coating, packing) and the deliberately invalid events stay in the plant's own form.
Every package gets a goods receipt, the drums of the in-house coating lots too, so that the chain
resin -> coating lot -> its drum -> product holds.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from genealogy.producers.cfx import RESOURCE_STATES
from genealogy.producers.simulator import Plant

GOODS_RECEIPT = "Stores.GoodsReceipt"
_STATE_CODES = {name: code for code, name in RESOURCE_STATES.items()}
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def speaks_cfx(station: str) -> bool:
    return "SMT-" in station or "ASSY-" in station


def timestamp(ms: int) -> str:
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat(timespec="milliseconds")


def envelope(name: str, source: str, ms: int, uid: str, body: dict) -> dict:
    return {"MessageName": name, "Version": "2.1", "TimeStamp": timestamp(ms), "UniqueID": uid, "Source": source,
            "Target": None, "RequestID": None, "MessageBody": body}


def plant_as_cfx(plant: Plant) -> tuple[list[dict], list[dict]]:
    """(CFX envelopes in the order the stations send them, the plant's own batches of the other stations)."""
    messages: list[dict] = []
    loaded: dict[tuple[str, str, str], str] = {}    # (station, slot, lot node) -> reel on it
    first_load: dict[str, tuple[int, str, str]] = {}  # lot ident -> (time, part, reel)
    count: dict[str, int] = {}

    def add(ms: int, name: str, source: str, uid: str, body: dict) -> None:
        messages.append(envelope(name, source, ms, uid, body))

    arrivals = plant.arrivals()
    bad = {e["event_id"] for events in arrivals.values() for _, e in events if e["event_id"].startswith("bad")}
    for station, events in arrivals.items():
        if not speaks_cfx(station):
            continue
        for kind, e in events:
            if e["event_id"] in bad:
                continue
            t, uid = e["event_ms"], e["event_id"]
            if kind == "genealogy.MaterialLoaded":
                m = e["material"]
                count[m["ident"]] = count.get(m["ident"], 0) + 1
                reel = f"{m['ident']}-R{count[m['ident']]}"
                loaded[(station, e["slot"], m["ident"])] = reel
                first_load.setdefault(m["ident"], (t, m["item"], reel))
                add(t, "CFX.Materials.Storage.MaterialsLoaded", station, uid, {"Materials": [{
                    "LocationIdentifier": e["slot"], "LocationName": e["slot"],
                    "MaterialPackage": {"UniqueIdentifier": reel, "InternalPartNumber": m["item"], "Quantity": 5000.0},
                    "CarrierInformation": None}]})
            elif kind == "genealogy.MaterialUnloaded":
                reel = loaded.get((station, e["slot"], e["material"]["ident"]))
                if reel is not None:
                    add(t, "CFX.Materials.Storage.MaterialsUnloaded", station, uid, {"MaterialPackageIdentifiers": [reel]})
            elif kind == "genealogy.UnitCompleted":
                unit = e["unit"]
                add(t - 1, "CFX.Production.WorkStarted", station, f"{uid}-start", {
                    "TransactionID": uid, "Lane": 1, "UnitCount": 1,
                    "Units": [{"UnitIdentifier": unit["ident"], "PositionNumber": 1, "PartNumber": unit["item"]}],
                    "WorkOrderIdentifier": {"WorkOrderId": e["work_order"], "Batch": e["production_lot"]}})
                add(t, "CFX.Production.WorkCompleted", station, uid, {"TransactionID": uid, "Result": "Completed"})
            elif kind == "genealogy.ComponentInstalled" and e["component"]["kind"] == "serial":
                unit, c = e["unit"], e["component"]
                add(t, "CFX.Production.Assembly.MaterialsInstalled", station, uid, {"TransactionId": uid, "InstalledMaterials": [{
                    "UnitIdentifier": unit["ident"], "UnitPositionNumber": None, "PartNumber": unit["item"],
                    "QuantityInstalled": 1.0, "Material": {"UniqueIdentifier": None, "InternalPartNumber": c["item"]},
                    "InstalledComponents": [{"ReferenceDesignator": "J1", "InstalledUnitIdentifier": c["ident"]}]}]})
            elif kind == "genealogy.MachineStateChanged":
                add(t, "CFX.ResourcePerformance.StationStateChanged", station, uid, {
                    "OldState": None, "NewState": _STATE_CODES.get(e["state"], e["state"]),
                    "RelatedFault": {"FaultCode": e["reason"]} if e.get("reason") else None})
            elif kind == "genealogy.UnitScrapped":
                add(t, "CFX.Production.UnitsDisqualified", station, uid, {
                    "Reason": "DefectiveRepairNotPossible", "Comments": e["reason"], "UnitCount": 1,
                    "Units": [{"UnitIdentifier": e["unit"]["ident"], "PositionNumber": 1, "PartNumber": e["unit"]["item"]}]})
            elif kind == "genealogy.StationHeartbeat":
                add(t, "CFX.Heartbeat", station, uid, {"CFXHandle": station, "HeartbeatFrequency": "00:00:05"})
            else:  # a lot installed explicitly: not on the plant's CFX stations
                raise ValueError(f"no CFX rendering for {kind} at {station}")

    # Goods receipt: every reel of a supplier lot, before the lot's first load for half the lots (sent
    # first), after the last event for the others (sent last). Stations keep their own send order.
    end = max((e["event_ms"] for events in arrivals.values() for _, e in events), default=plant.base_ms) + 60_000
    before, after = [], []
    for n, (lot, (t, part, _)) in enumerate(sorted(first_load.items())):
        at = t - 3_600_000 if n % 2 == 0 else end + n
        (before if n % 2 == 0 else after).append(envelope(
            "CFX.Materials.Management.MaterialsInitialized", GOODS_RECEIPT, at, f"receipt-{lot}", {"Materials": [
                {"UniqueIdentifier": f"{lot}-R{k}", "InternalPartNumber": part, "Manufacturer": "ACME Components",
                 "ManufacturerPartNumber": None, "Vendor": "ACME Components", "ManufacturerLotCode": lot,
                 "InitialQuantity": 5000.0, "Quantity": 5000.0, "Status": "Active"} for k in range(1, count[lot] + 1)]}))
    native = [b for b in plant.batches() if not speaks_cfx(b["source"])]
    # The plant's invalid events stay invalid capture events (dead letters of the join), as the plant sends them.
    for station, events in arrivals.items():
        invalid = [(k, e) for k, e in events if e["event_id"] in bad]
        if speaks_cfx(station) and invalid:
            native.append({"batch_id": f"{station}-{plant.seed}-invalid", "source": station,
                           "sent_ms": max(e["event_ms"] for _, e in invalid), "events": invalid})
    return before + messages + after, native
