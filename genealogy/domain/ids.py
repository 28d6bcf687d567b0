"""Node identity: one canonical key per traceable thing, whatever form it arrived in.

A node id is ``kind:item:ident``:

* ``serial:<item>:<serial>``  one unit
* ``lot:<item>:<lot>``        a batch of one item
* ``class:<item>:*``          an item with no lot or serial (untraceable granularity)
* ``container:<type>:<id>``   carton, pallet, SSCC logistic unit
* ``shipment:shipment:<id>``  a shipment
* ``transaction:<type>:<id>``  a business transaction (CBV type: po, desadv, inv, ...), whom to notify
* ``asset:giai:<GIAI>``       an individual asset (machine, sensor, tool): GS1 GIAI, AI 8004
* ``asset:grai:<GRAI>``       one returnable asset (tote, pallet, reel carrier): GS1 GRAI with its
                              serial, AI 8003 (``0`` + 12 digits + check digit + serial)
* ``location:sgln:<GLN>[.<extension>]``  a physical location used as an object (an AssociationEvent's
                              parent): GS1 GLN, AI 414, and its extension, AI 254 (``sgln:...`` is
                              also how a readPoint names the station)
* ``party:gsrn:<GSRN>``       a service relation (a patient, a member): GS1 GSRN, AI 8018

GS1 identifiers reduce to the same key whether they come as EPC URNs or as
GS1 Digital Link URIs: the item is the GTIN-14 (or ``sscc`` for a logistic
unit), which needs no company-prefix table. Likewise the ident of a GIAI, GRAI,
SGLN and GSRN is the GS1 element string's value (the company prefix and the
reference joined, the check digit computed as the Tag Data Standard says), so
the EPC URN's company-prefix boundary is not part of identity. Serials and lots
are kept case-sensitive, as GS1 defines them; surrounding whitespace is not identity.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import unquote, urlsplit

KINDS = ("serial", "lot", "class", "container", "shipment", "transaction", "asset", "location", "party")
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


# GS1 General Specifications, figure 7.11-1: the 82 characters an alphanumeric element string may hold.
_CSET82 = re.compile(r"[!\"%&'()*+,\-./0-9:;<=>?A-Z_a-z]+")


def _cset82(value: str, what: str, max_len: int) -> str:
    if not _CSET82.fullmatch(value) or len(value) > max_len:
        raise InvalidId(f"{what} {value!r} must be 1 to {max_len} GS1 characters (CSET 82)")
    return value


def _prefixed(company_prefix: str, reference: str, digits: int, what: str) -> str:
    """Company prefix and a numeric reference joined: together exactly ``digits`` digits (TDS 6.3)."""
    if not (company_prefix.isdigit() and (reference.isdigit() or reference == "")
            and len(company_prefix) + len(reference) == digits):
        raise InvalidId(f"{what} company prefix {company_prefix!r} and reference {reference!r} must be {digits} digits together")
    return company_prefix + reference


def giai(value: str) -> str:
    """AI 8004: the GS1 Company Prefix and the individual asset reference, up to 30 characters, no check digit."""
    _cset82(value, "GIAI", 30)
    if not value[0].isdigit():
        raise InvalidId(f"GIAI {value!r} must start with its GS1 Company Prefix (digits)")
    return node("asset", "giai", value)


def grai(value: str) -> str:
    """AI 8003: '0', company prefix + asset type (12 digits), the check digit, then the serial (1-16 characters).
    Without a serial a GRAI names an asset type, not one asset: not a node."""
    if not re.fullmatch(r"0\d{13}", value[:14]):
        raise InvalidId(f"GRAI {value!r} must start with 0 and 13 more digits")
    if gs1_check_digit(value[:13]) != value[13]:
        raise InvalidId(f"GRAI {value!r} has a wrong check digit (expected {gs1_check_digit(value[:13])})")
    if len(value) == 14:
        raise InvalidId(f"GRAI {value!r} has no serial: it names an asset type, not one returnable asset")
    _cset82(value[14:], "GRAI serial", 16)
    return node("asset", "grai", value)


def sgln(gln: str, extension: str = "") -> str:
    """AI 414 (+ AI 254): a GLN, check digit verified, and its extension; extension '0' or none is the GLN itself."""
    if not re.fullmatch(r"\d{13}", gln) or gs1_check_digit(gln[:-1]) != gln[-1]:
        raise InvalidId(f"GLN {gln!r} is not 13 digits with a valid check digit")
    if extension in ("", "0"):
        return node("location", "sgln", gln)
    return node("location", "sgln", f"{gln}.{_cset82(extension, 'GLN extension', 20)}")


def gsrn(value: str) -> str:
    """AI 8018: company prefix + service reference (17 digits) and the check digit."""
    if not re.fullmatch(r"\d{18}", value) or gs1_check_digit(value[:-1]) != value[-1]:
        raise InvalidId(f"GSRN {value!r} is not 18 digits with a valid check digit")
    return node("party", "gsrn", value)


_EPC_URN = re.compile(r"urn:epc:(id|class|idpat):(sgtin|lgtin|sscc|giai|grai|sgln|gsrn):(.+)", re.IGNORECASE)
_ASSETS = ("giai", "grai", "sgln", "gsrn")


def from_epc_urn(urn: str) -> str:
    m = _EPC_URN.fullmatch(urn.strip())
    if not m:
        raise InvalidId(f"{urn!r} is not an sgtin, lgtin, sscc, giai, grai, sgln or gsrn EPC URN")
    family, scheme, rest = m.group(1).lower(), m.group(2).lower(), m.group(3)
    parts = rest.split(".", 2)
    if scheme in _ASSETS:
        return _asset_from_epc(urn, family, scheme, rest.split(".", 1) if scheme == "giai" else parts)
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


def _asset_from_epc(urn: str, family: str, scheme: str, parts: list[str]) -> str:
    """GIAI, GRAI, SGLN and GSRN pure-identity URNs (Tag Data Standard 6.3) -> their element string's node."""
    if family != "id":
        raise InvalidId(f"{urn!r}: a {scheme.upper()} is an instance identifier, urn:epc:id:{scheme}:...")
    expected = {"giai": 2, "gsrn": 2, "grai": 3, "sgln": 3}[scheme]  # a GIAI's asset reference may hold dots
    if len(parts) != expected:
        layout = {"giai": "CompanyPrefix.IndividualAssetReference", "gsrn": "CompanyPrefix.ServiceReference",
                  "grai": "CompanyPrefix.AssetType.SerialNumber", "sgln": "CompanyPrefix.LocationReference.Extension"}
        raise InvalidId(f"{urn!r}: a {scheme.upper()} URN is urn:epc:id:{scheme}:{layout[scheme]}")
    if scheme == "giai":
        company_prefix, reference = parts[0], unquote(parts[1])
        if not (company_prefix.isdigit() and 4 <= len(company_prefix) <= 12) or not reference:
            raise InvalidId(f"{urn!r}: a GIAI is a 4-12 digit company prefix and an asset reference")
        return giai(company_prefix + reference)
    if scheme == "gsrn":
        body = _prefixed(parts[0], parts[1], 17, "GSRN")
        return gsrn(body + gs1_check_digit(body))
    body = _prefixed(parts[0], parts[1], 12, scheme.upper())
    last = unquote(parts[2])
    if scheme == "grai":
        body = "0" + body
        return grai(body + gs1_check_digit(body) + last)
    return sgln(body + gs1_check_digit(body), last)


# Digital Link primary keys (GS1 Digital Link 1.x, section 4) this reduces to a node, and the node each makes.
_DL_KEYS = ("01", "00", "8004", "8003", "414", "8018")


def from_digital_link(uri: str) -> str:
    path = urlsplit(uri.strip()).path
    segments = [unquote(s) for s in path.split("/") if s]
    # Digital Link paths may carry a prefix before the primary key; find the AI pairs.
    for start in range(len(segments)):
        if segments[start] in _DL_KEYS:
            break
    else:
        raise InvalidId(f"{uri!r} is not a GS1 Digital Link with a GTIN (01), SSCC (00), GIAI (8004), GRAI (8003), "
                        "GLN (414) or GSRN (8018)")
    pairs = dict(zip(segments[start::2], segments[start + 1::2]))
    key = segments[start]
    if key not in pairs:
        raise InvalidId(f"{uri!r}: AI {key} has no value")
    if key == "8004":
        return giai(pairs["8004"])
    if key == "8003":
        return grai(pairs["8003"])
    if key == "414":
        return sgln(pairs["414"], pairs.get("254", ""))
    if key == "8018":  # a service relation instance (8019) qualifies one encounter of the same party
        return gsrn(pairs["8018"])
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
