"""Named queries and subscriptions without a stack: names, query objects, destinations (SSRF allow-list),
signatures, schedules (against a brute-force walk over the seconds), the store and its cursor across a
reopen, the roles of the /queries routes, and the subscription SQL derived from GET /events' own."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from genealogy import auth, epcis_api
from genealogy.epcis_subscriptions import rules
from genealogy.epcis_subscriptions.dispatch import Dispatcher
from genealogy.epcis_subscriptions.store import Store
from genealogy.domain import epcis_event
from genealogy.sinks import epcis_feed, epcis_query

ALLOW = ["https://erp.example.com/epcis/", "http://127.0.0.1:8099/hook"]


def problem(fn, *args) -> epcis_api.QueryProblem:
    with pytest.raises(epcis_api.QueryProblem) as info:
        fn(*args)
    return info.value


# --- names and query objects ------------------------------------------------------------------------

def test_names_are_one_plain_path_segment():
    for good in ("myQuery", "a", "q-1.v2_x~", "9" * 128):
        assert rules.check_name(good) == good
    for bad in ("", "x" * 129, "my query", "a/b", "..", ".hidden", "-x", "ü", None, 5, "%2e"):
        assert problem(rules.check_name, bad).kind == "ValidationException", bad


def test_a_query_object_becomes_the_parameters_get_events_takes():
    pairs = rules.query_pairs({"eventType": ["ObjectEvent", "AggregationEvent"], "EQ_bizStep": "shipping",
                              "GE_eventTime": "2026-01-01T00:00:00Z"})
    assert pairs == [("eventType", "ObjectEvent"), ("eventType", "AggregationEvent"), ("EQ_bizStep", "shipping"),
                     ("GE_eventTime", "2026-01-01T00:00:00Z")]
    for bad in (None, [], {}, {"EQ_color": ["red"]}, {"eventType": ["CustomEvent"]}, {"perPage": "5"},
                {"nextPageToken": "x"}, {"eventType": []}, {"eventType": [{"a": 1}]}, {"EQ_action": [True]},
                {"GE_eventTime": "yesterday"}):
        assert problem(rules.query_pairs, bad).kind == "QueryParameterException", bad


# --- destinations ----------------------------------------------------------------------------------

def test_without_an_allow_list_there_are_no_subscriptions():
    p = problem(rules.check_dest, "https://erp.example.com/epcis/in", [])
    assert p.status == 400 and p.kind == "SubscriptionControlsException" and "GENEALOGY_EPCIS_WEBHOOK_ALLOW" in p.detail


def test_a_destination_must_be_under_an_allowed_prefix():
    for good in ("https://erp.example.com/epcis/in", "https://ERP.example.com:443/epcis/", "http://127.0.0.1:8099/hook/x",
                 "http://127.0.0.1:8099/hook"):
        assert rules.check_dest(good, ALLOW) == good
    for bad in ("https://erp.example.com/other", "http://erp.example.com/epcis/in",   # path, scheme (and port)
                "https://erp.example.com:8443/epcis/in", "https://erp.example.com.evil.net/epcis/",
                "https://user:pw@erp.example.com/epcis/in", "https://erp.example.com/epcis/#x",
                "http://127.0.0.1:8098/hook", "http://localhost:8099/hook", "http://[::1]:8099/hook",
                "file:///etc/passwd", "ws://127.0.0.1:8099/hook", "https://erp.example.com:99999/epcis/",
                "https://erp.example.com/epcis/" + "x" * 3000, "", None, 7):
        assert problem(rules.check_dest, bad, ALLOW).kind == "SubscriptionControlsException", bad


# --- the signature ----------------------------------------------------------------------------------

def test_the_signature_is_hmac_sha256_of_the_exact_body():
    body = b'{"type":"EPCISQueryDocument"}'
    expected = "sha256=" + hmac.new(b"13df38d8275b", body, hashlib.sha256).hexdigest()
    assert rules.signature("13df38d8275b", body) == expected
    assert rules.verify_signature("13df38d8275b", body, expected)
    assert not rules.verify_signature("13df38d8275b", body + b" ", expected)
    assert not rules.verify_signature("another", body, expected)
    assert not rules.verify_signature("13df38d8275b", body, None)


# --- subscription bodies ----------------------------------------------------------------------------

def test_a_subscription_is_a_stream_or_a_schedule():
    s = rules.parse_subscription({"dest": "https://erp.example.com/epcis/a", "signatureToken": "t", "stream": True}, ALLOW)
    assert s.stream and s.schedule is None and s.signature_token == "t" and s.initial_record_ms is None
    s = rules.parse_subscription({"dest": "https://erp.example.com/epcis/a", "schedule": {"hour": "1", "minute": "5"},
                                 "reportIfEmpty": True, "initialRecordTime": "2026-01-01T00:00:00Z"}, ALLOW)
    assert not s.stream and s.report_if_empty and s.initial_record_ms == epcis_event.parse_time("2026-01-01T00:00:00Z")
    dest = "https://erp.example.com/epcis/a"
    for bad in ({"dest": dest}, {"dest": dest, "stream": False}, {"dest": dest, "stream": True, "schedule": {"hour": "1"}},
                {"dest": dest, "stream": "yes"}, {"dest": dest, "stream": True, "reportIfEmpty": True},
                {"dest": dest, "stream": True, "signatureToken": "x" * 513}, {"dest": dest, "stream": True, "signatureToken": 5},
                {"dest": dest, "stream": True, "initialRecordTime": "2026-01-01T00:00:00"}, {"stream": True},
                {"dest": dest, "stream": True, "trigger": "x"}, [dest]):
        assert problem(rules.parse_subscription, bad, ALLOW).kind == "SubscriptionControlsException", bad


def test_websocket_controls_come_from_the_query_string():
    body = rules.websocket_controls([("minute", "5"), ("hour", "1"), ("reportIfEmpty", "true")])
    assert body == {"schedule": {"minute": "5", "hour": "1"}, "reportIfEmpty": True}
    s = rules.parse_subscription(rules.websocket_controls([("stream", "true")]), [], webhook=False)
    assert s.stream and s.dest == "" and s.signature_token == ""
    for bad in ([("stream", "yes")], [("stream", "true"), ("stream", "true")], [("EQ_bizStep", "shipping")],
                [("perPage", "5")]):
        assert problem(rules.websocket_controls, bad).kind == "SubscriptionControlsException", bad
    for bad in ({}, {"stream": False}, {"stream": True, "dest": "https://erp.example.com/epcis/a"},
                {"stream": True, "signatureToken": "x"}):
        assert problem(rules.parse_subscription, bad, [], False).kind == "SubscriptionControlsException", bad


# --- schedules --------------------------------------------------------------------------------------

def ms(t: datetime) -> int:
    return int(t.timestamp() * 1000)


def test_schedule_fields_and_their_defaults():
    s = rules.parse_schedule({"hour": "1", "minute": "5"})
    assert s.values["second"] == {0} and s.values["minute"] == {5} and s.values["hour"] == {1}
    assert s.values["dayOfWeek"] == set(range(1, 8))
    t = datetime(2026, 12, 6, 20, 0, tzinfo=timezone.utc)
    assert s.next_after(ms(t)) == ms(datetime(2026, 12, 7, 1, 5, tzinfo=timezone.utc))
    s = rules.parse_schedule({"minute": "0,30"})   # every half hour, on the second 0
    assert s.next_after(ms(t)) == ms(t + timedelta(minutes=30)) and s.values["hour"] == set(range(24))
    s = rules.parse_schedule({"dayOfWeek": "1"})   # Mondays, at midnight
    assert s.next_after(ms(t)) == ms(datetime(2026, 12, 7, tzinfo=timezone.utc))
    assert rules.parse_schedule({"second": "0/30"}).values["second"] == {0, 30}
    assert rules.parse_schedule({"hour": "[8-10],14"}).values["hour"] == {8, 9, 10, 14}
    assert rules.parse_schedule({"month": "2", "dayOfMonth": "29"}).next_after(ms(t)) == ms(datetime(2028, 2, 29, tzinfo=timezone.utc))
    for bad in ({}, {"week": "1"}, {"minute": "60"}, {"hour": "24"}, {"dayOfMonth": "0"}, {"dayOfWeek": "8"},
                {"minute": "[5-1]"}, {"minute": "a"}, {"minute": ""}, {"minute": "1,,2"}, {"minute": None},
                {"second": "0/0"}, {"dayOfMonth": "31", "month": "2"}, "daily"):
        assert problem(rules.parse_schedule, bad).kind == "SubscriptionControlsException", bad


FIELD_VALUES = {"second": st.sets(st.integers(0, 59), min_size=1, max_size=3),
                "minute": st.sets(st.integers(0, 59), min_size=1, max_size=3),
                "hour": st.sets(st.integers(0, 23), min_size=1, max_size=3),
                "dayOfWeek": st.sets(st.integers(1, 7), min_size=1, max_size=7)}


@hsettings(max_examples=25, deadline=None)
@given(fields=st.fixed_dictionaries({"hour": FIELD_VALUES["hour"]},
                                    optional={k: v for k, v in FIELD_VALUES.items() if k != "hour"}),
       start=st.integers(ms(datetime(2026, 1, 1, tzinfo=timezone.utc)), ms(datetime(2027, 1, 1, tzinfo=timezone.utc))))
def test_the_next_run_is_the_first_matching_second_a_walk_finds(fields, start):
    schedule = rules.parse_schedule({k: ",".join(map(str, sorted(v))) for k, v in fields.items()})
    # The reference: every second after start, until one matches every given field and the defaults.
    finest = min(rules.FIELDS.index(f) for f in fields)
    t = datetime.fromtimestamp(start // 1000, timezone.utc) + timedelta(seconds=1)
    for _ in range(8 * 24 * 3600):
        ok = all(getattr(t, attr) in fields[name] if name in fields
                 else (getattr(t, attr) == 0 if rules.FIELDS.index(name) < finest else True)
                 for name, attr in (("second", "second"), ("minute", "minute"), ("hour", "hour")))
        if ok and t.isoweekday() in fields.get("dayOfWeek", range(1, 8)):
            break
        t += timedelta(seconds=1)
    assert schedule.next_after(start) == ms(t)


def test_backoff_doubles_up_to_its_cap():
    waits = [rules.backoff_s(n, 300) for n in range(1, 20)]
    assert waits[0] == 2 and waits == sorted(waits) and max(waits) == 300


# --- the store --------------------------------------------------------------------------------------

def test_the_store_keeps_queries_subscriptions_and_cursors_across_a_reopen(tmp_path):
    path = tmp_path / "epcis" / "queries.db"
    store = Store(path)
    assert path.stat().st_mode & 0o077 == 0   # it holds signature tokens
    store.create_query("q", {"eventType": ["ObjectEvent"]}, [("eventType", "ObjectEvent")], "owner1", limit=2)
    assert problem(store.create_query, "q", {}, [], "x", 2).status == 409
    store.create_query("r", {"EQ_action": ["ADD"]}, [("EQ_action", "ADD")], "owner1", limit=2)
    assert problem(store.create_query, "s", {}, [], "x", 2).kind == "QueryTooComplexException"
    request = rules.parse_subscription({"dest": ALLOW[0] + "in", "signatureToken": "secret", "stream": True}, ALLOW)
    sub = store.subscribe("q", request, "owner2", limit=2, now_ms=1000)
    assert sub.initial_record_ms == 1000 and (sub.cursor_ms, sub.cursor_id) == (0, "")
    assert problem(store.subscribe, "nope", request, "x", 2).status == 404
    other = store.subscribe("r", request, "owner2", limit=2)
    assert problem(store.subscribe, "q", request, "x", 2).kind == "QueryTooComplexException"
    store.delivered(sub.id, (123456, "ev-9"), 5, 2000)
    store.failed(other.id, "ConnectionRefused", 99_000)
    store.close()

    store = Store(path)
    again = store.subscription("q", sub.id)
    assert (again.cursor_ms, again.cursor_id, again.delivered, again.last_notified_ms) == (123456, "ev-9", 5, 2000)
    assert again.signature_token == "secret" and "secret" not in json.dumps(again.public())
    failing = store.subscription("r", other.id)
    assert (failing.failures, failing.retry_at_ms, failing.last_error) == (1, 99_000, "ConnectionRefused")
    assert store.query("q") == ({"eventType": ["ObjectEvent"]}, [("eventType", "ObjectEvent")], "owner1")
    store.delete_query("q")   # its subscriptions go with it
    assert store.subscription("q", sub.id) is None and [s.id for s in store.subscriptions()] == [other.id]
    assert store.unsubscribe("r", other.id) and not store.unsubscribe("r", other.id)
    store.close()


# --- roles and SQL ----------------------------------------------------------------------------------

def test_a_reader_may_write_named_queries_and_subscriptions_and_nothing_else():
    for method, path in [("POST", "/queries"), ("DELETE", "/queries/q"), ("POST", "/queries/q/subscriptions"),
                         ("DELETE", "/queries/q/subscriptions/abc"), ("GET", "/queries/q/events")]:
        assert auth.required_role(method, path) == "reader", (method, path)
    for method, path in [("POST", "/queries/../sql"), ("POST", "/queries/q/../../sql"), ("DELETE", "/queries/.."),
                         ("POST", "/queries/q/subscriptions/.."), ("POST", "/queries/q/events"), ("PUT", "/queries/q"),
                         ("POST", "/queriesx"), ("POST", "/queries/q/subscriptions/a/b")]:
        assert auth.required_role(method, path) == "admin", (method, path)
    assert not auth.allows("capture", auth.required_role("POST", "/queries"))


def test_a_subscription_filters_with_every_filter_of_get_events():
    feed = epcis_feed.feed_sql()
    assert epcis_query.FILTER.strip() and epcis_query.FILTER in feed and all(epcis_query.FILTER in sql for sql in epcis_query.EVENTS_SQL.values())
    assert "{after:String}" not in feed and "ORDER BY inserted_at, event_id" in feed


# --- delivery against a real receiver, the store's rows standing in for ClickHouse ------------------------

def test_a_failing_receiver_keeps_its_events_and_gets_them_when_it_answers(tmp_path, monkeypatch):
    from aiohttp import web

    from genealogy.settings import Settings
    from genealogy.sinks import epcis_feed as feed

    rows = [(f"ev-{i}", json.dumps({"type": "ObjectEvent", "eventID": f"ev-{i}"}), 1000 + i) for i in range(5)]
    monkeypatch.setattr(feed, "new_events", lambda _c, _q, cursor, _m, limit, _s:
                        [r for r in rows if (r[2], r[0]) > cursor][:limit])

    async def scenario():
        state = {"status": 503, "bodies": []}

        async def hook(request):
            state["bodies"].append((await request.read(), request.headers.get(rules.SIGNATURE_HEADER)))
            return web.Response(status=state["status"])

        app = web.Application()
        app.router.add_post("/hook", hook)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        dest = f"http://127.0.0.1:{port}/hook"
        settings = Settings(data_dir=tmp_path, epcis_webhook_allow=dest, epcis_webhook_attempts=2,
                            epcis_webhook_batch=2, epcis_webhook_timeout_s=5)
        store = Store(tmp_path / "q.db")
        store.create_query("q", {"eventType": ["ObjectEvent"]}, [("eventType", "ObjectEvent")], "", 10)
        sub = store.subscribe("q", rules.parse_subscription({"dest": dest, "signatureToken": "k", "stream": True},
                                                            [dest]), "", 10)
        dispatcher = Dispatcher(settings, store, connection=None)
        import aiohttp
        async with aiohttp.ClientSession() as dispatcher._session:
            await dispatcher._guarded(store.subscription("q", sub.id))
            failed = store.subscription("q", sub.id)
            assert len(state["bodies"]) == 2   # both tries of the first batch
            assert failed.failures == 1 and "503" in failed.last_error and (failed.cursor_ms, failed.delivered) == (0, 0)
            assert failed.retry_at_ms > 0

            state["status"] = 204
            await dispatcher._guarded(store.subscription("q", sub.id))
            done = store.subscription("q", sub.id)
            assert (done.cursor_ms, done.cursor_id, done.delivered, done.failures) == (1004, "ev-4", 5, 0)
            delivered = [json.loads(b) for b, _ in state["bodies"][2:]]
            assert [len(d["epcisBody"]["queryResults"]["resultsBody"]["eventList"]) for d in delivered] == [2, 2, 1]
            assert all(rules.verify_signature("k", b, sig) for b, sig in state["bodies"])

            # The operator takes the destination off the allow-list: no more deliveries, and the reason is shown.
            rows.append(("ev-9", json.dumps({"type": "ObjectEvent"}), 2000))
            dispatcher.settings = Settings(data_dir=tmp_path, epcis_webhook_allow="https://elsewhere.example/")
            await dispatcher._guarded(store.subscription("q", sub.id))
            stopped = store.subscription("q", sub.id)
            assert len(state["bodies"]) == 5 and "not an allowed webhook destination" in stopped.last_error
            assert stopped.cursor_id == "ev-4" and stopped.failures == 1
            # Allowed again: ev-9 goes, and the failure is over.
            dispatcher.settings = settings
            await dispatcher._guarded(store.subscription("q", sub.id))
            back = store.subscription("q", sub.id)
            assert (back.cursor_id, back.failures, back.last_error, len(state["bodies"])) == ("ev-9", 0, "", 6)
        store.close()
        await runner.cleanup()

    asyncio.run(scenario())
