"""The query service facing a network, on the real embedded stack: tokens and roles, Host and
Origin checks, the refusal to bind beyond loopback without auth, and the input limits of
capture and ingest. Every attack must leave the store's row counts as they were."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import urllib3

from genealogy import auth
from genealogy.client import ServiceClient
from tests.support.stack import cli, free_port, start_stack, wait_drained

pytestmark = pytest.mark.integration

ROUTES = [("GET", "/status"), ("GET", "/recall?lot=X"), ("GET", "/trace?serial=X"), ("GET", "/linkage"),
          ("GET", "/granularity"), ("POST", "/sql"), ("POST", "/capture"), ("POST", "/events"),
          ("POST", "/reprocess"), ("GET", "/no-such-route")]
SQL = {"sql": "SELECT 1"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # Bodies far over the ingest caps must reach the capture path here, to show what happens to them
    # there: a deployment may raise the request cap (GENEALOGY_CAPTURE_MAX_BODY_BYTES). With the
    # default cap they are answered 413 before that (tests/integration/test_security_sql.py).
    stack = start_stack(tmp_path_factory.mktemp("security"), capture_max_body_bytes=128 * 1024 * 1024)
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def admin(stack):
    return ServiceClient.for_settings(stack.settings)


def token(stack, role: str) -> str:
    result = cli(stack, "token", "create", "--role", role, "--label", f"test {role}", "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["token"]


def raw(stack, method, path, body=b"{}", **headers):
    http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=2, read=120))
    response = http.request(method, f"{stack.settings.service_url}{path}", body=body if method == "POST" else None,
                            headers={"Content-Type": "application/json", **headers})
    return response.status, json.loads(response.data), response.headers


def drained_counts(stack, admin) -> dict:
    return wait_drained(admin, settle_s=3.0, timeout=240)["counts"]


def test_no_token_is_401_json_everywhere_but_health(stack):
    for method, path in ROUTES:
        status, body, headers = raw(stack, method, path)
        assert status == 401 and "error" in body, (method, path, status, body)
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = raw(stack, "GET", "/health")
    assert status == 200 and body["ok"] is True and set(body) == {"ok", "sink_assigned", "instance", "join_state"}
    assert raw(stack, "GET", "/status", Authorization="Bearer gen_not-a-token")[0] == 401


def test_reader_reads_and_changes_nothing(stack, admin):
    before = drained_counts(stack, admin)
    bearer = {"Authorization": f"Bearer {token(stack, 'reader')}"}
    assert raw(stack, "GET", "/status", **bearer)[0] == 200
    assert raw(stack, "GET", "/linkage", **bearer)[0] == 200
    for path, body in (("/sql", json.dumps(SQL).encode()), ("/capture", b"{}"), ("/events", b"{}"), ("/reprocess", b"{}")):
        status, answer, _ = raw(stack, "POST", path, body, **bearer)
        assert status == 403 and "reader" in answer["error"], (path, status, answer)
    assert drained_counts(stack, admin) == before


def test_capture_captures_but_does_not_read(stack, admin):
    bearer = {"Authorization": f"Bearer {token(stack, 'capture')}"}
    status, body, _ = raw(stack, "POST", "/capture", b'{"type": "ObjectEvent"}', **bearer)
    assert status in (202, 400), body  # accepted for mapping (the event is a reject): not refused
    for method, path in (("GET", "/recall?lot=X"), ("GET", "/status"), ("POST", "/sql"), ("POST", "/reprocess")):
        status, body, _ = raw(stack, method, path, json.dumps(SQL).encode(), **bearer)
        assert status == 403, (method, path, status, body)


def test_admin_may_do_everything(stack, admin):
    assert admin.post("/sql", SQL)[0] == 200
    assert admin.get("/status")[0] == 200
    assert admin.post("/reprocess", {})[0] == 200


def test_wrong_host_is_refused(stack, admin):
    before = drained_counts(stack, admin)
    bearer = {"Authorization": f"Bearer {auth.read_admin_token(stack.settings)}"}
    for method, path in (("GET", "/status"), ("POST", "/sql"), ("POST", "/reprocess")):
        status, body, _ = raw(stack, method, path, json.dumps(SQL).encode(), Host=f"rebound.evil.example:{stack.settings.http_port}", **bearer)
        assert status == 403 and "Host" in body["error"], (path, body)
    assert drained_counts(stack, admin) == before


def test_cross_origin_post_is_refused(stack, admin):
    before = drained_counts(stack, admin)
    bearer = {"Authorization": f"Bearer {auth.read_admin_token(stack.settings)}"}
    for path in ("/sql", "/capture", "/reprocess"):
        status, body, _ = raw(stack, "POST", path, json.dumps(SQL).encode(), Origin="http://evil.example", **bearer)
        assert status == 403 and "Origin" in body["error"], (path, body)
    same = f"http://127.0.0.1:{stack.settings.http_port}"
    assert raw(stack, "POST", "/sql", json.dumps(SQL).encode(), Origin=same, **bearer)[0] == 200
    assert drained_counts(stack, admin) == before


def test_errors_are_json(stack, admin):
    bearer = {"Authorization": f"Bearer {auth.read_admin_token(stack.settings)}"}
    status, body, _ = raw(stack, "POST", "/sql", b"{not json", **bearer)
    assert status == 400 and "error" in body
    status, body, _ = raw(stack, "GET", "/no-such-route", **bearer)
    assert status == 404 and "error" in body


def test_tokens_file_holds_no_token(stack):
    created = token(stack, "reader")
    text = stack.settings.tokens_path.read_text()
    assert created not in text and auth.read_admin_token(stack.settings) not in text
    assert auth.hash_token(created) in text
    assert oct(stack.settings.tokens_path.stat().st_mode & 0o777) == "0o600"
    assert oct(auth.admin_token_path(stack.settings).stat().st_mode & 0o777) == "0o600"
    listed = cli(stack, "token", "list", "--json")
    assert listed.returncode == 0 and created not in listed.stdout


def test_revoked_token_is_refused_at_once(stack):
    result = json.loads(cli(stack, "token", "create", "--role", "reader", "--json").stdout)
    bearer = {"Authorization": f"Bearer {result['token']}"}
    assert raw(stack, "GET", "/status", **bearer)[0] == 200
    assert cli(stack, "token", "revoke", result["id"]).returncode == 0
    assert raw(stack, "GET", "/status", **bearer)[0] == 401


@pytest.mark.parametrize("mode", ["tokens", "off"])
def test_non_loopback_bind_without_auth_is_refused(tmp_path, mode):
    env = {**os.environ, "GENEALOGY_DATA_DIR": str(tmp_path), "GENEALOGY_HTTP_HOST": "0.0.0.0",
           "GENEALOGY_HTTP_PORT": str(free_port()), "GENEALOGY_AUTH": mode}
    result = subprocess.run([sys.executable, "-m", "genealogy.cli", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "refusing to listen on 0.0.0.0" in result.stderr and "Traceback" not in result.stderr


# --- input limits: what is too big becomes a small dead letter and never blocks what follows ------

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures")
TRANSFORMATION = os.path.join(FIXTURES, "epcis", "transformation_dl.jsonld")


def capture_fixture(admin) -> None:
    with open(TRANSFORMATION, "rb") as f:
        code, body = admin.post_bytes("/capture", f.read(), "application/ld+json")
    assert code == 202 and body["accepted"]["events"] > 0, body


def edge_ids(admin) -> int:
    code, body = admin.post("/sql", {"sql": "SELECT uniqExact(edge_id) FROM edges"})
    assert code == 200, body
    return body["rows"][0][0]


def big_dead_letters(admin, marker: str) -> list:
    code, body = admin.post("/sql", {"sql": "SELECT length(payload), reason FROM dead_letters_final WHERE reason LIKE {m:String}",
                                     "parameters": {"m": f"%{marker}%"}})
    assert code == 200, body
    return body["rows"]


def test_a_50_mb_capture_does_not_block_later_captures(stack, admin):
    """On the old code the 50 MB body became a dead letter the producer refuses (MSG_SIZE_TOO_LARGE)
    at the head of the service's spool: every later capture was answered 202 and never landed."""
    before = drained_counts(stack, admin)
    edges_before = edge_ids(admin)
    body = json.dumps({"type": "ObjectEvent", "eventID": "urn:uuid:huge", "note": "x" * (50 * 1024 * 1024)}).encode()
    code, answer = admin.post_bytes("/capture", body)
    assert code == 202 and answer["rejects"] and "over the limit" in answer["rejects"][0]["reason"], answer
    after_attack = drained_counts(stack, admin)
    # The attack adds its one dead letter and nothing else.
    assert {k: v for k, v in after_attack.items() if k != "dead_letters"} == {k: v for k, v in before.items() if k != "dead_letters"}
    assert after_attack["dead_letters"] == before["dead_letters"] + 1
    [(size, reason)] = big_dead_letters(admin, "52,428,8")
    assert size <= stack.settings.dead_letter_max_payload_bytes and "sha256" in reason and "full payload in" in reason
    kept = reason.rsplit("full payload in ", 1)[1].rstrip("]").strip()
    assert os.path.getsize(kept) == len(body)
    # A capture after it lands.
    capture_fixture(admin)
    drained_counts(stack, admin)
    assert edge_ids(admin) > edges_before
    spool = admin.get("/status")[1]["capture_spool"]
    assert spool["rows"] == 0 and spool["quarantined"] == 0, spool


def test_a_50_mb_pretty_printed_document_is_one_dead_letter_kept_whole(stack, admin):
    """Over the document cap (16 MiB) in lines under the line cap: one dead letter, not thousands."""
    before = drained_counts(stack, admin)
    lines = ",\n".join(f'  "{n:08d}{"p" * 1000}"' for n in range(50_000))
    body = ('{\n "type": "EPCISDocument",\n "padding": [\n' + lines + '\n ]\n}\n').encode()
    code, answer = admin.post_bytes("/capture", body)
    assert code == 202 and len(answer["rejects"]) == 1 and "document of" in answer["rejects"][0]["reason"], answer
    after = drained_counts(stack, admin)
    assert after["dead_letters"] == before["dead_letters"] + 1
    assert {k: v for k, v in after.items() if k != "dead_letters"} == {k: v for k, v in before.items() if k != "dead_letters"}
    [(size, reason)] = big_dead_letters(admin, "MAX_DOCUMENT_BYTES")
    kept = reason.rsplit("full payload in ", 1)[1].rstrip("]").strip()
    assert size <= stack.settings.dead_letter_max_payload_bytes and os.path.getsize(kept) == len(body.rstrip(b"\n"))


def test_a_5_mb_one_line_ingest_file_does_not_block_later_ingests(stack, admin, tmp_path):
    """On the old code `genealogy ingest` of a 5 MB line spooled a dead letter too big for Kafka
    and stopped there: every later ingest on the data directory stayed in the spool."""
    before = drained_counts(stack, admin)
    big = tmp_path / "one-line.jsonl"
    big.write_bytes(b'{"type": "ObjectEvent", "blob": "' + b"y" * (5 * 1024 * 1024) + b'"}\n')
    first = cli(stack, "ingest", "--format", "epcis", str(big), "--json", "--timeout", "60")
    assert first.returncode == 1, first.stderr  # a reject
    summary = json.loads(first.stdout)
    assert summary["rejects"] == 1 and summary["remaining_in_spool"] == 0, summary
    after_attack = drained_counts(stack, admin)
    assert after_attack["dead_letters"] == before["dead_letters"] + 1
    assert {k: v for k, v in after_attack.items() if k != "dead_letters"} == {k: v for k, v in before.items() if k != "dead_letters"}
    [(size, reason)] = big_dead_letters(admin, "one-line.jsonl:1")
    assert size <= stack.settings.dead_letter_max_payload_bytes and "full payload in" in reason
    second = cli(stack, "ingest", "--format", "epcis", TRANSFORMATION, "--json")
    assert second.returncode == 0 and json.loads(second.stdout)["remaining_in_spool"] == 0, second.stderr


def test_a_message_the_broker_refuses_is_quarantined_and_the_rows_behind_it_go(stack, admin, tmp_path):
    """A real refusal, not a fake: a spool row over librdkafka's message.max.bytes (1 MB)."""
    from genealogy.producers.spool import Forwarder, Spool

    topic = "genealogy.quarantine-test"
    settings = stack.settings.model_copy(update={"topic_capture": topic, "topic_dead_letters": topic + ".dl",
                                                 "bootstrap_servers": stack.settings.kafka_bootstrap})
    from genealogy import kafka

    kafka.ensure_topics(settings)
    with Spool(tmp_path / "spool.db", default_topic=topic) as spool:
        spool.append(b"k", b"z" * 2_000_000)
        spool.append(b"k", b"small")
        forwarder = Forwarder(settings, spool, backoff_s=(0.05, 0.1))
        assert forwarder.forward_all(timeout=30) == 0
        forwarder.close()
        backlog = forwarder.backlog()
        assert backlog["rows"] == 0 and backlog["quarantined"] == 1 and forwarder.delivered == 1, backlog
        [moved] = spool.quarantined()
        assert moved["id"] == 1 and "MSG_SIZE_TOO_LARGE" in moved["reason"] and moved["bytes"] == 2_000_000


def test_ingest_memory_stays_bounded(stack, admin, tmp_path):
    """`genealogy ingest` of a 200 MB file (valid EPCIS lines, and three lines of 20 MB over the 16 MiB
    line cap). The old code held the whole file's mapped result (4.3 GB RSS for 1 GB); streamed, the
    peak is the interpreter and its libraries (~100 MB), one chunk of 5,000 values, librdkafka's
    capped queue (64 MB) and one line: bounded by the caps, not by the file. 200 MB keeps the test fast;
    the bound (250 MB) is well under what holding the file would take (> 600 MB here).
    The file goes to topics of its own on the stack's broker, so the store is not touched."""
    from genealogy import kafka

    before = drained_counts(stack, admin)
    path = tmp_path / "big.jsonl"
    children = ", ".join(f'"urn:epc:id:sgtin:4012345.033333.C{n:05d}"' for n in range(20))
    with open(path, "w") as f:
        n = 0
        while f.tell() < 200 * 1024 * 1024:
            n += 1
            f.write(f'{{"type": "AggregationEvent", "eventID": "urn:uuid:rss-{n}", "eventTime": "2026-03-02T09:40:00.000+01:00", '
                    f'"eventTimeZoneOffset": "+01:00", "action": "ADD", "parentID": "urn:epc:id:sscc:4012345.{n:010d}", '
                    f'"childEPCs": [{children}], "bizStep": "packing", "readPoint": {{"id": "urn:epc:id:sgln:4012345.00002.0"}}}}\n')
            if n % 40_000 == 0:
                f.write('{"type": "ObjectEvent", "blob": "' + "w" * (20 * 1024 * 1024) + '"}\n')
    size = path.stat().st_size
    env = {**os.environ, "GENEALOGY_DATA_DIR": str(tmp_path / "edge"), "GENEALOGY_BOOTSTRAP_SERVERS": stack.settings.kafka_bootstrap,
           "GENEALOGY_TOPIC_CAPTURE": "rss.capture", "GENEALOGY_TOPIC_DEAD_LETTERS": "rss.dead-letters",
           "GENEALOGY_TOPIC_EDGES": "rss.edges", "GENEALOGY_TOPIC_EPCIS": "rss.epcis"}
    kafka.ensure_topics(stack.settings.model_copy(update={"topic_capture": "rss.capture", "topic_dead_letters": "rss.dead-letters",
                                                          "topic_edges": "rss.edges", "topic_epcis": "rss.epcis",
                                                          "bootstrap_servers": stack.settings.kafka_bootstrap}))
    # VmHWM (peak RSS) of the ingest process itself, read from /proc/<pid>/status as it exits.
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: sys.stderr.write('\\nVMHWM ' + [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]))\n"
             "from genealogy.cli import main\n"
             f"sys.argv = ['genealogy', 'ingest', '--format', 'epcis', {str(path)!r}, '--json', '--timeout', '300']\n"
             "main()\n")
    result = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=900)
    hwm_kb = int(result.stderr.rsplit("VMHWM", 1)[1].split()[1])
    summary = json.loads(result.stdout)
    print(f"ingest of {size / 2**20:.0f} MB: VmHWM {hwm_kb / 1024:.0f} MB; {summary['files'][0]}")
    assert summary["remaining_in_spool"] == 0 and summary["files"][0]["events"] >= 100_000, summary
    assert summary["rejects"] == size // (40_000 * 1_500) or summary["rejects"] >= 3, summary
    assert hwm_kb < 250 * 1024, f"ingest peak RSS {hwm_kb / 1024:.0f} MB for a {size / 2**20:.0f} MB file"
    assert drained_counts(stack, admin) == before
