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
    POST /capture, POST /events      EPCIS 2.0 capture: an EPCISDocument or one event (JSON / JSON-LD)
    POST /reprocess                  recompute what late events changed (see genealogy.reprocess)

Captured EPCIS goes to a local durable spool first and is forwarded to Kafka
from there, so an accepted capture survives a broker outage.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import threading
import time

from aiohttp import web

from genealogy import auth, schemas
from genealogy import kafka
from genealogy.domain import ids, recall
from genealogy.sinks import granularity, linkage
from genealogy.settings import Settings
from genealogy.producers.ingest import ingest_lines, spool_ingest
from genealogy.producers.spool import Forwarder, Spool
from genealogy.sinks.analyst import AnalystSql
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
        self.analyst = AnalystSql(self.connection)
        self.sink = KafkaSink(settings, self.writer, schemas.serde_for(settings)) if with_sink else None
        # Only the sink's process corrects late events: it is the one that writes.
        self.late = LateCorrector(settings, self.connection, self.writer) if with_sink and settings.late_correction_s > 0 else None
        self.spool = Spool.for_settings(settings, settings.data_dir / "spool" / "http-capture.db")
        self.forwarder = Forwarder(settings, self.spool)
        self.stop = threading.Event()
        self.threads: list[threading.Thread] = []
        self.started = time.time()

    def start_background(self) -> None:
        jobs = ([("capture-forwarder", self.forwarder.run)] + ([("kafka-sink", self.sink.run)] if self.sink else [])
                + ([("late-corrector", self.late.run)] if self.late else []))
        for name, target in jobs:
            thread = threading.Thread(target=target, args=(self.stop,), name=name, daemon=True)
            thread.start()
            self.threads.append(thread)

    def shutdown(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)
        self.forwarder.close(timeout=5)
        self.spool.close()
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
                                  s.sink_group: [s.topic_edges, s.topic_dead_letters, s.topic_capture]},
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
                           "last_flush_ms": round(self.sink.last_flush_s * 1000, 1)}
        out["capture_spool"] = self.forwarder.backlog()
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

    def capture(self, body: bytes, origin: str) -> dict:
        """EPCIS capture: mapped, spooled durably, then forwarded; rejects are dead letters too."""
        result = ingest_lines(body.splitlines(keepends=True), "epcis", origin)
        if not result.values:
            raise ValueError("the request body holds no JSON document")
        spool_ingest(self.settings, result, self.spool)
        return {"captureID": origin, "accepted": result.counts,
                "rejects": [{"reason": d["reason"], "event_id": d["event_id"]} for d in result.dead_letters],
                "untraceable": result.untraceable}

    def reprocess(self) -> dict:
        from genealogy.sinks.reprocess import reprocess_late

        return reprocess_late(self.connection, self.writer, self.settings)

    def trace(self, kind: str, text: str) -> dict:
        target = resolve(self.read_model, text, kind)
        started = time.perf_counter()
        result = recall.trace(self.read_model, target)
        result["query_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result


def _target(request: web.Request) -> tuple[str, str]:
    for kind in ("lot", "serial", "node"):
        if request.query.get(kind):
            return kind, request.query[kind]
    raise web.HTTPBadRequest(text='{"error": "give one of lot=, serial= or node="}', content_type="application/json")


def _int(request: web.Request, name: str) -> int | None:
    value = request.query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise web.HTTPBadRequest(text=f'{{"error": "{name} must be epoch milliseconds"}}', content_type="application/json") from None


def make_app(service: Service) -> web.Application:
    async def call(fn, *args, **kwargs):
        try:
            return web.json_response(await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args, **kwargs)))
        except NotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except Ambiguous as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except (ids.InvalidId, ValueError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except Exception as exc:  # the CLI and dashboards get JSON with the reason, never an HTML 500
            log.exception("request failed")
            return web.json_response({"error": f"{type(exc).__name__}: {exc}"}, status=500)

    async def health(request):
        return web.json_response({"ok": True, "sink_assigned": service.sink is None or service.sink.assigned.is_set(),
                                   "instance": service.settings.instance})

    async def status(request):
        return await call(service.status)

    async def do_recall(request):
        if request.query.get("station"):
            since, until = _int(request, "since_ms"), _int(request, "until_ms")
            if since is None or until is None:
                return web.json_response({"error": "a process window needs since_ms and until_ms"}, status=400)
            return await call(service.window, request.query["station"], since, until, request.query.get("operator"))
        kind, text = _target(request)
        return await call(service.recall, kind, text, _int(request, "since_ms"), _int(request, "until_ms"))

    async def do_linkage(request):
        return await call(service.linkage)

    async def do_granularity(request):
        kind = next((k for k in ("lot", "serial", "node") if request.query.get(k)), None)
        costs = {}
        for name in ("unit_value", "recall_probability", "units_per_year"):
            if request.query.get(name):
                try:
                    costs[name] = float(request.query[name])
                except ValueError:
                    return web.json_response({"error": f"{name} must be a number"}, status=400)
        return await call(service.granularity, request.query.get("item"), kind, request.query.get(kind) if kind else None, **costs)

    async def capture(request):
        body = await request.read()
        origin = f"http{request.path}:{time.strftime('%Y%m%dT%H%M%S')}:{id(request):x}"
        response = await call(service.capture, body, origin)
        if response.status == 200:
            response.set_status(202)
        return response

    async def do_reprocess(request):
        return await call(service.reprocess)

    async def do_trace(request):
        kind, text = _target(request)
        return await call(service.trace, kind, text)

    async def sql(request):
        body = await request.json()
        try:
            columns, rows = await asyncio.get_running_loop().run_in_executor(
                None, service.analyst.query, body["sql"], body.get("parameters"))
        except Exception as exc:  # ClickHouse's own message is the useful one for an analyst
            return web.json_response({"error": str(exc).strip().splitlines()[0][:2000]}, status=400)
        return web.json_response({"columns": columns, "rows": rows}, dumps=functools.partial(_dumps))

    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=auth.middlewares(service.settings))
    app.add_routes([web.get("/health", health), web.get("/status", status), web.get("/recall", do_recall),
                    web.get("/trace", do_trace), web.get("/linkage", do_linkage), web.get("/granularity", do_granularity),
                    web.post("/sql", sql), web.post("/capture", capture), web.post("/events", capture),
                    web.post("/reprocess", do_reprocess)])
    return app


def _dumps(obj) -> str:
    return json.dumps(obj, default=str)


def serve(settings: Settings, with_sink: bool = True) -> None:
    """Run the service (and the sink) in this process until SIGINT or SIGTERM (``genealogy serve``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(settings, with_sink=with_sink)
    service.start_background()
    try:
        web.run_app(make_app(service), host=settings.http_host, port=settings.http_port, print=None,
                    handle_signals=True)
    finally:
        service.shutdown()
