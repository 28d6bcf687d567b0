"""Node identity: GS1 URN and Digital Link forms reduce to one key; bad ids fail with a reason."""

import pytest
from hypothesis import given, strategies as st

from genealogy.domain import ids

digits = st.text("0123456789", min_size=1, max_size=1)
serial_chars = st.text("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijk0123456789-_.", min_size=1, max_size=20)


def brute_check_digit(body: str) -> str:
    # GS1: weights 3 and 1 alternate from the rightmost digit of the body.
    for d in "0123456789":
        total = 0
        for i, ch in enumerate(reversed(body + d)):
            total += int(ch) * (1 if i % 2 == 0 else 3)
        if total % 10 == 0:
            return d
    raise AssertionError


@given(st.text("0123456789", min_size=7, max_size=17))
def test_check_digit_matches_brute_force(body):
    assert ids.gs1_check_digit(body) == brute_check_digit(body)


@given(st.integers(6, 12), st.text("0123456789", min_size=13, max_size=13), serial_chars)
def test_sgtin_urn_and_digital_link_are_one_node(prefix_len, digits13, serial):
    indicator, rest = digits13[0], digits13[1:]
    company, item_ref = rest[:prefix_len], indicator + rest[prefix_len:]
    body = indicator + company + item_ref[1:]
    gtin = body + ids.gs1_check_digit(body)
    urn = f"urn:epc:id:sgtin:{company}.{item_ref}.{serial}"
    link = f"https://id.gs1.org/01/{gtin}/21/{serial}"
    assert ids.normalize(urn) == ids.normalize(link) == f"serial:{gtin}:{serial}"


def test_lgtin_sscc_and_class_patterns():
    assert ids.normalize("urn:epc:class:lgtin:4012345.012345.998877") == "lot:04012345123456:998877"
    assert ids.normalize("https://example.com/01/04012345123456/10/998877?x=1") == "lot:04012345123456:998877"
    assert ids.normalize("urn:epc:id:sscc:0614141.1234567890") == "container:sscc:106141412345678908"
    assert ids.normalize("https://id.gs1.org/00/106141412345678908") == "container:sscc:106141412345678908"
    assert ids.normalize("urn:epc:idpat:sgtin:4012345.012345.*") == "class:04012345123456:*"


def test_urn_escapes_and_whitespace_are_not_identity():
    assert ids.normalize(" urn:epc:id:sgtin:0614141.812345.A%2FB ") == ids.normalize("serial:80614141123458:A/B")


@pytest.mark.parametrize("text,reason", [
    ("https://id.gs1.org/01/04012345123457/21/1", "wrong check digit"),
    ("urn:epc:id:sgtin:0614141.81234.1", "13 digits"),
    ("serial:PRD:", "empty identifier"),
    ("bogus:PRD:1", "unknown node kind"),
    ("just-an-id", "not a node id"),
    ("urn:epc:idpat:sgtin:4012345.012345.77", "whole-class"),
])
def test_bad_ids_say_why(text, reason):
    with pytest.raises(ids.InvalidId, match=reason):
        ids.normalize(text)


@given(st.sampled_from(["serial", "lot"]), st.from_regex(r"[A-Z][A-Z0-9-]{0,10}", fullmatch=True), serial_chars)
def test_parse_round_trips(kind, item, ident):
    node_id = ids.node(kind, item, ident)
    assert str(ids.parse(node_id)) == node_id == ids.normalize(node_id)
    assert ids.kind_of(node_id) == kind and ids.ident_of(node_id) == ident


def test_edge_ids_are_deterministic_and_distinct():
    a = ids.edge_id("lot:C:1", "serial:P:1", "consumed", "e1")
    assert a == ids.edge_id("lot:C:1", "serial:P:1", "consumed", "e1")
    assert a != ids.edge_id("lot:C:1", "serial:P:1", "consumed", "e2")
    assert 0 <= a < 2**63


# --- GIAI, GRAI, SGLN, GSRN: EPC URN (Tag Data Standard 6.3) and Digital Link (AI 8004, 8003, 414+254, 8018) ---

from urllib.parse import quote  # noqa: E402

CSET82 = "!\"%&'()*+,-./0123456789:;<=>?ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz"
cset82 = lambda lo, hi: st.text(CSET82, min_size=lo, max_size=hi)  # noqa: E731
# TDS 2.x, table "characters permitted in alphanumeric serial numbers": these seven are %-escaped in a URN.
URN_ESCAPES = {'"': "%22", "%": "%25", "&": "%26", "/": "%2F", "<": "%3C", ">": "%3E", "?": "%3F"}


def urn_escape(text: str) -> str:
    return "".join(URN_ESCAPES.get(ch, ch) for ch in text)


def dl(*pairs: str) -> str:
    return "https://id.gs1.org/" + "/".join(quote(p, safe="") for p in pairs)


def split_prefix(n: int, number: str) -> tuple[str, str]:
    return number[:n], number[n:]


@given(st.integers(6, 12), st.text("0123456789", min_size=12, max_size=12), st.data())
def test_giai_urn_and_digital_link_are_one_node(prefix_len, digits12, data):
    company = digits12[:prefix_len]
    reference = data.draw(cset82(1, 30 - prefix_len))
    expected = f"asset:giai:{company}{reference}"
    assert ids.normalize(f"urn:epc:id:giai:{company}.{urn_escape(reference)}") == expected
    assert ids.normalize(dl("8004", company + reference)) == expected


@given(st.integers(6, 12), st.text("0123456789", min_size=12, max_size=12), cset82(1, 16))
def test_grai_urn_and_digital_link_are_one_node(prefix_len, digits12, serial):
    company, asset_type = split_prefix(prefix_len, digits12)
    value = "0" + digits12 + brute_check_digit("0" + digits12) + serial
    assert ids.normalize(f"urn:epc:id:grai:{company}.{asset_type}.{urn_escape(serial)}") == f"asset:grai:{value}"
    assert ids.normalize(dl("8003", value)) == f"asset:grai:{value}"


@given(st.integers(6, 12), st.text("0123456789", min_size=12, max_size=12), st.one_of(st.just("0"), cset82(1, 20)))
def test_sgln_urn_and_digital_link_are_one_node(prefix_len, digits12, extension):
    company, location_ref = split_prefix(prefix_len, digits12)
    gln = digits12 + brute_check_digit(digits12)
    expected = f"location:sgln:{gln}" if extension == "0" else f"location:sgln:{gln}.{extension}"
    assert ids.normalize(f"urn:epc:id:sgln:{company}.{location_ref}.{urn_escape(extension)}") == expected
    assert ids.normalize(dl("414", gln, "254", extension)) == expected
    if extension == "0":
        assert ids.normalize(dl("414", gln)) == expected


@given(st.integers(6, 12), st.text("0123456789", min_size=17, max_size=17))
def test_gsrn_urn_and_digital_link_are_one_node(prefix_len, digits17):
    company, service_ref = split_prefix(prefix_len, digits17)
    value = digits17 + brute_check_digit(digits17)
    assert ids.normalize(f"urn:epc:id:gsrn:{company}.{service_ref}") == f"party:gsrn:{value}"
    assert ids.normalize(dl("8018", value)) == f"party:gsrn:{value}"


def test_the_gs1_examples_asset_location_and_party_identifiers():
    """Every GIAI, GRAI, SGLN and GSRN URN of GS1's EPCIS 2.0 examples against the Tag Data Standard's
    rule done by hand here (the company prefix and reference joined; GRAI, GLN, GSRN with their check digit)."""
    import json
    import re
    from tests.support.paths import FIXTURES

    def by_hand(urn: str) -> str:
        scheme, rest = urn.split(":")[3], urn.split(":", 4)[4]
        if scheme == "giai":
            return "asset:giai:" + rest.replace(".", "", 1)
        parts = rest.split(".")
        if scheme == "gsrn":
            return "party:gsrn:" + parts[0] + parts[1] + brute_check_digit(parts[0] + parts[1])
        if scheme == "grai":
            body = "0" + parts[0] + parts[1]
            return "asset:grai:" + body + brute_check_digit(body) + parts[2]
        gln = parts[0] + parts[1] + brute_check_digit(parts[0] + parts[1])
        return "location:sgln:" + gln + ("" if parts[2] == "0" else "." + parts[2])

    found = set()
    for path in (FIXTURES / "epcis" / "gs1").rglob("*.jsonld"):
        found |= set(re.findall(r'"(urn:epc:id:(?:giai|grai|sgln|gsrn):[^"]+)"', path.read_text()))
    assert {u.split(":")[3] for u in found} == {"giai", "grai", "sgln", "gsrn"}
    for urn in sorted(found):
        assert ids.normalize(urn) == by_hand(urn), urn
    # Digital Link forms the examples use: a sensor's device metadata (GIAI) and a destination (GLN).
    assert ids.normalize("https://id.gs1.org/8004/4000001111") == ids.normalize("urn:epc:id:giai:4000001.111")
    assert ids.normalize("https://id.gs1.org/414/4098765000003") == "location:sgln:4098765000003"


@pytest.mark.parametrize("text,reason", [
    ("https://id.gs1.org/8003/04012345555551987", "wrong check digit"),
    ("https://id.gs1.org/8003/04012345555554", "no serial"),
    ("https://id.gs1.org/8003/4012345555554987", "must start with 0"),
    ("urn:epc:id:grai:4012345.5555.987", "12 digits together"),
    ("https://id.gs1.org/8018/952520840000000011", "check digit"),
    ("urn:epc:id:gsrn:95252084.00000001", "17 digits together"),
    ("https://id.gs1.org/414/4012345000024", "check digit"),
    ("https://id.gs1.org/8004/" + "4" * 31, "CSET 82"),
    ("https://id.gs1.org/8004/ABC123", "Company Prefix"),
    ("urn:epc:id:giai:4000001", "CompanyPrefix.IndividualAssetReference"),
    ("urn:epc:id:giai:4000001.a%23b", "CSET 82"),
    ("urn:epc:class:grai:4012345.55555.987", "instance identifier"),
    ("https://id.gs1.org/8004", "no value"),
])
def test_bad_asset_location_and_party_ids_say_why(text, reason):
    with pytest.raises(ids.InvalidId, match=reason):
        ids.normalize(text)
