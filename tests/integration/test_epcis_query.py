"""The GS1 EPCIS 2.0 query interface (GET /events ...) on the real stack, against a brute-force filter.

One stack for the module: the GS1 standard's own examples are captured through POST /capture, and a
generated set (every event type, times, bizSteps, dispositions, readPoints, bizLocations,
bizTransactions, URN and Digital Link EPCs, sensor data, error declarations, an extension field)
through the ingest path with its spool.
Every query's answer (its event ids) must equal a plain Python filter over the captured events,
written here from the standard's wording and sharing nothing with the SQL.
"""

from __future__ import annotations

import json
import random
import re
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from genealogy.client import ServiceClient, wait_drained
from genealogy.domain import ids
from genealogy.producers.ingest import ingest_lines, ingest_path, publish_ingest
from genealogy.producers.spool import Spool
from tests.support.paths import FIXTURES
from tests.support.stack import sql, start_stack, until

pytestmark = pytest.mark.integration

GS1 = sorted((FIXTURES / "epcis" / "gs1").rglob("*.jsonld"))
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=timezone.utc)
STEPS = ["shipping", "receiving", "urn:epcglobal:cbv:bizstep:packing", "https://ref.gs1.org/cbv/BizStep-commissioning"]
DISPOSITIONS = ["in_transit", "urn:epcglobal:cbv:disp:in_progress", "active"]
PLACES = ["urn:epc:id:sgln:4012345.00001.0", "urn:epc:id:sgln:4012345.00002.0", "https://id.gs1.org/414/4012345000092"]


def sgtin(serial: int, digital_link: bool) -> str:
    return (f"https://id.gs1.org/01/04012345123456/21/{serial}" if digital_link
            else f"urn:epc:id:sgtin:4012345.012345.{serial}")


def generated_events(n: int = 60, seed: int = 7) -> list[dict]:
    rng = random.Random(seed)
    events = []
    for i in range(n):
        kind = ["ObjectEvent", "AggregationEvent", "TransformationEvent", "TransactionEvent", "AssociationEvent"][i % 5]
        e: dict = {"type": kind, "eventTime": (T0 + timedelta(minutes=7 * i)).isoformat().replace("+00:00", "Z"),
                   "eventTimeZoneOffset": "+00:00", "readPoint": {"id": rng.choice(PLACES)},
                   "bizLocation": {"id": rng.choice(PLACES)}, "bizStep": rng.choice(STEPS),
                   "disposition": rng.choice(DISPOSITIONS)}
        if i % 3:
            e["eventID"] = f"urn:uuid:00000000-0000-4000-8000-{i:012d}"
        serials = rng.sample(range(100, 140), 2)
        if kind in ("ObjectEvent", "TransactionEvent"):
            e["action"] = rng.choice(["ADD", "OBSERVE"])
            e["epcList"] = [sgtin(s, rng.random() < 0.5) for s in serials]
        elif kind in ("AggregationEvent", "AssociationEvent"):
            e["action"] = rng.choice(["ADD", "OBSERVE", "DELETE"])
            e["parentID"] = f"urn:epc:id:sscc:4012345.{rng.randint(1, 4):010d}"
            e["childEPCs"] = [sgtin(s, rng.random() < 0.5) for s in serials]
        else:
            e["inputEPCList"] = [sgtin(serials[0], rng.random() < 0.5)]
            e["outputEPCList"] = [sgtin(serials[1], rng.random() < 0.5)]
        if kind == "TransactionEvent" or rng.random() < 0.4:
            e["bizTransactionList"] = [{"type": rng.choice(["po", "urn:epcglobal:cbv:btt:desadv"]),
                                        "bizTransaction": f"urn:epcglobal:cbv:bt:4012345000009:T{rng.randint(1, 3)}"}]
        if kind == "ObjectEvent" and rng.random() < 0.5:
            e["sensorElementList"] = [{"sensorReport": [{"type": "Temperature", "value": rng.randint(2, 9), "uom": "CEL"}]}]
        events.append(e)
    # One event in two business transactions of different types (EQ_bizTransaction_ of both must find it).
    events.append({"type": "ObjectEvent", "eventTime": "2026-03-02T08:00:00Z", "eventTimeZoneOffset": "+00:00",
                   "action": "OBSERVE", "epcList": [sgtin(150, True)], "bizStep": "shipping",
                   "readPoint": {"id": PLACES[0]}, "eventID": "urn:uuid:00000000-0000-4000-8000-999999999999",
                   "bizTransactionList": [{"type": "po", "bizTransaction": "urn:epcglobal:cbv:bt:4012345000009:T1"},
                                          {"type": "desadv", "bizTransaction": "urn:epcglobal:cbv:bt:4012345000009:T1"}]})
    # Error declarations (the reason in its three spellings) and an extension field, drawn from a rng of
    # their own so that the events above stay what the other tests expect.
    extra = random.Random(seed + 1)
    for i, e in enumerate(events[:60]):
        if i % 4 == 1:
            e["errorDeclaration"] = {"declarationTime": (T0 + timedelta(hours=i)).isoformat(),
                                     "reason": extra.choice(["incorrect_data", "urn:epcglobal:cbv:er:incorrect_data",
                                                             "https://ref.gs1.org/cbv/ER-did_not_occur"])}
            if i % 8 == 1:
                e["errorDeclaration"]["correctiveEventIDs"] = [f"urn:uuid:00000000-0000-4000-8000-{(i + 1):012d}"]
        if i % 6 == 2:
            e["example:batchNote"] = extra.choice(["", "re-labelled", "checked"])
    return events


# --- the brute-force filter: the standard's wording, in plain Python -------------------------------

CBV = re.compile(r"(?:urn:epcglobal:cbv:(?:bizstep|disp|btt|sdt|er):|https://ref\.gs1\.org/cbv/(?:BizStep|Disp|BTT|SDT|ER)-)(.+)")


def term(value) -> str:
    value = value if isinstance(value, str) else ""
    m = CBV.fullmatch(value)
    return m.group(1) if m else value


def instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def place(event: dict, key: str) -> str:
    value = event.get(key)
    return value.get("id", "") if isinstance(value, dict) else (value or "")


def norm(epc: str) -> str | None:
    try:
        return ids.normalize(epc)
    except ids.InvalidId:
        return None


def epc_matches(epc: str, value: str) -> bool:
    if epc == value:
        return True
    a, b = norm(epc), norm(value)
    if a is None or b is None:
        return False
    if a == b:
        return True
    if b.startswith("class:") and b.endswith(":*"):  # a class pattern: every serial and lot of its GTIN
        return a.split(":")[1] == b.split(":")[1] and a.split(":")[0] in ("serial", "lot")
    return False


def role_epcs(event: dict, role: str) -> list[str]:
    if role == "epc":
        return (event.get("epcList") or []) + (event.get("childEPCs") or [])
    if role == "parentID":
        return [event["parentID"]] if event.get("parentID") else []
    if role == "inputEPC":
        return event.get("inputEPCList") or []
    if role == "outputEPC":
        return event.get("outputEPCList") or []
    return sum((role_epcs(event, r) for r in ("epc", "parentID", "inputEPC", "outputEPC")), [])


SENSOR_TEXT = ("type", "deviceID", "dataProcessingMethod", "microorganism", "chemicalSubstance", "bizRules",
               "stringValue", "booleanValue", "hexBinaryValue", "uriValue")
SENSOR_NUMBER = re.compile(r"(EQ|GT|GE|LT|LE)_(?:(value|minValue|maxValue|meanValue|sDev)_([A-Z0-9]{2,4})|(percRank))")
SENSOR_TIME = re.compile(r"(GE|LT)_(time|startTime|endTime)")
COMPARE = {"EQ": lambda a, b: a == b, "GT": lambda a, b: a > b, "GE": lambda a, b: a >= b,
           "LT": lambda a, b: a < b, "LE": lambda a, b: a <= b}


def bare_type(value: str) -> str:
    for prefix in ("gs1:", "https://gs1.org/voc/", "http://gs1.org/voc/"):
        if value.startswith(prefix):
            return value[len(prefix):]
    return value


def sensor_text(value) -> str | None:
    """A sensor attribute as the query compares it: strings as written, booleans true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else None


def sensor_match(e: dict, params: dict[str, str]) -> bool:
    """The standard's sensor parameters, all of them on one reading: a (sensorMetadata, sensorReport) pair
    of one sensorElement, a field the report lacks taken from the metadata."""
    wanted = {n: v for n, v in params.items()
              if n[3:] in SENSOR_TEXT or SENSOR_NUMBER.fullmatch(n) or SENSOR_TIME.fullmatch(n)}
    if not wanted:
        return True
    pairs = [(el.get("sensorMetadata") or {}, r) for el in e.get("sensorElementList") or []
             for r in (el.get("sensorReport") or [{}])]

    def holds(meta: dict, report: dict) -> bool:
        look = lambda f: report[f] if f in report else meta.get(f)  # noqa: E731
        for name, raw in wanted.items():
            if name[3:] in SENSOR_TEXT:
                f, got = name[3:], sensor_text(look(name[3:]))
                values = raw.split(",")
                if f == "type":
                    got, values = (bare_type(got) if got else got), [bare_type(v) for v in values]
                if f == "hexBinaryValue":
                    got, values = (got.upper() if got else got), [v.upper() for v in values]
                if got is None or got not in values:
                    return False
            elif m := SENSOR_NUMBER.fullmatch(name):
                f, uom = m.group(2) or m.group(4), m.group(3)
                x = report.get(f)
                if isinstance(x, bool) or not isinstance(x, (int, float)) or (uom and report.get("uom") != uom):
                    return False
                if not COMPARE[m.group(1)](x, float(raw)):
                    return False
            else:
                m = SENSOR_TIME.fullmatch(name)
                t = look(m.group(2))
                if not isinstance(t, str) or not ((instant(t) >= instant(raw)) if m.group(1) == "GE" else (instant(t) < instant(raw))):
                    return False
        return True
    return any(holds(meta, report) for meta, report in pairs)


QUANTITY_LISTS = ("quantityList", "childQuantityList", "inputQuantityList", "outputQuantityList")


def quantity_elements(e: dict) -> list[dict]:
    return [q for key in QUANTITY_LISTS for q in e.get(key) or [] if isinstance(q, dict)]


def quantity_classes(e: dict) -> list[str]:
    return [q["epcClass"] for q in quantity_elements(e) if q.get("epcClass")]


def present(value) -> bool:
    return value not in (None, [], {}, "")


def sort_key(e: dict, order_by: str) -> int:
    return round(instant(e[order_by]).timestamp() * 1000) if order_by else 0


def brute_ordered(events: dict[str, dict], params: dict[str, str]) -> list[str]:
    """The answer in the order the query asks for: (orderBy's time, event id), DESC unless ASC;
    the event id order without orderBy; the first eventCountLimit."""
    chosen = brute(events, params)
    order_by = params.get("orderBy", "")
    descending = bool(order_by) and params.get("orderDirection", "DESC") == "DESC"
    ordered = sorted(chosen, key=lambda i: (sort_key(events[i], order_by), i), reverse=descending)
    return ordered[:int(params["eventCountLimit"])] if "eventCountLimit" in params else ordered


def brute(events: dict[str, dict], params: dict[str, str]) -> set[str]:
    def keep(e: dict) -> bool:
        if not sensor_match(e, params):
            return False
        quantity = {n[:2]: float(v) for n, v in params.items() if re.fullmatch(r"(EQ|GT|GE|LT|LE)_quantity", n)}
        if quantity and not any(isinstance(q.get("quantity"), (int, float)) and not isinstance(q.get("quantity"), bool)
                                and all(COMPARE[op](q["quantity"], v) for op, v in quantity.items())
                                for q in quantity_elements(e)):
            return False
        declared = e.get("errorDeclaration") if isinstance(e.get("errorDeclaration"), dict) else None
        for name, raw in params.items():
            values = raw.split(",")
            if name == "EXISTS_errorDeclaration" and raw in ("", "true") and declared is None:
                return False
            elif name.startswith("EXISTS_") and name != "EXISTS_errorDeclaration" and raw in ("", "true") \
                    and not present(e.get(name[len("EXISTS_"):])):
                return False
            if name in ("GE_errorDeclarationTime", "LT_errorDeclarationTime"):
                if declared is None or not declared.get("declarationTime"):
                    return False
                t = instant(declared["declarationTime"])
                if (t < instant(raw)) if name.startswith("GE") else (t >= instant(raw)):
                    return False
            if name == "EQ_errorReason" and (declared is None or "reason" not in declared
                                             or term(declared["reason"]) not in map(term, values)):
                return False
            if name == "EQ_correctiveEventID" and (declared is None or not set(declared.get("correctiveEventIDs") or []) & set(values)):
                return False
            if name == "EQ_transformationID" and e.get("transformationID") not in values:
                return False
            if name.startswith("EQ_persistentDisposition_"):
                listed = (e.get("persistentDisposition") or {}).get(name.rsplit("_", 1)[1]) or []
                if not {term(v) for v in listed} & {term(v) for v in values}:
                    return False
            for prefix, key, role in (("EQ_source_", "sourceList", "source"), ("EQ_destination_", "destinationList", "destination")):
                if name.startswith(prefix) and not any(term(x.get("type")) == term(name[len(prefix):]) and x.get(role) in values
                                                       for x in e.get(key) or []):
                    return False
            # Here MATCH_epcClass matches the classes of every quantity list, like MATCH_anyEPCClass.
            if name in ("MATCH_epcClass", "MATCH_anyEPCClass") and not any(epc_matches(c, v) for c in quantity_classes(e) for v in values):
                return False
            if name == "WD_readPoint" and place(e, "readPoint") not in values:  # no location hierarchy: no descendants
                return False
            if name == "WD_bizLocation" and place(e, "bizLocation") not in values:
                return False
            if name == "eventType" and e["type"] not in values:
                return False
            if name in ("GE_eventTime", "LT_eventTime", "GE_recordTime", "LT_recordTime"):
                t = instant(e["eventTime" if "event" in name else "recordTime"])
                if (t < instant(raw)) if name.startswith("GE") else (t >= instant(raw)):
                    return False
            if name == "EQ_action" and e.get("action") not in values:
                return False
            if name == "EQ_bizStep" and term(e.get("bizStep")) not in map(term, values):
                return False
            if name == "EQ_disposition" and term(e.get("disposition")) not in map(term, values):
                return False
            if name == "EQ_readPoint" and place(e, "readPoint") not in values:
                return False
            if name == "EQ_bizLocation" and place(e, "bizLocation") not in values:
                return False
            if name == "EQ_eventID" and e["_id"] not in values:
                return False
            if name.startswith("MATCH_") and name not in ("MATCH_epcClass", "MATCH_anyEPCClass"):
                role = name[len("MATCH_"):]
                if not any(epc_matches(epc, v) for epc in role_epcs(e, role) for v in values):
                    return False
            if name.startswith("EQ_bizTransaction_"):
                kind = term(name[len("EQ_bizTransaction_"):])
                if not any(term(b.get("type")) == kind and b.get("bizTransaction") in values
                           for b in e.get("bizTransactionList") or []):
                    return False
        return True
    return {i for i, e in events.items() if keep(e)}


CAPTURES: dict[str, tuple[str, dict]] = {}  # GS1 file name -> (Location, answer) of its POST /capture


# --- the stack, fed once --------------------------------------------------------------------------

def canonical(event: dict) -> str:
    return json.dumps({k: v for k, v in event.items() if k not in ("recordTime", "@context", "_id")}, sort_keys=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("epcis-query")
    stack = start_stack(tmp)
    try:
        client = ServiceClient.for_settings(stack.settings)
        kept: dict[str, str] = {}  # canonical event (no recordTime) -> event id
        for path in GS1:  # the standard's examples, through the HTTP capture interface
            body = path.read_bytes()
            response = client.http.request("POST", f"{client.base_url}/capture", body=body,
                                           headers={**client.headers, "Content-Type": "application/ld+json"})
            assert response.status == 202, (path.name, response.data)
            CAPTURES[path.name] = (response.headers["Location"], json.loads(response.data))
            for e in ingest_lines(body.splitlines(keepends=True), "epcis", path.name).epcis:
                kept[canonical(json.loads(e["json"]))] = e["event_id"]
        generated = tmp / "generated.jsonl"
        generated.write_text("".join(json.dumps(e) + "\n" for e in generated_events()))
        result = ingest_path(generated, "epcis")
        assert result.counts["kept"] == 61 and result.counts["rejects"] == 0
        with Spool(tmp / "edge.db", default_topic=stack.settings.topic_capture) as spool:
            assert publish_ingest(stack.settings, result, spool, timeout=120).remaining == 0
        for e in result.epcis:
            kept[canonical(json.loads(e["json"]))] = e["event_id"]
        wanted = set(kept.values())
        until(lambda: sql(client, "SELECT uniqExact(event_id) FROM epcis_events")[0][0] >= len(wanted), 90,
              "every kept event in epcis_events")
        wait_drained(client, settle_s=1.0, timeout=120)
        code, listing = client.get("/events", perPage="1000")
        assert code == 200, listing
        events = {}
        for e in listing["epcisBody"]["queryResults"]["resultsBody"]["eventList"]:
            events[kept[canonical(e)]] = {**e, "_id": kept[canonical(e)]}
        assert set(events) == wanted
        yield stack, client, events
    finally:
        stack.stop()


def query_ids(client: ServiceClient, params: dict, events: dict) -> list[str]:
    """The event ids of the answer, in its order."""
    code, body = client.get("/events", perPage="1000", **params)
    assert code == 200, (params, body)
    assert body["type"] == "EPCISQueryDocument" and body["schemaVersion"] == "2.0"
    by_content = {canonical(e): i for i, e in events.items()}
    return [by_content[canonical({k: v for k, v in e.items()})] for e in body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]


def some(events: dict, pick) -> list[str]:
    """The distinct values ``pick`` finds in the events, most frequent first (deterministic)."""
    counts: dict[str, int] = {}
    for e in events.values():
        for v in pick(e):
            if v:
                counts[v] = counts.get(v, 0) + 1
    return sorted(counts, key=lambda v: (-counts[v], v))


def cases(events: dict) -> list[dict]:
    times = sorted(e["eventTime"] for e in events.values())
    records = sorted(e["recordTime"] for e in events.values())
    steps = some(events, lambda e: [e.get("bizStep")])
    disps = some(events, lambda e: [e.get("disposition")])
    points = some(events, lambda e: [place(e, "readPoint")])
    locations = some(events, lambda e: [place(e, "bizLocation")])
    epcs = some(events, lambda e: role_epcs(e, "epc"))
    parents = some(events, lambda e: role_epcs(e, "parentID"))
    inputs = some(events, lambda e: role_epcs(e, "inputEPC"))
    outputs = some(events, lambda e: role_epcs(e, "outputEPC"))
    bts = some(events, lambda e: [f"{term(b.get('type'))}|{b['bizTransaction']}" for b in e.get("bizTransactionList") or []
                                  if b.get("type")])
    bt_type, bt_id = bts[0].split("|", 1)
    named = sorted(events)[:3]
    # A serial written as a URN, asked for as its Digital Link (and the other way round).
    urn = next(v for v in epcs if v.startswith("urn:epc:id:sgtin:4012345.012345."))
    dl = "https://id.gs1.org/01/04012345123456/21/" + urn.rsplit(".", 1)[1]
    return [
        {"eventType": "ObjectEvent"}, {"eventType": "AggregationEvent,TransformationEvent"},
        {"GE_eventTime": times[len(times) // 3]}, {"LT_eventTime": times[len(times) // 2]},
        {"GE_eventTime": times[10], "LT_eventTime": times[40]},
        {"GE_recordTime": records[len(records) // 2]}, {"LT_recordTime": records[len(records) // 2]},
        {"EQ_action": "ADD"}, {"EQ_action": "OBSERVE,DELETE"},
        {"EQ_bizStep": steps[0]}, {"EQ_bizStep": ",".join(steps[1:3])},
        {"EQ_bizStep": "urn:epcglobal:cbv:bizstep:shipping"}, {"EQ_bizStep": "https://ref.gs1.org/cbv/BizStep-receiving"},
        {"EQ_disposition": disps[0]}, {"EQ_disposition": "urn:epcglobal:cbv:disp:in_transit,active"},
        {"EQ_readPoint": points[0]}, {"EQ_readPoint": ",".join(points[1:3])},
        {"EQ_bizLocation": locations[0]}, {"EQ_bizLocation": ",".join(locations[:2])},
        {"MATCH_epc": epcs[0]}, {"MATCH_epc": ",".join(epcs[1:4])}, {"MATCH_epc": dl},
        {"MATCH_epc": "urn:epc:idpat:sgtin:4012345.012345.*"},
        {"MATCH_anyEPC": urn}, {"MATCH_anyEPC": ",".join([parents[0], inputs[0]])},
        {"MATCH_anyEPC": "https://id.gs1.org/01/04012345123456"},
        {"MATCH_parentID": parents[0]}, {"MATCH_parentID": ",".join(parents[1:3])},
        {"MATCH_inputEPC": inputs[0]}, {"MATCH_inputEPC": ",".join(inputs[:3])},
        {"MATCH_outputEPC": outputs[0]}, {"MATCH_outputEPC": ",".join(outputs[:3])},
        {f"EQ_bizTransaction_{bt_type}": bt_id},
        {"EQ_bizTransaction_urn:epcglobal:cbv:btt:desadv": "urn:epcglobal:cbv:bt:4012345000009:T1,urn:epcglobal:cbv:bt:4012345000009:T2"},
        {"EQ_bizTransaction_po": "urn:epcglobal:cbv:bt:4012345000009:T1", "EQ_bizTransaction_desadv": "urn:epcglobal:cbv:bt:4012345000009:T1"},
        {"EQ_eventID": named[0]}, {"EQ_eventID": ",".join(named)},
        {"eventType": "ObjectEvent", "EQ_bizStep": steps[0], "GE_eventTime": times[5]},
        {"MATCH_anyEPC": "urn:epc:idpat:sgtin:4012345.012345.*", "EQ_readPoint": points[0], "EQ_action": "ADD,OBSERVE"},
    ]


def later_cases(events: dict) -> list[dict]:
    """The parameters added for issue #14: order and counts, WD_, EXISTS_, error declarations, sensors."""
    times = sorted(e["eventTime"] for e in events.values())
    points = some(events, lambda e: [place(e, "readPoint")])
    locations = some(events, lambda e: [place(e, "bizLocation")])
    declared = [e["errorDeclaration"] for e in events.values() if isinstance(e.get("errorDeclaration"), dict)]
    declared_at = sorted(instant(d["declarationTime"]) for d in declared)
    at = lambda t: t.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")  # noqa: E731
    corrective = some(events, lambda e: (e.get("errorDeclaration") or {}).get("correctiveEventIDs") or [])
    reports = [(el.get("sensorMetadata") or {}, r) for e in events.values() for el in e.get("sensorElementList") or []
               for r in el.get("sensorReport") or [{}]]
    pick = lambda f: some({str(i): {"v": v} for i, v in enumerate(  # noqa: E731
        sensor_text(r[f] if f in r else m.get(f)) for m, r in reports)}, lambda e: [e["v"]])
    devices, types, rules = pick("deviceID"), pick("type"), pick("bizRules")
    methods, microbes, substances = pick("dataProcessingMethod"), pick("microorganism"), pick("chemicalSubstance")
    celsius = sorted(r["value"] for _, r in reports if r.get("uom") == "CEL" and isinstance(r.get("value"), (int, float)))
    sensor_times = sorted(instant(r.get("time") or m.get("time")) for m, r in reports if r.get("time") or m.get("time"))
    starts = sorted(instant(m["startTime"]) for m, _ in reports if m.get("startTime"))
    ends = sorted(instant(m["endTime"]) for m, _ in reports if m.get("endTime"))
    transformations = some(events, lambda e: [e.get("transformationID")])
    sources = [s.split("|", 1) for s in some(events, lambda e: [f"{term(x.get('type'))}|{x.get('source')}" for x in e.get("sourceList") or []])]
    destinations = [s.split("|", 1) for s in some(
        events, lambda e: [f"{term(x.get('type'))}|{x.get('destination')}" for x in e.get("destinationList") or []])]
    classes = some(events, quantity_classes)
    quantities = some(events, lambda e: [str(q["quantity"]) for q in quantity_elements(e) if isinstance(q.get("quantity"), (int, float))])
    assert transformations and len(sources) > 2 and destinations and classes and quantities
    assert len(declared) > 10 and len(reports) > 40 and len(devices) > 3 and len(celsius) > 10  # there is something to find
    return [
        {"orderBy": "eventTime"}, {"orderBy": "eventTime", "orderDirection": "ASC"},
        {"orderBy": "recordTime", "orderDirection": "DESC"}, {"orderBy": "recordTime", "orderDirection": "ASC", "eventType": "ObjectEvent"},
        {"orderBy": "eventTime", "eventCountLimit": "1"}, {"orderBy": "eventTime", "orderDirection": "ASC", "eventCountLimit": "7"},
        {"orderBy": "eventTime", "eventCountLimit": "5", "EQ_action": "ADD"}, {"orderDirection": "ASC"},
        {"maxEventCount": "100000"}, {"maxEventCount": "40", "eventType": "TransformationEvent"},
        {"WD_readPoint": points[0]}, {"WD_readPoint": ",".join(points[1:3]), "EQ_readPoint": points[1]},
        {"WD_bizLocation": locations[0]}, {"WD_bizLocation": ",".join(locations[:2]), "GE_eventTime": times[20]},
        {"EXISTS_errorDeclaration": ""}, {"EXISTS_errorDeclaration": "true", "eventType": "ObjectEvent"},
        {"EXISTS_errorDeclaration": "false"}, {"EXISTS_sensorElementList": ""}, {"EXISTS_bizTransactionList": "true"},
        {"EXISTS_example:batchNote": ""}, {"EXISTS_parentID": "", "EXISTS_bizLocation": ""}, {"EXISTS_ilmd": ""},
        {"GE_errorDeclarationTime": at(declared_at[len(declared_at) // 2])},
        {"LT_errorDeclarationTime": at(declared_at[len(declared_at) // 2])},
        {"GE_errorDeclarationTime": at(declared_at[2]), "LT_errorDeclarationTime": at(declared_at[-3])},
        {"EQ_errorReason": "incorrect_data"}, {"EQ_errorReason": "urn:epcglobal:cbv:er:did_not_occur"},
        {"EQ_errorReason": "https://ref.gs1.org/cbv/ER-incorrect_data,did_not_occur", "eventType": "ObjectEvent"},
        {"EQ_correctiveEventID": corrective[0]}, {"EQ_correctiveEventID": ",".join(corrective[1:4])},
        {"EQ_type": "Temperature"}, {"EQ_type": "gs1:AbsoluteHumidity,Speed"}, {"EQ_type": types[-1]},
        {"EQ_deviceID": devices[0]}, {"EQ_deviceID": ",".join(devices[1:3])},
        {"EQ_deviceID": devices[0], "EQ_type": "Temperature"},
        {"EQ_dataProcessingMethod": methods[0]}, {"EQ_microorganism": microbes[0]}, {"EQ_chemicalSubstance": substances[0]},
        {"EQ_bizRules": rules[0]}, {"EQ_stringValue": "SomeString"}, {"EQ_booleanValue": "true"},
        {"EQ_hexBinaryValue": "f0f0f0"}, {"EQ_uriValue": "https://id.gs1.org/8004/4000001111"},
        {"GE_value_CEL": str(celsius[len(celsius) // 2])}, {"LT_value_CEL": str(celsius[len(celsius) // 2])},
        {"GE_value_CEL": str(celsius[2]), "LT_value_CEL": str(celsius[-3])}, {"GT_value_CEL": "5", "LE_value_CEL": "8"},
        {"EQ_value_CEL": str(celsius[0])}, {"GE_value_KMH": "0"}, {"GE_maxValue_CEL": "20"}, {"LT_minValue_A93": "30"},
        {"GE_meanValue_CEL": "10", "EQ_type": "Temperature"}, {"LT_sDev_CEL": "1"}, {"GE_percRank": "50"},
        {"GE_time": at(sensor_times[len(sensor_times) // 2])}, {"LT_time": at(sensor_times[len(sensor_times) // 2])},
        {"GE_startTime": at(starts[len(starts) // 2])}, {"LT_endTime": at(ends[len(ends) // 2])},
        {"EQ_type": "Temperature", "GE_value_CEL": "20", "GE_time": at(sensor_times[0])},
        {"EQ_transformationID": transformations[0]}, {"EQ_transformationID": ",".join(transformations[:3])},
        {"EQ_persistentDisposition_set": "completeness_verified"},
        {"EQ_persistentDisposition_unset": "urn:epcglobal:cbv:disp:completeness_inferred,unknown"},
        {f"EQ_source_{sources[0][0]}": sources[0][1]}, {f"EQ_source_urn:epcglobal:cbv:sdt:{sources[1][0]}": sources[1][1]},
        {f"EQ_destination_{destinations[0][0]}": ",".join(d for _, d in destinations[:3])},
        {f"EQ_source_{sources[0][0]}": sources[0][1], f"EQ_destination_{destinations[0][0]}": destinations[0][1]},
        {"MATCH_anyEPCClass": classes[0]}, {"MATCH_anyEPCClass": "urn:epc:idpat:sgtin:4012345.011111.*"},
        {"MATCH_epcClass": ",".join(classes[1:3])}, {"MATCH_anyEPCClass": "https://id.gs1.org/01/04012345111118"},
        {"GT_quantity": "100"}, {"LE_quantity": "50"}, {"GE_quantity": "10", "LT_quantity": "500"}, {"EQ_quantity": quantities[0]},
    ]


def test_every_parameter_answers_what_the_brute_force_filter_does(world):
    _, client, events = world
    nonempty = 0
    for params in cases(events) + later_cases(events):
        got = query_ids(client, params, events)
        assert len(got) == len(set(got)), params
        expected = set(brute_ordered(events, params))
        assert set(got) == expected, (params, sorted(set(got) - expected), sorted(expected - set(got)))
        if "orderBy" in params or "eventCountLimit" in params:
            assert got == brute_ordered(events, params), params
        nonempty += bool(expected) and len(expected) < len(events)
    assert nonempty >= 60  # the cases select something, and not everything


def test_max_event_count_over_is_query_too_large(world):
    _, client, events = world
    objects = len(brute(events, {"eventType": "ObjectEvent"}))
    body = problem(client, f"/events?eventType=ObjectEvent&maxEventCount={objects - 1}", 413)
    assert body["type"] == "epcisException:QueryTooLargeException" and "maxEventCount" in body["detail"]
    assert len(query_ids(client, {"eventType": "ObjectEvent", "maxEventCount": str(objects)}, events)) == objects


def link_next(response) -> str | None:
    link = response.headers.get("Link")
    if not link:
        return None
    m = re.fullmatch(r'<([^>]+)>; rel="next"', link)
    assert m, link
    return m.group(1)


def pages(client: ServiceClient, query: str) -> list[list[dict]]:
    url, out = f"{client.base_url}/events?{query}", []
    while url:
        response = client.http.request("GET", url, headers=client.headers)
        assert response.status == 200, response.data
        out.append(json.loads(response.data)["epcisBody"]["queryResults"]["resultsBody"]["eventList"])
        url = link_next(response)
        if url:
            assert response.headers["GS1-Next-Page-Token-Expires"].endswith("Z")
            assert "nextPageToken=" in url
    return out


@pytest.mark.parametrize("query,size", [("perPage=7", 7), ("perPage=1&eventType=AggregationEvent", 1),
                                        ("eventType=ObjectEvent,TransactionEvent&perPage=5", 5), ("", 30),
                                        ("orderBy=eventTime&perPage=7", 7), ("orderBy=recordTime&orderDirection=ASC&perPage=9", 9),
                                        ("orderBy=eventTime&orderDirection=ASC&eventType=ObjectEvent&perPage=4", 4),
                                        ("orderBy=eventTime&eventCountLimit=20&perPage=6", 6),
                                        ("orderBy=recordTime&eventCountLimit=12&perPage=4", 4),
                                        ("maxEventCount=1000&perPage=25", 25)])
def test_pagination_collects_the_unpaged_answer_exactly_once(world, query, size):
    """With orderBy the cursor is (time, event id): the pages together are the ordered answer; with
    eventCountLimit the pages stop at the limit."""
    _, client, events = world
    got = pages(client, query)
    assert all(len(p) == size for p in got[:-1]) and 0 < len(got[-1]) <= size
    flat = [canonical(e) for p in got for e in p]
    assert len(flat) == len(set(flat))
    params = dict(pair.split("=", 1) for pair in query.split("&") if pair and not pair.startswith("perPage"))
    assert flat == [canonical(events[i]) for i in brute_ordered(events, params)]


def problem(client: ServiceClient, path: str, status: int = 400) -> dict:
    response = client.http.request("GET", f"{client.base_url}{path}", headers=client.headers)
    assert response.status == status, (path, response.data)
    assert response.headers["Content-Type"].startswith("application/problem+json")
    body = json.loads(response.data)
    assert body["status"] == status and body["title"] and body["type"].startswith("epcisException:")
    assert "Traceback" not in response.data.decode()
    return body


def test_errors_are_problem_details(world):
    _, client, _ = world
    for path in ("/events?EQ_color=red", "/events?GE_eventTime=yesterday", "/events?GE_eventTime=2026-03-01T08:00:00",
                 "/events?perPage=0", "/events?perPage=100000", "/events?EQ_action=MOVE", "/events?nextPageToken=forged.token",
                 "/events?eventType=CustomEvent", "/events?EQ_bizStep=", "/events?orderBy=quantity",
                 "/events?orderDirection=sideways&orderBy=eventTime", "/events?eventCountLimit=2",
                 "/events?orderBy=eventTime&eventCountLimit=2&maxEventCount=3", "/events?maxEventCount=many",
                 "/events?EXISTS_errorDeclaration=perhaps", "/events?GE_errorDeclarationTime=2026-01-01",
                 "/events?GE_value_CEL=warm", "/events?EQ_booleanValue=maybe", "/events?EXISTS_INNER_ex:f",
                 "/events?EQ_hexBinaryValue=xyz", "/events?GE_time=yesterday", "/events?EQ_ex:field=1"):
        assert problem(client, path)["type"] == "epcisException:QueryParameterException", path
    response = client.http.request("GET", f"{client.base_url}/events?perPage=2", headers=client.headers)
    token = re.search(r"nextPageToken=([^&>]+)", response.headers["Link"]).group(1)
    # A token is bound to its query: with other parameters it is refused, not silently reused.
    assert "other parameters" in problem(client, f"/events?perPage=2&eventType=ObjectEvent&nextPageToken={token}")["detail"]
    # An ordered query's token is bound to its order too.
    response = client.http.request("GET", f"{client.base_url}/events?perPage=2&orderBy=eventTime", headers=client.headers)
    token = re.search(r"nextPageToken=([^&>]+)", response.headers["Link"]).group(1)
    assert "other parameters" in problem(client, f"/events?perPage=2&orderBy=eventTime&orderDirection=ASC&nextPageToken={token}")["detail"]
    assert problem(client, "/events/urn:uuid:no-such-event", 404)["type"] == "epcisException:NoSuchResourceException"
    assert problem(client, "/eventTypes/NoSuchEvent/events", 404)["status"] == 404
    # No token, no answer: the query interface is a reader's route like the others.
    anonymous = client.http.request("GET", f"{client.base_url}/events")
    assert anonymous.status == 401


def test_one_event_by_id_by_epc_and_by_type(world):
    _, client, events = world
    # The standard (openapi.yaml, GET /events/{eventID}): an EPCISQueryDocument enclosing the event.
    for event_id in [i for i in events if i.startswith("urn:uuid:")][:2] + [i for i in events if i.startswith("ni:")][:2]:
        code, body = client.get(f"/events/{quote(event_id, safe='')}")
        assert code == 200 and body["type"] == "EPCISQueryDocument", event_id
        [event] = body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
        assert canonical(event) == canonical(events[event_id]), event_id
    dl = "https://id.gs1.org/01/04012345123456/21/110"
    code, body = client.get(f"/epcs/{quote(dl, safe='')}/events", perPage="1000")
    assert code == 200
    got = {canonical(e) for e in body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]}
    assert got == {canonical(events[i]) for i in brute(events, {"MATCH_anyEPC": dl})} and got
    code, body = client.get("/eventTypes/TransformationEvent/events", perPage="1000")
    got = {canonical(e) for e in body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]}
    assert code == 200 and got == {canonical(events[i]) for i in brute(events, {"eventType": "TransformationEvent"})}


def test_events_without_genealogy_are_kept_not_dead_lettered(world):
    """A plain ObjectEvent with sensor data says nothing for genealogy: it used to be a dead letter
    (stage unknown) and nowhere else; now it is a queryable event and no dead letter."""
    _, client, events = world
    assert sql(client, "SELECT count() FROM dead_letters WHERE stage = 'unknown'") == [[0]]
    # GS1's examples reuse one eventID for different events (their ids are illustrations): the newer
    # capture of such an id replaces the older, which one is newer depends on timing, so they are left out.
    contents: dict[str, set[str]] = {}
    for path in GS1:
        for e in ingest_lines(path.read_bytes().splitlines(keepends=True), "epcis", path.name).epcis:
            contents.setdefault(e["event_id"], set()).add(canonical(json.loads(e["json"])))
    reused = {i for i, c in contents.items() if len(c) > 1}
    assert reused  # e.g. urn:uuid:374d95fc-... in ErrorDeclarationAndCorrectiveEvent and object_event_all_possible_fields
    with_sensors = [i for i, e in events.items() if e.get("sensorElementList") and i not in reused]
    assert len(with_sensors) > 5
    rows = sql(client, "SELECT count() FROM epcis_events FINAL WHERE sensor_elements != '' AND event_id IN {ids:Array(String)}",
               ids=with_sensors)
    assert rows == [[len(with_sensors)]]
    # Re-sending a captured event does not add a row: one row per event id.
    assert sql(client, "SELECT uniqExact(event_id) = count() FROM epcis_events FINAL") == [[1]]


def test_a_capture_job_says_what_became_of_each_capture(world):
    """POST /capture answers 202 with Location: /capture/{captureID}; the job lists the rejected events."""
    _, client, _ = world
    clean_location, clean = CAPTURES["Example_9.6.1-ObjectEvent.jsonld"]
    code, job = client.get(clean_location)
    assert code == 200 and job["captureID"] == clean["captureID"] and clean_location == f"/capture/{job['captureID']}"
    assert job["running"] is False and job["success"] is True and job["errors"] == []
    # Every GS1 example maps now: a document with two bad events (no time zone, an SGTIN with a bad
    # company prefix) besides a good one.
    good = json.loads((FIXTURES / "epcis" / "gs1" / "Example_9.6.1-ObjectEvent.jsonld").read_text())
    first = good["epcisBody"]["eventList"][0]
    good["epcisBody"]["eventList"] = [first, {**first, "eventID": "urn:uuid:00000000-0000-4000-8000-0000000bad01",
                                              "eventTime": "2026-11-30T08:00:00"},
                                      {**first, "eventID": "urn:uuid:00000000-0000-4000-8000-0000000bad02",
                                       "epcList": ["urn:epc:id:sgtin:not.a.gtin"]}]
    response = client.http.request("POST", f"{client.base_url}/capture", body=json.dumps(good).encode(),
                                   headers={**client.headers, "Content-Type": "application/ld+json"})
    assert response.status == 202, response.data
    location, answer = response.headers["Location"], json.loads(response.data)

    def finished():
        code, job = client.get(location)
        return (code, job) if code != 200 or not job["running"] else None

    code, job = until(finished, 60, "the capture job finished")
    assert code == 200 and job["success"] is False and len(job["errors"]) == len(answer["rejects"]) == 2
    assert all(e["detail"] and e["status"] == 400 for e in job["errors"])
    assert problem(client, "/capture/no-such-capture", 404)["type"] == "epcisException:NoSuchResourceException"


# Last in the module: it adds events to the store the tests above compare with.
def test_post_events_captures_one_event_201_with_its_location(world):
    """The standard's synchronous capture of one event (openapi.yaml, POST /events): 201 Created, Location
    of the event, the event in the body; a document, a bad event or no event is a ValidationException."""
    _, client, _ = world
    event = {"type": "ObjectEvent", "eventTime": "2026-03-04T08:00:00.000Z", "eventTimeZoneOffset": "+00:00",
             "eventID": "urn:uuid:00000000-0000-4000-8000-00000000e201", "action": "OBSERVE",
             "epcList": [sgtin(170, False)], "bizStep": "inspecting", "readPoint": {"id": PLACES[0]}}
    response = client.http.request("POST", f"{client.base_url}/events", body=json.dumps(event).encode(),
                                   headers={**client.headers, "Content-Type": "application/json"})
    assert response.status == 201, response.data
    assert response.headers["Location"] == f"/events/{quote(event['eventID'], safe='')}"
    assert response.headers["GS1-EPCIS-Version"] == "2.0"
    kept = json.loads(response.data)
    assert kept["eventID"] == event["eventID"] and kept["recordTime"].endswith("Z")

    def landed():
        code, body = client.get(response.headers["Location"])
        return body if code == 200 else None

    body = until(landed, 60, "the event captured by POST /events")
    [got] = body["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
    assert canonical(got) == canonical(event)
    # An event without an eventID gets the repository's (the CBV event hash): its Location names it.
    anonymous = {k: v for k, v in event.items() if k != "eventID"} | {"epcList": [sgtin(171, False)]}
    response = client.http.request("POST", f"{client.base_url}/events", body=json.dumps(anonymous).encode(),
                                   headers={**client.headers, "Content-Type": "application/json"})
    assert response.status == 201 and response.headers["Location"].startswith("/events/ni%3A"), response.data
    document = (FIXTURES / "epcis" / "gs1" / "Example_9.6.1-ObjectEvent.jsonld").read_bytes()
    for body, why in ((document, "one event"), (json.dumps({**event, "eventTime": "2026-03-04T08:00:00"}).encode(), "eventTime"),
                      (b"   ", "one event"), (b"[1, 2]", "")):
        response = client.http.request("POST", f"{client.base_url}/events", body=body,
                                       headers={**client.headers, "Content-Type": "application/json"})
        assert response.status == 400 and response.headers["Content-Type"].startswith("application/problem+json"), response.data
        answer = json.loads(response.data)
        assert answer["type"] == "epcisException:ValidationException" and why in answer["detail"], answer
