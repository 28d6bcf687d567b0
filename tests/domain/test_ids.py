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
