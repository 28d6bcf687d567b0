"""EPCIS events (JSON, from ``settings.topic_epcis``) -> rows of ``epcis_events`` (sinks/sql/ddl.sql).

The message key is the event id the capture side gave it (``producers.epcis.event_id_of``); the value
is the event's JSON as captured, with the repository's recordTime. The columns are
``genealogy.domain.epcis_event.columns``: the same code that checked the event at capture.
"""

from __future__ import annotations

import json

from genealogy.domain import epcis_event
from genealogy.sinks.writer import epoch_ms

COLUMNS = ["event_id", "event_type", "event_time", "record_time", "action", "biz_step", "disposition", "read_point",
           "biz_location", "epcs", "epcs_norm", "parent_id", "parent_id_norm", "input_epcs", "input_epcs_norm",
           "output_epcs", "output_epcs_norm", "any_epcs", "any_epcs_norm", "epc_classes", "epc_classes_norm",
           "biz_transactions", "sensor_elements", "event_json"]
TIMES = ("event_time", "record_time")


class BadEpcisMessage(ValueError):
    pass


def row(key: bytes | None, value: bytes | None) -> list:
    """One message -> one row (COLUMNS order); BadEpcisMessage when it is not a keyed EPCIS event."""
    event_id = (key or b"").decode("utf-8", "replace").strip()
    if not event_id:
        raise BadEpcisMessage("an EPCIS event message without its event id as key")
    try:
        text = (value or b"").decode("utf-8")
        event = json.loads(text)
        columns = epcis_event.columns(event)
    except (UnicodeDecodeError, ValueError) as exc:  # BadEvent and JSONDecodeError are ValueErrors
        raise BadEpcisMessage(f"not an EPCIS event: {exc}") from None
    columns.update(event_id=event_id, event_json=text)
    for name in TIMES:
        [columns[name]] = epoch_ms([columns[name]])
    return [columns[name] for name in COLUMNS]
