"""End-to-end throughput, freshness and worker memory of the embedded pipeline, with peers.

    python -m bench.throughput --events 1000000 --workers 1 2 3 --freshness-seconds 60

For each worker count a fresh embedded stack (Tansu broker, Faust workers, chdb
sink) gets a pre-encoded simulated plant as fast as the producer can send it;
throughput is capture events per second from the first send until the last edge
is queryable in ClickHouse. In the same run, on the same machine:

* raw consume: a bare confluent-kafka loop reading the same capture topic and
  decoding its Avro: the ceiling for any Python consumer of this feed;
* derive only: the stream's pure logic (decode, validate, join, edges) in one
  process with no Kafka: the ceiling for one worker;
* bare insert: rows/s of the same edges straight into embedded ClickHouse;
* worker RSS after the run; with --rss-events, a long run on one worker that
  streams the plant in segments of --rss-step events (a feed far larger than
  memory) and reads the worker's RSS after each: retention must keep it flat;
* freshness: a paced feed at --freshness-rate events/s with live timestamps;
  per edge, inserted_at - event_time in ClickHouse, p50/p99, split into explicit
  and containment edges (pipeline latency) and temporal edges (which also wait
  for the join's grace period by design).
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import platform
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from confluent_kafka import KafkaError

from genealogy import schemas
from genealogy.kafka import free_port
from genealogy.settings import Settings
from genealogy.client import ServiceClient
from genealogy.stack import Stack
from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import BASE_MS, Plant
from genealogy.domain.derive import derive
from genealogy.schemas import derived_messages

EVENTS_PER_UNIT = 3.1  # simulator's average capture events per product unit


def plant_for(events: int, lines: int, **kw) -> Plant:
    return Plant(units=max(1, int(events / EVENTS_PER_UNIT / lines)), lot_size=5_000, lines=lines, batch_size=500, **kw).generate()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def rss_curve(workdir: Path, total: int, step: int, lines: int) -> list[dict]:
    """One worker fed a long plant segment by segment; its RSS (and the broker's) once each segment is in ClickHouse.
    The next segment is generated while the current one drains."""
    from concurrent.futures import ThreadPoolExecutor

    serde = schemas.local_serde()
    seg_units = max(2_000, round(step / EVENTS_PER_UNIT / lines / 2_000) * 2_000)

    def segment(k: int) -> tuple[int, list[tuple[bytes, bytes]]]:
        batches = Plant(units=seg_units, first_unit=k * seg_units, lot_size=5_000, lines=lines, batch_size=500).generate().batches()
        return sum(len(b["events"]) for b in batches), [(b["source"].encode(), serde.encode(schemas.CAPTURE, b)) for b in batches]

    stack = stack_for(workdir, 1, idle_flush_s=1.0)
    curve, events, t0 = [], 0, time.time()
    try:
        publisher = Publisher(stack.settings)
        client = ServiceClient.for_settings(stack.settings)
        worker = next(p for name, p in stack.procs.items() if name.startswith("worker"))
        with ThreadPoolExecutor(1) as pool:
            upcoming = pool.submit(segment, 0)
            k = 0
            while events < total:
                n, encoded = upcoming.result()
                k += 1
                upcoming = pool.submit(segment, k) if events + n < total else None
                for key, value in encoded:
                    publisher.send_raw(key, value)
                publisher.flush()
                del encoded
                _, st = drained(client)
                events += n
                state = json.loads((stack.settings.data_dir / "run" / f"worker-{worker.pid}.ready").read_text())["state"]
                curve.append({"events": events, "seconds": round(time.time() - t0), "edges": st["counts"]["edges"],
                              "worker_rss_mb": round(rss_mb(worker.pid), 1), "worker_state": state,
                              "broker_rss_mb": round(rss_mb(stack.procs["broker"].pid), 1) if "broker" in stack.procs else None})
                print(json.dumps(curve[-1]), flush=True)
    finally:
        stack.stop()
    return curve


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stack_for(workdir: Path, workers: int, **kw) -> Stack:
    s = Settings(data_dir=workdir / f"stack-{workers}-{time.time_ns()}", broker_port=free_port(), http_port=free_port(),
                 workers=workers, partitions=max(4, workers * 2), **kw)
    stack = Stack(s)
    stack.start()
    return stack


LAST_EDGE_SQL = "SELECT toUnixTimestamp64Milli(max(inserted_at)) FROM edges"


def drained(client: ServiceClient, settle_s: float = 3.0, timeout: float = 3600) -> tuple[float, dict]:
    """Wall time at which the last edge row was inserted, once no lag is left and the counts stay put.
    Polled once a second: a /status costs the service and the broker ~20 ms of CPU or more (lag, exact
    counts), which a faster poll takes from the pipeline it measures; the end time comes from the store."""
    last, changed = None, time.time()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, st = client.get("/status")
        lag = st.get("lag", {})
        idle = "error" not in lag and all(v == 0 for g in lag.values() for v in g.values())
        if st["counts"] != last:
            last, changed = st["counts"], time.time()
        elif idle and time.time() - changed >= settle_s:
            _, body = client.post("/sql", {"sql": LAST_EDGE_SQL})
            return body["rows"][0][0] / 1000, st
        time.sleep(1.0)
    raise TimeoutError("pipeline did not drain")


def end_to_end(workdir: Path, workers: int, encoded: list[tuple[bytes, bytes]], n_events: int) -> dict:
    stack = stack_for(workdir, workers, idle_flush_s=1.0)
    try:
        publisher = Publisher(stack.settings)
        cpu0 = {name: cpu_s(p.pid) for name, p in stack.procs.items()} | {"producer (this process)": cpu_s(os.getpid())}
        t0 = time.time()
        for key, value in encoded:
            publisher.send_raw(key, value)
        publisher.flush()
        produced = time.time() - t0
        cpu_produce = cpu_s(os.getpid())
        done, st = drained(ServiceClient.for_settings(stack.settings))
        cpu1 = {name: cpu_s(p.pid) for name, p in stack.procs.items()} | {"producer (this process)": cpu_produce}
        # Where the CPU went, per process, in CPU seconds per million capture events: on 2 cores, the
        # sum is what the machine must spend for a million events, whatever the number of workers.
        cpu = {name: round((cpu1[name] - cpu0[name]) * 1e6 / n_events, 1) for name in cpu0}
        rss = {name: round(rss_mb(p.pid), 1) for name, p in stack.procs.items() if name.startswith("worker")}
        raw = raw_consume(stack.settings, len(encoded))
        return {"workers": workers, "events": n_events, "seconds": round(done - t0, 1),
                "events_per_s": round(n_events / (done - t0)), "produce_events_per_s": round(n_events / produced),
                "edges": st["counts"]["edges"], "worker_rss_mb": rss, "cpu_s_per_million_events": cpu, **raw}
    finally:
        stack.stop()


def raw_consume(settings: Settings, messages: int) -> dict:
    from confluent_kafka import Consumer

    serde = schemas.local_serde()
    consumer = Consumer({**settings.kafka_config, "group.id": f"raw-{time.time_ns()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([settings.topic_capture])
    seen = events = 0
    t0 = None
    deadline = time.monotonic() + 300
    while seen < messages and time.monotonic() < deadline:
        for m in consumer.consume(1000, 1.0):
            if m.error():
                continue
            t0 = t0 or time.time()
            seen += 1
            try:
                events += len(serde.decode(m.value())[1]["events"])
            except schemas.DecodeError:
                pass
    elapsed = time.time() - (t0 or time.time())
    consumer.close()
    return {"raw_consume_events_per_s": round(events / elapsed) if elapsed else None}


def derive_only(batches: list[dict], n_events: int) -> dict:
    """What a worker does per capture message, without Kafka: decode, derive, encode what it derived."""
    serde = schemas.local_serde()
    encoded = [serde.encode(schemas.CAPTURE, b) for b in batches]
    state: dict = {}
    t0 = time.perf_counter()
    edges = []
    for data in encoded:
        _, batch = serde.decode(data)
        out = derive(batch, state, 10_000, 6 * 3600 * 1000)
        edges.extend(out.edges)
        for message in derived_messages(batch["batch_id"], out):
            serde.encode(schemas.DERIVED, message)
    elapsed = time.perf_counter() - t0
    return {"derive_events_per_s": round(n_events / elapsed), "edges": edges}


def bare_insert(workdir: Path, edges: list[dict]) -> dict:
    """The sink's insert of the same edges, in its batch size, with nothing else running."""
    from genealogy.sinks.connection import Connection
    from genealogy.sinks.writer import Writer

    connection = Connection(f"chdb://{workdir / f'bare-{time.time_ns()}'}")
    connection.migrate()
    writer = Writer(connection)
    batches = [schemas.columns(edges[i:i + 50_000], "edges") for i in range(0, len(edges), 50_000)]
    t0 = time.perf_counter()
    for columns in batches:
        writer.insert_derived("edges", columns)
    elapsed = time.perf_counter() - t0
    connection.close()
    return {"bare_insert_edges_per_s": round(len(edges) / elapsed)}


def freshness(workdir: Path, rate: int, seconds: int, grace_ms: int) -> dict:
    """A live feed: each batch is sent when its newest event has happened."""
    lines = 3
    cycle_ms = max(1, round(1000 * lines * EVENTS_PER_UNIT / rate))
    units = int(rate * seconds / EVENTS_PER_UNIT / lines)
    batches = Plant(units=units, lot_size=5_000, lines=lines, batch_size=50, cycle_ms=cycle_ms).generate().batches(linger_ms=100)
    stack = stack_for(workdir, 1, idle_flush_s=1.0, sink_flush_s=0.2, grace_ms=grace_ms)
    try:
        # The plant's clock starts once the stack is up: every event is live, none queued while it started.
        start_ms = int(time.time() * 1000) + 2_000
        shift = start_ms - BASE_MS
        for b in batches:
            b["sent_ms"] += shift
            for _, e in b["events"]:
                e["event_ms"] += shift
        publisher = Publisher(stack.settings)
        serde = publisher.serde
        for b in batches:
            wait = b["sent_ms"] / 1000 - time.time()
            if wait > 0:
                time.sleep(wait)
            publisher.send_raw(b["source"].encode(), serde.encode(schemas.CAPTURE, b))
        publisher.flush()
        client = ServiceClient.for_settings(stack.settings)
        drained(client)
        code, body = client.post("/sql", {"sql": """
            SELECT relation = 'consumed' AS temporal, count(),
                   quantile(0.5)(dateDiff('millisecond', event_time, inserted_at)),
                   quantile(0.99)(dateDiff('millisecond', event_time, inserted_at))
            FROM edges WHERE event_time >= fromUnixTimestamp64Milli({t:Int64}) GROUP BY temporal ORDER BY temporal""",
                                          "parameters": {"t": start_ms}})
        # The offered rate: the busiest 10 s of event time (the feed ramps up and down: assembly runs
        # 30 s and packing 60 s behind the boards). Coating lots are made before the feed starts.
        live = sorted(e["event_ms"] for b in batches for _, e in b["events"] if e["event_ms"] >= start_ms)
        peak = max(bisect.bisect_left(live, t + 10_000) - i for i, t in enumerate(live)) / 10
        out = {"rate_events_per_s": round(peak), "seconds": round((live[-1] - start_ms) / 1000), "grace_ms": grace_ms}
        for temporal, n, p50, p99 in body["rows"]:
            out["temporal" if temporal else "explicit"] = {"edges": n, "p50_ms": p50, "p99_ms": p99}
        for kind, hop in hops(stack.settings, client, serde, start_ms).items():
            out[kind]["hops"] = hop
        return out
    finally:
        stack.stop()


def hops(settings: Settings, client: ServiceClient, serde: schemas.Serde, start_ms: int) -> dict:
    """Where an edge's freshness goes, p50 / p99 ms per hop: event time -> its capture message in Kafka
    (gateway linger, publish) -> the worker's edges message (fetch, join: the grace for temporal edges)
    -> its row in ClickHouse (the sink's fetch and flush interval, the insert). Message timestamps are
    the producers' clocks, on this same machine."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    reader = Consumer({**settings.kafka_config, "group.id": f"hops-{time.time_ns()}",
                       "enable.auto.commit": False, "enable.partition.eof": True})
    reader.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in (settings.topic_capture, settings.topic_edges)
                   for p in range(settings.partitions)])
    captured, derived, open_ = {}, {}, 2 * settings.partitions
    while open_:
        for m in reader.consume(10_000, 1.0):
            if m.error():
                open_ -= m.error().code() == KafkaError._PARTITION_EOF
                continue
            name, record = serde.decode(m.value())
            if name == schemas.CAPTURE:
                captured.update((e["event_id"], m.timestamp()[1]) for _, e in record["events"])
            elif name == schemas.DERIVED:
                derived.update((edge_id, m.timestamp()[1]) for edge_id in record["edges"]["edge_id"])
    reader.close()
    _, body = client.post("/sql", {"sql": """
        SELECT relation = 'consumed', edge_id, toUnixTimestamp64Milli(event_time), toUnixTimestamp64Milli(inserted_at),
               splitByChar('+', source_event)[1]
        FROM edges WHERE event_time >= fromUnixTimestamp64Milli({t:Int64})""", "parameters": {"t": start_ms}})
    spans: dict[str, list[list[int]]] = {"explicit": [[], [], []], "temporal": [[], [], []]}
    for temporal, edge_id, event_ms, inserted_ms, event_id in body["rows"]:
        if edge_id in derived and event_id in captured:
            span = spans["temporal" if temporal else "explicit"]
            span[0].append(captured[event_id] - event_ms)
            span[1].append(derived[edge_id] - captured[event_id])
            span[2].append(inserted_ms - derived[edge_id])

    def p(values: list[int], q: float) -> int:
        return sorted(values)[min(len(values) - 1, int(len(values) * q))] if values else 0

    return {kind: {hop: [p(v, 0.5), p(v, 0.99)] for hop, v in zip(("capture", "worker", "sink"), s)}
            for kind, s in spans.items()}


def machine() -> str:
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), platform.processor())
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024 / 1024
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, load average {os.getloadavg()[0]:.2f} at start"


def report(results: dict) -> str:
    title = ("Pipeline throughput" if results["end_to_end"] else "Worker memory" if results.get("rss") else "Freshness")
    lines = [f"# {title}, {results['date']}", "", f"Machine: {results['machine']}. "
             f"Embedded stack: Tansu broker, Faust workers, chdb sink, all on this machine.", ""]
    if results["end_to_end"]:
        lines += ["| workers | capture events | end-to-end events/s | seconds | ratio to raw consume | worker RSS MB |",
                  "|---:|---:|---:|---:|---:|---|"]
        for r in results["end_to_end"]:
            ratio = r["events_per_s"] / r["raw_consume_events_per_s"] if r.get("raw_consume_events_per_s") else float("nan")
            lines.append(f"| {r['workers']} | {r['events']:,} | {r['events_per_s']:,} | {r['seconds']} | {ratio:.2f} | "
                         f"{', '.join(f'{v}' for v in r['worker_rss_mb'].values())} |")
        lines += ["", "CPU seconds per million capture events, by process (2 cores give at most 2 CPU seconds per second; "
                  "the service runs the sink and embedded ClickHouse):", "",
                  "| workers | broker | service (sink + ClickHouse) | workers, all | producer | all |",
                  "|---:|---:|---:|---:|---:|---:|"]
        for r in results["end_to_end"]:
            cpu = r.get("cpu_s_per_million_events", {})
            workers = sum(v for k, v in cpu.items() if k.startswith("worker"))
            lines.append(f"| {r['workers']} | {cpu.get('broker', 0):.1f} | {cpu.get('service', 0):.1f} | {workers:.1f} | "
                         f"{cpu.get('producer (this process)', 0):.1f} | {sum(cpu.values()):.1f} |")
        peers = results["peers"]
        lines += ["", "| peer, same data, same machine | rate |", "|---|---:|",
                  f"| producer (confluent-kafka, idempotent) | {results['end_to_end'][0]['produce_events_per_s']:,} events/s |",
                  f"| raw confluent-kafka consume + Avro decode | {results['end_to_end'][0].get('raw_consume_events_per_s') or 0:,} events/s |",
                  f"| stream logic alone (decode, validate, join, encode), one process | {peers['derive_events_per_s']:,} events/s |",
                  f"| bare ClickHouse insert of the derived edges (chdb) | {peers['bare_insert_edges_per_s']:,} edges/s |"]
    if results.get("rss"):
        first, last = results["rss"][0], results["rss"][-1]
        lines += ["", "Worker memory over a long feed, one worker, the plant streamed in segments "
                  "(each drained into ClickHouse before the RSS is read):", "",
                  "| capture events handled | edges | seconds | events/s so far | worker RSS MB | join table keys "
                  "| pending completions | Python heap blocks | broker RSS MB |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in results["rss"]:
            state = r.get("worker_state", {})
            lines.append(f"| {r['events']:,} | {r['edges']:,} | {r['seconds']} | {r['events'] / max(r['seconds'], 1):,.0f} | "
                         f"{r['worker_rss_mb']} | {state.get('table_keys', 0):,} | {state.get('pending_completions', 0):,} | "
                         f"{state.get('python_blocks', 0):,} | {r['broker_rss_mb']} |")
        lines += ["", f"Worker RSS x{last['worker_rss_mb'] / first['worker_rss_mb']:.2f} from "
                      f"{first['events']:,} to {last['events']:,} events."]
    if results.get("freshness"):
        lines += ["", "Freshness, one worker, a live paced feed (event time to queryable in ClickHouse), and per hop "
                  "(p50 / p99 ms): event -> capture message in Kafka -> the worker's edges message -> row in ClickHouse:", "",
                  "| offered events/s (busiest 10 s) | seconds | join grace ms | edges | count | p50 ms | p99 ms "
                  "| capture | worker | sink |", "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for f in results["freshness"]:
            for k in ("explicit", "temporal"):
                if k in f:
                    hop = f[k].get("hops", {})
                    lines.append(f"| {f['rate_events_per_s']:,} | {f['seconds']} | {f.get('grace_ms', 10_000):,} | {k} | {f[k]['edges']:,} | "
                                 f"{f[k]['p50_ms']:,.0f} | {f[k]['p99_ms']:,.0f} | "
                                 + " | ".join(f"{hop[h][0]:,} / {hop[h][1]:,}" if h in hop else "" for h in ("capture", "worker", "sink"))
                                 + " |")
        lines.append("")
        lines.append("Temporal (consumed) edges wait for the station watermark, the newest event time minus the join's grace, "
                     "by design: their freshness is the grace plus the pipeline's latency. Explicit edges (installed, "
                     "packed, transformed) wait for nothing. The feed here is in order, so a short grace loses nothing.")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--lines", type=int, default=6, help="plant lines: 4 stations each, spread over partitions")
    ap.add_argument("--freshness-rate", type=int, nargs="+", default=[10_000])
    ap.add_argument("--freshness-seconds", type=int, default=60, help="0 skips the freshness run")
    ap.add_argument("--freshness-grace-ms", type=int, nargs="+", default=[Settings().grace_ms],
                    help="the join's grace period(s) for the freshness runs")
    ap.add_argument("--rss-events", type=int, default=0, help="a long one-worker run of this many events for the RSS curve")
    ap.add_argument("--rss-step", type=int, default=1_000_000, help="events per segment of the --rss-events run")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="genealogy-throughput-"))
    results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(), "end_to_end": []}

    if args.events:
        print(f"generating {args.events:,} capture events ...", flush=True)
        plant = plant_for(args.events, args.lines)
        batches = plant.batches()
        n_events = sum(len(b["events"]) for b in batches)
        serde = schemas.local_serde()
        encoded = [(b["source"].encode(), serde.encode(schemas.CAPTURE, b)) for b in batches]

        print("stream logic alone ...", flush=True)
        d = derive_only(batches, n_events)
        results["peers"] = {"derive_events_per_s": d["derive_events_per_s"]}
        print("bare ClickHouse insert ...", flush=True)
        results["peers"].update(bare_insert(workdir, d.pop("edges")))
        for w in args.workers:
            print(f"end to end with {w} worker(s) ...", flush=True)
            results["end_to_end"].append(end_to_end(workdir, w, encoded, n_events))
            print(json.dumps(results["end_to_end"][-1]), flush=True)
    if args.rss_events:
        print(f"worker RSS over {args.rss_events:,} events, one worker ...", flush=True)
        results["rss"] = rss_curve(workdir, args.rss_events, args.rss_step, args.lines)
    results["freshness"] = []
    for rate in args.freshness_rate if args.freshness_seconds else []:
        print(f"freshness at {rate:,} events/s for {args.freshness_seconds} s ...", flush=True)
        for grace_ms in args.freshness_grace_ms:
            results["freshness"].append(freshness(workdir, rate, args.freshness_seconds, grace_ms))
            print(json.dumps(results["freshness"][-1]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    name = "throughput" if results["end_to_end"] else "rss" if results.get("rss") else "freshness"
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2))
    text = report(results)
    (args.out / f"{name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
