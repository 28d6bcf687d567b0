"""The query service: owns the ClickHouse store, runs the Kafka sink beside it, answers HTTP.

In embedded mode only one process may open the chdb directory, so sink and
queries share this process. Against a ClickHouse server the same service can
run as many replicas as wanted (``--no-sink`` for query-only replicas).

    GET  /health
    GET  /status                     counts, dead letters, consumer lag, workers
    GET  /recall?lot=ID|serial=ID|node=ID[&since_ms=&until_ms=]
    GET  /trace?serial=ID|node=ID
    POST /sql   {"sql": "...", "parameters": {...}}   read-only analyst SQL
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import threading
import time
from pathlib import Path

from aiohttp import web

import schemas
from genealogy import ids, kafka, recall
from genealogy.settings import Settings
from sinks.kafka_sink import KafkaSink
from sinks.store import Store

log = logging.getLogger(__name__)

KINDS_FOR = {"lot": ("lot",), "serial": ("serial",), "node": ids.KINDS}


class NotFound(LookupError):
    pass


class Ambiguous(LookupError):
    pass


def resolve(store: Store, text: str, kind: str) -> str:
    """A user's spelling of a target -> one node id. Bare identifiers are looked up by their ident."""
    try:
        node_id = ids.normalize(text)
    except ids.InvalidId:
        node_id = None
    if node_id is not None:
        if kind != "node" and ids.kind_of(node_id) not in KINDS_FOR[kind]:
            raise NotFound(f"{text!r} is a {ids.kind_of(node_id)} id, not a {kind}")
        return node_id
    matches = store.resolve(text.strip(), KINDS_FOR[kind])
    if not matches:
        raise NotFound(f"no {kind} with identifier {text!r} has been seen by the pipeline")
    if len(matches) > 1:
        raise Ambiguous(f"{text!r} names {len(matches)} {kind}s; use one of: {', '.join(matches)}")
    return matches[0]


def workers_ready(settings: Settings) -> list[str]:
    run = settings.data_dir / "run"
    return sorted(p.stem for p in run.glob("worker-*.ready")) if run.exists() else []


class Service:
    def __init__(self, settings: Settings, with_sink: bool = True):
        self.settings = settings
        self.store = Store(settings.store_dsn)
        self.store.migrate()
        self.sink = KafkaSink(settings, self.store, schemas.serde_for(settings)) if with_sink else None
        self.stop = threading.Event()
        self.sink_thread: threading.Thread | None = None
        self.started = time.time()

    def start_sink(self) -> None:
        if self.sink is not None:
            self.sink_thread = threading.Thread(target=self.sink.run, args=(self.stop,), name="kafka-sink", daemon=True)
            self.sink_thread.start()

    def shutdown(self) -> None:
        self.stop.set()
        if self.sink_thread is not None:
            self.sink_thread.join(timeout=30)
        self.store.close()

    # --- answers (blocking; run in a thread by the handlers) ----------------------

    def status(self) -> dict:
        s = self.settings
        out = {"counts": self.store.counts(), "dead_letters": self.store.dead_letter_summary(),
               "workers_ready": workers_ready(s), "uptime_s": round(time.time() - self.started, 1),
               "store": "embedded chdb" if s.store_dsn.startswith("chdb://") else "clickhouse server"}
        try:
            out["lag"] = {
                "stream": kafka.lag(s, s.app_id, [s.topic_capture]),
                "sink": kafka.lag(s, s.sink_group, [s.topic_edges, s.topic_dead_letters, s.topic_capture]),
            }
        except Exception as exc:  # the broker being down is a status to report, not a crash
            out["lag"] = {"error": str(exc)}
        if self.sink is not None:
            out["sink"] = {"running": bool(self.sink_thread and self.sink_thread.is_alive()),
                           "flushes": self.sink.flushes, "rows": self.sink.flushed_rows,
                           "last_flush_ms": round(self.sink.last_flush_s * 1000, 1)}
        return out

    def recall(self, kind: str, text: str, since_ms: int | None, until_ms: int | None) -> dict:
        target = resolve(self.store, text, kind)
        started = time.perf_counter()
        result = recall.recall(self.store, target, since_ms, until_ms).as_dict()
        result["query_ms"] = round((time.perf_counter() - started) * 1000, 2)
        return result

    def trace(self, kind: str, text: str) -> dict:
        target = resolve(self.store, text, kind)
        started = time.perf_counter()
        result = recall.trace(self.store, target)
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
    async def call(fn, *args):
        try:
            return web.json_response(await asyncio.get_running_loop().run_in_executor(None, functools.partial(fn, *args)))
        except NotFound as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except Ambiguous as exc:
            return web.json_response({"error": str(exc)}, status=409)
        except ids.InvalidId as exc:
            return web.json_response({"error": str(exc)}, status=400)

    async def health(request):
        return web.json_response({"ok": True})

    async def status(request):
        return await call(service.status)

    async def do_recall(request):
        kind, text = _target(request)
        return await call(service.recall, kind, text, _int(request, "since_ms"), _int(request, "until_ms"))

    async def do_trace(request):
        kind, text = _target(request)
        return await call(service.trace, kind, text)

    async def sql(request):
        body = await request.json()
        try:
            columns, rows = await asyncio.get_running_loop().run_in_executor(
                None, service.store.query, body["sql"], body.get("parameters"))
        except Exception as exc:  # ClickHouse's own message is the useful one for an analyst
            return web.json_response({"error": str(exc).strip().splitlines()[0][:2000]}, status=400)
        return web.json_response({"columns": columns, "rows": rows}, dumps=functools.partial(_dumps))

    app = web.Application()
    app.add_routes([web.get("/health", health), web.get("/status", status), web.get("/recall", do_recall),
                    web.get("/trace", do_trace), web.post("/sql", sql)])
    return app


def _dumps(obj) -> str:
    import json

    return json.dumps(obj, default=str)


def main() -> None:
    parser = argparse.ArgumentParser(description="genealogy query service (+ Kafka sink)")
    parser.add_argument("--no-sink", action="store_true", help="answer queries only; another process runs the sink")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    service = Service(settings, with_sink=not args.no_sink)
    service.start_sink()
    try:
        web.run_app(make_app(service), host=settings.http_host, port=settings.http_port, print=None,
                    handle_signals=True)
    finally:
        service.shutdown()


if __name__ == "__main__":
    main()
