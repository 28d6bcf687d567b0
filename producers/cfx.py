"""IPC-CFX messages (JSON envelopes) -> our capture events.

Field names and meanings are the IPC-CFX SDK's (IPCConnectedFactoryExchange/CFX 2.1.1, the C#
classes named below); the SDK's own JSON examples are the fixtures (tests/fixtures/cfx/sdk).

Envelope (``CFX.CFXEnvelope``): ``MessageName`` picks the mapping; ``TimeStamp`` (when the event
happened; must carry its UTC offset) -> event_ms; ``UniqueID`` -> event ids (the SDK's
de-duplication key); ``Source`` (the endpoint's CFX handle) -> station. ``Version``, ``Target``,
``RequestID`` are not used.

=================================================  ==========================================
CFX message (class)                                capture event
=================================================  ==========================================
Materials.Management.MaterialsInitialized          MaterialIdentified per Materials[] (MaterialPackageDetail)
Materials.Management.MaterialsModified             MaterialIdentified per Materials[] (restated)
Materials.Storage.MaterialsLoaded                  MaterialLoaded per Materials[] (MaterialLocation) on a slot
Materials.Storage.MaterialCarriersLoaded           MaterialLoaded per package kitted on the carrier
Materials.Storage.MaterialsUnloaded                PackageUnloaded per MaterialPackageIdentifiers[]
Materials.Storage.MaterialCarriersUnloaded         MaterialUnloaded per package on the carrier
Production.WorkStarted                             UnitRouted (lane) per unit; remembers Units, WorkOrderIdentifier
Production.WorkCompleted                           UnitCompleted per unit
Production.UnitsInitialized                        UnitCompleted per unit, or names a transaction's units
Production.UnitsArrived / UnitsDeparted            UnitRouted (lane) per unit, where Lane is given
Production.WorkStageCompleted                      UnitRouted (stage) per unit of the transaction
Production.Processing.UnitsProcessed               UnitCompleted per UnitProcessData[] (ProcessedUnit)
Production.Assembly.MaterialsInstalled             ComponentInstalled per InstalledMaterials[] or per
                                                   InstalledComponents[] with an InstalledUnitIdentifier;
                                                   UnitRouted (stage) per InstalledComponents[].Stage
Production.Assembly.MaterialsUninstalled           ComponentRemoved per UninstalledMaterials[] or per
                                                   UninstalledComponents[] with an InstalledUnitIdentifier
Production.TestAndInspection.UnitsInspected        UnitTested per InspectedUnits[] (InspectedUnit)
Production.TestAndInspection.UnitsTested           UnitTested per TestedUnits[] (TestedUnit)
Production.UnitsDisqualified                       UnitScrapped per Units[]
ResourcePerformance.StationStateChanged            MachineStateChanged (NewState)
Heartbeat                                          StationHeartbeat
anything else                                      counted in ``unknown``; the caller keeps it raw
=================================================  ==========================================

Field by field, SDK -> here:

* ``MaterialPackage`` (in events): ``UniqueIdentifier`` (the package: reel, tray, bag) and
  ``InternalPartNumber`` -> the package node ``lot:<InternalPartNumber>:<UniqueIdentifier>``.
  ``Quantity``, ``InternalPackageName``, ``LeadingMaterialPackage`` (splice chains), ``BatchId``,
  ``GreyZone`` are not used: a splice is a load of the new reel on the same slot.
* ``MaterialPackageDetail`` (MaterialsInitialized / MaterialsModified): ``ManufacturerLotCode`` is
  "the lot code applied to this batch of material by the original manufacturer", the supplier lot:
  ``lot:<ManufacturerPartNumber, else InternalPartNumber>:<ManufacturerLotCode>`` (the
  manufacturer's part, since lot codes are the manufacturer's), and a ``supplied`` edge from it to
  the package. ``Manufacturer`` and ``Vendor`` -> supplier. A package with no lot code is noted,
  not guessed. Dates, quantities, ``Status``, ``MaterialData`` (MSD) are not kept. A MaterialsModified
  whose Reason is InformationWasIncorrect restates the lot; the earlier edge is not retracted yet.
* ``MaterialLocation`` (MaterialsLoaded): slot = ``LocationIdentifier``, else ``LocationName``.
  The SDK's three cases: a package onto a slot; onto a carrier only (no location: kitting, noted
  and remembered); onto a carrier on a slot. ``MaterialCarrierLocation`` (MaterialCarriersLoaded):
  the carrier (``CarrierInformation.UniqueIdentifier``) goes on ``LocationIdentifier``, with every
  package kitted onto it in this feed; MaterialCarriersUnloaded takes them off with it (the SDK:
  the packages stay in the carrier).
* ``MaterialsUnloaded.MaterialPackageIdentifiers`` names packages only: a PackageUnloaded each, and
  the stream's join finds the slot and material holding that identifier on the station (also for
  a load it receives later, within the grace). Nothing here remembers the load, so an unload after
  a gateway restart, or in another file, works.
* ``UnitPosition`` (WorkStarted.Units, UnitsDisqualified.Units): ``UnitIdentifier`` names the unit,
  or a panel/carrier with the unit at ``PositionNumber`` (``UnitPositionNumber`` on
  ProcessedUnit, InstalledMaterial, InspectedUnit, TestedUnit). With ``context.qualify_positions``
  the unit is ``<UnitIdentifier>#<position>``; without it, one identifier at several positions is
  rejected rather than guessed. CFX units carry no part number: the item is a ``PartNumber`` on
  the unit or the body if a gateway adds one, else ``context.unit_item``.
* ``WorkStarted``: ``TransactionID`` correlates the later messages; ``WorkOrderIdentifier``
  (CFX 2.1): ``WorkOrderId`` -> work order, ``Batch`` -> production lot (else the TransactionID
  for both). ``Lane`` (``int?``) -> a ``UnitRouted`` lane fact per unit: on a dual-lane machine, which
  units shared a conveyor lane (and its nozzles, clamps) with a bad one. ``RecipeName``,
  ``PrimaryIdentifier`` are not kept.
* ``UnitsArrived`` / ``UnitsDeparted``: ``Lane`` -> lane facts; without a Lane they say nothing here.
* ``Stage`` (WorkStageCompleted, InstalledComponent): ``StageName``, else ``StageSequence``, names the
  stage (a placement head, an oven zone); ``StageSequence``, ``StageType`` and the stage's ``Result``
  go to the fact's note. WorkStageCompleted names no units: they are its transaction's (WorkStarted),
  so one whose WorkStarted this feed has not seen is a reject. WorkStageStarted / Paused / Resumed add
  nothing the completion does not say (unknown).
* ``UnitsInitialized`` (units first marked or labelled): within a work transaction it fills the units
  and ``WorkOrderIdentifier`` its WorkStarted lacked; on its own (``TransactionID`` null) it is each
  unit's completion at the marking endpoint, with the work order and batch.
* ``WorkCompleted``: ``Units`` only where WorkStarted lacked them. Every ``Result`` maps (the unit
  was on the station whatever the result). Completion event id ``<TransactionID>#<unit>``, so a
  WorkCompleted and a UnitsProcessed of one transaction give one completion per unit.
* ``InstalledMaterial`` (MaterialsInstalled): the parent is ``UnitIdentifier`` (+ position). An
  ``InstalledComponent`` with ``InstalledUnitIdentifier`` (2.1: "unique ID of the sub-assembly /
  unit that was installed") is a serial ``serial:<Material.InternalPartNumber>:<id>``; otherwise
  the entry installs its ``Material`` package, quantity ``QuantityInstalled``, else the number of
  InstalledComponents, else 1. ``ReferenceDesignator`` and ``CarrierLocation`` are not kept.
* ``InspectedUnit`` / ``TestedUnit``: ``OverallResult`` (TestResult: Passed, Failed, Error,
  Aborted, Skipped) -> result; ``InspectionMethod`` / ``TestMethod`` and the names of the
  inspections or tests that did not pass -> test. An ``InspectedPanel`` with no units is noted.
* ``StationStateChanged``: numeric ``NewState`` (SEMI E10) written by name, e.g. 1100 ->
  "PRD_RegularWork"; reason = ``RelatedFault.FaultCode`` or ``Cause``.
* ``UnitsDisqualified``: ``Reason`` and ``Comments`` -> the scrap reason.
* ``UninstalledMaterial`` (MaterialsUninstalled, rework): the same shape as InstalledMaterial, its
  ``UninstalledComponents`` being InstalledComponents. A component with ``InstalledUnitIdentifier``
  is the sub-assembly serial taken out (quantity 1); otherwise the entry takes ``QuantityUninstalled``
  (else the number of UninstalledComponents) parts of its ``Material`` package out of the unit.
  ``Reason`` (UninstalledReason) is kept; ``InstallationTime`` and ``ReferenceDesignator`` are not.
  ``TransactionId`` is not needed: the entry names its unit. What a removal changes in recall is
  the stream's and the store's business (genealogy.domain.recall.holding): a unit holds a component
  until as much was taken out as was put in.
* A WorkCompleted without Units, or a WorkStageCompleted, needs its WorkStarted earlier
  in the feed: ``genealogy ingest`` and the bridge keep the open transactions (and kitted carriers)
  in the spool between runs (``CfxContext.state``), so a gateway restart inside a transaction
  loses nothing.
* CFX has no operator on these messages: operator is null.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from genealogy.producers.mapping import Bad, Event, MapResult, Reject, epoch_ms, event, node, ref

RESOURCE_STATES = {
    1000: "PRD", 1100: "PRD_RegularWork", 1200: "PRD_WorkForThirdParties", 1300: "PRD_Rework", 1400: "PRD_Engineering",
    2000: "SBY", 2100: "SBY_NoOperator", 2200: "SBY_NoProduct", 2300: "SBY_NoSupportTool",
    2400: "SBY_AssociatedClusterModuleDown", 2500: "SBY_NoHost",
    3000: "ENG", 3100: "ENG_ProcessExperiments", 3200: "ENG_EquipmentExperiments",
    4000: "SDT", 4100: "SDT_UserMaintenanceDelay", 4200: "SDT_SuppliedMaintenanceDelay", 4300: "SDT_PreventiveMaintenance",
    4400: "SDT_ChangeOfConsumables", 4500: "SDT_Setup", 4600: "SDT_ProductionTest", 4700: "SDT_FacilitiesRelated",
    5000: "USD", 5100: "USD_UserMaintentanceDelay", 5200: "USD_SuppliedMaintenanceDelay", 5300: "USD_Repair",
    5400: "USD_OutOfSpecInputMaterial", 5500: "USD_ChangeOfConsumables", 5600: "USD_FacilitiesRelated",
    6000: "NST", 6100: "NST_UnworkedShifts", 6200: "NST_EquipmentInstallation", 6300: "NST_EquipmentModifications",
    6400: "NST_OfflineTraining", 6500: "NST_ShutdownAndStartup",
}


# Open work transactions a context keeps: a WorkStarted whose WorkCompleted never comes must not
# grow it for ever; the oldest go first.
MAX_OPEN_TRANSACTIONS = 50_000
# Kitted carriers likewise (a line has hundreds of feeder carts and trolleys), and the packages kitted
# onto each: the least recently kitted go first.
MAX_CARRIERS = 10_000
MAX_PACKAGES_PER_CARRIER = 1_000


@dataclass
class CfxContext:
    """Per-feed settings and what earlier messages said that later ones refer to by id only. ``state``
    and ``restore`` carry the latter across an ingest or bridge restart (kept in the spool)."""
    unit_item: str = "UNKNOWN"
    qualify_positions: bool = False
    transactions: dict[str, dict] = field(default_factory=dict)                     # TransactionID -> WorkStarted body
    carriers: dict[str, dict[str, dict]] = field(default_factory=dict)              # carrier id -> package id -> material ref
    carrier_slots: dict[tuple[str, str], str] = field(default_factory=dict)         # (station, carrier id) -> slot

    def kit(self, carrier: str, material: dict) -> None:
        """A package kitted onto a carrier; the carrier and the package become the most recent."""
        packages = self.carriers.pop(carrier, {})
        packages.pop(material["ident"], None)
        packages[material["ident"]] = material
        while len(packages) > MAX_PACKAGES_PER_CARRIER:
            packages.pop(next(iter(packages)))
        self.carriers[carrier] = packages
        if len(self.carriers) > MAX_CARRIERS:
            while len(self.carriers) > MAX_CARRIERS:
                self.carriers.pop(next(iter(self.carriers)))
            self.carrier_slots = {k: v for k, v in self.carrier_slots.items() if k[1] in self.carriers}

    def state(self) -> str:
        while len(self.transactions) > MAX_OPEN_TRANSACTIONS:
            self.transactions.pop(next(iter(self.transactions)))
        return json.dumps({"transactions": self.transactions, "carriers": self.carriers,
                           "carrier_slots": [[station, carrier, slot] for (station, carrier), slot in self.carrier_slots.items()]})

    def restore(self, state: str | None) -> "CfxContext":
        if state:
            saved = json.loads(state)
            self.transactions = saved["transactions"]
            self.carriers = saved["carriers"]
            self.carrier_slots = {(station, carrier): slot for station, carrier, slot in saved["carrier_slots"]}
        return self


@dataclass(frozen=True)
class _Msg:
    origin: str
    station: str
    event_ms: int
    uid: str
    body: dict
    ctx: CfxContext


def map_cfx(message: dict, *, origin: str, context: CfxContext | None = None) -> MapResult:
    """One CFX envelope. Pass the same ``context`` along a feed so unloads and
    WorkCompleted without Units can be resolved."""
    result = MapResult()
    ctx = context if context is not None else CfxContext()
    try:
        if not isinstance(message, dict):
            raise Bad(f"message: expected a JSON object, got {type(message).__name__}")
        name = _str(message, "MessageName")
        handler = HANDLERS.get(name)
        if handler is None:
            result.skip(f"{origin}: {name}: no genealogy mapping for this message")
            return result
        body = message.get("MessageBody")
        if not isinstance(body, dict):
            raise Bad("MessageBody: missing or not an object")
        msg = _Msg(origin, _str(message, "Source"), epoch_ms(message.get("TimeStamp"), "TimeStamp"),
                   _str(message, "UniqueID"), body, ctx)
        handler(msg, result)
    except Bad as exc:
        result.rejects.append(Reject(origin, str(exc), message))
    return result


def map_cfx_lines(lines: Iterable[str], *, origin: str, context: CfxContext | None = None) -> MapResult:
    """A JSON-lines feed (one envelope per line, in order); a line that is not JSON is a reject."""
    result = MapResult()
    ctx = context if context is not None else CfxContext()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError as exc:
            result.rejects.append(Reject(f"{origin}:{n}", f"line is not JSON: {exc}", line))
            continue
        result.add(map_cfx(message, origin=f"{origin}:{n}", context=ctx))
    return result


# --- handlers: each appends events, or per-entry rejects, to `out` ----------------------

def _each(msg: _Msg, out: MapResult, key: str, entries: Any, build, objects: bool = True) -> None:
    """Map each entry of a list on its own: one bad entry is a reject, the others still map. ``build``
    returns the entry's event, or a list of them (none: it noted why with ``out.skip``)."""
    if not isinstance(entries, list):
        raise Bad(f"{key}: missing or not a list")
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        try:
            if objects and not isinstance(entry, dict):
                raise Bad(f"{where}: expected an object")
            built = build(i, where, entry)
            out.events.extend(built if isinstance(built, list) else [built])
        except Bad as exc:
            out.rejects.append(Reject(f"{msg.origin}#{where}", str(exc), entry))


def _loaded(msg: _Msg, out: MapResult) -> None:
    """MaterialsLoaded, the SDK's three cases: a package onto a station slot; onto a carrier only (kitting:
    no LocationIdentifier; it reaches the station with MaterialCarriersLoaded); onto a carrier on a slot."""
    def build(i: int, where: str, m: dict) -> list[Event]:
        material = _package(m.get("MaterialPackage"), f"{where}.MaterialPackage")
        slot = _opt(m, "LocationIdentifier") or _opt(m, "LocationName")
        carrier = _opt(m.get("CarrierInformation"), "UniqueIdentifier")
        if carrier:
            msg.ctx.kit(carrier, material)
            if slot:
                msg.ctx.carrier_slots[(msg.station, carrier)] = slot
        if not slot:
            if not carrier:
                raise Bad(f"{where}.LocationIdentifier: missing, and no CarrierInformation either")
            out.skip(f"{msg.origin}#{where}: package {material['ident']} kitted onto carrier {carrier}; "
                     "it is loaded when MaterialCarriersLoaded puts the carrier on a slot")
            return []
        return [event("MaterialLoaded", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                      slot=slot, material=material, operator=None)]
    _each(msg, out, "Materials", msg.body.get("Materials"), build)


def _carriers_loaded(msg: _Msg, out: MapResult) -> None:
    """MaterialCarriersLoaded: the packages kitted onto each carrier are loaded on its slot."""
    def build(i: int, where: str, c: dict) -> list[Event]:
        carrier = _opt(c.get("CarrierInformation"), "UniqueIdentifier")
        slot = _opt(c, "LocationIdentifier") or _opt(c, "LocationName")
        if not carrier or not slot:
            raise Bad(f"{where}: needs CarrierInformation.UniqueIdentifier and LocationIdentifier")
        packages = msg.ctx.carriers.get(carrier, {})
        if not packages:
            out.skip(f"{msg.origin}#{where}: carrier {carrier} holds no package this feed kitted")
        msg.ctx.carrier_slots[(msg.station, carrier)] = slot
        return [event("MaterialLoaded", event_id=f"{msg.uid}#{i}#{k}", event_ms=msg.event_ms, station=msg.station,
                      slot=slot, material=material, operator=None) for k, material in enumerate(packages.values())]
    _each(msg, out, "Carriers", msg.body.get("Carriers"), build)


def _carriers_unloaded(msg: _Msg, out: MapResult) -> None:
    """MaterialCarriersUnloaded: the carrier leaves its slot with its packages (they stay kitted on it)."""
    entries = msg.body.get("CarrierIdentifiers")
    if not isinstance(entries, list):
        raise Bad("CarrierIdentifiers: missing or not a list")
    for i, carrier in enumerate(dict.fromkeys(entries)):  # the SDK's example lists one carrier twice
        where = f"CarrierIdentifiers[{i}]"
        if not isinstance(carrier, str) or not carrier.strip():
            out.rejects.append(Reject(f"{msg.origin}#{where}", f"{where}: {carrier!r} is not a carrier identifier", carrier))
            continue
        slot = msg.ctx.carrier_slots.pop((msg.station, carrier.strip()), None)
        if slot is None:
            out.rejects.append(Reject(f"{msg.origin}#{where}", f"{where}: carrier {carrier!r} was not loaded on "
                                      f"{msg.station} earlier in this feed, so its slot is unknown", carrier))
            continue
        for k, material in enumerate(msg.ctx.carriers.get(carrier.strip(), {}).values()):
            out.events.append(event("MaterialUnloaded", event_id=f"{msg.uid}#{i}#{k}", event_ms=msg.event_ms,
                                    station=msg.station, slot=slot, material=material, operator=None))


def _unloaded(msg: _Msg, out: MapResult) -> None:
    """MaterialsUnloaded names packages only; the join finds their slot (PackageUnloaded), so an unload
    needs no memory of the load here: a gateway restarted in between gives the same edges."""
    def build(i: int, where: str, package: Any) -> Event:
        if not isinstance(package, str) or not package.strip():
            raise Bad(f"{where}: {package!r} is not a package identifier")
        return event("PackageUnloaded", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                     package=package.strip(), operator=None)
    _each(msg, out, "MaterialPackageIdentifiers", msg.body.get("MaterialPackageIdentifiers"), build, objects=False)


def _identified(msg: _Msg, out: MapResult) -> None:
    """MaterialsInitialized / MaterialsModified: each package's supplier lot (ManufacturerLotCode)."""
    def build(i: int, where: str, m: dict) -> list[Event]:
        package = _package(m, where)
        code = _opt(m, "ManufacturerLotCode")
        if not code:
            out.skip(f"{msg.origin}#{where}: package {package['ident']} has no ManufacturerLotCode")
            return []
        item = _opt(m, "ManufacturerPartNumber") or package["item"]
        supplier = ", ".join(dict.fromkeys(filter(None, (_opt(m, "Manufacturer"), _opt(m, "Vendor"))))) or None
        return [event("MaterialIdentified", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                      package=package, supplier_lot=ref(node("lot", item, code, f"{where}.ManufacturerLotCode")),
                      supplier=supplier, operator=None)]
    _each(msg, out, "Materials", msg.body.get("Materials"), build)


def _tested(msg: _Msg, out: MapResult, key: str, method_key: str, each_key: str, name_key: str) -> None:
    """UnitsInspected / UnitsTested: each unit's OverallResult, with the method and what failed."""
    units = msg.body.get(key)
    idents = _unit_idents(units, key, msg.ctx)
    method = _opt(msg.body, method_key)
    if not units:
        out.skip(f"{msg.origin}: {key} is empty (a panel-level result names no unit)")
        return

    def build(i: int, where: str, u: dict) -> Event:
        result = _opt(u, "OverallResult")
        if not result:
            raise Bad(f"{where}.OverallResult: missing")
        failed = [_opt(t, name_key) for t in (u.get(each_key) or []) if isinstance(t, dict)
                  and _opt(t, "Result") not in ("", "Passed") and _opt(t, name_key)]
        test = " ".join(filter(None, (method, ("failed: " + ", ".join(failed)) if failed else ""))) or key
        return event("UnitTested", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                     unit=_unit(u, idents[i], where, msg), result=result, test=test)
    _each(msg, out, key, units, build)


def _routed(msg: _Msg, out: MapResult, units: Any, key: str, route: str, name: str, note: str, event_id: str) -> None:
    """A UnitRouted per unit of ``units``: the lane or stage it ran on. A unit that cannot be named (a panel
    without qualify_positions) is noted, not rejected: its completion reports that already."""
    idents = _unit_idents(units, key, msg.ctx)
    for i, u in enumerate(units):
        try:
            unit = _unit(u, idents[i], f"{key}[{i}]", msg) if isinstance(u, dict) else None
        except Bad as exc:
            unit, why = None, str(exc)
        else:
            why = f"{key}[{i}]: not an object"
        if unit is None:
            out.skip(f"{msg.origin}: {route} {name} not recorded for {why}")
            continue
        out.events.append(event("UnitRouted", event_id=f"{event_id}#{route}#{unit['ident']}", event_ms=msg.event_ms,
                                station=msg.station, unit=unit, route=route, name=name, note=note))


def _lane(body: dict) -> str:
    lane = body.get("Lane")
    return str(lane) if isinstance(lane, int) and not isinstance(lane, bool) else ""


def _started(msg: _Msg, out: MapResult) -> None:
    tx = _str(msg.body, "TransactionID", "TransactionId")
    msg.ctx.transactions[tx] = msg.body
    if _lane(msg.body) and msg.body.get("Units"):
        _routed(msg, out, msg.body["Units"], "Units", "lane", _lane(msg.body), "WorkStarted", tx)


def _initialized(msg: _Msg, out: MapResult) -> None:
    """UnitsInitialized: units marked or labelled, entering production with their work order. Within a
    work transaction the WorkCompleted completes them (this names the units and work order the WorkStarted
    may lack); on its own it is the units' completion at the marking endpoint."""
    tx = _opt(msg.body, "TransactionID") or _opt(msg.body, "TransactionId")
    started = msg.ctx.transactions.get(tx) if tx else None
    if started is not None:
        for key in ("Units", "WorkOrderIdentifier"):
            if not started.get(key) and msg.body.get(key):
                started[key] = msg.body[key]
        return
    _completed(msg, out, finished=False)


def _arrived(msg: _Msg, out: MapResult, name: str) -> None:
    """UnitsArrived / UnitsDeparted: the lane the units came in or left on, where the endpoint has lanes."""
    if not _lane(msg.body):
        out.skip(f"{msg.origin}: {name} names no Lane")
        return
    units = msg.body.get("Units")
    if not isinstance(units, list):
        raise Bad("Units: missing or not a list")
    _routed(msg, out, units, "Units", "lane", _lane(msg.body), name, msg.uid)


def _stage_completed(msg: _Msg, out: MapResult) -> None:
    """WorkStageCompleted: the units of the transaction (its WorkStarted) went through this stage."""
    tx = _str(msg.body, "TransactionID", "TransactionId")
    stage = msg.body.get("Stage")
    name = (_opt(stage, "StageName") or _opt(stage, "StageSequence")) if isinstance(stage, dict) else ""
    if not name:
        raise Bad("Stage: missing, or has neither StageName nor StageSequence")
    units = msg.ctx.transactions.get(tx, {}).get("Units")
    if not units:
        raise Bad(f"TransactionID {tx}: no WorkStarted with Units seen in this feed, so the stage's units are unknown")
    note = f"WorkStageCompleted: {_opt(msg.body, 'Result') or 'no Result'}; {_stage_note(stage)}"
    _routed(msg, out, units, "Units", "stage", name, note, f"{tx}#{msg.uid}")


def _stage_note(stage: dict) -> str:
    return f"stage {_opt(stage, 'StageSequence') or '?'} ({_opt(stage, 'StageType') or 'Work'})"


def _completed(msg: _Msg, out: MapResult, finished: bool) -> None:
    """WorkCompleted (finished: the transaction ends) and UnitsProcessed (within the transaction)."""
    tx = _opt(msg.body, "TransactionID") or _opt(msg.body, "TransactionId")
    transactions = msg.ctx.transactions
    started = (transactions.pop(tx, {}) if finished else transactions.get(tx, {})) if tx else {}
    key = "UnitProcessData" if "UnitProcessData" in msg.body else "Units"
    units = msg.body.get(key) or started.get("Units")
    if not units:
        raise Bad(f"{key}: no units listed and no WorkStarted seen for TransactionID {tx or '(missing)'}")
    order = msg.body.get("WorkOrderIdentifier") or started.get("WorkOrderIdentifier") or {}
    lot = _opt(order, "Batch") or tx
    work_order = _opt(order, "WorkOrderId") or tx
    if not lot:
        raise Bad("TransactionID: missing, and no WorkOrderIdentifier.Batch to name the production lot")
    idents = _unit_idents(units, key, msg.ctx)
    if finished and _lane(started) and not started.get("Units"):
        _routed(msg, out, units, key, "lane", _lane(started), "WorkStarted (units from WorkCompleted)", tx)

    def build(i: int, where: str, u: dict) -> Event:
        unit = _unit(u, idents[i], where, msg)
        return event("UnitCompleted", event_id=f"{tx or msg.uid}#{unit['ident']}", event_ms=msg.event_ms,
                     station=msg.station, unit=unit, production_lot=lot, work_order=work_order, operator=None)
    _each(msg, out, key, units, build)


def _parts(msg: _Msg, i: int, where: str, m: dict, components_key: str, quantity_key: str, default: float,
           done: str, why_no_quantity: str = "") -> list[tuple[str, dict, float]]:
    """(event id, component, quantity) of an InstalledMaterial or UninstalledMaterial entry: one per
    sub-assembly with a serial (InstalledComponent.InstalledUnitIdentifier), else its package's parts."""
    components = [c for c in (m.get(components_key) or []) if isinstance(c, dict)]
    serials = [(k, _opt(c, "InstalledUnitIdentifier")) for k, c in enumerate(components) if _opt(c, "InstalledUnitIdentifier")]
    if serials:
        item = _opt(m.get("Material"), "InternalPartNumber")
        if not item:
            raise Bad(f"{where}.Material.InternalPartNumber: missing, so the {done} sub-assemblies' part number is unknown")
        return [(f"{msg.uid}#{i}#{k}", ref(node("serial", item, serial, f"{where}.{components_key}[{k}].InstalledUnitIdentifier")), 1.0)
                for k, serial in serials]
    component = _package(m.get("Material"), f"{where}.Material")
    quantity = m.get(quantity_key) or len(components) or default
    if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or quantity <= 0:
        raise Bad(f"{where}.{quantity_key}: {quantity!r} is not a positive number{why_no_quantity}")
    return [(f"{msg.uid}#{i}", component, float(quantity))]


def _installed(msg: _Msg, out: MapResult) -> None:
    """One ComponentInstalled per installed sub-assembly that has a serial (InstalledComponents[].
    InstalledUnitIdentifier); else one for the package (lot) the entry installed from."""
    entries = msg.body.get("InstalledMaterials")
    idents = _unit_idents(entries, "InstalledMaterials", msg.ctx)

    def build(i: int, where: str, m: dict) -> list[Event]:
        unit = _unit(m, idents[i], where, msg)
        return [event("ComponentInstalled", event_id=event_id, event_ms=msg.event_ms, station=msg.station, unit=unit,
                      component=component, quantity=quantity, operator=None)
                for event_id, component, quantity in _parts(msg, i, where, m, "InstalledComponents", "QuantityInstalled",
                                                            1.0, "installed")] + _installed_stages(msg, m, unit, where)
    _each(msg, out, "InstalledMaterials", entries, build)


def _uninstalled(msg: _Msg, out: MapResult) -> None:
    """One ComponentRemoved per sub-assembly taken out that has a serial; else one for the parts of the
    package the entry took out."""
    entries = msg.body.get("UninstalledMaterials")
    idents = _unit_idents(entries, "UninstalledMaterials", msg.ctx)

    def build(i: int, where: str, m: dict) -> list[Event]:
        unit = _unit(m, idents[i], where, msg)
        reason = _opt(m, "Reason") or "Other"
        return [event("ComponentRemoved", event_id=event_id, event_ms=msg.event_ms, station=msg.station, unit=unit,
                      component=component, quantity=quantity, reason=reason, operator=None)
                for event_id, component, quantity in _parts(
                    msg, i, where, m, "UninstalledComponents", "QuantityUninstalled", 0, "removed",
                    ", and no UninstalledComponents say how many")]
    _each(msg, out, "UninstalledMaterials", entries, build)


def _installed_stages(msg: _Msg, m: dict, unit: dict, where: str) -> list[Event]:
    """The stages the entry's components were placed at (InstalledComponent.Stage), once each."""
    stages = {}
    for c in m.get("InstalledComponents") or []:
        stage = c.get("Stage") if isinstance(c, dict) else None
        name = (_opt(stage, "StageName") or _opt(stage, "StageSequence")) if isinstance(stage, dict) else ""
        if name:
            stages.setdefault(name, stage)
    return [event("UnitRouted", event_id=f"{msg.uid}#{where}#stage#{name}", event_ms=msg.event_ms, station=msg.station,
                  unit=unit, route="stage", name=name, note=f"MaterialsInstalled; {_stage_note(stage)}")
            for name, stage in stages.items()]


def _disqualified(msg: _Msg, out: MapResult) -> None:
    units = msg.body.get("Units")
    idents = _unit_idents(units, "Units", msg.ctx)
    reason = ": ".join(filter(None, (_opt(msg.body, "Reason"), _opt(msg.body, "Comments")))) or "Disqualified"

    def build(i: int, where: str, u: dict) -> Event:
        return event("UnitScrapped", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                     unit=_unit(u, idents[i], where, msg), reason=reason)
    _each(msg, out, "Units", units, build)


def _state(msg: _Msg, out: MapResult) -> None:
    state = msg.body.get("NewState")
    if isinstance(state, int) and not isinstance(state, bool):
        state = RESOURCE_STATES.get(state, str(state))
    if not isinstance(state, str) or not state.strip():
        raise Bad(f"NewState: {state!r} is not a resource state")
    fault = msg.body.get("RelatedFault") or {}
    reason = (_opt(fault, "FaultCode") or _opt(fault, "Cause") or None) if isinstance(fault, dict) else None
    out.events.append(event("MachineStateChanged", event_id=msg.uid, event_ms=msg.event_ms, station=msg.station,
                            state=state.strip(), reason=reason))


def _heartbeat(msg: _Msg, out: MapResult) -> None:
    out.events.append(event("StationHeartbeat", event_id=msg.uid, event_ms=msg.event_ms, station=msg.station))


HANDLERS = {
    "CFX.Materials.Storage.MaterialsLoaded": _loaded,
    "CFX.Materials.Storage.MaterialsUnloaded": _unloaded,
    "CFX.Production.WorkStarted": _started,
    "CFX.Production.WorkCompleted": lambda msg, out: _completed(msg, out, finished=True),
    "CFX.Production.Processing.UnitsProcessed": lambda msg, out: _completed(msg, out, finished=False),
    "CFX.Production.UnitsProcessed": lambda msg, out: _completed(msg, out, finished=False),  # short form of the name
    "CFX.Production.Assembly.MaterialsInstalled": _installed,
    "CFX.Production.Assembly.MaterialsUninstalled": _uninstalled,
    "CFX.Production.UnitsDisqualified": _disqualified,
    "CFX.ResourcePerformance.StationStateChanged": _state,
    "CFX.Heartbeat": _heartbeat,
    "CFX.Production.UnitsInitialized": _initialized,
    "CFX.Production.UnitsArrived": lambda msg, out: _arrived(msg, out, "UnitsArrived"),
    "CFX.Production.UnitsDeparted": lambda msg, out: _arrived(msg, out, "UnitsDeparted"),
    "CFX.Production.WorkStageCompleted": _stage_completed,
    "CFX.Materials.Storage.MaterialCarriersLoaded": _carriers_loaded,
    "CFX.Materials.Storage.MaterialCarriersUnloaded": _carriers_unloaded,
    "CFX.Materials.Management.MaterialsInitialized": _identified,
    "CFX.Materials.Management.MaterialsModified": _identified,
    "CFX.Production.TestAndInspection.UnitsInspected":
        lambda msg, out: _tested(msg, out, "InspectedUnits", "InspectionMethod", "Inspections", "InspectionName"),
    "CFX.Production.TestAndInspection.UnitsTested":
        lambda msg, out: _tested(msg, out, "TestedUnits", "TestMethod", "Tests", "TestName"),
}


# --- fields ------------------------------------------------------------------------

def _package(p: Any, where: str) -> dict:
    if not isinstance(p, dict):
        raise Bad(f"{where}: missing")
    ident, item = _opt(p, "UniqueIdentifier"), _opt(p, "InternalPartNumber")
    if not ident:
        raise Bad(f"{where}.UniqueIdentifier: missing")
    if not item:
        raise Bad(f"{where}.InternalPartNumber: missing")
    return ref(node("lot", item, ident, where))


def _position(u: Any) -> int | None:
    if not isinstance(u, dict):
        return None
    pos = u.get("PositionNumber", u.get("UnitPositionNumber"))
    return pos if isinstance(pos, int) and not isinstance(pos, bool) and pos > 0 else None


def _unit_idents(units: Any, key: str, ctx: CfxContext) -> list[str | None]:
    """The unit identifier of each entry, qualified by position when configured; None where it cannot be told."""
    if not isinstance(units, list):
        raise Bad(f"{key}: missing or not a list")
    positions: dict[str, set[int]] = {}
    for u in units:
        if isinstance(u, dict) and _opt(u, "UnitIdentifier"):
            positions.setdefault(_opt(u, "UnitIdentifier"), set()).add(_position(u) or 0)
    out: list[str | None] = []
    for u in units:
        uid = _opt(u, "UnitIdentifier") if isinstance(u, dict) else ""
        if not uid:
            out.append(None)
        elif ctx.qualify_positions and _position(u):
            out.append(f"{uid}#{_position(u)}")
        elif len(positions[uid]) > 1:
            out.append(None)
        else:
            out.append(uid)
    return out


def _unit(u: dict, ident: str | None, where: str, msg: _Msg) -> dict:
    uid = _opt(u, "UnitIdentifier")
    if not uid:
        raise Bad(f"{where}.UnitIdentifier: missing")
    if ident is None:
        raise Bad(f"{where}.UnitIdentifier: {uid!r} is listed at several positions, so it names a panel or carrier, "
                  "not a unit; map this station with qualify_positions")
    item = _opt(u, "PartNumber") or _opt(msg.body, "PartNumber") or msg.ctx.unit_item
    return ref(node("serial", item, ident, f"{where}.UnitIdentifier"))


def _opt(d: Any, key: str) -> str:
    value = d.get(key) if isinstance(d, dict) else None
    return str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else ""


def _str(d: dict, *keys: str) -> str:
    for key in keys:
        if _opt(d, key):
            return _opt(d, key)
    raise Bad(f"{keys[0]}: missing")
