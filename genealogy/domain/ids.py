"""Node identity: one canonical key per traceable thing, whatever form it arrived in.

A node id is ``kind:item:ident``:

* ``serial:<item>:<serial>``  one unit
* ``lot:<item>:<lot>``        a batch of one item
* ``class:<item>:*``          an item with no lot or serial (untraceable granularity)
* ``container:<type>:<id>``   carton, pallet, SSCC logistic unit
* ``shipment:shipment:<id>``  a shipment
* ``transaction:<type>:<id>``  a business transaction (CBV type: po, desadv, inv, ...), whom to notify

GS1 identifiers reduce to the same key whether they come as EPC URNs or as
GS1 Digital Link URIs: the item is the GTIN-14 (or ``sscc`` for a logistic
unit), which needs no company-prefix table. Serials and lots are kept
case-sensitive, as GS1 defines them; surrounding whitespace is not identity.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

KINDS = ("serial", "lot", "class", "container", "shipment", "transaction")
UNIT_KINDS = ("serial",)


class InvalidId(ValueError):
    """An identifier that cannot be reduced to a node key; the message says why."""


@dataclass(frozen=True, slots=True)
class NodeId:
    kind: str
    item: str
    ident: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.item}:{self.ident}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_GTIN_LIKE = re.compile(r"\d{8,14}")


@lru_cache(maxsize=1 << 17)  # the same lots, reels and items recur on every event of a line
def node(kind: str, item: str, ident: str) -> str:
    """Canonical node id string, validating each part."""
    kind, item, ident = kind.strip(), item.strip(), ident.strip()
    if kind not in KINDS:
        raise InvalidId(f"unknown node kind {kind!r} (expected one of {', '.join(KINDS)})")
    if not item:
        raise InvalidId(f"{kind} node has an empty item")
    if ":" in item:
        raise InvalidId(f"item {item!r} must not contain ':'")
    if not ident:
        raise InvalidId(f"{kind} node of item {item!r} has an empty identifier")
    if _CONTROL.search(ident):
        raise InvalidId(f"identifier {ident!r} contains control characters")
    if kind == "class" and ident != "*":
        raise InvalidId("a class node's identifier must be '*'")
    if kind in ("serial", "lot") and _GTIN_LIKE.fullmatch(item):
        item = gtin14(item)
    return f"{kind}:{item}:{ident}"


def parse(node_id: str) -> NodeId:
    parts = node_id.split(":", 2)
    if len(parts) != 3:
        raise InvalidId(f"{node_id!r} is not a node id of the form kind:item:ident")
    canonical = node(*parts)
    return NodeId(*canonical.split(":", 2))


def kind_of(node_id: str) -> str:
    return node_id.split(":", 1)[0]


def ident_of(node_id: str) -> str:
    return node_id.split(":", 2)[2]


# --- GS1 ---------------------------------------------------------------------

def gs1_check_digit(body: str) -> str:
    """Mod-10 check digit over the digits that precede it (GS1 General Specifications 7.9)."""
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(body)))
    return str((10 - total % 10) % 10)


def gtin14(gtin: str) -> str:
    """A GTIN-8/12/13/14 zero-padded to 14 digits, its check digit verified."""
    gtin = gtin.strip()
    if not re.fullmatch(r"\d{8}|\d{12,14}", gtin):
        raise InvalidId(f"GTIN {gtin!r} must have 8, 12, 13 or 14 digits")
    if gs1_check_digit(gtin[:-1]) != gtin[-1]:
        raise InvalidId(f"GTIN {gtin!r} has a wrong check digit (expected {gs1_check_digit(gtin[:-1])})")
    return gtin.zfill(14)


def _gtin_from_epc(company_prefix: str, item_ref: str) -> str:
    if not (company_prefix.isdigit() and item_ref.isdigit() and len(company_prefix) + len(item_ref) == 13):
        raise InvalidId(f"EPC company prefix {company_prefix!r} and item reference {item_ref!r} must be 13 digits together")
    body = item_ref[0] + company_prefix + item_ref[1:]
    return body + gs1_check_digit(body)


def _sscc_from_epc(company_prefix: str, serial_ref: str) -> str:
    if not (company_prefix.isdigit() and serial_ref.isdigit() and len(company_prefix) + len(serial_ref) == 17):
        raise InvalidId(f"SSCC company prefix {company_prefix!r} and serial reference {serial_ref!r} must be 17 digits together")
    body = serial_ref[0] + company_prefix + serial_ref[1:]
    return body + gs1_check_digit(body)


_EPC_URN = re.compile(r"urn:epc:(id|class|idpat):(sgtin|lgtin|sscc):(.+)", re.IGNORECASE)


def from_epc_urn(urn: str) -> str:
    m = _EPC_URN.fullmatch(urn.strip())
    if not m:
        raise InvalidId(f"{urn!r} is not an sgtin, lgtin or sscc EPC URN")
    family, scheme, rest = m.group(1).lower(), m.group(2).lower(), m.group(3)
    parts = rest.split(".", 2)
    if scheme == "sscc":
        if family != "id" or len(parts) != 2:
            raise InvalidId(f"{urn!r}: an SSCC URN is urn:epc:id:sscc:CompanyPrefix.SerialReference")
        return node("container", "sscc", _sscc_from_epc(*parts))
    if len(parts) != 3:
        raise InvalidId(f"{urn!r}: expected CompanyPrefix.ItemReference.{'Lot' if scheme == 'lgtin' else 'Serial'}")
    gtin = _gtin_from_epc(parts[0], parts[1])
    last = unquote(parts[2])
    if family == "idpat":
        if last != "*":
            raise InvalidId(f"{urn!r}: only whole-class patterns (ending in .*) are supported")
        return node("class", gtin, "*")
    if scheme == "lgtin" and family == "class":
        return node("lot", gtin, last)
    if scheme == "sgtin" and family == "id":
        return node("serial", gtin, last)
    raise InvalidId(f"{urn!r}: {family}:{scheme} is not a valid combination")


def from_digital_link(uri: str) -> str:
    path = urlsplit(uri.strip()).path
    segments = [unquote(s) for s in path.split("/") if s]
    # Digital Link paths may carry a prefix before the primary key; find the AI pairs.
    for start in range(len(segments)):
        if segments[start] in ("01", "00"):
            break
    else:
        raise InvalidId(f"{uri!r} is not a GS1 Digital Link with a GTIN (01) or SSCC (00)")
    pairs = dict(zip(segments[start::2], segments[start + 1::2]))
    if "00" in pairs:
        sscc = pairs["00"]
        if not re.fullmatch(r"\d{18}", sscc) or gs1_check_digit(sscc[:-1]) != sscc[-1]:
            raise InvalidId(f"{uri!r}: SSCC {sscc!r} is not 18 digits with a valid check digit")
        return node("container", "sscc", sscc)
    gtin = gtin14(pairs["01"])
    if "21" in pairs:
        return node("serial", gtin, pairs["21"])
    if "10" in pairs:
        return node("lot", gtin, pairs["10"])
    return node("class", gtin, "*")


def normalize(text: str) -> str:
    """Any accepted spelling of an identifier -> canonical node id."""
    text = text.strip()
    lowered = text.lower()
    if lowered.startswith("urn:epc:"):
        return from_epc_urn(text)
    if lowered.startswith(("http://", "https://")):
        return from_digital_link(text)
    return str(parse(text))


def edge_id(child: str, parent: str, relation: str, source_event: str) -> int:
    """Deterministic 63-bit id: a replayed or redelivered edge gets the same id."""
    digest = hashlib.blake2b(f"{child}\x1f{parent}\x1f{relation}\x1f{source_event}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFF_FFFF_FFFF_FFFF
