"""The query columns of an EPCIS event: what GET /events filters on (genealogy.domain.epcis_event)."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from genealogy.domain import epcis_event as ee


def test_columns_of_an_object_event_keep_epcs_as_written_and_normalised():
    event = {"type": "ObjectEvent", "eventTime": "2026-01-05T09:00:00.5+01:00", "action": "observe",
             "bizStep": "https://ref.gs1.org/cbv/BizStep-shipping", "disposition": "urn:epcglobal:cbv:disp:in_transit",
             "epcList": ["urn:epc:id:sgtin:0614141.107346.2017", "https://id.gs1.org/01/09520123456788/21/12345"],
             "quantityList": [{"epcClass": "urn:epc:class:lgtin:4012345.012345.998877", "quantity": 5}],
             "readPoint": {"id": "urn:epc:id:sgln:0614141.07346.1234"}, "bizLocation": "urn:epc:id:sgln:0614141.07346.0",
             "bizTransactionList": [{"type": "urn:epcglobal:cbv:btt:po", "bizTransaction": "PO-1"}, {"bizTransaction": "X"}],
             "sensorElementList": [{"sensorReport": [{"type": "Temperature", "value": 4}]}]}
    c = ee.columns(event)
    assert c["event_time"] == 1767600000500 and c["record_time"] == 0
    assert (c["action"], c["biz_step"], c["disposition"]) == ("OBSERVE", "shipping", "in_transit")
    assert (c["read_point"], c["biz_location"]) == ("urn:epc:id:sgln:0614141.07346.1234", "urn:epc:id:sgln:0614141.07346.0")
    assert c["epcs"] == event["epcList"] and c["any_epcs"] == event["epcList"]
    assert c["epcs_norm"] == ["serial:10614141073464:2017", "serial:09520123456788:12345"]
    assert c["epc_classes_norm"] == ["lot:04012345123456:998877"]
    assert c["biz_transactions"] == [("po", "PO-1"), ("", "X")]
    assert '"Temperature"' in c["sensor_elements"]


def test_columns_of_aggregation_and_transformation_roles():
    agg = ee.columns({"type": "AggregationEvent", "eventTime": "2026-01-05T09:00:00Z", "parentID": "urn:epc:id:sscc:0614141.1234567890",
                      "childEPCs": ["urn:epc:id:sgtin:0614141.107346.2017"], "action": "ADD"})
    assert agg["parent_id_norm"] == "container:sscc:106141412345678908" and agg["epcs"] == ["urn:epc:id:sgtin:0614141.107346.2017"]
    assert agg["any_epcs"] == ["urn:epc:id:sgtin:0614141.107346.2017", "urn:epc:id:sscc:0614141.1234567890"]
    tf = ee.columns({"type": "TransformationEvent", "eventTime": "2026-01-05T09:00:00Z", "inputEPCList": ["a:b"],
                     "outputEPCList": ["urn:epc:id:sgtin:0614141.107346.1"]})
    assert tf["input_epcs_norm"] == ["a:b"] and tf["output_epcs_norm"] == ["serial:10614141073464:1"] and tf["epcs"] == []


@pytest.mark.parametrize("event", [{"type": "ObjectEvent"}, {"type": "ObjectEvent", "eventTime": "2026-01-05T09:00:00"},
                                   {"eventTime": "2026-01-05T09:00:00Z"}, ["not", "an", "event"]])
def test_an_event_without_type_or_zoned_event_time_is_not_kept(event):
    with pytest.raises(ee.BadEvent):
        ee.columns(event)


@pytest.mark.parametrize("spelling", ["shipping", "urn:epcglobal:cbv:bizstep:shipping", "https://ref.gs1.org/cbv/BizStep-shipping",
                                      "cbv:BizStep-shipping", {"@id": "gs1:BizStep-shipping"}])
def test_cbv_terms_in_every_spelling_are_one(spelling):
    assert ee.cbv_term(spelling) == "shipping"


def test_a_user_uri_stays_as_written():
    assert ee.cbv_term("https://example.com/steps/shipping") == "https://example.com/steps/shipping"


@given(st.integers(min_value=0, max_value=7_000_000_000_000))
def test_time_format_and_parse_round_trip(ms):
    assert ee.parse_time(ee.format_time(ms)) == ms
