"""The EPCIS query interface's parameters and page tokens (genealogy.epcis_api), without a stack."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, strategies as st

from genealogy import epcis_api as api
from genealogy.sinks.epcis_query import INT64_MAX, INT64_MIN


def parse(query: str, fixed=None):
    from urllib.parse import parse_qsl
    return api.parse_query(parse_qsl(query, keep_blank_values=True), fixed)


def test_defaults_are_no_filter_and_thirty_per_page():
    q, per_page, token = parse("")
    assert per_page == 30 and token is None
    p = q.parameters()
    assert p["ge_event_time"] == INT64_MIN and p["lt_record_time"] == INT64_MAX and p["bt_types"] == [] and p["epc"] == []


def test_values_are_comma_separated_and_a_repeated_parameter_adds_values():
    q, _, _ = parse("EQ_bizStep=shipping,urn:epcglobal:cbv:bizstep:receiving&EQ_bizStep=https://ref.gs1.org/cbv/BizStep-packing"
                    "&eventType=ObjectEvent,AggregationEvent&EQ_action=add")
    assert q.biz_steps == ["shipping", "receiving", "packing"]
    assert q.event_types == ["ObjectEvent", "AggregationEvent"] and q.actions == ["ADD"]


def test_times_parse_to_epoch_ms():
    q, _, _ = parse("GE_eventTime=2026-01-05T08:00:00Z&LT_eventTime=2026-01-05T09:00:00.250%2B01:00")
    assert (q.ge_event_time, q.lt_event_time) == (1767600000000, 1767600000250)


def test_match_values_are_written_normalised_and_class_patterns_become_prefixes():
    q, _, _ = parse("MATCH_epc=urn:epc:id:sgtin:0614141.107346.2017,urn:epc:idpat:sgtin:0614141.107346.*,weird:id")
    written, norm, prefixes = q.matches["epc"]
    assert written == ["urn:epc:id:sgtin:0614141.107346.2017", "urn:epc:idpat:sgtin:0614141.107346.*", "weird:id"]
    assert norm == ["serial:10614141073464:2017", "class:10614141073464:*"]
    assert prefixes == ["serial:10614141073464:", "lot:10614141073464:"]


def test_biz_transactions_are_anded_across_types():
    q, _, _ = parse("EQ_bizTransaction_po=PO-1,PO-2&EQ_bizTransaction_urn:epcglobal:cbv:btt:desadv=D-1")
    p = q.parameters()
    assert p["bt_types"] == ["desadv", "po"] and p["bt_ids"] == [["D-1"], ["PO-1", "PO-2"]]


def test_the_path_fixes_a_parameter_the_query_may_not_repeat():
    q, _, _ = parse("", {"MATCH_anyEPC": "https://id.gs1.org/01/09520123456788/21/12345"})
    assert q.matches["any_epc"][1] == ["serial:09520123456788:12345"]
    with pytest.raises(api.QueryProblem):
        parse("MATCH_anyEPC=x", {"MATCH_anyEPC": "y"})


@pytest.mark.parametrize("query", [
    "EQ_nonsense=1", "GE_eventTime=yesterday", "GE_eventTime=2026-01-05T08:00:00", "LT_recordTime=2026-01-05T08:00:00Z&LT_recordTime=2026-01-06T08:00:00Z",
    "perPage=0", "perPage=1001", "perPage=ten", "perPage=-1", "EQ_action=MOVE", "eventType=FooEvent", "EQ_bizStep=",
    "EQ_bizStep=a,,b", "nextPageToken=", "EQ_bizTransaction_=x",
    # order and counts (the standard: eventCountLimit needs orderBy, excludes maxEventCount)
    "orderBy=quantity", "orderBy=ex:myField", "orderBy=eventTime&orderBy=recordTime", "orderDirection=UP",
    "eventCountLimit=3", "orderBy=eventTime&eventCountLimit=0", "orderBy=eventTime&eventCountLimit=x",
    "orderBy=eventTime&eventCountLimit=2&maxEventCount=5", "maxEventCount=-1", "maxEventCount=1e3",
    # EXISTS_, error declarations, sensors
    "EXISTS_errorDeclaration=maybe", "EXISTS_a%20b", "EXISTS_INNER_ex:f", "EXISTS_ILMD_ex:f", "EXISTS_=1",
    "GE_errorDeclarationTime=soon", "EQ_errorReason=", "EQ_booleanValue=yes", "GE_value_CEL=warm",
    "GE_value_CEL=nan", "LT_value_CEL=inf", "GE_value_CEL=1&GE_value_CEL=2", "GE_value_celsius=1", "GE_time=noon",
    "EQ_quantity=lots", "GT_quantity=1&GT_quantity=2", "EQ_source_=x", "EQ_destination_owning_party=",
    "EQ_transformationID=", "EQ_ex:field=1", "EQ_INNER_ex:f=1", "MATCH_inputEPCClass=x",
    "MATCH_epcClass=a&MATCH_anyEPCClass=b"])
def test_bad_parameters_are_query_parameter_problems(query):
    with pytest.raises(api.QueryProblem) as caught:
        parse(query)
    problem = caught.value.as_dict()
    assert problem["type"] == "epcisException:QueryParameterException" and problem["status"] == 400 and problem["detail"]


def test_order_counts_and_the_newer_parameters_parse():
    q, _, _ = parse("orderBy=eventTime&eventCountLimit=2")
    assert (q.order_by, q.descending, q.event_count_limit) == ("eventTime", True, 2)  # DESC is the default
    q, _, _ = parse("orderBy=recordTime&orderDirection=ASC&maxEventCount=0")
    assert (q.order_by, q.descending, q.max_event_count) == ("recordTime", False, 0)
    q, _, _ = parse("orderDirection=ASC")  # without orderBy it orders nothing
    assert (q.order_by, q.descending) == ("", False)
    q, _, _ = parse("WD_readPoint=urn:epc:id:sgln:4012345.00001.0&WD_bizLocation=a,b&EXISTS_ex:field&EXISTS_epcList=false"
                    "&EXISTS_sensorElementList=1&EXISTS_errorDeclaration&EQ_errorReason=urn:epcglobal:cbv:er:incorrect_data"
                    "&GE_errorDeclarationTime=2026-01-05T08:00:00Z&EQ_correctiveEventID=urn:uuid:1")
    assert q.wd_read_points == ["urn:epc:id:sgln:4012345.00001.0"] and q.wd_biz_locations == ["a", "b"]
    assert q.exists == ["ex:field", "sensorElementList"] and q.error_declared and q.error_reasons == ["incorrect_data"]
    assert q.ge_error_time == 1767600000000 and q.corrective_ids == ["urn:uuid:1"]
    q, _, _ = parse("EQ_type=gs1:Temperature,https://gs1.org/voc/Humidity&EQ_booleanValue=TRUE&GE_value_CEL=2.5"
                    "&LT_maxValue_FAH=40&GE_percRank=50&GE_time=2026-01-05T08:00:00Z&LT_endTime=2026-01-05T09:00:00Z")
    assert q.sensor_text == {"type": ["Temperature", "Humidity"], "booleanValue": ["true"]}
    assert q.sensor_numbers == [("value", "GE", "CEL", 2.5), ("maxValue", "LT", "FAH", 40.0), ("percRank", "GE", "", 50.0)]
    assert q.sensor_times == [("time", "GE", 1767600000000), ("endTime", "LT", 1767603600000)]
    q2, _, _ = parse("EQ_source_owning_party=a,b&EQ_source_urn:epcglobal:cbv:sdt:location=c&EQ_destination_location=d"
                     "&EQ_persistentDisposition_set=urn:epcglobal:cbv:disp:completeness_verified&GT_quantity=2&LE_quantity=5.5"
                     "&EQ_transformationID=urn:epc:id:gdti:0614141.12345.400&MATCH_anyEPCClass=urn:epc:idpat:sgtin:0614141.107346.*")
    p2 = q2.parameters()
    assert p2["src_types"] == ["location", "owning_party"] and p2["src_ids"] == [["c"], ["a", "b"]] and p2["dst_types"] == ["location"]
    assert q2.pd_set == ["completeness_verified"] and q2.quantities == [("GT", 2.0), ("LE", 5.5)]
    assert q2.transformation_ids == ["urn:epc:id:gdti:0614141.12345.400"] and q2.matches["epc_class"][2] == ["serial:10614141073464:", "lot:10614141073464:"]
    p = q.parameters()
    assert p["sensor"] is True and p["s_fields"] == ["booleanValue", "type"] and p["n_uoms"] == ["CEL", "FAH", ""]


KEY = b"k" * 32


@given(after=st.text(max_size=200), query=st.text(max_size=40))
def test_a_token_round_trips(after, query):
    tokens = api.PageTokens(KEY)
    token, expires = tokens.encode(after, query, now_s=1000)
    assert expires == 1000 + api.TOKEN_TTL_S
    assert tokens.decode(token, query, now_s=1000) == after


def test_a_token_is_bound_to_its_query_its_key_and_its_lifetime():
    tokens = api.PageTokens(KEY, ttl_s=60)
    token, _ = tokens.encode("ev-9", "q1", now_s=1000)
    for bad, now in [(token, 1061), (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), 1000),
                     ("x" + token, 1000), ("garbage", 1000), ("a.b.c", 1000), ("%%%.%%%", 1000)]:
        with pytest.raises(api.QueryProblem):
            tokens.decode(bad, "q1", now_s=now)
    with pytest.raises(api.QueryProblem):
        tokens.decode(token, "q2", now_s=1000)
    with pytest.raises(api.QueryProblem):
        api.PageTokens(b"o" * 32).decode(token, "q1", now_s=1000)


def test_an_edited_cursor_is_refused():
    import base64
    import json
    tokens = api.PageTokens(KEY)
    token, _ = tokens.encode("ev-1", "q", now_s=0)
    body = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    body["a"] = "ev-0"
    forged = base64.urlsafe_b64encode(json.dumps(body, separators=(",", ":")).encode()).rstrip(b"=").decode() + "." + token.split(".")[1]
    with pytest.raises(api.QueryProblem):
        tokens.decode(forged, "q", now_s=0)


def test_a_cursor_carries_the_sort_key_and_the_count_delivered():
    tokens = api.PageTokens(KEY)
    token, _ = tokens.encode("ev-3", "q", now_s=0, key=1767600000000, delivered=60)
    assert tokens.cursor(token, "q", now_s=0) == (1767600000000, "ev-3", 60)
    assert tokens.decode(token, "q", now_s=0) == "ev-3"


def test_the_fingerprint_ignores_order_and_paging():
    assert api.fingerprint([("a", "1"), ("b", "2"), ("perPage", "5")]) == api.fingerprint([("b", "2"), ("a", "1"), ("nextPageToken", "t")])
    assert api.fingerprint([("a", "1")]) != api.fingerprint([("a", "2")])


def test_the_key_file_is_made_once_and_private(tmp_path):
    key = api.load_key(tmp_path / "auth" / "page-token.key")
    assert len(key) == 32 and api.load_key(tmp_path / "auth" / "page-token.key") == key
    assert (tmp_path / "auth" / "page-token.key").stat().st_mode & 0o777 == 0o600


def test_the_query_document_is_the_standards_shape():
    doc = api.query_document([{"type": "ObjectEvent"}], now_ms=0)
    assert doc["type"] == "EPCISQueryDocument" and doc["schemaVersion"] == "2.0" and doc["creationDate"] == "1970-01-01T00:00:00.000Z"
    assert doc["epcisBody"]["queryResults"]["resultsBody"]["eventList"] == [{"type": "ObjectEvent"}]


def test_capture_jobs_are_kept_across_a_restart_and_bounded(tmp_path):
    jobs = api.CaptureJobs(tmp_path / "jobs.db", keep=2)
    ids = [api.CaptureJobs.new_id() for _ in range(3)]
    assert len(set(ids)) == 3 and all(re.fullmatch(r"\d{8}T\d{6}-[0-9a-f]{12}", i) for i in ids)
    jobs.record(ids[0], 1, [])
    jobs.record(ids[1], 2, [{"reason": "x:1#eventList[0]: eventTime: missing", "event_id": "e1"}])
    jobs.close()
    again = api.CaptureJobs(tmp_path / "jobs.db", keep=2)
    assert again.get(ids[0])["success"] is True and again.get(ids[0])["createdAt"] == "1970-01-01T00:00:00.001Z"
    failed = again.get(ids[1])
    assert failed["success"] is False and failed["errors"][0]["eventID"] == "e1" and not failed["running"]
    again.record(ids[2], 3, [])
    assert again.get(ids[0]) is None and again.get(ids[2]) is not None and again.get("nope") is None
