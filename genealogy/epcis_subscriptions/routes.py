"""The HTTP side of named queries and subscriptions: ``install(app, service)`` adds the routes.

    POST   /queries                                   {"name", "query": {<GET /events parameters>}} -> 201 + Location
    GET    /queries, /queries/{queryName}             the definitions
    DELETE /queries/{queryName}                       204; its subscriptions go with it
    GET    /queries/{queryName}/events                its answer, paged like GET /events (perPage, nextPageToken)
    POST   /queries/{queryName}/subscriptions         {"dest", "signatureToken", "stream": true | "schedule": {...},
                                                       "reportIfEmpty", "initialRecordTime"} -> 201 + Location
    GET    /queries/{queryName}/subscriptions[/{id}]  the subscriptions (never their signatureToken)
    DELETE /queries/{queryName}/subscriptions/{id}    204
    GET    /queries/{queryName}/events?stream=true | ?<schedule fields>[&reportIfEmpty=&initialRecordTime=]
           with Upgrade: websocket                    a subscription for as long as the connection lasts

WebSocket subscriptions are not kept: the documents a webhook would get come as text messages while
the connection is open (at most ``epcis_max_websockets`` at once), from initialRecordTime (default:
the connection's start); a client that reconnects passes the recordTime it got to, to miss nothing.
Deleting the query closes them.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time

import aiohttp
from aiohttp import web

from genealogy import epcis_api
from genealogy.epcis_subscriptions.dispatch import Dispatcher, document
from genealogy.epcis_subscriptions.problems import Problem
from genealogy.epcis_subscriptions.rules import (EPCIS_HEADERS, allow_list, check_name, parse_schedule,
                                                 parse_subscription, query_pairs, websocket_controls)
from genealogy.epcis_subscriptions.store import Store, Subscription
from genealogy.settings import Settings
from genealogy.sinks import epcis_feed


def _dumps(obj) -> str:
    return json.dumps(obj, default=str, allow_nan=False)


def problem_response(problem: epcis_api.QueryProblem) -> web.Response:
    return web.Response(text=_dumps(problem.as_dict()), status=problem.status, content_type="application/problem+json",
                        headers=EPCIS_HEADERS)


def _json(body, status: int = 200, **headers) -> web.Response:
    return web.Response(text=_dumps(body), status=status, content_type="application/json",
                        headers={**EPCIS_HEADERS, **headers})


async def _read_json(request: web.Request, settings: Settings):
    kind = request.content_type
    if request.body_exists and kind not in ("application/json", "application/ld+json", "application/octet-stream"):
        raise Problem(f"Content-Type {kind!r}: send application/json", 415, "UnsupportedMediaTypeException")
    limit = settings.epcis_query_max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise Problem(f"the body is larger than {limit} bytes", 413, "QueryTooComplexException")
    data, size = [], 0
    while chunk := await request.content.read(1 << 16):
        size += len(chunk)
        if size > limit:
            raise Problem(f"the body is larger than {limit} bytes", 413, "QueryTooComplexException")
        data.append(chunk)
    try:
        value = json.loads(b"".join(data))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise Problem("the body is not JSON", 400, "ValidationException") from None
    if _json_depth(value) > settings.json_max_depth:
        raise Problem(f"the JSON body is nested deeper than {settings.json_max_depth} levels", 400, "ValidationException")
    return value


def _json_depth(value) -> int:
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((c, depth + 1) for c in (item.values() if isinstance(item, dict) else item))
    return deepest


def _owner(request: web.Request) -> str:
    entry = request.get("token_entry")
    return entry.id if entry is not None else ""


def _may_change(request: web.Request, owner: str) -> bool:
    """Who made a query or subscription (or an admin) may delete it; without auth everybody is the same."""
    entry = request.get("token_entry")
    return entry is None or entry.role == "admin" or entry.id == owner


def install(app: web.Application, service) -> Store:
    """Add the /queries routes to the service's app; the sink's process also runs the Dispatcher.
    ``service``: genealogy.service.Service (settings, connection, page_tokens, epcis_page, sink)."""
    settings: Settings = service.settings
    store = Store(settings.data_dir / "epcis" / "queries.db")
    loop_of = asyncio.get_running_loop

    async def blocking(fn, *args):
        return await loop_of().run_in_executor(None, fn, *args)

    def handled(handler):
        async def wrapper(request):
            try:
                return await handler(request)
            except epcis_api.QueryProblem as problem:
                return problem_response(problem)
        return wrapper

    async def create_query(request):
        body = await _read_json(request, settings)
        if not isinstance(body, dict) or set(body) - {"name", "query"}:
            raise Problem('the body must be {"name": ..., "query": {<query parameters>}}', 400, "ValidationException")
        name = check_name(body.get("name"))
        pairs = query_pairs(body.get("query"))
        await blocking(store.create_query, name, body["query"], pairs, _owner(request), settings.epcis_max_named_queries)
        return _json({"name": name, "query": body["query"]}, 201, Location=f"/queries/{name}")

    async def list_queries(request):
        return _json(await blocking(store.queries))

    async def named(request) -> tuple[str, list, str]:
        name = request.match_info["name"]
        found = await blocking(store.query, name)
        if found is None:
            raise Problem(f"no named query {name!r}", 404, "NoSuchResourceException")
        return name, found[1], found[2]

    async def get_query(request):
        name = request.match_info["name"]
        found = await blocking(store.query, name)
        if found is None:
            raise Problem(f"no named query {name!r}", 404, "NoSuchResourceException")
        return _json({"name": name, "query": found[0]})

    async def delete_query(request):
        name, _, owner = await named(request)
        if not _may_change(request, owner):
            raise Problem("only the token that created the query, or an admin, may delete it", 403, "SecurityException")
        await blocking(store.delete_query, name)
        return web.Response(status=204, headers=EPCIS_HEADERS)

    async def query_events(request):
        name, pairs, _ = await named(request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return await websocket(request, name, pairs)
        paging = list(request.query.items())
        if extra := [k for k, _ in paging if k not in epcis_api.PAGING]:
            raise Problem(f"{extra[0]}: a named query's parameters are its own; only perPage and nextPageToken go here")
        query, per_page, token = epcis_api.parse_query(pairs + paging)
        body, headers = await service.epcis_answer(request.url, paging, query, per_page, token,
                                                   epcis_api.fingerprint(pairs + [("queryName", name)]), name)
        return _json(body, **headers)

    sockets: set[web.WebSocketResponse] = set()

    async def websocket(request, name: str, pairs: list):
        """A subscription that lives as long as its connection: the documents come as text messages, the
        same a webhook gets. Nothing is kept: a client that reconnects passes initialRecordTime again."""
        spec = parse_subscription(websocket_controls(list(request.query.items())), [], webhook=False)
        if len(sockets) >= settings.epcis_max_websockets:
            raise Problem(f"this service holds at most {settings.epcis_max_websockets} WebSocket subscriptions "
                          "(GENEALOGY_EPCIS_MAX_WEBSOCKETS)", 409, "QueryTooComplexException")
        query = epcis_api.parse_query(pairs)[0]
        now = int(time.time() * 1000)
        sub = Subscription(id=f"ws-{secrets.token_hex(8)}", query_name=name, dest="", signature_token="",
                           stream=spec.stream, schedule=spec.schedule.given if spec.schedule else None,
                           report_if_empty=spec.report_if_empty,
                           initial_record_ms=now if spec.initial_record_ms is None else spec.initial_record_ms,
                           owner=_owner(request), created_ms=now, cursor_ms=0, cursor_id="",
                           next_run_ms=spec.schedule.next_after(now) if spec.schedule else None, retry_at_ms=0,
                           failures=0, last_error="", last_notified_ms=None, delivered=0)
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        sockets.add(ws)
        scanned = -1
        try:
            while not ws.closed:
                if await blocking(store.query, name) is None:
                    await ws.close(code=1000, message=b"the named query was deleted")
                    break
                now = int(time.time() * 1000)
                due = False
                if sub.stream:
                    latest, store_now = await blocking(epcis_feed.latest_insert_ms, service.connection)
                    due = latest > sub.cursor_ms and latest != scanned
                elif now >= sub.next_run_ms:
                    due = True
                if due:
                    cursor, first = (sub.cursor_ms, sub.cursor_id), True
                    while True:
                        rows = await blocking(epcis_feed.new_events, service.connection, query, cursor,
                                              sub.initial_record_ms, settings.epcis_webhook_batch,
                                              settings.epcis_subscription_settle_ms)
                        if rows or (first and sub.report_if_empty and not sub.stream):
                            doc = document([json.loads(r[1]) for r in rows], name, sub.id)
                            await ws.send_str(_dumps(doc))
                            if rows:
                                cursor = (rows[-1][2], rows[-1][0])
                        first = False
                        if len(rows) < settings.epcis_webhook_batch:
                            break
                    sub.cursor_ms, sub.cursor_id = cursor
                    if sub.stream and store_now - settings.epcis_subscription_settle_ms > latest:
                        scanned = latest
                    if not sub.stream:
                        sub.next_run_ms = parse_schedule(sub.schedule).next_after(now)
                try:   # wait for the next poll, and notice a client that closed meanwhile
                    message = await ws.receive(timeout=settings.epcis_subscription_poll_s)
                except asyncio.TimeoutError:
                    continue
                if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED,
                                    aiohttp.WSMsgType.ERROR):
                    break
        except ConnectionResetError:   # the client went away mid-send
            pass
        finally:
            sockets.discard(ws)
        return ws

    async def close_sockets(app):
        # Otherwise a graceful stop waits for every open subscription's client to hang up.
        for ws in list(sockets):
            await ws.close(code=1001, message=b"the service is stopping")

    app.on_shutdown.append(close_sockets)

    async def subscribe(request):
        name, _, _ = await named(request)
        sub_request = parse_subscription(await _read_json(request, settings), allow_list(settings))
        sub = await blocking(store.subscribe, name, sub_request, _owner(request), settings.epcis_max_subscriptions)
        return _json(sub.public(), 201, Location=f"/queries/{name}/subscriptions/{sub.id}")

    async def list_subscriptions(request):
        name, _, _ = await named(request)
        return _json([s.public() for s in await blocking(store.subscriptions, name)])

    async def one_subscription(request):
        name, _, _ = await named(request)
        sub = await blocking(store.subscription, name, request.match_info["sub_id"])
        if sub is None:
            raise Problem(f"no subscription {request.match_info['sub_id']!r} of query {name!r}", 404, "NoSuchResourceException")
        return sub, name

    async def get_subscription(request):
        sub, _ = await one_subscription(request)
        return _json(sub.public())

    async def unsubscribe(request):
        sub, name = await one_subscription(request)
        if not _may_change(request, sub.owner):
            raise Problem("only the token that subscribed, or an admin, may unsubscribe", 403, "SecurityException")
        await blocking(store.unsubscribe, name, sub.id)
        return web.Response(status=204, headers=EPCIS_HEADERS)

    app.add_routes([web.post("/queries", handled(create_query)), web.get("/queries", handled(list_queries)),
                    web.get("/queries/{name}", handled(get_query)), web.delete("/queries/{name}", handled(delete_query)),
                    web.get("/queries/{name}/events", handled(query_events)),
                    web.post("/queries/{name}/subscriptions", handled(subscribe)),
                    web.get("/queries/{name}/subscriptions", handled(list_subscriptions)),
                    web.get("/queries/{name}/subscriptions/{sub_id}", handled(get_subscription)),
                    web.delete("/queries/{name}/subscriptions/{sub_id}", handled(unsubscribe))])

    async def lifetime(app):
        task = None
        if getattr(service, "sink", None) is not None:   # one deliverer per deployment: the sink's process
            task = asyncio.create_task(Dispatcher(settings, store, service.epcis).run(), name="epcis-subscriptions")
        yield
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        store.close()

    app.cleanup_ctx.append(lifetime)
    return store
