"""GS1 EPCIS 2.0 events (JSON or JSON-LD) -> our capture events.

``map_epcis(doc_or_event, origin=...)`` takes an EPCISDocument (or
EPCISQueryDocument) or a single event and returns a ``MapResult``:

* TransformationEvent -> ``LotTransformed`` (inputEPCList + inputQuantityList ->
  outputEPCList + outputQuantityList). When outputs are serials and the ILMD
  names a lot (``cbvmda:lotNumber``), also one ``UnitCompleted`` per output
  serial with that production lot, so lot membership is known.
* AggregationEvent ADD / OBSERVE -> ``Packed`` (parentID is the container,
  childEPCs + childQuantityList the contents). DELETE -> ``Unpacked``: the contents
  (all of them when childEPCs is empty, as the standard says) leave the container at
  that time. A packed edge holds from its ADD to the first DELETE after it, so a recall
  names only the containers a unit was in and the shipments that carried it (a
  container shipped after the unit left it is not in its scope).
* AssociationEvent (EPCIS 2.0) ADD / OBSERVE -> ``Associated``: childEPCs + childQuantityList are
  associated for good with parentID (a GIAI or GRAI asset, an SGLN location, an SGTIN unit or an
  SSCC), edge relation ``associated`` child -> parent, so a recall of a child lists the asset or
  location it went into. DELETE (an association that ends: removing, disassembling) -> ``Unpacked``
  of the parent: the association holds from its ADD to that time, as a packing does (no children:
  every association of the parent ends). EPCIS 2.0 uses AssociationEvent, not AggregationEvent, where the association outlives
  packing and loading or the parent is a location. What the business steps of GS1's examples
  (tests/fixtures/epcis/gs1/AssociationEvent, CBV 2.0 definitions) mean for genealogy:

  - ``assembling`` (ADD): objects combined into a new product, still recognisable, the step
    reversible. A sensor device (GIAI) mounted on or built into a returnable asset (GRAI; example a),
    lots of a product (LGTIN quantities) put into a returnable asset (e), several assets, a class and
    a lot into one asset (association_event_all_possible_fields): the child is part of the parent.
  - ``installing`` (ADD): an object put into a composite object that existed before (not merely a
    container): a sensor fitted in a location such as a cold storage room (an SGLN parent; b),
    assets and a lot installed in a returnable asset (f). Same edge as assembling.
  - ``removing`` (DELETE): an object taken out of a composite object, the opposite of installing:
    the sensor unpaired from the asset (c). The association ends.
  - ``disassembling`` (DELETE): an object broken down into its uniquely identified parts; without
    children, every part is disassociated (d); g is the same declared wrong by an errorDeclaration,
    h its correction naming the parts. The associations end.

* ObjectEvent, bizStep commissioning with an ILMD lot -> ``UnitCompleted`` per
  serial in epcList; bizStep shipping with a bizTransaction or destination ->
  ``Packed`` of epcList + quantityList into ``shipment:shipment:<id>``. Other
  object events (and other event types) say nothing for genealogy: ``unknown``.
* ``bizTransactionList`` on any of these and on TransactionEvent -> ``TransactionLinked`` per
  transaction: the event's objects (an aggregation's or association's parent and children, a transformation's
  outputs, the EPCs and classes of an object or transaction event, its parentID) belong to
  ``transaction:<type>:<id>`` (type = the CBV short name, po, desadv, inv, ...), so a recall
  lists the orders and despatch advices its units and shipments were part of. A TransactionEvent
  DELETE unlinks (the standard: a TransactionEvent declares "in an unequivocal way that certain
  objects have been associated or disassociated", while other events' bizTransactionList is context):
  an ``Unpacked`` of those objects out of each transaction, no objects = all of them, so the link
  holds from its time to the unlinking, like a packing. Another event's DELETE with a
  bizTransactionList is noted. The objects may be assets, locations and parties
  (GS1's healthcare TransactionEvent links a patient's GSRN to a GDTI document).

An event re-sent with an ``errorDeclaration`` (EPCIS 2.0 §7.4.1.4: the original event, with the
declaration time, reason and correctiveEventIDs) -> one ``EventRetracted``: it carries what the event
contributed, mapped from the re-sent content, so the stream recomputes the same edge ids and takes
them back (edges, unit completions and their lot memberships), as rows of the ``corrections`` table;
nothing of the declared event stays in what recall reads. The CBV hash leaves errorDeclaration out,
so an event without an eventID is matched by its hash. The declaration may arrive before the event
(it is then never stored) or long after it. Corrective events are ordinary events.

Identifiers go through ``genealogy.domain.ids.normalize``, so the EPC URN and the GS1
Digital Link of one thing give the same node (GTIN, SSCC, GIAI, GRAI, SGLN, GSRN); class-level patterns
(``urn:epc:idpat:sgtin:...*``, a bare GTIN) become ``class:<gtin>:*`` nodes and
are listed in ``untraceable``. Locations (readPoint, then bizLocation) become
the station: an SGLN URN or a Digital Link with AI 414 reduces to
``sgln:<GLN>[.<extension>]``, anything else is used as written.

Times: ``eventTime`` must carry its UTC offset. ``event_id`` is ``eventID`` when
given (any form: a UUID URN, a CBV hash), else the GS1 CBV 2.0 event hash
(``ni:///sha-256;...?ver=CBV2.0``, ``epcis_hash``), so the same event captured here
and in another EPCIS repository has one id, in URN or Digital Link form. Where the
hash cannot be computed (a document naming a remote JSON-LD context, which is never
fetched), ``sha256:<hex>`` over the canonical JSON of the event (sorted keys,
identifiers normalised, lists sorted, recordTime/eventID/@context left out).
``work_order`` is the event's business transaction (prodorder, then po, then
the first) or, failing that, the event id. There is no operator in EPCIS.

An event that cannot be mapped whole (missing field, bad identifier, bad time)
is rejected whole, with a reason naming the field; the others continue.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from genealogy.domain import ids
from genealogy.domain.derive import ASSOCIATION_CONTENTS, ASSOCIATION_PARENTS, RETRACTABLE
from genealogy.domain.epcis_event import text as _text
from genealogy.producers.epcis_hash import HashUnavailable, event_hashes
from genealogy.producers.mapping import Bad, Event, MapResult, Reject, epoch_ms, event, node, ref

# Left out of the fallback content id: what a repository adds, and an errorDeclaration, so the declaration
# re-sent with the original event's content gets the original's id (as the CBV 2.0 hash leaves it out too).
VOLATILE = ("recordTime", "eventID", "@context", "errorDeclaration")
LOT_KEYS = ("lotNumber", "cbvmda:lotNumber", "urn:epcglobal:cbv:mda:lotNumber", "https://gs1.org/voc/lotNumber")


def map_epcis(doc_or_event: dict, *, origin: str, identities: dict[int, str] | None = None) -> MapResult:
    """``identities``: when given, filled with id(raw event) -> its event id (``event_id_of``), for every
    event that is a JSON object, mapped or not (the query interface keeps events by that id)."""
    result = MapResult()
    try:
        items = _event_list(doc_or_event, origin)
    except Bad as exc:
        result.rejects.append(Reject(origin, str(exc), doc_or_event))
        return result
    unnamed = [raw for _, raw in items if isinstance(raw, dict) and not _text(raw.get("eventID"))]
    hashed = dict(zip(map(id, unnamed), event_hashes(unnamed, doc_or_event.get("@context")))) if unnamed else {}
    for where, raw in items:
        if identities is not None and isinstance(raw, dict):
            identities[id(raw)] = event_id_of(raw, hashed.get(id(raw)))
        try:
            if isinstance(raw, dict) and raw.get("errorDeclaration") is not None:
                mapped = _declared(raw, hashed.get(id(raw)))
            else:
                mapped = _map_event(raw, hashed.get(id(raw)))
            mapped.notes = [f"{where}: {note}" for note in mapped.notes]
            result.add(mapped)
        except Bad as exc:
            result.rejects.append(Reject(where, str(exc), raw))
    return result


def _event_list(doc: Any, origin: str) -> list[tuple[str, Any]]:
    if not isinstance(doc, dict):
        raise Bad(f"document: expected a JSON object, got {type(doc).__name__}")
    if _term(doc.get("type") or doc.get("@type")) not in ("EPCISDocument", "EPCISQueryDocument") and "epcisBody" not in doc:
        return [(origin, doc)]
    body = doc.get("epcisBody") or {}
    events = body.get("eventList")
    if events is None:
        events = ((body.get("queryResults") or {}).get("resultsBody") or {}).get("eventList")
    if not isinstance(events, list):
        raise Bad("epcisBody.eventList: missing or not a list")
    return [(f"{origin}#eventList[{i}]", e) for i, e in enumerate(events)]


# --- one event ---------------------------------------------------------------------

def _map_event(raw: Any, hashed: str | HashUnavailable | None = None) -> MapResult:
    if not isinstance(raw, dict):
        raise Bad(f"event: expected a JSON object, got {type(raw).__name__}")
    out = MapResult()
    etype = _term(raw.get("type") or raw.get("@type"))
    if not etype:
        raise Bad("type: missing")
    if etype not in ("TransformationEvent", "AggregationEvent", "AssociationEvent", "ObjectEvent", "TransactionEvent"):
        out.skip(f"{etype}: no genealogy mapping for this event type")
        return out
    event_ms = epoch_ms(raw.get("eventTime"), "eventTime")
    station = _station(raw)
    event_id = event_id_of(raw, hashed)
    common = dict(event_ms=event_ms, station=station)
    _typed(raw, etype, event_id, common, out)
    links = _transaction_links(raw, etype, event_id, common, out)
    if links:
        if out.unknown and not out.events:  # its business transactions are what it says for genealogy
            out.unknown, out.notes = 0, []
        out.events.extend(links)
    elif etype == "TransactionEvent" and not out.unknown:
        out.skip(f"TransactionEvent {event_id}: no bizTransactionList entry or no object to link")
    return out


def _transaction_links(raw: dict, etype: str, event_id: str, common: dict, out: MapResult) -> list[Event]:
    """bizTransactionList on any event: each transaction -> a TransactionLinked of the event's objects
    (an aggregation's parent and children, a transformation's outputs, an object or transaction
    event's EPCs and classes, a transaction event's parent). A TransactionEvent DELETE unlinks them
    (``Unpacked`` out of the transaction); another event's DELETE is noted."""
    entries = [e for e in raw.get("bizTransactionList") or [] if isinstance(e, dict) and _text(e.get("bizTransaction"))]
    if not entries:
        return []
    unlink = str(raw.get("action") or "").upper() == "DELETE"
    if unlink and etype != "TransactionEvent":
        out.skip(f"{etype} DELETE {event_id}: its bizTransactionList is context; only a TransactionEvent unlinks")
        return []
    if etype == "TransformationEvent":
        members = [n for _, n, _ in _nodes(raw, "outputEPCList", "outputQuantityList", out)]
    elif etype in ("AggregationEvent", "AssociationEvent"):
        members = [n for _, n, _ in _nodes(raw, "childEPCs", "childQuantityList", out)]
    else:
        members = [n for _, n, _ in _nodes(raw, "epcList", "quantityList", out)]
    if _text(raw.get("parentID")):
        members.insert(0, _node(raw.get("parentID"), "parentID", out))
    if not members and not unlink:
        return []
    links = []
    for i, e in enumerate(entries):
        kind = _term(e.get("type")) or "unspecified"
        transaction = node("transaction", kind, _text(e["bizTransaction"]), f"bizTransactionList[{i}]")
        if unlink:  # no members: everything linked to the transaction
            links.append(event("Unpacked", event_id=f"{event_id}#bt{i}", **common, container=ref(transaction),
                               contents=[ref(n) for n in dict.fromkeys(members)], operator=None))
            continue
        links.append(event("TransactionLinked", event_id=f"{event_id}#bt{i}", **common, transaction=ref(transaction),
                           members=[ref(n) for n in dict.fromkeys(members)], operator=None))
    return links


def _typed(raw: dict, etype: str, event_id: str, common: dict, out: MapResult) -> MapResult:
    """What the event's type and business step say for genealogy (``_transaction_links`` adds the rest)."""
    if etype == "TransactionEvent":
        return out
    if etype == "TransformationEvent":
        inputs = _nodes(raw, "inputEPCList", "inputQuantityList", out)
        outputs = _nodes(raw, "outputEPCList", "outputQuantityList", out)
        if not inputs:
            raise Bad("inputEPCList/inputQuantityList: a transformation needs at least one input")
        if not outputs:
            raise Bad("outputEPCList/outputQuantityList: a transformation needs at least one output")
        for where, n, _ in outputs:
            # A class-level output (a GTIN with no lot or serial) is kept as a class: node, listed in
            # untraceable like a class-level input; the event's other edges land.
            if ids.kind_of(n) not in ("serial", "lot", "class"):
                raise Bad(f"{where}: output {n} is {ids.kind_of(n)}-level; a transformation output must be a lot, a serial or a class")
        work_order = _transaction(raw, ("prodorder", "po")) or event_id
        out.events.append(event("LotTransformed", event_id=event_id, **common,
                                inputs=[{"node": ref(n), "quantity": q} for _, n, q in inputs],
                                outputs=[{"node": ref(n), "quantity": q} for _, n, q in outputs],
                                work_order=work_order, operator=None))
        lot = _ilmd_lot(raw)
        if lot:
            out.events.extend(_completions([n for _, n, _ in outputs], lot, work_order, event_id, common))
        return out

    if etype == "AggregationEvent":
        action = str(raw.get("action") or "").upper()
        if action not in ("ADD", "OBSERVE", "DELETE"):
            raise Bad(f"action: {raw.get('action')!r} is not ADD, OBSERVE or DELETE")
        if not _text(raw.get("parentID")):
            raise Bad("parentID: missing; an aggregation needs the container it packs into or empties")
        container = _node(raw.get("parentID"), "parentID", out)
        if ids.kind_of(container) not in ("container", "shipment"):
            raise Bad(f"parentID: {container} is a {ids.kind_of(container)}, not a container (SSCC)")
        contents = _nodes(raw, "childEPCs", "childQuantityList", out)
        if action == "DELETE":  # no children: everything comes out
            out.events.append(event("Unpacked", event_id=event_id, **common, container=ref(container),
                                    contents=[ref(n) for _, n, _ in contents], operator=None))
            return out
        if not contents:
            raise Bad("childEPCs/childQuantityList: an aggregation needs at least one child")
        out.events.append(_packed(event_id, common, container, contents))
        return out

    if etype == "AssociationEvent":
        return _association(raw, event_id, common, out)

    step = _term(raw.get("bizStep"))
    if step == "commissioning":
        lot = _ilmd_lot(raw)
        serials = [n for _, n, _ in _nodes(raw, "epcList", "quantityList", out) if ids.kind_of(n) == "serial"]
        if not (lot and serials):
            out.skip(f"ObjectEvent commissioning {event_id}: no ILMD lot for serials, nothing for genealogy")
            return out
        work_order = _transaction(raw, ("prodorder", "po")) or event_id
        out.events.extend(_completions(serials, lot, work_order, event_id, common))
        return out
    if step == "shipping":
        shipment = _transaction(raw, ("desadv", "bol", "inv", "po")) or _destination(raw)
        if not shipment:
            out.skip(f"ObjectEvent shipping {event_id}: no bizTransaction or destination to name the shipment")
            return out
        contents = _nodes(raw, "epcList", "quantityList", out)
        if not contents:
            raise Bad("epcList/quantityList: a shipping event needs at least one object")
        container = node("shipment", "shipment", shipment, "bizTransactionList/destinationList")
        out.events.append(_packed(event_id, common, container, contents))
        return out
    out.skip(f"ObjectEvent {step or 'without bizStep'} {event_id}: no genealogy mapping for this business step")
    return out


def _association(raw: dict, event_id: str, common: dict, out: MapResult) -> MapResult:
    action = str(raw.get("action") or "").upper()
    step = _term(raw.get("bizStep")) or "without bizStep"
    if action not in ("ADD", "OBSERVE", "DELETE"):
        raise Bad(f"action: {raw.get('action')!r} is not ADD, OBSERVE or DELETE")
    if not _text(raw.get("parentID")):
        raise Bad("parentID: missing; an association needs the asset, unit or location it associates with")
    parent = _node(raw.get("parentID"), "parentID", out)
    if ids.kind_of(parent) not in ASSOCIATION_PARENTS:
        raise Bad(f"parentID: {parent} is a {ids.kind_of(parent)}, not an asset, location, unit or container")
    contents = _nodes(raw, "childEPCs", "childQuantityList", out)
    if not contents and action != "DELETE":  # a DELETE without children ends every association of the parent
        raise Bad("childEPCs/childQuantityList: an association needs at least one child")
    for where, n, _ in contents:
        if ids.kind_of(n) not in ASSOCIATION_CONTENTS:
            raise Bad(f"{where}: {n} is a {ids.kind_of(n)}; only objects are associated")
        if n == parent:
            raise Bad(f"{where}: {n} is the parentID itself")
    unique = [ref(n) for n in dict.fromkeys(n for _, n, _ in contents)]
    if action == "DELETE":  # the association ends (removing, disassembling): an interval, like an unpacking
        out.events.append(event("Unpacked", event_id=event_id, **common, container=ref(parent), contents=unique, operator=None))
        return out
    out.events.append(event("Associated", event_id=event_id, **common, parent=ref(parent), contents=unique, operator=None))
    return out


def _completions(nodes: list[str], lot: str, work_order: str, event_id: str, common: dict) -> list[Event]:
    return [event("UnitCompleted", event_id=f"{event_id}#{n}", **common, unit=ref(n),
                  production_lot=lot, work_order=work_order, operator=None)
            for n in nodes if ids.kind_of(n) == "serial"]


def _packed(event_id: str, common: dict, container: str, contents: list[tuple[str, str, float]]) -> Event:
    return event("Packed", event_id=event_id, **common, container=ref(container),
                  contents=[ref(n) for _, n, _ in contents], operator=None)


# --- fields ------------------------------------------------------------------------

def _nodes(raw: dict, epc_key: str, qty_key: str, out: MapResult) -> list[tuple[str, str, float]]:
    """(field, node id, quantity) for an instance-level EPC list and its quantity list."""
    found = []
    epcs = raw.get(epc_key) or []
    qtys = raw.get(qty_key) or []
    if not isinstance(epcs, list):
        raise Bad(f"{epc_key}: expected a list")
    if not isinstance(qtys, list):
        raise Bad(f"{qty_key}: expected a list")
    for i, epc in enumerate(epcs):
        found.append((f"{epc_key}[{i}]", _node(epc, f"{epc_key}[{i}]", out), 1.0))
    for i, q in enumerate(qtys):
        where = f"{qty_key}[{i}]"
        if not isinstance(q, dict) or not _text(q.get("epcClass")):
            raise Bad(f"{where}.epcClass: missing")
        quantity = q.get("quantity")
        quantity = 0.0 if quantity is None else quantity  # EPCIS allows an unspecified quantity; 0.0 stands for it
        if isinstance(quantity, bool) or not isinstance(quantity, (int, float)) or quantity < 0:
            raise Bad(f"{where}.quantity: {quantity!r} is not a non-negative number")
        found.append((where, _node(q.get("epcClass"), f"{where}.epcClass", out), float(quantity)))
    return found


def _node(value: Any, where: str, out: MapResult) -> str:
    text = _text(value)
    if not text:
        raise Bad(f"{where}: missing identifier")
    try:
        n = ids.normalize(text)
    except ids.InvalidId as exc:
        raise Bad(f"{where}: {exc}") from None
    if ids.kind_of(n) == "class" and n not in out.untraceable:
        out.untraceable.append(n)
    return n


def _station(raw: dict) -> str:
    for key in ("readPoint", "bizLocation"):
        value = raw.get(key)
        text = _text(value.get("id") or value.get("@id")) if isinstance(value, dict) else _text(value)
        if text:
            return location(text, f"{key}.id")
    raise Bad("readPoint.id: missing (and no bizLocation.id); the location is the station")


_SGLN = re.compile(r"urn:epc:id:sgln:(\d+)\.(\d*)\.(.+)", re.IGNORECASE)


def location(text: str, where: str) -> str:
    """An SGLN URN or a Digital Link with a GLN (414) -> ``sgln:<GLN>[.<ext>]``; other ids as written."""
    text = text.strip()
    m = _SGLN.fullmatch(text)
    if m:
        body, ext = m.group(1) + m.group(2), unquote(m.group(3))
        if len(body) != 12:
            raise Bad(f"{where}: {text!r}: company prefix and location reference must be 12 digits together")
        gln = body + ids.gs1_check_digit(body)
    elif text.lower().startswith(("http://", "https://")) and "/414/" in urlsplit(text).path:
        segments = [unquote(s) for s in urlsplit(text).path.split("/") if s]
        start = segments.index("414")
        pairs = dict(zip(segments[start::2], segments[start + 1::2]))
        gln, ext = pairs.get("414", ""), pairs.get("254", "0")
        if not re.fullmatch(r"\d{13}", gln) or ids.gs1_check_digit(gln[:-1]) != gln[-1]:
            raise Bad(f"{where}: {text!r}: GLN {gln!r} is not 13 digits with a valid check digit")
    else:
        return text
    return f"sgln:{gln}" if ext == "0" else f"sgln:{gln}.{ext}"


def _transaction(raw: dict, preferred: tuple[str, ...]) -> str:
    entries = [e for e in raw.get("bizTransactionList") or [] if isinstance(e, dict) and _text(e.get("bizTransaction"))]
    for kind in preferred:
        for e in entries:
            if _term(e.get("type")) == kind:
                return _text(e["bizTransaction"])
    return _text(entries[0]["bizTransaction"]) if entries else ""


def _destination(raw: dict) -> str:
    entries = [e for e in raw.get("destinationList") or [] if isinstance(e, dict) and _text(e.get("destination"))]
    entries.sort(key=lambda e: _term(e.get("type")) != "location")
    return location(_text(entries[0]["destination"]), "destinationList[0].destination") if entries else ""


def _ilmd_lot(raw: dict) -> str:
    ilmd = raw.get("ilmd") or (raw.get("extension") or {}).get("ilmd") or {}
    for key in LOT_KEYS:
        if isinstance(ilmd, dict) and _text(ilmd.get(key)):
            return _text(ilmd[key])
    return ""


def _term(value: Any) -> str:
    """A CBV / EPCIS vocabulary term without its namespace: 'urn:epcglobal:cbv:bizstep:shipping',
    'https://ref.gs1.org/cbv/BizStep-shipping', 'cbv:BizStep-shipping' and 'shipping' are all 'shipping'."""
    return re.split(r"[:/#]|BizStep-|BTT-|Disp-|SDT-|ER-", _text(value))[-1]


def _declared(raw: dict, hashed: str | HashUnavailable | None) -> MapResult:
    """An event re-sent with an ``errorDeclaration``: one ``EventRetracted`` carrying what the event
    contributed (mapped as it was captured, so the stream recomputes the same edge ids), the reason
    and the corrective events. The hash leaves errorDeclaration out, so the id is the original's."""
    declaration = raw["errorDeclaration"]
    if not isinstance(declaration, dict):
        raise Bad("errorDeclaration: expected an object")
    declared_ms = epoch_ms(declaration.get("declarationTime"), "errorDeclaration.declarationTime")
    corrective = declaration.get("correctiveEventIDs") or []
    if not isinstance(corrective, list) or not all(isinstance(c, str) and c.strip() for c in corrective):
        raise Bad("errorDeclaration.correctiveEventIDs: expected a list of event ids")
    original = {k: v for k, v in raw.items() if k != "errorDeclaration"}
    event_id = event_id_of(original, hashed)
    mapped = _map_event(original, event_id)
    contributed = [(k, e) for k, e in mapped.events if k in RETRACTABLE]
    out = MapResult(untraceable=mapped.untraceable)
    if not contributed:
        out.skip(f"error declaration of {event_id}: the event contributed nothing to the genealogy, so nothing is retracted")
        return out
    out.events.append(event("EventRetracted", event_id=f"{event_id}#declared", event_ms=declared_ms,
                            station=contributed[0][1]["station"], retracts=event_id, events=contributed,
                            reason=_term(declaration.get("reason")), corrective_event_ids=[c.strip() for c in corrective]))
    return out


# --- event identity ----------------------------------------------------------------

def event_id_of(raw: dict, hashed: str | HashUnavailable | None = None) -> str:
    """``eventID`` when given, else the CBV 2.0 hash (``hashed``, from ``event_hashes``), else ``content_id``."""
    return _text(raw.get("eventID")) or (hashed if isinstance(hashed, str) else content_id(raw))



def content_id(raw: dict) -> str:
    body = {k: v for k, v in raw.items() if k not in VOLATILE}
    try:
        body["eventTime"] = epoch_ms(body.get("eventTime"), "eventTime")  # "Z" and "+00:00" are one instant
    except Bad:
        pass
    canonical = json.dumps(_canonical(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) <= {"@id", "@value", "@type"} and ("@id" in value or "@value" in value):
            return _canonical(value.get("@id", value.get("@value")))
        return {("type" if k == "@type" else k): _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(value, str) and value.strip().lower().startswith(("urn:epc:", "http://", "https://")):
        try:
            if _SGLN.fullmatch(value.strip()) or "/414/" in value:
                return location(value, "")
            normal = ids.normalize(value)
        except (ids.InvalidId, Bad):
            return value.strip()
        # GIAI, GRAI and GSRN were not identifiers here when content ids were first derived: as written,
        # so an event stored before keeps its id.
        return value.strip() if ids.kind_of(normal) in ("asset", "location", "party") else normal
    return value
