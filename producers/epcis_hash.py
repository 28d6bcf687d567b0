"""The GS1 CBV 2.0 event hash: the identity of an EPCIS event that has no ``eventID``.

CBV 2.0 (section 8.9, "Event hash ID") defines it: a pre-hash string of the event's fields in a fixed
order, with identifiers, times and numbers normalised, hashed with SHA-256 and written
``ni:///sha-256;<hex>?ver=CBV2.0``. Two repositories that capture the same event therefore give it
the same id, whether it came as EPC URNs or Digital Links, with or without a time zone's spelling.

The algorithm is the reference implementation's (PyPI ``epcis-event-hash-generator``, R. Tröger et
al., MIT), checked in the tests against its published test vectors. Two things are done around it:

* JSON-LD contexts are read from the copies the library ships with, never fetched: a document naming
  any other remote context would otherwise make the ingest process fetch an address of the sender's
  choosing. Such an event has no CBV hash here (``HashUnavailable``), and the caller keeps its own id.
* The library keeps module-level state (the document's namespaces), so calls are serialised, and
  it logs each event it reads on the root logger, which is filtered out.
"""

from __future__ import annotations

import copy
import logging
import threading
from typing import Any

# The contexts the library bundles (epcis_event_hash_generator/file_document_loader.py).
KNOWN_CONTEXTS = ("https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld",
                  "https://gs1.github.io/EPCIS/epcis-context.jsonld")
DEFAULT_CONTEXT = [KNOWN_CONTEXTS[0]]

_LOCK = threading.Lock()
_generator: Any = None


class HashUnavailable(ValueError):
    """The event cannot be hashed here; the message says why."""


def _load() -> Any:
    """Import the library on first use and pin its JSON-LD loader to the bundled contexts (importing
    it installs a loader that falls back to the network)."""
    global _generator
    if _generator is None:
        from pyld import jsonld
        from pyld.jsonld import JsonLdError

        from epcis_event_hash_generator import hash_generator, json_to_py
        from epcis_event_hash_generator.file_document_loader import file_document_loader

        bundled = file_document_loader()

        def offline(url: str, options: dict | None = None) -> dict:
            if url not in KNOWN_CONTEXTS:
                raise JsonLdError(f"context {url} is not one of the bundled EPCIS contexts; remote contexts are not fetched",
                                  "jsonld.LoadDocumentError", code="loading document failed")
            return bundled(url, options or {})

        jsonld.set_document_loader(offline)
        # It logs every event it reads, and its failures, on the root logger; what it fails on is
        # reported here instead (HashUnavailable), and event contents stay out of the service's log.
        logging.getLogger().addFilter(lambda record: "epcis_event_hash_generator" not in record.pathname)
        _generator = (json_to_py, hash_generator)
    return _generator


def event_hash(event: dict, context: Any = None) -> str:
    """The CBV 2.0 hash id of one event, read with the JSON-LD ``context`` of its document (default:
    the event's own, else the EPCIS 2.0 context)."""
    [found] = event_hashes([event], context)
    if isinstance(found, HashUnavailable):
        raise found
    return found


def event_hashes(events: list[dict], context: Any = None) -> list[str | HashUnavailable]:
    """The hash id of each event of one document, or why there is none. One pass over the document
    (the JSON-LD expansion is most of the cost); event by event only when an event fails."""
    context = context if context is not None else DEFAULT_CONTEXT
    found = _hashes(events, context)
    if isinstance(found, list) and len(found) == len(events):
        return found
    out: list[str | HashUnavailable] = []
    for e in events:
        one = _hashes([e], e.get("@context", context))
        out.append(one[0] if isinstance(one, list) and len(one) == 1 else HashUnavailable(
            one if isinstance(one, str) else "no CBV 2.0 event hash: the reference implementation could not pre-hash this event"))
    return out


def _hashes(events: list[dict], context: Any) -> list[str] | str:
    """The library's hashes of the events as one document, or the reason it failed. It logs and drops
    an event it cannot pre-hash, so the caller compares the counts."""
    # A deep copy: the library rewrites the document it reads (bare CBV terms become URIs).
    document = copy.deepcopy({"@context": context, "type": "EPCISDocument", "schemaVersion": "2.0",
                              "epcisBody": {"eventList": [{k: v for k, v in e.items() if k != "@context"} for e in events]}})
    with _LOCK:
        json_to_py, hash_generator = _load()
        try:
            return hash_generator.epcis_hashes_from_events(json_to_py.event_list_from_epcis_document_json(document))
        except Exception as exc:  # the library raises whatever its JSON-LD processor raises
            return f"no CBV 2.0 event hash: {type(exc).__name__}: {str(exc)[:200]}"
