"""What the EPCIS 2.0 query interface needs of a captured event, as plain values (pure: no I/O).

``columns(event)`` reduces one EPCIS event (JSON / JSON-LD, as captured) to the fields the
standard's query parameters test: type, eventTime, recordTime, action, bizStep, disposition,
readPoint, bizLocation, the EPCs of each role as written and normalised
(``genealogy.domain.ids.normalize``: the EPC URN and the GS1 Digital Link of one thing are equal),
parentID, the quantity classes, bizTransactions as (type, id) and the sensorElementList as JSON.
The capture side (``producers.ingest``) checks an event with it before keeping it, the sink
(``sinks.epcis_store``) writes these columns, and the query side parses the parameter values with
``parse_time`` and ``cbv_term``, so all three agree.

CBV vocabulary terms are compared in their bare form: ``urn:epcglobal:cbv:bizstep:shipping``,
``https://ref.gs1.org/cbv/BizStep-shipping``, ``cbv:BizStep-shipping`` and ``shipping`` are all
``shipping``. A user-defined URI stays as written.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone
from typing import Any

from genealogy.domain import ids

_ISO = re.compile(r"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})")
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_CBV = re.compile(r"(?:urn:epcglobal:cbv:(?:bizstep|disp|btt|sdt|er):|(?:https?://ref\.gs1\.org/cbv/|cbv:|gs1:)"
                  r"(?:BizStep|Disp|BTT|SDT|ER)-)(.+)", re.IGNORECASE)


class BadEvent(ValueError):
    """An event the query interface cannot keep (no usable eventTime, not an object)."""


def parse_time(value: Any) -> int:
    """ISO 8601 date-time with a UTC offset (Z or +hh:mm) -> epoch milliseconds; ValueError otherwise."""
    m = _ISO.fullmatch(value.strip()) if isinstance(value, str) else None
    if not m:
        raise ValueError(f"{value!r} is not an ISO 8601 date-time with a UTC offset")
    offset = "+00:00" if m.group(3).upper() == "Z" else m.group(3)
    fraction = (m.group(2) or "0")[:6].ljust(6, "0")
    t = datetime.fromisoformat(f"{m.group(1)}.{fraction}{offset}")
    return (t - _EPOCH) // timedelta(milliseconds=1)


def format_time(ms: int) -> str:
    """Epoch milliseconds -> ISO 8601 UTC with milliseconds, e.g. 2026-01-05T08:00:00.000Z."""
    return (_EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def text(value: Any) -> str:
    """A JSON or JSON-LD scalar as text: {"@id": x} and {"@value": x} unwrap; anything else -> ""."""
    if isinstance(value, dict):
        value = value.get("@id", value.get("@value"))
    return str(value).strip() if isinstance(value, (str, int, float)) and not isinstance(value, bool) else ""


def cbv_term(value: Any) -> str:
    """A CBV term in its bare form (see the module doc); other values as written."""
    t = text(value)
    m = _CBV.fullmatch(t)
    return m.group(1) if m else t


def event_type(event: dict) -> str:
    t = text(event.get("type") or event.get("@type"))
    return t.rsplit(":", 1)[-1] if t.lower().startswith(("epcis:", "https://ref.gs1.org/epcis/")) else \
        t.rsplit("/", 1)[-1] if t.startswith("https://ref.gs1.org/") else t


def normalized(epc: str) -> str:
    """The canonical node id of an EPC, or the EPC as written when it is not a GS1 identifier we read."""
    try:
        return ids.normalize(epc)
    except (ids.InvalidId, ValueError):
        return epc


def _epcs(event: dict, *keys: str) -> list[str]:
    out = []
    for key in keys:
        values = event.get(key) or []
        for v in values if isinstance(values, list) else []:
            if t := text(v):
                out.append(t)
    return out


def _classes(event: dict, *keys: str) -> list[str]:
    out = []
    for key in keys:
        values = event.get(key) or []
        for q in values if isinstance(values, list) else []:
            if isinstance(q, dict) and (t := text(q.get("epcClass"))):
                out.append(t)
    return out


def _place(event: dict, key: str) -> str:
    value = event.get(key)
    return text(value.get("id") or value.get("@id")) if isinstance(value, dict) else text(value)


def columns(event: Any) -> dict:
    """The query columns of one event (see the module doc). BadEvent when it has no usable eventTime."""
    if not isinstance(event, dict):
        raise BadEvent(f"an event is a JSON object, not {type(event).__name__}")
    etype = event_type(event)
    if not etype:
        raise BadEvent("type: missing")
    try:
        event_ms = parse_time(event.get("eventTime"))
    except ValueError as exc:
        raise BadEvent(f"eventTime: {exc}") from None
    try:
        record_ms = parse_time(event.get("recordTime"))
    except ValueError:
        record_ms = 0
    epcs = _epcs(event, "epcList", "childEPCs")
    parent = text(event.get("parentID"))
    inputs, outputs = _epcs(event, "inputEPCList"), _epcs(event, "outputEPCList")
    every = epcs + inputs + outputs + ([parent] if parent else [])
    classes = _classes(event, "quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")
    transactions = [(cbv_term(t.get("type")), text(t.get("bizTransaction")))
                    for t in event.get("bizTransactionList") or [] if isinstance(t, dict) and text(t.get("bizTransaction"))]
    sensors = event.get("sensorElementList")
    return {
        "event_type": etype, "event_time": event_ms, "record_time": record_ms,
        "action": text(event.get("action")).upper(), "biz_step": cbv_term(event.get("bizStep")),
        "disposition": cbv_term(event.get("disposition")),
        "read_point": _place(event, "readPoint"), "biz_location": _place(event, "bizLocation"),
        "epcs": epcs, "epcs_norm": [normalized(e) for e in epcs],
        "parent_id": parent, "parent_id_norm": normalized(parent) if parent else "",
        "input_epcs": inputs, "input_epcs_norm": [normalized(e) for e in inputs],
        "output_epcs": outputs, "output_epcs_norm": [normalized(e) for e in outputs],
        "any_epcs": every, "any_epcs_norm": [normalized(e) for e in every],
        "epc_classes": classes, "epc_classes_norm": [normalized(e) for e in classes],
        "biz_transactions": transactions,
        "sensor_elements": json.dumps(sensors, ensure_ascii=False, sort_keys=True) if sensors else "",
    }


def with_record_time(event: dict, ms: int) -> dict:
    """The event as the repository keeps it: recordTime is the repository's (EPCIS 2.0: set on capture)."""
    return {**event, "recordTime": format_time(ms)}
