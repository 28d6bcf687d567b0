"""EPCIS 2.0 named queries and webhook subscriptions on the real stack, with a real receiver.

A local aiohttp server on 127.0.0.1 stands in for the subscriber: it checks every POST's GS1-Signature and
keeps the documents. A stream subscription must deliver exactly the captured events the brute-force
filter of tests/integration/test_epcis_query.py selects (events captured before it subscribed are not
"new"), across a kill -9 of the service with events captured while it was down, and through a receiver
that fails its first answers.
"""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from datetime import datetime, timezone

import pytest
from aiohttp import web

from genealogy import auth
from genealogy.client import ServiceClient
from genealogy.epcis_subscriptions.rules import SIGNATURE_HEADER, verify_signature
from genealogy.producers.ingest import ingest_path, publish_ingest
from genealogy.producers.spool import Spool
from tests.integration.test_epcis_query import brute, canonical, generated_events
from tests.support.stack import free_port, start_stack, until

pytestmark = pytest.mark.integration

TOKEN = "subscriber-secret-13df38d8275b"
QUERY = {"eventType": ["ObjectEvent", "AggregationEvent", "TransactionEvent"], "EQ_bizStep": ["shipping", "receiving"]}
FILTER = {"eventType": "ObjectEvent,AggregationEvent,TransactionEvent", "EQ_bizStep": "shipping,receiving"}


class Receiver:
    """A webhook receiver on its own loop and thread: keeps each POST's body, answers 500 to the first ``fail`` ones."""

    def __init__(self, fail: int = 0):
        self.port, self.fail = free_port(), fail
        self.posts: list[tuple[bytes, dict]] = []   # of /hook/plant (the stream subscription)
        self.scheduled: list[bytes] = []             # of /hook/scheduled
        self.refused = 0
        self.lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    async def hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        with self.lock:
            if self.refused < self.fail:
                self.refused += 1
                return web.Response(status=500)
            if request.match_info["name"] == "scheduled":
                self.scheduled.append(body)
            else:
                self.posts.append((body, dict(request.headers)))
        return web.Response(status=204)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        app = web.Application()
        app.router.add_post("/hook/{name}", self.hook)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> "Receiver":
        self.thread.start()
        self.ready.wait(10)
        return self

    def __exit__(self, *exc) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def open_socket(self, url: str, headers: dict) -> None:
        """A WebSocket subscription from the receiver's loop; its documents go to ``self.socket``."""
        self.socket: list[dict] = []
        self.socket_closed = threading.Event()

        async def listen():
            import aiohttp
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url, headers=headers) as ws:
                    self.socket_open = True
                    async for message in ws:
                        with self.lock:
                            self.socket.append(json.loads(message.data))
            self.socket_closed.set()

        self.socket_open = False
        asyncio.run_coroutine_threadsafe(listen(), self.loop)

    def socket_events(self) -> list[dict]:
        with self.lock:
            docs = list(self.socket)
        return [e for d in docs for e in d["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]

    def events(self, scheduled: bool = False) -> list[dict]:
        with self.lock:
            bodies = list(self.scheduled) if scheduled else [body for body, _ in self.posts]
        return [e for body in bodies for e in json.loads(body)["epcisBody"]["queryResults"]["resultsBody"]["eventList"]]


def document(events: list[dict]) -> bytes:
    return json.dumps({"@context": ["https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"],
                       "type": "EPCISDocument", "schemaVersion": "2.0",
                       "creationDate": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
                       "epcisBody": {"eventList": events}}).encode()


def capture(client: ServiceClient, events: list[dict]) -> None:
    code, body = client.post_bytes("/capture", document(events), "application/ld+json")
    assert code == 202, body


def expected(events: list[dict]) -> set[str]:
    by_id = {str(i): {**e, "_id": str(i)} for i, e in enumerate(events)}
    return {canonical(by_id[i]) for i in brute(by_id, FILTER)}


def request(client: ServiceClient, method: str, path: str, body=None, token: str | None = None):
    headers = {"Authorization": f"Bearer {token}"} if token else dict(client.headers)
    if body is not None:
        headers["Content-Type"] = "application/json"
    response = client.http.request(method, f"{client.base_url}{path}", headers=headers,
                                   body=None if body is None else json.dumps(body).encode())
    data = json.loads(response.data) if response.data else None
    return response, data


def is_problem(response, data, status: int, kind: str) -> bool:
    return (response.status == status and response.headers["Content-Type"].startswith("application/problem+json")
            and data["type"] == f"epcisException:{kind}" and data["status"] == status and data["title"])


def test_a_stream_subscription_delivers_every_new_matching_event_once_across_a_service_kill(tmp_path):
    events = generated_events()
    before, first, while_down, after = events[:8], events[8:30], events[30:48], events[48:]
    with Receiver(fail=2) as receiver:
        dest = f"http://127.0.0.1:{receiver.port}/hook/plant"
        stack = start_stack(tmp_path, epcis_webhook_allow=f"http://127.0.0.1:{receiver.port}/hook/",
                            epcis_subscription_poll_s=0.2, epcis_subscription_settle_ms=300)
        try:
            client = ServiceClient.for_settings(stack.settings)
            capture(client, before)   # captured before the subscription: not new to it
            response, body = request(client, "POST", "/queries", {"name": "shipped", "query": QUERY})
            assert response.status == 201 and response.headers["Location"] == "/queries/shipped", body
            response, sub = request(client, "POST", "/queries/shipped/subscriptions",
                                    {"dest": dest, "signatureToken": TOKEN, "stream": True})
            assert response.status == 201, sub
            assert response.headers["Location"] == f"/queries/shipped/subscriptions/{sub['subscriptionID']}"
            assert "signatureToken" not in sub and sub["stream"] is True
            # A scheduled subscription of the same query, every other second, reporting empty runs too.
            response, scheduled = request(client, "POST", "/queries/shipped/subscriptions",
                                          {"dest": f"http://127.0.0.1:{receiver.port}/hook/scheduled",
                                           "schedule": {"second": "0/2"}, "reportIfEmpty": True})
            assert response.status == 201 and scheduled["schedule"] == {"second": "0/2"}, scheduled
            until(lambda: receiver.scheduled, 30, "an empty scheduled report")
            assert receiver.events(scheduled=True) == []

            ws_url = client.base_url.replace("http://", "ws://") + "/queries/shipped/events?stream=true"
            receiver.open_socket(ws_url, client.headers)
            until(lambda: receiver.socket_open, 30, "the WebSocket subscription")

            capture(client, first)
            want = expected(first)
            assert want and len(want) < len(first)
            until(lambda: {canonical(e) for e in receiver.events()} >= want, 60, "the first events at the receiver")
            assert receiver.refused == 2   # the first two POSTs failed and were retried
            # The receiver has them; once the subscription's cursor is past them too, a kill must not send them again.
            until(lambda: request(client, "GET", f"/queries/shipped/subscriptions/{sub['subscriptionID']}")[1]
                  ["eventsDelivered"] >= len(want), 30, "the cursor past the first events")

            # The WebSocket subscription, open during these captures, got the same events, once each.
            until(lambda: {canonical(e) for e in receiver.socket_events()} >= want, 30, "the events on the WebSocket")
            assert sorted(canonical(e) for e in receiver.socket_events()) == sorted(want)

            # kill -9 the service; capture while it is down (the ingest path's spool -> Kafka); start it again.
            stack.kill("service", signal.SIGKILL)
            generated = tmp_path / "while-down.jsonl"
            generated.write_text("".join(json.dumps(e) + "\n" for e in while_down))
            with Spool(tmp_path / "edge.db", default_topic=stack.settings.topic_capture) as spool:
                assert publish_ingest(stack.settings, ingest_path(generated, "epcis"), spool, timeout=60).remaining == 0
            stack.restart("service")
            until(client.healthy, 60, "the restarted service")
            capture(client, after)

            want = expected(first + while_down + after)
            until(lambda: {canonical(e) for e in receiver.events()} >= want, 90, "every matching event at the receiver")
            got = [canonical(e) for e in receiver.events()]
            assert set(got) == want   # nothing captured before it subscribed, nothing that does not match
            until(lambda: {canonical(e) for e in receiver.events(scheduled=True)} >= want, 60, "the scheduled reports")
            assert {canonical(e) for e in receiver.events(scheduled=True)} == want
            # The kill came with nothing in flight and the cursor persisted: not one event twice.
            assert len(got) == len(set(got))
            for body, headers in receiver.posts:
                assert verify_signature(TOKEN, body, headers.get(SIGNATURE_HEADER)), headers
                results = json.loads(body)["epcisBody"]["queryResults"]
                assert results["queryName"] == "shipped" and results["subscriptionID"] == sub["subscriptionID"]

            response, state = request(client, "GET", f"/queries/shipped/subscriptions/{sub['subscriptionID']}")
            assert response.status == 200 and state["eventsDelivered"] >= len(want) and state["lastNotifiedAt"]

            # The named query's own answer, paged, is GET /events' answer for its parameters over everything captured.
            url, pages = f"{client.base_url}/queries/shipped/events?perPage=4", []
            while url:
                r = client.http.request("GET", url, headers=client.headers)
                assert r.status == 200, r.data
                pages += json.loads(r.data)["epcisBody"]["queryResults"]["resultsBody"]["eventList"]
                link = r.headers.get("Link")
                url = link[1:link.index(">")] if link else None
            assert sorted(canonical(e) for e in pages) == sorted(expected(events))

            # A new WebSocket on the restarted service; deleting the query closes it.
            receiver.open_socket(ws_url, client.headers)
            until(lambda: receiver.socket_open, 30, "the second WebSocket subscription")
            response, _ = request(client, "DELETE", "/queries/shipped")
            assert response.status == 204
            assert receiver.socket_closed.wait(30)
            response, data = request(client, "GET", f"/queries/shipped/subscriptions/{sub['subscriptionID']}")
            assert is_problem(response, data, 404, "NoSuchResourceException")
        finally:
            stack.stop()


def test_queries_and_subscriptions_refuse_what_they_must(tmp_path):
    """Validation, limits and roles, as RFC 7807 problems; and definitions survive a restart."""
    stack = start_stack(tmp_path, epcis_webhook_allow="https://erp.example.com/epcis/", epcis_max_named_queries=2)
    try:
        client = ServiceClient.for_settings(stack.settings)
        tokens = auth.TokenStore.for_settings(stack.settings)
        reader, _ = tokens.create("reader", "test reader")
        other, _ = tokens.create("reader", "another reader")
        gateway, _ = tokens.create("capture", "test gateway")

        for body, kind in [({"name": "bad name!", "query": {"eventType": ["ObjectEvent"]}}, "ValidationException"),
                           ({"name": "x" * 129, "query": {"eventType": ["ObjectEvent"]}}, "ValidationException"),
                           ({"name": "q", "query": {"EQ_color": ["red"]}}, "QueryParameterException"),
                           ({"name": "q", "query": {"eventType": ["CustomEvent"]}}, "QueryParameterException"),
                           ({"name": "q", "query": {"perPage": "5"}}, "QueryParameterException"),
                           ({"name": "q", "query": {}}, "QueryParameterException"),
                           ({"name": "q"}, "QueryParameterException"), ([1, 2], "ValidationException")]:
            response, data = request(client, "POST", "/queries", body)
            assert is_problem(response, data, 400, kind), (body, data)
        response, data = request(client, "POST", "/queries", {"name": "q", "query": {"eventType": ["x" * 70000]}})
        assert is_problem(response, data, 413, "QueryTooComplexException")
        r = client.http.request("POST", f"{client.base_url}/queries", body=b"name=q",
                                headers={**client.headers, "Content-Type": "application/x-www-form-urlencoded"})
        assert r.status == 415 and json.loads(r.data)["type"] == "epcisException:UnsupportedMediaTypeException"

        # A capture token cannot read, so it cannot make a query either; a reader can.
        response, _ = request(client, "POST", "/queries", {"name": "mine", "query": {"eventType": ["ObjectEvent"]}},
                              token=gateway)
        assert response.status == 403
        response, _ = request(client, "POST", "/queries", {"name": "mine", "query": {"eventType": ["ObjectEvent"]}},
                              token=reader)
        assert response.status == 201
        response, data = request(client, "POST", "/queries", {"name": "mine", "query": {"eventType": ["ObjectEvent"]}})
        assert is_problem(response, data, 409, "ResourceAlreadyExistsException")
        request(client, "POST", "/queries", {"name": "second", "query": {"EQ_action": ["ADD"]}})
        response, data = request(client, "POST", "/queries", {"name": "third", "query": {"EQ_action": ["ADD"]}})
        assert is_problem(response, data, 409, "QueryTooComplexException")   # GENEALOGY_EPCIS_MAX_NAMED_QUERIES

        for body in [{"dest": "https://evil.example.net/x", "stream": True},           # not allow-listed
                     {"dest": "https://erp.example.com/other", "stream": True},        # allowed host, other path
                     {"dest": "http://erp.example.com/epcis/in", "stream": True},      # other scheme (and port)
                     {"dest": "https://u:p@erp.example.com/epcis/in", "stream": True},
                     {"dest": "https://erp.example.com/epcis/in"},                     # neither stream nor schedule
                     {"dest": "https://erp.example.com/epcis/in", "stream": True, "schedule": {"minute": "5"}},
                     {"dest": "https://erp.example.com/epcis/in", "schedule": {"minute": "61"}},
                     {"dest": "https://erp.example.com/epcis/in", "schedule": {"dayOfMonth": "30", "month": "2"}},
                     {"dest": "https://erp.example.com/epcis/in", "stream": True, "initialRecordTime": "yesterday"},
                     {"dest": "https://erp.example.com/epcis/in", "stream": True, "colour": "red"}]:
            response, data = request(client, "POST", "/queries/mine/subscriptions", body, token=reader)
            assert is_problem(response, data, 400, "SubscriptionControlsException"), (body, data)
        response, data = request(client, "POST", "/queries/nope/subscriptions",
                                 {"dest": "https://erp.example.com/epcis/in", "stream": True})
        assert is_problem(response, data, 404, "NoSuchResourceException")
        response, sub = request(client, "POST", "/queries/mine/subscriptions",
                                {"dest": "https://erp.example.com/epcis/in", "signatureToken": TOKEN,
                                 "schedule": {"hour": "1", "minute": "5"}, "reportIfEmpty": True}, token=reader)
        assert response.status == 201 and sub["nextRunAt"].endswith("T01:05:00.000Z"), sub

        # Only who made it (or an admin) deletes it.
        response, data = request(client, "DELETE", f"/queries/mine/subscriptions/{sub['subscriptionID']}", token=other)
        assert is_problem(response, data, 403, "SecurityException")
        response, data = request(client, "DELETE", "/queries/mine", token=other)
        assert is_problem(response, data, 403, "SecurityException")
        response, _ = request(client, "DELETE", "/queries/second", token=reader)   # the admin's query
        assert response.status == 403
        # No path trick turns a reader's POST into an admin route.
        response, _ = request(client, "POST", "/queries/../sql", {"sql": "SELECT 1"}, token=reader)
        assert response.status in (403, 404)
        response, data = request(client, "GET", "/queries/mine/events?eventType=ObjectEvent")
        assert is_problem(response, data, 400, "QueryParameterException")
        assert request(client, "GET", "/queries/nope/events")[0].status == 404
        upgrade = {**client.headers, "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                   "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
        for query in ("stream=maybe", "", "stream=true&EQ_bizStep=shipping", "minute=99"):
            r = client.http.request("GET", f"{client.base_url}/queries/mine/events?{query}", headers=upgrade)
            assert r.status == 400 and json.loads(r.data)["type"] == "epcisException:SubscriptionControlsException", query

        # Definitions and subscriptions survive a restart of the service.
        stack.kill("service", signal.SIGTERM)
        stack.restart("service")
        until(client.healthy, 60, "the restarted service")
        response, listed = request(client, "GET", "/queries")
        assert response.status == 200 and [q["name"] for q in listed] == ["mine", "second"]
        assert listed[0]["query"] == {"eventType": ["ObjectEvent"]}
        response, subs = request(client, "GET", "/queries/mine/subscriptions")
        assert [s["subscriptionID"] for s in subs] == [sub["subscriptionID"]] and "signatureToken" not in subs[0]
        response, _ = request(client, "DELETE", f"/queries/mine/subscriptions/{sub['subscriptionID']}", token=reader)
        assert response.status == 204
        assert request(client, "GET", f"/queries/mine/subscriptions/{sub['subscriptionID']}")[0].status == 404
        assert request(client, "DELETE", "/queries/second")[0].status == 204   # an admin may
    finally:
        stack.stop()
