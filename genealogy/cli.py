"""`genealogy`: run the embedded stack, feed it, and ask it recall questions.

Human output by default, ``--json`` for machines. Every command takes
``--data-dir`` and talks to the stack running on it.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from enum import Enum
from typing import Annotated, NoReturn, Optional

import typer
import urllib3
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genealogy import settings as settings_mod
from genealogy.client import ServiceClient, wait_drained
from genealogy.stack import Stack, StackError, Supervisor, running_stack, stop_running

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
console = Console(stderr=True)
out = Console()

DataDir = Annotated[Optional[Path], typer.Option("--data-dir", help="Stack state directory [env GENEALOGY_DATA_DIR; default ./genealogy-data]")]
Json = Annotated[bool, typer.Option("--json", help="Machine-readable output")]


def _settings(data_dir: Path | None, **overrides) -> settings_mod.Settings:
    return settings_mod.load(data_dir=data_dir, **overrides)


def _fail(message: str, as_json: bool = False, code: int = 1) -> NoReturn:
    if as_json:
        out.print_json(data={"error": message})
    else:
        console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


def _not_running(s: settings_mod.Settings, as_json: bool) -> NoReturn:
    _fail(f"no stack is running on {s.data_dir}; start it with `genealogy up --data-dir {s.data_dir}` "
          "(or set GENEALOGY_BOOTSTRAP_SERVERS for a deployment on a real Kafka)", as_json, code=3)


def _client(s: settings_mod.Settings, as_json: bool = False) -> ServiceClient:
    """The query service of the stack running on the data directory, and only that one: with no stack
    there, another stack answering on the same port is not ours to feed or ask. A deployment on a real
    Kafka (bootstrap servers set) has no embedded stack: its service is at http_host:http_port."""
    state = running_stack(s)
    if state is None and s.embedded_broker:
        _not_running(s, as_json)
    client = ServiceClient.for_settings(s, state["service_url"] if state else None)
    try:
        code, health = client.get("/health")
    except (urllib3.exceptions.HTTPError, ValueError):
        _fail(f"no query service answers at {client.base_url}; the stack on {s.data_dir} is starting or stopping", as_json, code=3)
    if state is not None and health.get("instance") != state.get("instance"):
        _fail(f"the service at {client.base_url} belongs to another stack, not the one on {s.data_dir}", as_json, code=3)
    return client


def _bootstrap(s: settings_mod.Settings, as_json: bool) -> settings_mod.Settings:
    """Settings whose Kafka is the broker of the stack running on the data directory (or the real Kafka)."""
    state = running_stack(s)
    if state is None and s.embedded_broker:
        _not_running(s, as_json)
    return s.model_copy(update={"bootstrap_servers": state["bootstrap"]}) if state else s


def _get(s: settings_mod.Settings, path: str, as_json: bool, **params) -> dict:
    client = _client(s, as_json)
    status, body = client.get(path, **params)
    if status != 200:
        _fail(body.get("error", f"HTTP {status}"), as_json)
    return body


def _ms(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither an ISO 8601 time nor epoch milliseconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def _iso(ms: int | None) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc).isoformat(timespec="seconds")


# --- stack ----------------------------------------------------------------------

@app.command()
def up(data_dir: DataDir = None,
       workers: Annotated[Optional[int], typer.Option(help="Faust workers in the group")] = None,
       broker_port: Annotated[Optional[int], typer.Option(help="Embedded broker port")] = None,
       http_port: Annotated[Optional[int], typer.Option(help="Query service port")] = None) -> None:
    """Start the embedded stack (broker, Faust workers, sink, query service) and run until Ctrl-C."""
    s = _settings(data_dir, workers=workers, broker_port=broker_port, http_port=http_port)
    stack = Stack(s)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        with console.status("starting") as spinner:
            stack.start(progress=lambda msg: spinner.update(msg))
    except (StackError, TimeoutError, RuntimeError) as exc:
        _fail(str(exc))
    console.print(f"[green]ready[/]: query service {s.service_url}, broker {s.kafka_bootstrap}, "
                  f"{s.workers} worker(s), data in {s.data_dir.resolve()}; Ctrl-C or `genealogy down` to stop")
    if s.auth == "tokens":
        from genealogy.auth import admin_token_path

        console.print(f"admin API token in {admin_token_path(s).resolve()} (the CLI sends it; `genealogy token create` for others)")
    supervisor = Supervisor(stack, max_restarts=s.supervisor_max_restarts, window_s=s.supervisor_window_s,
                            on_event=lambda message: console.print(f"[yellow]{message}[/]"))
    failed = None
    try:
        while not stopping:
            supervisor.poll()
            time.sleep(0.5)
    except StackError as exc:
        failed = str(exc)
        console.print(f"[red]{failed}[/]; stopping")
    finally:
        console.print("stopping")
        stack.stop()
    raise typer.Exit(1 if failed else 0)


@app.command()
def down(data_dir: DataDir = None) -> None:
    """Stop the stack running on the data directory."""
    s = _settings(data_dir)
    if stop_running(s):
        console.print("stopped")
    else:
        console.print(f"no stack running on {s.data_dir}")


@app.command()
def status(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Readiness, consumer lag, row counts and dead letters. Exit code 0 once the stack is ready."""
    s = _settings(data_dir)
    client = _client(s, as_json)
    code, body = client.get("/status")
    unhealthy = body.get("unhealthy_reason") if code == 200 else body.get("error", f"HTTP {code}")
    if as_json:
        out.print_json(data=body)
        if unhealthy:
            raise typer.Exit(1)
        return
    table = Table(title=f"genealogy stack on {s.data_dir}", show_header=False)
    table.add_row("service", f"{client.base_url} ({body['store']}), up {body['uptime_s']} s")
    table.add_row("workers ready", str(len(body["workers_ready"])))
    for name, r in body.get("restarts", {}).items():
        table.add_row(f"restarts {name}", f"{r['restarts']} (last: {r['last_exit']})")
    for name, lags in body.get("lag", {}).items():
        table.add_row(f"lag {name}", json.dumps(lags))
    for name, state in body.get("groups", {}).items():
        table.add_row(f"group {name}", state)
    repairs = body.get("consumer_repairs", {})
    table.add_row("stream consumer repairs", f"{repairs.get('read_back', 0):,} skipped messages read back, "
                  f"{repairs.get('redelivered', 0):,} redeliveries handled once (live workers, since start)")
    st = body.get("worker_state", {})
    table.add_row("join state", f"{st.get('stations', 0):,} stations, {st.get('table_keys', 0):,} table keys, "
                  f"{st.get('pending_completions', 0):,} completions waiting for the watermark")
    spool = body.get("capture_spool", {})
    if spool:
        table.add_row("capture spool (HTTP)", f"{spool.get('rows', 0):,} waiting, {spool.get('quarantined', 0):,} quarantined"
                      + (f" (last error: {spool['last_error']})" if spool.get("last_error") else ""))
    for name, value in body["counts"].items():
        table.add_row(name, f"{value:,}")
    for d in body["dead_letters"]:
        table.add_row(f"dead letters {d['stage']}/{d['event_kind'] or '-'}", f"{d['count']:,}  e.g. {d['example_reason']}")
    out.print(table)
    if unhealthy:  # e.g. the sink cannot write to ClickHouse: not ready, whatever the counts say
        _fail(f"unhealthy: {unhealthy}")


# --- questions ------------------------------------------------------------------

@app.command()
def recall(lot: Annotated[Optional[str], typer.Option(help="Component lot: bare id, kind:item:id, EPC URN or Digital Link")] = None,
           serial: Annotated[Optional[str], typer.Option(help="Component serial")] = None,
           station: Annotated[Optional[str], typer.Option(help="Process window: units this station completed in --since..--until")] = None,
           operator: Annotated[Optional[str], typer.Option(help="Process window: only units this operator ran")] = None,
           since: Annotated[Optional[str], typer.Option(help="Only consumption (or completion, with --station) at or after (ISO 8601 or epoch ms)")] = None,
           until: Annotated[Optional[str], typer.Option(help="Only consumption (or completion) before")] = None,
           data_dir: DataDir = None, as_json: Json = False) -> None:
    """Forward trace: every unit, lot, container and shipment that contains the target.

    With --station: "machine M ran out of spec from t1 to t2": the units it completed then, and
    everything they went into."""
    if sum(x is not None for x in (lot, serial, station)) != 1:
        _fail("give exactly one of --lot, --serial or --station", as_json, code=2)
    if station and (since is None or until is None):
        _fail("a process window needs --since and --until", as_json, code=2)
    s = _settings(data_dir)
    body = _get(s, "/recall", as_json, lot=lot, serial=serial, station=station, operator=operator,
                since_ms=_ms(since), until_ms=_ms(until))
    if as_json:
        out.print_json(data=body)
        return
    _print_recall(body)


def _print_recall(body: dict) -> None:
    w = body["window"]
    out.print(f"[bold]Recall scope of {body['target']}[/]"
              + (f"  consumed {_iso(w['since_ms'])} .. {_iso(w['until_ms'])}" if w["since_ms"] or w["until_ms"] else ""))
    table = Table(show_header=True)
    table.add_column("granularity")
    table.add_column("units recalled", justify="right")
    table.add_column("basis")
    table.add_row("serial-level", f"{body['serial_scope']['count']:,}", "units whose as-built record contains the target")
    lots = body["lot_scope"]["production_lots"]
    table.add_row("lot-level", f"{body['lot_scope']['count']:,}",
                  f"every unit of {len(lots)} production lot(s): " + ", ".join(f"{k} ({v:,})" for k, v in list(lots.items())[:4]))
    table.add_row("difference", f"{body['difference']:,}", "units lot tracking would recall needlessly")
    out.print(table)
    out.print(f"containers: {len(body['containers']):,}   shipments: {len(body['shipments']):,}   "
              f"lots: {len(body['lots']):,}   levels: {body['levels']}   query: {body['query_ms']} ms")
    if body.get("business_transactions"):
        out.print("business transactions (whom to notify): " + ", ".join(body["business_transactions"][:10])
                  + (" ..." if len(body["business_transactions"]) > 10 else ""))
    for key, label in (("assets", "associated with assets"), ("locations", "associated with locations")):
        if body.get(key):
            out.print(f"{label}: " + ", ".join(body[key][:10]) + (" ..." if len(body[key]) > 10 else ""))
    if body["widened_by"]:
        out.print("widened by lot nodes on the path: " + ", ".join(f"{k} (+{v:,})" for k, v in body["widened_by"].items()))
    if body["shipments"]:
        out.print("shipments: " + ", ".join(body["shipments"][:20]) + (" ..." if len(body["shipments"]) > 20 else ""))
    for x in body.get("reworked", [])[:20]:
        held = "holds none of it since" if x["cleared"] else "still holds some of it after"
        out.print(f"reworked: {x['unit']} gave back {x['quantity']:g} of {x['component']} ({x['reason']}); "
                  f"{held} {_iso(x['removed_ms'])}")


@app.command()
def trace(serial: Annotated[str, typer.Option(help="Unit serial: bare id, kind:item:id, EPC URN or Digital Link")],
          data_dir: DataDir = None, as_json: Json = False) -> None:
    """Backward trace: the as-built tree of a unit, down to supplier lots, and the containers and shipments it was in."""
    s = _settings(data_dir)
    body = _get(s, "/trace", as_json, serial=serial)
    if as_json:
        out.print_json(data=body)
        return
    from rich.tree import Tree

    tree = Tree(f"[bold]{body['unit']}[/]")

    def add(branch, components):
        for c in components:
            removed = f", [yellow]taken out {_iso(c['removed_ms'])}[/]" if c.get("removed_ms") else ""
            add(branch.add(f"{c['node']}  [dim]{c['relation']} at {c['station']} {_iso(c['event_ms'])}[/]{removed}"), c["components"])

    add(tree, body["components"])
    out.print(tree)
    for c in body.get("containment", []):
        until = "now" if c["to_ms"] is None else _iso(c["to_ms"])
        out.print(f"in {c['node']}  [dim]{_iso(c['from_ms'])} .. {until}[/]")
    out.print(f"{body['node_count']} nodes, {len(body['supplier_lots'])} supplier lots, query {body['query_ms']} ms")


@app.command()
def sql(query: Annotated[str, typer.Argument(help="Read-only ClickHouse SQL; bind values with {name:Type}")],
        param: Annotated[Optional[list[str]], typer.Option("--param", "-p", help="name=value for {name:Type}")] = None,
        data_dir: DataDir = None, as_json: Json = False) -> None:
    """Analyst SQL: one SELECT over the pipeline's tables (edges, edges_by_parent, units, lot_members, units_by_station, nodes, station_facts, capture_batches, dead_letters, reprocessed, corrections, unpacked, removals, held_intervals (where each thing was when: read it FINAL), and the *_final views); capped, read-only."""
    s = _settings(data_dir)
    client = _client(s, as_json)
    params = dict(p.split("=", 1) for p in (param or []))
    code, body = client.post("/sql", {"sql": query, "parameters": params})
    if code != 200:
        _fail(body.get("error", f"HTTP {code}"), as_json)
    if as_json:
        out.print_json(data=body)
        return
    table = Table(*body["columns"])
    for row in body["rows"]:
        table.add_row(*(str(v) for v in row))
    out.print(table)


@app.command()
def linkage(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Data quality: does the serial data join? Complete as-built genealogies, broken links,
    units without production, class-level inputs, duplicate serials, dead letters."""
    from genealogy.sinks.linkage import format_linkage

    body = _get(_settings(data_dir), "/linkage", as_json)
    out.print_json(data=body) if as_json else out.print(format_linkage(body))


@app.command()
def granularity(item: Annotated[Optional[str], typer.Option(help="Part number of a produced item (default: every item)")] = None,
                lot: Annotated[Optional[str], typer.Option(help="A recall target to price")] = None,
                serial: Annotated[Optional[str], typer.Option(help="A recall target to price")] = None,
                unit_value: Annotated[Optional[float], typer.Option(help="Cost of recalling one unit")] = None,
                recall_probability: Annotated[Optional[float], typer.Option(help="Expected recalls per year")] = None,
                units_per_year: Annotated[Optional[float], typer.Option(help="Production volume (default: units in the store)")] = None,
                data_dir: DataDir = None, as_json: Json = False) -> None:
    """Lot or serial tracking? Units recalled at each granularity, the lots that widen a recall,
    and whether serial tracking pays for itself for an item."""
    from genealogy.sinks.granularity import format_granularity

    body = _get(_settings(data_dir), "/granularity", as_json, item=item, lot=lot, serial=serial, unit_value=unit_value,
                recall_probability=recall_probability, units_per_year=units_per_year)
    out.print_json(data=body) if as_json else out.print(format_granularity(body))


@app.command()
def reprocess(data_dir: DataDir = None, as_json: Json = False) -> None:
    """Recover events that arrived after the join's grace period (dead letters of stage "late"):
    recompute the affected stations' joins and correct their edges."""
    s = _settings(data_dir)
    client = _client(s, as_json)
    code, body = client.post("/reprocess", {})
    if code != 200:
        _fail(body.get("error", f"HTTP {code}"), as_json)
    if as_json:
        out.print_json(data=body)
    else:
        console.print(f"late dead letters handled: {body.get('late_dead_letters', 0)}; edges added "
                      f"{body.get('edges_added', 0)}, removed {body.get('edges_removed', 0)}; "
                      f"stations: {', '.join(body.get('stations', [])) or '-'}")


# --- feeding it -------------------------------------------------------------------


@app.command()
def ingest(files: Annotated[list[str], typer.Argument(help="Files, or - for standard input")],
           format: Annotated[str, typer.Option("--format", help="epcis (JSON / JSON-LD documents or events) or cfx (IPC-CFX messages, JSON lines)")],
           follow: Annotated[bool, typer.Option(help="Bridge mode: keep reading (a growing file, or stdin) until Ctrl-C")] = False,
           timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker to take what was spooled")] = 60.0,
           qualify_positions: Annotated[bool, typer.Option(help=(
               "CFX: a UnitIdentifier listed at several positions names a panel or carrier; its units are "
               "<UnitIdentifier>#<PositionNumber> (without this such entries are rejected, not guessed)"))] = False,
           unit_item: Annotated[str, typer.Option(help="CFX: the part number of units whose messages carry none")] = "UNKNOWN",
           data_dir: DataDir = None, as_json: Json = False) -> None:
    """Capture plant standards: EPCIS 2.0 or IPC-CFX into the pipeline, through a durable local spool.

    Bad records go to the dead letters with file, line and reason; the rest continues; the exit
    code is 1 when anything was rejected. Unknown CFX messages are kept (stage "unknown"), not errors."""
    from genealogy.producers.cfx import CfxContext
    from genealogy.producers.ingest import FORMATS, follow as follow_file, publish_path, run_bridge
    from genealogy.producers.spool import Spool

    if format not in FORMATS:
        _fail(f"--format must be one of {', '.join(FORMATS)}", as_json, code=2)
    missing = [name for name in files if name != "-" and not Path(name).is_file()] if not follow else []
    if missing:
        _fail(f"no such file: {', '.join(missing)}", as_json, code=2)
    s = _bootstrap(_settings(data_dir), as_json)
    spool = Spool.for_settings(s)
    if follow:
        if len(files) != 1:
            _fail("--follow takes one file (or -)", as_json, code=2)
        import threading

        stop = threading.Event()
        signal.signal(signal.SIGINT, lambda *a: stop.set())
        signal.signal(signal.SIGTERM, lambda *a: stop.set())
        lines = sys.stdin.buffer if files[0] == "-" else follow_file(files[0], stop)
        console.print(f"bridging {files[0]} ({format}) -> {s.kafka_bootstrap}; Ctrl-C to stop")
        context = CfxContext(unit_item=unit_item, qualify_positions=qualify_positions).restore(spool.feed_state("cfx"))

        def chunk_done(r, f) -> None:
            if format == "cfx":
                spool.save_feed_state("cfx", context.state())
            console.print(f"  {r.counts['events']} events, {r.counts['rejects']} rejects, spool backlog {f.backlog()['rows']}")

        totals = run_bridge(s, lines, format, Path(files[0]).name, spool, stop, cfx_context=context, on_chunk=chunk_done)
        out.print_json(data=totals) if as_json else console.print(f"stopped: {totals}")
        return
    # Open CFX work transactions and kitted carriers of earlier runs: a gateway restart inside a
    # transaction, or a feed cut into files, maps as one feed would.
    context = CfxContext(unit_item=unit_item, qualify_positions=qualify_positions).restore(spool.feed_state("cfx"))
    summary = {"files": [], "rejects": 0, "remaining_in_spool": 0, "quarantined_in_spool": 0}
    for name in files:
        # Streamed: memory stays bounded whatever the file's size (producers.ingest.publish_path).
        report = publish_path(s, name, format, spool, cfx_context=context if format == "cfx" else None, timeout=timeout)
        if format == "cfx":
            spool.save_feed_state("cfx", context.state())
        summary["files"].append({"file": name, **report["counts"], "reasons": report["reasons"]})
        summary["rejects"] += report["counts"]["rejects"]
        summary["remaining_in_spool"] = report["remaining"]
        # Rows the broker refused for good, moved aside in the spool file (producers.spool quarantine).
        summary["quarantined_in_spool"] += report["quarantined"]
    if as_json:
        out.print_json(data=summary)
    else:
        for f in summary["files"]:
            console.print(f"{f['file']}: {f['events']:,} events in {f['batches']} batches, {f['rejects']} rejected, "
                          f"{f['unknown']} unknown kept, {f['untraceable']} class-level")
            for reason in f["reasons"]:
                console.print(f"  [red]rejected[/] {reason}")
        if summary["remaining_in_spool"]:
            console.print(f"[yellow]{summary['remaining_in_spool']} records wait in the spool[/] for the broker; "
                          "they are safe and go with the next ingest")
    if summary["quarantined_in_spool"]:
        console.print(f"[red]{summary['quarantined_in_spool']} spool rows refused by the broker[/] were quarantined in {spool.path}")
    if summary["rejects"] or summary["remaining_in_spool"] or summary["quarantined_in_spool"]:
        raise typer.Exit(1)


class PlantFormat(str, Enum):
    native = "native"
    cfx = "cfx"


FormatOption = Annotated[PlantFormat, typer.Option("--format", help=(
    "native: the plant's capture events; cfx: its SMT and assembly stations speak IPC-CFX 2.1 (reels, and goods "
    "receipt naming each reel's supplier lot), mapped as `genealogy ingest --format cfx` does"))]


def _plant_batches(plant, fmt: PlantFormat) -> list[dict]:
    if fmt is PlantFormat.native:
        return plant.batches()
    from genealogy.producers.cfx_plant import plant_as_cfx
    from genealogy.producers.ingest import ingest_lines

    messages, native = plant_as_cfx(plant)
    return ingest_lines((json.dumps(m) for m in messages), "cfx", "plant.cfx").batches + native


@app.command()
def simulate(units: Annotated[int, typer.Option(help="Products to build")] = 5_000,
             lot_size: Annotated[int, typer.Option(help="Units per production lot")] = 5_000,
             faulty_units: Annotated[int, typer.Option(help="Units fed from the faulty capacitor batch")] = 140,
             seed: int = 7,
             disorder_ms: Annotated[int, typer.Option(help="Shuffle each station's events within this bound")] = 0,
             duplicate_every: Annotated[int, typer.Option(help="Send every N-th event twice (0 = never)")] = 0,
             bad_events: Annotated[int, typer.Option(help="Invalid events to include")] = 0,
             fmt: FormatOption = PlantFormat.native,
             data_dir: DataDir = None, as_json: Json = False) -> None:
    """Publish a simulated plant's capture events to the stack's broker."""
    from genealogy.producers.simulator import Plant

    s = _settings(data_dir)
    plant = Plant(units=units, lot_size=lot_size, faulty_units=faulty_units, seed=seed, disorder_ms=disorder_ms,
                  duplicate_every=duplicate_every, bad_events=bad_events).generate()
    sent = _publish(s, _plant_batches(plant, fmt), as_json)
    result = {"events": sent, "faulty_lot": plant.faulty_lot, "format": fmt.value, "bootstrap": s.kafka_bootstrap}
    out.print_json(data=result) if as_json else console.print(f"published {sent:,} capture events to {s.kafka_bootstrap}")


def _publish(s: settings_mod.Settings, batches: list[dict], quiet: bool) -> int:
    from genealogy.producers.publisher import DeliveryFailed, Publisher, check_broker

    s = _bootstrap(s, quiet)
    try:
        check_broker(s)
        publisher = Publisher(s)
        total = sum(len(b["events"]) for b in batches)
        with _progress(quiet) as progress:
            task = progress.add_task("publishing capture events", total=total)
            return publisher.publish(batches, progress=lambda n: progress.advance(task, n))
    except DeliveryFailed as exc:
        _fail(str(exc), quiet)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, disable=quiet)


@app.command()
def demo(fmt: FormatOption = PlantFormat.native, data_dir: DataDir = None, as_json: Json = False) -> None:
    """The brief's scenario on the embedded stack: a faulty supplier batch in a 5,000-unit lot; serial vs lot recall.

    Uses the stack running on --data-dir, or starts one for the run and stops it afterwards. With
    --format cfx the stations load reels and the recall goes from the supplier lot through them."""
    from genealogy.producers.simulator import Plant

    s = _settings(data_dir)
    plant = Plant(units=5_000, lot_size=5_000, faulty_units=140, bad_events=3).generate()
    stack = None
    if not running_stack(s):
        stack = Stack(s)
        try:
            with console.status("starting the embedded stack") as spinner:
                stack.start(progress=lambda msg: spinner.update(f"starting: {msg}"))
        except (StackError, TimeoutError, RuntimeError) as exc:
            _fail(str(exc), as_json)
    try:
        client = _client(s)
        code, present = client.post("/sql", {"sql": "SELECT uniqExact(unit) FROM lot_members WHERE production_lot = {lot:String}",
                                             "parameters": {"lot": plant.first_product_lot}})
        already = code == 200 and present["rows"] and present["rows"][0][0] >= plant.lot_size
        if already:
            console.print("demo plant already in the store; asking it again")
        else:
            _publish(s, _plant_batches(plant, fmt), as_json)
            _publish_corrupt(s)
            with console.status("stream joining, sink writing") as spinner:
                wait_drained(client, settle_s=s.idle_flush_s * 2 + 3, on_poll=lambda st: spinner.update(
                    f"edges {st['counts']['edges']:,}  units {st['counts']['units']:,}  dead letters {st['counts']['dead_letters']:,}"))
        _, body = client.get("/recall", lot=plant.faulty_lot)
        _, st = client.get("/status")
        body["store_counts"] = st["counts"]
        body["dead_letters"] = st["dead_letters"]
        if as_json:
            out.print_json(data=body)
        else:
            out.print("[bold]A supplier capacitor batch is found faulty.[/] What must be recalled?\n")
            _print_recall(body)
            out.print(f"\nfrom the store: {st['counts']['edges']:,} edges, {st['counts']['units']:,} units, "
                      f"{st['counts']['dead_letters']:,} dead letters (inspect: genealogy status)")
    finally:
        if stack is not None:
            stack.stop()


def _publish_corrupt(s: settings_mod.Settings) -> None:
    """One message that is not Avro at all, so the demo shows a decode dead letter too."""
    from genealogy.producers.publisher import Publisher

    publisher = Publisher(s)
    publisher.send_raw(b"ASSY-1", b"{not avro: a gateway sent JSON by mistake}")
    publisher.flush()


# --- the stack's processes (what `genealogy up` starts; run by hand on a real deployment) ----------

@app.command()
def serve(no_sink: Annotated[bool, typer.Option("--no-sink", help="Answer queries only; another process runs the sink")] = False) -> None:
    """Run the query service and the Kafka -> ClickHouse sink in this process, until SIGINT or SIGTERM."""
    from genealogy.auth import AuthNotConfigured, check_bind
    from genealogy.service import serve as run

    s = settings_mod.load()
    try:
        check_bind(s)  # before opening the store: refuse at once, with the reason
    except AuthNotConfigured as exc:
        _fail(str(exc), code=2)
    run(s, with_sink=not no_sink)


@app.command()
def worker(loglevel: Annotated[str, typer.Option(help="Faust log level")] = "warn") -> None:
    """Run one Faust worker of the streaming join in this process, until SIGINT or SIGTERM."""
    from genealogy.streams.app import run_worker

    run_worker(settings_mod.load(), loglevel=loglevel)


@app.command()
def objectstore(root: Annotated[Path, typer.Option(help="Directory that holds the buckets")],
                port: Annotated[int, typer.Option(help="Loopback port")],
                fsync: Annotated[bool, typer.Option(help="fsync each object before acknowledging it")] = True) -> None:
    """Run the embedded broker's durable object store (S3 API, loopback only), until SIGINT or SIGTERM."""
    from genealogy.objectstore import serve as run

    run(root, port, fsync=fsync)


token_app = typer.Typer(no_args_is_help=True, help="API tokens of the query service (stored hashed under the data directory).")
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(role: Annotated[str, typer.Option(help="reader (GET queries), capture (POST /capture, /events) or admin (everything)")],
                 label: Annotated[str, typer.Option(help="Who or what uses it, for `genealogy token list`")] = "",
                 data_dir: DataDir = None, as_json: Json = False) -> None:
    """Create a token; it is printed once and only its SHA-256 is stored. A running service accepts it at once."""
    from genealogy.auth import ROLES, TokenStore

    if role not in ROLES:
        _fail(f"--role must be one of {', '.join(ROLES)}", as_json, code=2)
    token, entry = TokenStore.for_settings(_settings(data_dir)).create(role, label)
    if as_json:
        out.print_json(data={"token": token, **entry.public()})
    else:
        console.print(f"{entry.role} token {entry.id} created; it is shown only now:")
        out.print(token, soft_wrap=True)


@token_app.command("bootstrap")
def token_bootstrap(data_dir: DataDir = None) -> None:
    """Make sure an admin token exists in <data-dir>/run/admin.token (0600), as `genealogy up` does: a
    deployment's service container runs it before `genealogy serve` (idempotent)."""
    from genealogy.auth import admin_token_path, ensure_admin_token

    s = _settings(data_dir)
    ensure_admin_token(s)
    console.print(f"admin token in {admin_token_path(s)}")


@token_app.command("list")
def token_list(data_dir: DataDir = None, as_json: Json = False) -> None:
    """The tokens (id, role, label, creation time; never the token)."""
    from genealogy.auth import TokenStore

    entries = [e.public() for e in TokenStore.for_settings(_settings(data_dir)).entries()]
    if as_json:
        out.print_json(data=entries)
        return
    table = Table("id", "role", "label", "created")
    for e in entries:
        table.add_row(e["id"], e["role"], e["label"], e["created"])
    out.print(table)


@token_app.command("revoke")
def token_revoke(token_id: Annotated[str, typer.Argument(help="The id `genealogy token list` shows (or its first 6+ characters)")],
                 data_dir: DataDir = None, as_json: Json = False) -> None:
    """Revoke a token; a running service refuses it from its next request on."""
    from genealogy.auth import TokenStore

    try:
        gone = TokenStore.for_settings(_settings(data_dir)).revoke(token_id)
    except ValueError as exc:
        _fail(str(exc), as_json, code=2)
    if not gone:
        _fail(f"no token with id {token_id}", as_json)
    out.print_json(data=[e.public() for e in gone]) if as_json else console.print(f"revoked {', '.join(e.id for e in gone)}")


spool_app = typer.Typer(no_args_is_help=True, help="The durable capture spool in front of Kafka.")
app.add_typer(spool_app, name="spool")


@spool_app.command("forward")
def spool_forward(spool: Annotated[Optional[Path], typer.Option(help="Spool file [default <data-dir>/spool/capture.db]")] = None,
                  follow: Annotated[bool, typer.Option(help="Keep forwarding until SIGINT or SIGTERM")] = False,
                  timeout: Annotated[float, typer.Option(help="Seconds to wait for the broker's acks")] = 60.0,
                  data_dir: DataDir = None, as_json: Json = False) -> None:
    """Send what a spool holds to Kafka; rows are deleted only once the broker acknowledged them."""
    import threading

    from genealogy.producers.spool import forward

    s = _settings(data_dir)
    stop = threading.Event()
    if follow:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
    backlog = forward(s, spool, follow=follow, timeout=timeout, stop=stop)
    if as_json:
        out.print_json(data=backlog)
    else:
        console.print(f"{backlog['delivered']:,} rows forwarded, {backlog['rows']:,} still spooled"
                      + (f" (last error: {backlog['last_error']})" if backlog["last_error"] else ""))
    # Rows left over are not lost (they stay spooled), but a one-shot run that leaves some says so.
    if backlog["rows"] and not follow:
        raise typer.Exit(1)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
