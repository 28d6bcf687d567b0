"""IPC-CFX messages (JSON envelopes) -> our capture events.

Envelope fields used: MessageName, TimeStamp (-> event_ms; must carry its UTC
offset), UniqueID (-> event ids), Source (-> station: the CFX handle of the
endpoint) and MessageBody. Field names follow the CFX SDK's JSON examples.

=================================================  ==========================================
CFX message                                        capture event
=================================================  ==========================================
CFX.Materials.Storage.MaterialsLoaded              MaterialLoaded per Materials[] entry
CFX.Materials.Storage.MaterialsUnloaded            MaterialUnloaded per MaterialPackageIdentifiers[]
CFX.Production.WorkStarted                         (nothing; remembers the transaction's Units)
CFX.Production.WorkCompleted                       UnitCompleted per unit
CFX.Production.Processing.UnitsProcessed           UnitCompleted per UnitProcessData[] unit
CFX.Production.Assembly.MaterialsInstalled         ComponentInstalled per InstalledMaterials[] entry
CFX.Production.UnitsDisqualified                   UnitScrapped per Units[] entry
CFX.ResourcePerformance.StationStateChanged        MachineStateChanged (NewState)
CFX.Heartbeat                                      StationHeartbeat
anything else                                      counted in ``unknown``; the caller keeps it raw
=================================================  ==========================================

Choices, since CFX does not carry everything our events need:

* A material package (reel, tray, bag) is ``lot:<InternalPartNumber>:<UniqueIdentifier>``;
  its slot is the location's LocationIdentifier, else its LocationName. A
  package loaded only onto a carrier (no location: CFX case 2) is not on the
  station and is rejected with that reason.
* MaterialsUnloaded names packages only. Their slot and part number come from
  the earlier MaterialsLoaded on the same station, remembered in the
  ``CfxContext`` the caller passes along a feed; without it they are rejected.
* A unit is ``serial:<item>:<UnitIdentifier>``. CFX units carry no part
  number: the item is a ``PartNumber`` field on the unit or the message body if
  a gateway adds one, else ``context.unit_item`` (default ``"UNKNOWN"``). Use
  the same item for every message of a station, or the unit nodes will not meet.
* Panels: a UnitIdentifier may name the unit or a panel/carrier with the unit
  at a PositionNumber. With ``context.qualify_positions`` the unit is
  ``<UnitIdentifier>#<position>``; without it, one identifier listed at several
  positions is rejected rather than guessed.
* WorkCompleted: Units may be omitted (they were in WorkStarted); the context
  remembers them by TransactionID. Production lot = WorkOrderIdentifier.Batch,
  else the TransactionID; work order = WorkOrderIdentifier.WorkOrderNumber,
  else the TransactionID. The completion's event id is ``<TransactionID>#<unit>``,
  so a WorkCompleted and a UnitsProcessed of one transaction give one
  completion per unit, not two. Every WorkResult maps (the unit was on the
  station whatever the result).
* MaterialsInstalled: one ComponentInstalled per installed material entry (unit
  and position), quantity = QuantityInstalled, else the number of
  InstalledComponents, else 1. Reference designators are not kept.
* StationStateChanged: the numeric ResourceState (SEMI E10) is written by name,
  e.g. 1100 -> "PRD_RegularWork"; reason = RelatedFault's FaultCode or Cause.
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


@dataclass
class CfxContext:
    """Per-feed settings and what earlier messages said that later ones refer to by id only."""
    unit_item: str = "UNKNOWN"
    qualify_positions: bool = False
    packages: dict[tuple[str, str], tuple[str, dict]] = field(default_factory=dict)  # (station, package) -> (slot, material ref)
    transactions: dict[str, dict] = field(default_factory=dict)                     # TransactionID -> WorkStarted body


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
    """Map each entry of a list on its own: one bad entry is a reject, the others still map."""
    if not isinstance(entries, list):
        raise Bad(f"{key}: missing or not a list")
    for i, entry in enumerate(entries):
        where = f"{key}[{i}]"
        try:
            if objects and not isinstance(entry, dict):
                raise Bad(f"{where}: expected an object")
            out.events.append(build(i, where, entry))
        except Bad as exc:
            out.rejects.append(Reject(f"{msg.origin}#{where}", str(exc), entry))


def _loaded(msg: _Msg, out: MapResult) -> None:
    def build(i: int, where: str, m: dict) -> Event:
        material = _package(m.get("MaterialPackage"), f"{where}.MaterialPackage")
        slot = _opt(m, "LocationIdentifier") or _opt(m, "LocationName")
        if not slot:
            raise Bad(f"{where}.LocationIdentifier: missing (and no LocationName); a package loaded only onto a "
                      "carrier is not on a station slot")
        msg.ctx.packages[(msg.station, material["ident"])] = (slot, material)
        return event("MaterialLoaded", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                     slot=slot, material=material, operator=None)
    _each(msg, out, "Materials", msg.body.get("Materials"), build)


def _unloaded(msg: _Msg, out: MapResult) -> None:
    def build(i: int, where: str, package: Any) -> Event:
        if not isinstance(package, str) or not package.strip():
            raise Bad(f"{where}: {package!r} is not a package identifier")
        known = msg.ctx.packages.pop((msg.station, package.strip()), None)
        if known is None:
            raise Bad(f"{where}: package {package!r} was not loaded on {msg.station} earlier in this feed, "
                      "so its slot and part number are unknown")
        slot, material = known
        return event("MaterialUnloaded", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                     slot=slot, material=material, operator=None)
    _each(msg, out, "MaterialPackageIdentifiers", msg.body.get("MaterialPackageIdentifiers"), build, objects=False)


def _started(msg: _Msg, out: MapResult) -> None:
    msg.ctx.transactions[_str(msg.body, "TransactionID", "TransactionId")] = msg.body


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
    work_order = _opt(order, "WorkOrderNumber") or tx
    if not lot:
        raise Bad("TransactionID: missing, and no WorkOrderIdentifier.Batch to name the production lot")
    idents = _unit_idents(units, key, msg.ctx)

    def build(i: int, where: str, u: dict) -> Event:
        unit = _unit(u, idents[i], where, msg)
        return event("UnitCompleted", event_id=f"{tx or msg.uid}#{unit['ident']}", event_ms=msg.event_ms,
                     station=msg.station, unit=unit, production_lot=lot, work_order=work_order, operator=None)
    _each(msg, out, key, units, build)


def _installed(msg: _Msg, out: MapResult) -> None:
    entries = msg.body.get("InstalledMaterials")
    idents = _unit_idents(entries, "InstalledMaterials", msg.ctx)

    def build(i: int, where: str, m: dict) -> Event:
        unit = _unit(m, idents[i], where, msg)
        component = _package(m.get("Material"), f"{where}.Material")
        quantity = m.get("QuantityInstalled") or len(m.get("InstalledComponents") or []) or 1.0
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or quantity <= 0:
            raise Bad(f"{where}.QuantityInstalled: {quantity!r} is not a positive number")
        return event("ComponentInstalled", event_id=f"{msg.uid}#{i}", event_ms=msg.event_ms, station=msg.station,
                     unit=unit, component=component, quantity=float(quantity), operator=None)
    _each(msg, out, "InstalledMaterials", entries, build)


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
    "CFX.Production.UnitsDisqualified": _disqualified,
    "CFX.ResourcePerformance.StationStateChanged": _state,
    "CFX.Heartbeat": _heartbeat,
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
