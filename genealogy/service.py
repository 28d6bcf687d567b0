"""The query service: owns the ClickHouse store, runs the Kafka sink beside it, answers HTTP.

In embedded mode only one process may open the chdb directory, so sink and
queries share this process. Against a ClickHouse server the same service can
run as many replicas as wanted (``--no-sink`` for query-only replicas).

    GET  /health                     {"ok": true, "sink_assigned": ...}: the sink holds its partitions
    GET  /status                     counts, dead letters, consumer lag, workers, capture spool
    GET  /recall?lot=ID|serial=ID|node=ID[&since_ms=&until_ms=]
    GET  /recall?station=S&since_ms=&until_ms=[&operator=O]      process window
    GET  /trace?serial=ID|node=ID
    GET  /linkage                    does the serial data join? (data quality)
    GET  /granularity?item=|lot=|serial=[&unit_value=&recall_probability=&units_per_year=]
    POST /sql   {"sql": "...", "parameters": {...}}   read-only analyst SQL
    POST /capture                    EPCIS 2.0 capture: an EPCISDocument or one event (JSON / JSON-LD)
    POST /events                     EPCIS 2.0 capture of one event: 201 + Location: /events/{eventID}
    GET  /events?<EPCIS 2.0 query parameters>[&perPage=&nextPageToken=]   EPCIS 2.0 query (genealogy.epcis_api)
    GET  /events/{eventID}           that event, in an EPCISQueryDocument
    GET  /epcs/{epc}/events, GET /eventTypes/{type}/events
    GET  /capture/{captureID}        what a capture became (POST /capture answers 202 with its Location)
    /queries[/{queryName}[/events|/subscriptions[/{id}]]]   EPCIS 2.0 named queries and webhook subscriptions
                                     (genealogy.epcis_subscriptions)
    POST /reprocess                  recompute what late events changed (see genealogy.reprocess)

Captured EPCIS goes to a local durable spool first and is forwarded to Kafka
from there, so an accepted capture survives a broker outage.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import math
import os
import signal
import threading
import time
from urllib.parse import quote

from aiohttp import web

from genealogy import auth, epcis_api, schemas
from genealogy import kafka
from genealogy.domain import epcis_event, ids, recall
from genealogy.epcis_subscriptions import routes as subscription_routes
from genealogy.sinks import epcis_query, granularity, linkage
from genealogy.join_recovery import JoinRecovery
from genealogy.settings import Settings
from genealogy.producers.ingest import ingest_lines, spool_ingest
from genealogy.producers.spool import Forwarder, Spool
from genealogy.sinks.analyst import AnalystSql, Cancelled, Limits, Rejected, public_error
from genealogy.sinks.connection import Connection
from genealogy.sinks.kafka_sink import KafkaSink
from genealogy.sinks.late_corrector import LateCorrector
from genealogy.sinks.read_model import ReadModel
from genealogy.sinks.writer import Writer

log = logging.getLogger(__name__)

KINDS_FOR = {"lot": ("lot",), "serial": ("serial",), "node": ids.KINDS}


class NotFound(LookupError):
    pass


class Ambiguous(LookupError):
    pass


def resolve(read_model: ReadModel, text: str, kind: str) -> str:
    """A user's spelling of a target -> one node id. Bare identifiers are looked up by their ident."""
    try:
        node_id = ids.normalize(text)
    except ids.InvalidId:
        node_id = None
    if node_id is not None:
        if kind != "node" and ids.kind_of(node_id) not in KINDS_FOR[kind]:
            raise NotFound(f"{text!r} is a {ids.kind_of(node_id)} id, not a {kind}")
        return node_id
    matches = read_model.resolve(text.strip(), KINDS_FOR[kind])
    if not matches:
        raise NotFound(f"no {kind} with identifier {text!r} has been seen by the pipeline")
    if len(matches) > 1:
        raise Ambiguous(f"{text!r} names {len(matches)} {kind}s; use one of: {', '.join(matches)}")
    return matches[0]


def workers_ready(settings: Settings) -> list[str]:
    run = settings.data_dir / "run"
    return sorted(p.stem for p in run.glob("worker-*.ready")) if run.exists() else []


def supervisor_restarts(settings: Settings) -> dict:
    """What `genealogy up`'s supervisor restarted (genealogy.stack.Supervisor), from the stack's state file."""
    try:
        return json.loads((settings.data_dir / "run" / "stack.json").read_text()).get("restarts", {})
    except (OSError, ValueError):
        return {}


def worker_reports(settings: Settings) -> list[dict]:
    """What each live worker last wrote to its ready file (streams.app): handled offsets and read-back counts."""
    reports = []
    run = settings.data_dir / "run"
    for path in run.glob("worker-*.ready") if run.exists() else []:
        try:
            os.kill(int(path.stem.split("-", 1)[1]), 0)
            reports.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # a dead worker or a file being replaced
            continue
    return reports


def handled_offsets(reports: list[dict]) -> dict[int, int]:
    """Capture partition -> offset after the last message a live worker handled."""
    out: dict[int, int] = {}
    for report in reports:
        for partition, offset in report.get("handled", {}).items():
            out[int(partition)] = max(out.get(int(partition), 0), int(offset))
    return out


class Service:
    def __init__(self, settings: Settings, with_sink: bool = True):
        self.settings = settings
        # One connection (chdb: one client per process), shared by the parts.
        self.connection = Connection(settings.store_dsn)
        self.connection.migrate()
        self.writer = Writer(self.connection)
        self.read_model = ReadModel(self.connection)
        # Analysts get ClickHouse sessions of their own (sinks.analyst): never the sink's or recall's.
        self.analyst = AnalystSql(settings.analyst_store_dsn, Limits(
            max_execution_s=settings.analyst_max_execution_s, max_memory_bytes=settings.analyst_max_memory_bytes,
            max_result_rows=settings.analyst_max_result_rows, max_result_bytes=settings.analyst_max_result_bytes,
            max_rows_to_read=settings.analyst_max_rows_to_read,
            max_threads=settings.analyst_max_threads), sessions=settings.analyst_sessions,
            own_user=bool(settings.analyst_dsn))
        # EPCIS queries get sessions of their own too, capped by ClickHouse (sinks.epcis_query).
        self.epcis = epcis_query.EpcisSessions(settings.epcis_store_dsn, epcis_query.epcis_limits(settings),
                                               sessions=settings.epcis_sessions, own_user=bool(settings.epcis_dsn))
        # One serde: with a Schema Registry, building it registers the schemas (a round trip each).
        serde = schemas.serde_for(settings)
        self.sink = KafkaSink(settings, self.writer, serde) if with_sink else None
        self.join_recovery = JoinRecovery(settings, self.read_model, serde) if with_sink else None
        # Only the sink's process corrects late events: it is the one that writes.
        self.late = LateCorrector(settings, self.connection, self.writer) if with_sink and settings.late_correction_s > 0 else None
        self.spool = Spool.for_settings(settings, settings.data_dir / "spool" / "http-capture.db")
        self.page_tokens = epcis_api.PageTokens(epcis_api.load_key(settings.data_dir / "auth" / "page-token.key"))
        self.capture_jobs = epcis_api.CaptureJobs(settings.data_dir / "spool" / "capture-jobs.db")
        self.forwarder = Forwarder(settings, self.spool)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.started = time.time()
        self.died: dict[str, str] = {}  # background thread -> why it died
        self.exit_code = 0
        # serve() sets it: a dead sink makes the process exit non-zero, and `genealogy up`'s supervisor
        # starts it again from the committed offsets, rather than answering forever without a sink.
        self.exit_on_sink_death = False

    def start_background(self) -> None:
        jobs = ([("join-recovery", self.join_recovery.run)] if self.join_recovery else []) + (
                [("capture-forwarder", self.forwarder.run)] + ([("kafka-sink", self.sink.run)] if self.sink else [])
                + ([("late-corrector", self.late.run)] if self.late else []))
        for name, target in jobs:
            thread = threading.Thread(target=self._guarded, args=(name, target), name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def _guarded(self, name: str, target) -> None:
        """Run a background job; if it dies, say why (/health, /status), and for the sink stop the process."""
        try:
            target(self.stop)
        except Exception as exc:  # logged here with its traceback; the thread then ends
            log.exception("%s died", name)
            self.died[name] = f"{type(exc).__name__}: {public_error(exc)}"
            if name == "kafka-sink" and self.exit_on_sink_death and not self.stop.is_set():
                self.exit_code = 1
                os.kill(os.getpid(), signal.SIGTERM)  # aiohttp's graceful stop; serve() then exits 1

    def health(self) -> tuple[bool, dict]:
        """Healthy = the sink (if this process runs one) is alive and writing."""
        out = {"ok": True, "sink_assigned": self.sink is None or self.sink.assigned.is_set(),
               "instance": self.settings.instance,
               "join_state": self.join_recovery.state if self.join_recovery else "ready"}
        if self.sink is not None:
            thread = next((t for t in self.threads if t.name == "kafka-sink"), None)
            if thread is not None and not thread.is_alive() and not self.stop.is_set():
                out["ok"], out["reason"] = False, f"the sink thread died: {self.died.get('kafka-sink', 'unknown reason')}"
            elif self.sink.failing:
                out["ok"], out["reason"] = False, f"the sink cannot write to ClickHouse: {self.sink.failing}"
        return out["ok"], out

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.forwarder.close(timeout=5)
        self.spool.close()
        self.capture_jobs.close()
        self.analyst.close()
        self.epcis.close()
        self.connection.close()

    # --- answers (blocking; run in a thread by the handlers) ----------------------

    def status(self) -> dict:
        s = self.settings
        out = {"counts": self.read_model.counts(), "dead_letters": self.read_model.dead_letter_summary(),
               "workers_ready": workers_ready(s), "uptime_s": round(time.time() - self.started, 1),
               "store": "embedded chdb" if s.store_dsn.startswith("chdb://") else "clickhouse server"}
        out["restarts"] = supervisor_restarts(s)
        if self.late is not None:
            out["late_correction"] = self.late.stats()
        reports = worker_reports(s)
        # Messages Faust's consumer skipped or delivered twice, which the workers caught (streams.progress).
        out["consumer_repairs"] = {k: sum(r.get(k, 0) for r in reports) for k in ("read_back", "redelivered")}
        # The join state the live workers hold: bounded by stations x (slots + pending ring), not by time.
        out["worker_state"] = {k: sum(r.get("state", {}).get(k, 0) for r in reports)
                               for k in ("stations", "table_keys", "pending_completions")}
        try:
            lags = kafka.lags(s, {s.app_id: [s.topic_capture],
                                  s.sink_group: [s.topic_edges, s.topic_dead_letters, s.topic_capture, s.topic_epcis]},
                              handled={s.app_id: {s.topic_capture: handled_offsets(reports)}})
            states = kafka.group_states(s, [s.app_id, s.sink_group])
            out["lag"] = {"stream": lags[s.app_id], "sink": lags[s.sink_group]}
            out["groups"] = {"stream": states[s.app_id], "sink": states[s.sink_group]}
        except Exception as exc:  # the broker being down is a status to report, not a crash
            out["lag"] = {"error": str(exc)}
        if self.sink is not None:
            out["sink"] = {"running": any(t.name == "kafka-sink" and t.is_alive() for t in self.threads),
                           "assigned": self.sink.assigned.is_set(),
                           "flushes": self.sink.flushes, "rows": self.sink.flushed_rows,
                           "last_flush_ms": round(self.sink.last_flush_s * 1000, 1),
                           "failing": self.sink.failing, "insert_retries": self.sink.retries}
        out["capture_spool"] = self.forwarder.backlog()
        out["healthy"], health = self.health()
        if not out["healthy"]:
            out["unhealthy_reason"] = health["reason"]
        return out

    def recall(self, kind: str, text: str, since_ms: int | None, until_ms: int | None) -> dict:
        target = resolve(self.read_model, text, kind)
        started = time.perf_counter()
        result = recall.recall(self.read_model, target, since_ms, until_ms).as_dict()
        result["query_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    def window(self, station: str, since_ms: int, until_ms: int, operator: str | None) -> dict:
        started = time.perf_counter()
        result = recall.process_window(self.read_model, station, since_ms, until_ms, operator).as_dict()
        result["query_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    def linkage(self) -> dict:
        return linkage.linkage_report(self.read_model)

    def granularity(self, item: str | None, kind: str | None, text: str | None, **costs) -> dict:
        target = resolve(self.read_model, text, kind) if text else None
        return granularity.granularity_report(self.read_model, item=item, target=target, **costs)

    def capture(self, body: bytes, origin: str, capture_id: str | None = None) -> dict:
        """EPCIS capture: mapped, spooled durably, then forwarded; rejects are dead letters too. The job
        (``GET /capture/{captureID}``) is recorded once the spool has it."""
        created_ms = int(time.time() * 1000)
        result = ingest_lines(body.splitlines(keepends=True), "epcis", origin)
        if not result.values:
            raise ValueError("the request body holds no JSON document")
        spool_ingest(self.settings, result, self.spool)
        rejects = [{"reason": d["reason"], "event_id": d["event_id"]} for d in result.dead_letters]
        capture_id = capture_id or origin
        self.capture_jobs.record(capture_id, created_ms, rejects)
        return {"captureID": capture_id, "accepted": result.counts, "rejects": rejects, "untraceable": result.untraceable}

    def epcis_page(self, query: epcis_query.EventQuery, cursor: tuple[int, str] | None,
                   per_page: int) -> tuple[list[tuple[str, dict, int]], bool]:
        """A page of the EPCIS query on the EPCIS sessions: (event id, event as captured, sort key) in
        (sort key, event id) order, and whether more follow. The first page (no cursor) of a query with
        maxEventCount counts the matches first: more than that is QueryTooLargeException. A cap of the
        sessions hit: QueryTooLarge/-ComplexException (sinks.epcis_query.LimitExceeded)."""
        if cursor is None and query.max_event_count is not None:
            if epcis_query.count_up_to(self.epcis, query, query.max_event_count + 1) > query.max_event_count:
                raise epcis_api.QueryProblem(f"more than maxEventCount ({query.max_event_count}) events match",
                                             413, "QueryTooLargeException")
        rows, more = epcis_query.events_page(self.epcis, query, cursor, per_page)
        return [(event_id, json.loads(event_json), key) for event_id, event_json, key in rows], more

    async def epcis_run(self, fn, *args):
        """Run an EPCIS query on its sessions; every failure is a problem (RFC 7807), never a traceback:
        a cap ClickHouse enforced 413 (QueryTooLarge / QueryTooComplexException, the standard's
        413QueryScopeOrSize), every session busy 503, anything else 500 ImplementationException."""
        try:
            return await asyncio.get_running_loop().run_in_executor(None, fn, *args)
        except epcis_query.LimitExceeded as exc:
            kind = "QueryTooLargeException" if exc.too_large else "QueryTooComplexException"
            raise epcis_api.QueryProblem(f"stopped by the repository's limits: {exc}", 413, kind) from None
        except epcis_query.Busy as exc:
            raise epcis_api.QueryProblem(str(exc), 503, "ImplementationException") from None
        except epcis_api.QueryProblem:
            raise
        except Exception:
            log.exception("EPCIS query failed")
            raise epcis_api.QueryProblem("the query failed; the service log has the details", 500,
                                         "ImplementationException") from None

    async def epcis_answer(self, url, paging: list[tuple[str, str]], query: epcis_query.EventQuery, per_page: int,
                           token: str | None, bound_to: str, query_name: str = "SimpleEventQuery") -> tuple[dict, dict]:
        """One page of an EPCIS query (GET /events, the resources with a parameter fixed by the path, a named
        query's events) as (EPCISQueryDocument, headers): the next page's signed token in ``Link``, counted
        against eventCountLimit. ``url``: the request's, whose ``paging`` items the next link keeps."""
        key, after, delivered = self.page_tokens.cursor(token, bound_to) if token else (0, "", 0)
        limit = query.event_count_limit
        size = per_page if limit is None else min(per_page, limit - delivered)
        page, more = await self.epcis_run(self.epcis_page, query, (key, after) if token else None, size) \
            if size > 0 else ([], False)
        delivered += len(page)
        headers = dict(EPCIS_HEADERS)
        if more and (limit is None or delivered < limit):
            next_token, expires = self.page_tokens.encode(page[-1][0], bound_to, key=page[-1][2], delivered=delivered)
            headers["Link"] = f'<{url.with_query([(k, v) for k, v in paging if k != "nextPageToken"] + [("nextPageToken", next_token)])}>; rel="next"'
            headers["GS1-Next-Page-Token-Expires"] = epcis_event.format_time(expires * 1000)
        return epcis_api.query_document([event for _, event, _ in page], query_name), headers

    def epcis_event(self, event_id: str) -> dict | None:
        found = epcis_query.event_by_id(self.epcis, event_id)
        return None if found is None else json.loads(found)

    def capture_event(self, body: bytes, origin: str) -> dict:
        """POST /events: one event, mapped and spooled like a capture; the event as kept (with its
        eventID and recordTime). QueryProblem (ValidationException, 400) when it is not one event or was
        rejected (the reject is a dead letter too, as on /capture)."""
        result = ingest_lines(body.splitlines(keepends=True), "epcis", origin)
        if result.values != 1:
            raise epcis_api.QueryProblem(f"POST /events takes one event, not {result.values} JSON values",
                                         400, "ValidationException")
        spool_ingest(self.settings, result, self.spool)
        if result.dead_letters:
            raise epcis_api.QueryProblem(result.dead_letters[0]["reason"], 400, "ValidationException")
        if len(result.epcis) != 1:
            raise epcis_api.QueryProblem(f"POST /events takes one event, not {len(result.epcis)}; send documents "
                                         "to POST /capture", 400, "ValidationException")
        return {"eventID": result.epcis[0]["event_id"], "event": json.loads(result.epcis[0]["json"])}

    def reprocess(self) -> dict:
        from genealogy.sinks.reprocess import reprocess_late

        return reprocess_late(self.connection, self.writer, self.settings)

    def trace(self, kind: str, text: str) -> dict:
        target = resolve(self.read_model, text, kind)
        started = time.perf_counter()
        result = recall.trace(self.read_model, target)
        result["query_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result


class BadRequest(ValueError):
    """A request the service will not answer: 400 with the reason."""


def _json_error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, dumps=_dumps)


EPCIS_HEADERS = {"GS1-EPCIS-Version": "2.0", "GS1-CBV-Version": "2.0"}


def _problem(problem: epcis_api.QueryProblem) -> web.Response:
    """An RFC 7807 problem of the EPCIS query interface."""
    return web.Response(text=_dumps(problem.as_dict()), status=problem.status, content_type="application/problem+json",
                        headers=EPCIS_HEADERS)


def _target(request: web.Request) -> tuple[str, str]:
    for kind in ("lot", "serial", "node"):
        if request.query.get(kind):
            return kind, request.query[kind]
    raise BadRequest("give one of lot=, serial= or node=")


def _int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be epoch milliseconds") from None


def _window(request: web.Request) -> tuple[int | None, int | None]:
    since, until = _int(request, "since_ms"), _int(request, "until_ms")
    if since is not None and until is not None and since > until:
        raise BadRequest("since_ms is after until_ms")
    return since, until


def _number(request: web.Request, name: str) -> float | None:
    value = request.query.get(name)
    if not value:
        return None
    try:
        number = float(value)
    except ValueError:
        raise BadRequest(f"{name} must be a number") from None
    if not math.isfinite(number):  # nan and inf would come back as NaN/Infinity: not JSON
        raise BadRequest(f"{name} must be a finite number")
    return number


def json_depth(value) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, depth)
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


async def _body(request: web.Request, limit: int) -> bytes:
    """The request body, at most `limit` bytes (413 beyond: each route has its own cap)."""
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    chunks, size = [], 0
    while chunk := await request.content.read(1 << 16):  # read(n) returns what has arrived, not n bytes
        size += len(chunk)
        if size > limit:
            raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json(body: bytes, max_depth: int):
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadRequest(f"the JSON body is nested deeper than {max_depth} levels") from None
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the body is not JSON") from None
    if json_depth(value) > max_depth:
        raise BadRequest(f"the JSON body is nested deeper than {max_depth} levels")
    return value


@web.middleware
async def json_errors(request: web.Request, handler):
    """Every answer is JSON: aiohttp's own errors (404, 405, 413 ...) and anything unexpected, without
    tracebacks, paths or versions."""
    try:
        return await handler(request)
    except BadRequest as exc:
        return _json_error(400, str(exc))
    except web.HTTPException as exc:
        if exc.content_type == "application/json":
            raise
        reasons = {404: "no such route", 405: f"method {request.method} not allowed here",
                   413: "the request body is too large"}
        return _json_error(exc.status, reasons.get(exc.status, exc.reason))
    except (asyncio.CancelledError, KeyboardInterrupt):
        raise
    except Exception:
        log.exception("request failed: %s %s", request.method, request.path)
        return _json_error(500, "internal error; the service log has the details")


def make_app(service: Service) -> web.Application:
    settings = service.settings

    async def call(fn, *args, **kwargs):
        try:
            return web.json_response(await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs)),
                                     dumps=_dumps)
        except NotFound as exc:
            return _json_error(404, str(exc))
        except Ambiguous as exc:
            return _json_error(409, str(exc))
        except (ids.InvalidId, ValueError) as exc:
            return _json_error(400, str(exc))
        except RecursionError:
            return _json_error(400, "the request is nested too deeply")
        except Exception:  # the CLI and dashboards get JSON, never an HTML 500; the log has the details
            log.exception("request failed")
            return _json_error(500, "internal error; the service log has the details")

    async def health(request):
        ok, body = service.health()
        return web.json_response(body, status=200 if ok else 503, dumps=_dumps)

    async def status(request):
        return await call(service.status)

    async def do_recall(request):
        since, until = _window(request)
        if request.query.get("station"):
            if since is None or until is None:
                raise BadRequest("a process window needs since_ms and until_ms")
            return await call(service.window, request.query["station"], since, until, request.query.get("operator"))
        kind, text = _target(request)
        return await call(service.recall, kind, text, since, until)

    async def do_linkage(request):
        return await call(service.linkage)

    async def do_granularity(request):
        kind = next((k for k in ("lot", "serial", "node") if request.query.get(k)), None)
        costs = {name: value for name in ("unit_value", "recall_probability", "units_per_year")
                 if (value := _number(request, name)) is not None}
        return await call(service.granularity, request.query.get("item"), kind, request.query.get(kind) if kind else None, **costs)

    async def capture(request):
        body = await _body(request, settings.capture_max_body_bytes)
        capture_id = epcis_api.CaptureJobs.new_id()
        origin = f"http{request.path}:{capture_id}"
        response = await call(service.capture, body, origin, capture_id)
        if response.status == 200:
            response.set_status(202)  # EPCIS 2.0: accepted; the job is at Location
            response.headers["Location"] = f"/capture/{capture_id}"
            response.headers.update(EPCIS_HEADERS)
        return response

    async def capture_job(request):
        capture_id = request.match_info["capture_id"]
        job = await asyncio.get_running_loop().run_in_executor(None, service.capture_jobs.get, capture_id)
        if job is None:
            return _problem(epcis_api.QueryProblem(f"no capture job {capture_id!r}", 404, "NoSuchResourceException"))
        return web.Response(text=_dumps(job), content_type="application/json", headers=EPCIS_HEADERS)

    epcis_call = service.epcis_run

    async def epcis_query_answer(request, fixed: dict | None = None):
        """GET /events and the resources that are queries with a parameter fixed by the path."""
        items = list(request.query.items())
        try:
            query, per_page, token = epcis_api.parse_query(items, fixed)
            body, headers = await service.epcis_answer(request.url, items, query, per_page, token,
                                                       epcis_api.fingerprint(items, fixed))
        except epcis_api.QueryProblem as problem:
            return _problem(problem)
        return web.Response(text=_dumps(body), content_type="application/json", headers=headers)

    async def epcis_events(request):
        return await epcis_query_answer(request)

    async def one_event(request):
        """The standard (openapi.yaml, GET /events/{eventID}): an EPCISQueryDocument enclosing the event."""
        event_id = request.match_info["event_id"]
        try:
            event = await epcis_call(service.epcis_event, event_id)
        except epcis_api.QueryProblem as problem:
            return _problem(problem)
        if event is None:
            return _problem(epcis_api.QueryProblem(f"no event with eventID {event_id!r}", 404, "NoSuchResourceException"))
        return web.Response(text=_dumps(epcis_api.query_document([event])), content_type="application/json",
                            headers=EPCIS_HEADERS)

    async def capture_event(request):
        """POST /events, the standard's synchronous capture of one event: 201, Location: /events/{eventID},
        the event as kept; 400 ValidationException when it is not one event or is rejected."""
        body = await _body(request, settings.capture_max_body_bytes)
        origin = f"http{request.path}:{epcis_api.CaptureJobs.new_id()}"
        try:
            kept = await asyncio.get_running_loop().run_in_executor(None, service.capture_event, body, origin)
        except epcis_api.QueryProblem as problem:
            return _problem(problem)
        except RecursionError:
            return _problem(epcis_api.QueryProblem("the event is nested too deeply", 400, "ValidationException"))
        except Exception:
            log.exception("POST /events failed")
            return _problem(epcis_api.QueryProblem("the capture failed; the service log has the details", 500,
                                                   "ImplementationException"))
        headers = {**EPCIS_HEADERS, "Location": f"/events/{quote(kept['eventID'], safe='')}"}
        return web.Response(text=_dumps(kept["event"]), status=201, content_type="application/json", headers=headers)

    async def epc_events(request):
        return await epcis_query_answer(request, {"MATCH_anyEPC": request.match_info["epc"]})

    async def event_type_events(request):
        event_type = request.match_info["event_type"]
        if event_type not in epcis_api.EVENT_TYPES:
            return _problem(epcis_api.QueryProblem(f"no event type {event_type!r}; the types are "
                                                   f"{', '.join(epcis_api.EVENT_TYPES)}", 404, "NoSuchResourceException"))
        return await epcis_query_answer(request, {"eventType": event_type})

    async def do_reprocess(request):
        return await call(service.reprocess)

    async def do_trace(request):
        kind, text = _target(request)
        return await call(service.trace, kind, text)

    async def sql(request):
        body = parse_json(await _body(request, settings.sql_max_body_bytes), settings.json_max_depth)
        if not isinstance(body, dict) or not isinstance(body.get("sql"), str):
            raise BadRequest('the body must be {"sql": "SELECT ...", "parameters": {...}}')
        cancel = threading.Event()
        job = asyncio.get_running_loop().run_in_executor(None, service.analyst.query, body["sql"], body.get("parameters"), cancel)
        try:
            # Watch the client while the query runs: one that hangs up stops its query.
            while not job.done():
                await asyncio.wait([job], timeout=0.2)
                if request.transport is None or request.transport.is_closing():
                    cancel.set()
            columns, rows = await job
        except Cancelled:
            return _json_error(499, "the client went away")
        except asyncio.CancelledError:
            cancel.set()
            raise
        except Rejected as exc:
            return _json_error(400, str(exc))
        except Exception as exc:  # ClickHouse's own reason is the useful one for an analyst
            return _json_error(400, public_error(exc))
        return web.json_response({"columns": columns, "rows": rows}, dumps=_dumps)

    app = web.Application(client_max_size=max(settings.sql_max_body_bytes, settings.capture_max_body_bytes),
                          middlewares=[*auth.middlewares(service.settings), json_errors])
    app.add_routes([web.get("/health", health), web.get("/status", status), web.get("/recall", do_recall),
                    web.get("/trace", do_trace), web.get("/linkage", do_linkage), web.get("/granularity", do_granularity),
                    web.post("/sql", sql), web.post("/capture", capture), web.post("/events", capture_event),
                    web.post("/reprocess", do_reprocess), web.get("/events", epcis_events),
                    web.get("/events/{event_id:.+}", one_event), web.get("/epcs/{epc:.+}/events", epc_events),
                    web.get("/eventTypes/{event_type}/events", event_type_events),
                    web.get("/capture/{capture_id}", capture_job)])
    subscription_routes.install(app, service)   # /queries: named queries and webhook subscriptions
    return app


def _finite(value):
    """JSON has no NaN or Infinity: non-finite floats go out as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _dumps(obj) -> str:
    try:
        return json.dumps(obj, default=str, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(obj), default=str, allow_nan=False)


def serve(settings: Settings, with_sink: bool = True) -> None:
    """Run the service (and the sink) in this process until SIGINT or SIGTERM (``genealogy serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(settings, with_sink=with_sink)
    service.exit_on_sink_death = True
    service.start_background()
    try:
        web.run_app(make_app(service), host=settings.http_host, port=settings.http_port, print=None,
                    handle_signals=True)
    finally:
        service.shutdown()
    if service.exit_code:
        raise SystemExit(service.exit_code)
