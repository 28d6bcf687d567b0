"""The query service facing a plant network, on the real embedded stack: every attack on POST /sql
is refused with a JSON 4xx, changes nothing in the store, and leaves the sink and recall working.

The plant goes in two halves: the first before the attacks (so there is something to break), the
second after them (so the sink has to land new data afterwards); then everything is compared with
the brute-force reference, as tests/integration/test_pipeline.py does.
"""

import json
import threading

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import Plant
from tests.support.stack import ServiceClient, check_against_reference, cli, sql, start_stack, wait_drained

pytestmark = pytest.mark.integration

TABLES = ["edges", "edges_by_parent", "units", "lot_members", "units_by_station", "nodes", "capture_batches",
          "station_facts", "dead_letters", "corrections", "unpacked", "epcis_events"]

ATTACKS = [
    "SELECT * FROM file('/etc/passwd','LineAsString')",
    "SELECT file('/etc/passwd')",
    "INSERT INTO TABLE FUNCTION file('/tmp/genealogy-attack', 'CSV', 'x String') SELECT 'x'",
    "SELECT 1 INTO OUTFILE '/tmp/genealogy-attack-outfile'",
    "SELECT * FROM url('http://127.0.0.1:{port}/status','JSONAsString')",
    "SELECT * FROM s3('http://127.0.0.1:1/bucket/key', 'CSV')",
    "SELECT * FROM remote('127.0.0.1', system.one)",
    "SELECT * FROM mysql('127.0.0.1:1', 'db', 't', 'u', 'p')",
    "SELECT * FROM postgresql('127.0.0.1:1', 'db', 't', 'u', 'p')",
    "DROP TABLE edges",
    "TRUNCATE TABLE edges",
    "ALTER TABLE edges DELETE WHERE 1",
    "INSERT INTO edges (child) VALUES ('x')",
    "SET readonly = 0",
    "SET max_execution_time = 100000",
    "CREATE TEMPORARY TABLE edges (child String)",
    "CREATE TABLE evil (x Int8) ENGINE = Memory",
    "SYSTEM STOP MERGES",
    "SYSTEM DROP MARK CACHE",
    "KILL QUERY WHERE 1",
    "SELECT sum(number) FROM numbers(1.2e11)",
    "SELECT * FROM system.tables",
    "SELECT * FROM system.processes",
    "SELECT 1 WHERE 1 IN system.one",
    "SELECT count() FROM edges; DROP TABLE edges",
    "SELECT count() FROM edges SETTINGS readonly = 0",
    "SELECT count() FROM edges FORMAT JSON",
    "WITH x AS (SELECT 1) SELECT * FROM x",
    "SELECT dictGet('d', 'a', 1)",
    "SELECT sleepEachRow(1) FROM edges",
    "SHOW TABLES",
    "DESCRIBE TABLE edges",
    "",
]


def plant() -> Plant:
    return Plant(units=600, lot_size=200, faulty_units=30, seed=11, batch_size=40, disorder_ms=4_000,
                 duplicate_every=9, bad_events=3, reel_size=150).generate()


def counts(client) -> dict:
    return {t: sql(client, f"SELECT count() FROM {t}")[0][0] for t in TABLES}


def raw(client, method, path, body=None, headers=None):
    """A request as sent, with the client's token: these tests are about what the handlers answer."""
    response = client.http.request(method, f"{client.base_url}{path}", body=body, headers={**client.headers, **(headers or {})})
    return response.status, response.headers.get("Content-Type", ""), response.data


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_stack(tmp_path_factory.mktemp("security"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def fed(stack):
    """The first half of the plant, drained."""
    p = plant()
    batches = p.batches()
    publisher = Publisher(stack.settings)
    publisher.publish(batches[: len(batches) // 2])
    publisher.flush()
    client = ServiceClient.for_settings(stack.settings)
    wait_drained(client, settle_s=3.0, timeout=240)
    return p, batches, client


def test_every_attack_is_refused_with_json_and_changes_nothing(stack, fed):
    p, batches, client = fed
    before = counts(client)
    assert before["edges"] > 0
    for attack in ATTACKS:
        query = attack.replace("{port}", str(stack.settings.http_port))
        code, body = client.post("/sql", {"sql": query})
        assert 400 <= code < 500 and isinstance(body.get("error"), str) and body["error"], (attack, code, body)
        assert "version" not in body["error"] and "/work/" not in body["error"], body
        # The shared session is untouched: the sink can still write and recall still reads.
        assert counts(client) == before, attack
        code, health = client.get("/health")
        assert code == 200 and health["ok"], (attack, health)
    code, recall = client.get("/recall", lot=p.faulty_lot)
    assert code == 200 and recall["serial_scope"]["count"] > 0

    # The sink lands the second half after all that, and the whole matches the reference.
    publisher = Publisher(stack.settings)
    publisher.publish(batches[len(batches) // 2:])
    publisher.send_raw(b"ASSY-1", b"\x07 not a capture batch")
    publisher.flush()
    wait_drained(client, settle_s=4.0, timeout=240)
    check_against_reference(client, p)


def test_allowed_analyst_queries_still_answer(fed):
    _, _, client = fed
    assert sql(client, "SELECT count() > 0 FROM edges_final")[0][0] in (1, True)
    rows = sql(client, "SELECT DISTINCT parent FROM edges WHERE child = {c:String} LIMIT 5", c="nothing")
    assert rows == []
    assert sql(client, "SELECT e.relation, count() FROM edges AS e JOIN units AS u ON u.unit = e.parent "
                       "GROUP BY e.relation ORDER BY e.relation")


def test_a_heavy_analyst_query_is_capped_and_does_not_block_recall(stack, fed):
    p, _, client = fed
    result = {}
    started = threading.Event()

    def heavy():
        started.set()
        result["answer"] = ServiceClient.for_settings(stack.settings).post(
            "/sql", {"sql": "SELECT count() FROM edges AS a, edges AS b, edges AS c, edges AS d WHERE a.child != d.parent"})

    thread = threading.Thread(target=heavy, daemon=True)
    thread.start()
    started.wait(10)
    # Recall answers, and answers right, while the analyst query runs (it runs to its time cap).
    answered_meanwhile = 0
    while thread.is_alive() and answered_meanwhile < 20:
        code, r = client.get("/recall", lot=p.faulty_lot)
        assert code == 200 and r["serial_scope"]["count"] > 0, r
        answered_meanwhile += thread.is_alive()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the analyst query did not end: no time cap"
    code, body = result["answer"]
    assert code == 400 and "imeout" in body["error"], body  # stopped by max_execution_time, not a hang
    assert answered_meanwhile > 0, "recall did not answer while the analyst query ran"


def test_bad_requests_get_json_4xx(stack, fed):
    p, _, client = fed
    deep = b"[" * 100_000 + b"]" * 100_000
    cases = [
        ("POST", "/sql", b"not json", 400),
        ("POST", "/sql", json.dumps({"sql": 123}).encode(), 400),
        ("POST", "/sql", json.dumps([1, 2]).encode(), 400),
        ("POST", "/sql", json.dumps({"sql": "SELECT 1", "parameters": [1]}).encode(), 400),
        ("POST", "/sql", b'{"sql": "SELECT 1", "x": ' + b"[" * 200 + b"]" * 200 + b"}", 400),
        ("POST", "/sql", deep, 413),
        ("POST", "/sql", json.dumps({"sql": "SELECT 1 -- " + "x" * 70_000}).encode(), 413),
        ("POST", "/capture", deep, 400),
        ("GET", f"/recall?lot={p.faulty_lot}&since_ms=10&until_ms=5", None, 400),
        ("GET", "/recall?station=ASSY-1&since_ms=10&until_ms=5", None, 400),
        ("GET", "/recall?lot=x&since_ms=abc", None, 400),
        ("GET", "/granularity?unit_value=nan", None, 400),
        ("GET", "/granularity?unit_value=inf", None, 400),
        ("GET", "/granularity?recall_probability=-inf", None, 400),
        ("GET", "/no/such/route", None, 404),
        ("DELETE", "/sql", None, 405),
        ("GET", "/sql", None, 405),
    ]
    for method, path, body, expected in cases:
        code, content_type, data = raw(client, method, path, body, {"Content-Type": "application/json"})
        assert code == expected, (method, path, code, data[:200])
        assert content_type.startswith("application/json"), (path, content_type)
        error = json.loads(data)["error"]
        assert "Traceback" not in error and "/work/" not in error, error


def test_cli_ingest_of_a_missing_file_is_a_clear_error(stack):
    result = cli(stack, "ingest", "--format", "epcis", "/nonexistent/plant.jsonld")
    assert result.returncode == 2
    assert "no such file" in result.stderr and "Traceback" not in result.stderr


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
                    max_leaves=12)
SQLISH = st.one_of(st.text(max_size=60), st.sampled_from(ATTACKS),
                   st.builds(lambda t, w: f"SELECT * FROM {t} WHERE {w}", st.sampled_from(TABLES + ["system.one", "x"]),
                             st.text(max_size=20)))


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=st.one_of(JSON, st.fixed_dictionaries({"sql": SQLISH}, optional={"parameters": JSON})))
def test_fuzz_sql_never_5xx_always_json(fed, body):
    _, _, client = fed
    code, content_type, data = raw(client, "POST", "/sql", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert code < 500 and content_type.startswith("application/json"), (body, code, data[:300])
    json.loads(data)


@hsettings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(params=st.dictionaries(st.sampled_from(["lot", "serial", "node", "station", "since_ms", "until_ms", "operator"]),
                              st.text(max_size=30), max_size=4))
def test_fuzz_recall_never_5xx_always_json(fed, params):
    _, _, client = fed
    response = client.http.request("GET", f"{client.base_url}/recall", fields=params, headers=client.headers)
    assert response.status < 500, (params, response.status, response.data[:300])
    json.loads(response.data)


def test_a_large_capture_body_is_read_whole(fed):
    """The body cap reads the whole body: a document after 1 MB of blank lines is still found (last in
    the module: what it captures goes through the pipeline)."""
    _, _, client = fed
    code, content_type, data = raw(client, "POST", "/capture", b"\n" * 1_000_000 + b"{}", {"Content-Type": "application/json"})
    assert code == 202 and content_type.startswith("application/json"), (code, data[:300])
