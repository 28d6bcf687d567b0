"""The EPCIS query interface's limits, enforced by ClickHouse on sessions of its own (sinks.epcis_query).

The service runs in this process (no broker, no sink thread) on a real embedded ClickHouse; events are
written straight into ``epcis_events``. A query over a cap answers the standard's 413 problem
(QueryTooLargeException / QueryTooComplexException), never a traceback, and the shared session the sink
writes with keeps its settings and goes on writing. Before these sessions the query ran on the shared
session without any cap: every query here answered 200.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp.test_utils import TestClient, TestServer

from genealogy.service import Service, make_app
from genealogy.settings import Settings
from genealogy.sinks import epcis_store

EVENTS = 40


def event(i: int) -> dict:
    return {"type": "ObjectEvent", "eventTime": f"2026-03-01T08:{i // 60:02d}:{i % 60:02d}Z", "eventTimeZoneOffset": "+00:00",
            "recordTime": f"2026-03-02T08:{i // 60:02d}:{i % 60:02d}Z", "action": "OBSERVE",
            "epcList": [f"urn:epc:id:sgtin:4012345.012345.{i}"], "bizStep": "shipping"}


def write_events(service: Service, n: int, start: int = 0) -> None:
    rows = [epcis_store.row(f"urn:uuid:00000000-0000-4000-8000-{i:012d}".encode(), json.dumps(event(i)).encode())
            for i in range(start, start + n)]
    service.connection.insert("epcis_events", rows, epcis_store.COLUMNS)


@pytest.fixture
def make_service(tmp_path):
    made = []

    def make(**limits) -> Service:
        settings = Settings(data_dir=tmp_path / "data", auth="off", bootstrap_servers="127.0.0.1:1", **limits)
        service = Service(settings, with_sink=False)
        made.append(service)
        write_events(service, EVENTS)
        return service

    yield make
    for service in made:
        service.shutdown()


def get(service: Service, *paths: str) -> list[tuple[int, str, dict]]:
    async def run():
        async with TestClient(TestServer(make_app(service))) as client:
            out = []
            for path in paths:
                response = await client.get(path)
                out.append((response.status, response.headers.get("Content-Type", ""), json.loads(await response.text())))
            return out
    return asyncio.run(run())


def assert_problem(answer, status: int, kind: str) -> dict:
    code, content_type, body = answer
    assert code == status and content_type.startswith("application/problem+json"), answer
    assert body["type"] == f"epcisException:{kind}" and body["status"] == status and body["detail"], body
    assert "Traceback" not in json.dumps(body)
    return body


def the_sink_still_writes(service: Service) -> None:
    """The shared session (sink, recall, reprocess): not readonly, uncapped, and it writes."""
    assert service.connection.rows("SELECT getSetting('readonly'), getSetting('max_result_rows')") == [(0, 0)]
    write_events(service, 1, start=EVENTS)
    assert service.connection.rows("SELECT count() FROM epcis_events FINAL") == [(EVENTS + 1,)]


def test_a_result_over_the_cap_is_query_too_large(make_service):
    service = make_service(epcis_max_result_rows=10)
    small, large = get(service, "/events?perPage=5", "/events?perPage=30")
    assert small[0] == 200 and len(small[2]["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == 5
    assert "max rows" in assert_problem(large, 413, "QueryTooLargeException")["detail"]
    the_sink_still_writes(service)


def test_reading_over_the_cap_is_query_too_complex(make_service):
    service = make_service(epcis_max_rows_to_read=5)
    [answer] = get(service, "/events?perPage=5")
    assert_problem(answer, 413, "QueryTooComplexException")
    the_sink_still_writes(service)


def test_the_session_holds_its_caps_and_cannot_raise_them(make_service):
    service = make_service(epcis_max_execution_s=3, epcis_max_memory_bytes=256 << 20, epcis_max_result_rows=2000)
    seen = service.epcis.settings_in_effect(["max_execution_time", "max_memory_usage", "max_result_rows",
                                             "result_overflow_mode", "timeout_overflow_mode", "readonly"])
    assert seen == {"user": "default", "max_execution_time": "3", "max_memory_usage": str(256 << 20),
                    "max_result_rows": "2000", "result_overflow_mode": "throw", "timeout_overflow_mode": "throw",
                    "readonly": "1"}
    # ClickHouse refuses to change them: readonly=1 forbids SET and per-query SETTINGS.
    for client in service.epcis._pool.clients:
        with pytest.raises(Exception, match="readonly"):
            client.command("SET max_result_rows = 0")
        with pytest.raises(Exception, match="readonly"):
            client.query("SELECT 1", settings={"max_execution_time": 1000})
    the_sink_still_writes(service)


def test_max_event_count_and_event_count_limit(make_service):
    service = make_service()
    over, fits, limited = get(service, f"/events?maxEventCount={EVENTS - 1}", f"/events?maxEventCount={EVENTS}&perPage=1000",
                              "/events?orderBy=eventTime&eventCountLimit=3")
    assert_problem(over, 413, "QueryTooLargeException")
    assert fits[0] == 200 and len(fits[2]["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) == EVENTS
    newest = [e["eventTime"] for e in limited[2]["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]
    assert newest == sorted((event(i)["eventTime"] for i in range(EVENTS)), reverse=True)[:3]


def test_memory_over_the_cap_is_query_too_complex(make_service):
    service = make_service(epcis_max_memory_bytes=64 << 10)
    [answer] = get(service, "/events?perPage=30&EQ_type=Temperature")
    assert "memory" in assert_problem(answer, 413, "QueryTooComplexException")["detail"].lower()
    the_sink_still_writes(service)
