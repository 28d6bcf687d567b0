"""What the durable embedded broker costs and what it bounds (issue: a durable embedded stack).

    python -m bench.durability --events 1000000 --rss-events 10000000 --rss-step 1000000

In one run, on one machine:

* throughput: the same pre-encoded plant through a fresh stack with the broker on
  ``memory://`` (today's figure) and on the durable object store, alternately, so that the
  ratio is measured under the same conditions (bench.throughput's end-to-end method);
* memory and disk over a long feed: one stack on the durable broker fed ``--rss-events``
  capture events in segments; after each segment drains, the RSS of the broker, its object
  store, the worker and the service, and the broker's bytes on disk;
* recovery: after the first segment and after the last, every process of the stack is
  SIGKILLed (a power cut) and the stack started again on the same data directory; how long
  until it is ready, and until a small new segment is joined and stored. The join state must
  have survived: that segment's temporal edges depend on reels loaded before the cut.

Results go to bench/results/durability.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from bench.throughput import EVENTS_PER_UNIT, drained, end_to_end, free_port, machine, plant_for, rss_mb
from genealogy import schemas
from genealogy.client import ServiceClient
from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import Plant
from genealogy.settings import Settings
from genealogy.stack import Stack


def du_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def encoded_segment(serde, k: int, units: int, lines: int) -> tuple[int, list[tuple[bytes, bytes]]]:
    batches = Plant(units=units, first_unit=k * units, lot_size=5_000, lines=lines, batch_size=500).generate().batches()
    return sum(len(b["events"]) for b in batches), [(b["source"].encode(), serde.encode(schemas.CAPTURE, b)) for b in batches]


def feed(stack: Stack, encoded: list[tuple[bytes, bytes]]) -> dict:
    publisher = Publisher(stack.settings)
    for key, value in encoded:
        publisher.send_raw(key, value)
    publisher.flush()
    return drained(ServiceClient.for_settings(stack.settings))[1]


def power_cut_and_restart(stack: Stack, probe: list[tuple[bytes, bytes]], probe_events: int) -> tuple[Stack, dict]:
    """SIGKILL every process, start a new stack on the same data directory and ports, feed the probe."""
    for proc in stack.procs.values():
        os.kill(proc.pid, signal.SIGKILL)
    for proc in stack.procs.values():
        proc.wait()
    stack.stop()  # nothing left to signal: ends the dead stack's log trimming thread
    (stack.settings.data_dir / "run" / "stack.json").unlink(missing_ok=True)
    t0 = time.time()
    again = Stack(stack.settings)
    again.start(ready_timeout=3600)
    ready = time.time() - t0
    st = feed(again, probe)
    return again, {"ready_s": round(ready, 1), "ready_and_probe_stored_s": round(time.time() - t0, 1),
                   "probe_events": probe_events, "edges_after": st["counts"]["edges"]}


def long_run(workdir: Path, total: int, step: int, lines: int) -> dict:
    serde = schemas.local_serde()
    units = max(2_000, round(step / EVENTS_PER_UNIT / lines / 2_000) * 2_000)
    settings = Settings(data_dir=workdir / "long", broker_port=free_port(), http_port=free_port(), idle_flush_s=1.0,
                        broker_storage="objectstore")
    stack = Stack(settings)
    stack.start()
    curve, recoveries, events, t0, k = [], [], 0, time.time(), 0
    try:
        with ThreadPoolExecutor(1) as pool:
            upcoming = pool.submit(encoded_segment, serde, 0, units, lines)
            while events < total:
                n, encoded = upcoming.result()
                k += 1
                upcoming = pool.submit(encoded_segment, serde, k, units, lines)
                fed_at = time.time()
                st = feed(stack, encoded)
                del encoded
                events += n
                segment_s = time.time() - fed_at
                worker = next(p for name, p in stack.procs.items() if name.startswith("worker"))
                curve.append({"events": events, "seconds": round(time.time() - t0), "edges": st["counts"]["edges"],
                              "segment_events_per_s": round(n / segment_s),
                              "trimmed_batches": stack.retention.trimmed_batches if stack.retention else 0,
                              "broker_objects": sum(1 for _ in stack.broker_dir.rglob("*.batch")),
                              **{f"{name}_rss_mb": round(rss_mb(p.pid), 1) for name, p in stack.procs.items()
                                 if name in ("broker", "objectstore", "service") or p is worker},
                              "broker_disk_mb": round(du_bytes(stack.broker_dir) / 1e6, 1)})
                print(json.dumps(curve[-1]), flush=True)
                if len(curve) == 1 or events >= total:
                    # The next segment continues the plant: its first units consume reels loaded before the cut.
                    n_probe, probe = upcoming.result()
                    k += 1
                    upcoming = pool.submit(encoded_segment, serde, k, units, lines)
                    stack, recovery = power_cut_and_restart(stack, probe, n_probe)
                    events += n_probe
                    recovery["retained_events"] = events - n_probe
                    recoveries.append(recovery)
                    print(json.dumps(recovery), flush=True)
    finally:
        stack.stop()
    return {"curve": curve, "recoveries": recoveries}


def report(results: dict) -> str:
    lines = [f"# Durable embedded stack ({results['started']})", "", f"Machine: {results['machine']}", "",
             "## Throughput: broker storage, same plant, alternating runs", "",
             "| broker storage | events | seconds | events/s | ratio to memory | edges |", "|---|---:|---:|---:|---:|---:|"]
    base = {}
    for r in results["throughput"]:
        base.setdefault(r["run"], {})[r["storage"]] = r["events_per_s"]
    for r in results["throughput"]:
        ratio = r["events_per_s"] / base[r["run"]]["memory"] if "memory" in base[r["run"]] else float("nan")
        lines.append(f"| {r['storage']} (run {r['run']}) | {r['events']:,} | {r['seconds']} | {r['events_per_s']:,} | "
                     f"{ratio:.2f} | {r['edges']:,} |")
    if results.get("long"):
        curve = results["long"]["curve"]
        names = [k for k in curve[0] if k.endswith("_rss_mb")]
        lines += ["", "## Memory and disk over a long feed (durable broker)", "",
                  "| capture events | edges | segment events/s | " + " | ".join(n.replace("_rss_mb", " RSS MB") for n in names)
                  + " | broker disk MB | batch objects kept | batches trimmed |",
                  "|---:|---:|---:|" + "---:|" * len(names) + "---:|---:|---:|"]
        for c in curve:
            lines.append(f"| {c['events']:,} | {c['edges']:,} | {c.get('segment_events_per_s', '')} | "
                         + " | ".join(f"{c[n]}" for n in names)
                         + f" | {c['broker_disk_mb']} | {c.get('broker_objects', '')} | {c.get('trimmed_batches', '')} |")
        first, last = curve[0], curve[-1]
        lines += ["", "Ratio last / first segment: " + ", ".join(
            f"{n.replace('_rss_mb', '')} x{last[n] / first[n]:.2f}" for n in names if first[n]), "",
            "## Recovery after a power cut (every process SIGKILLed)", "",
            "| capture events retained | up to ready s | ready + a new segment stored s | edges after |",
            "|---:|---:|---:|---:|"]
        for r in results["long"]["recoveries"]:
            lines.append(f"| {r['retained_events']:,} | {r['ready_s']} | {r['ready_and_probe_stored_s']} | {r['edges_after']:,} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=1_000_000, help="events per throughput run (0 skips)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating memory/objectstore throughput rounds")
    ap.add_argument("--lines", type=int, default=6)
    ap.add_argument("--rss-events", type=int, default=10_000_000, help="the long run's capture events (0 skips)")
    ap.add_argument("--rss-step", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()
    results = {"started": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(), "throughput": []}
    with tempfile.TemporaryDirectory(prefix="genealogy-durability-") as tmp:
        workdir = Path(tmp)
        if args.events:
            serde = schemas.local_serde()
            batches = plant_for(args.events, args.lines).batches()
            n_events = sum(len(b["events"]) for b in batches)
            encoded = [(b["source"].encode(), serde.encode(schemas.CAPTURE, b)) for b in batches]
            for run in range(args.rounds):
                for storage in ("memory", "objectstore"):
                    os.environ["GENEALOGY_BROKER_STORAGE"] = storage  # stack_for reads the environment
                    r = end_to_end(workdir, 1, encoded, n_events)
                    results["throughput"].append({"run": run, "storage": storage, **r})
                    print(json.dumps(results["throughput"][-1]), flush=True)
            os.environ.pop("GENEALOGY_BROKER_STORAGE", None)
        if args.rss_events:
            results["long"] = long_run(workdir, args.rss_events, args.rss_step, args.lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "durability.json").write_text(json.dumps(results, indent=1))
    (args.out / "durability.md").write_text(report(results))
    print(report(results))


if __name__ == "__main__":
    main()
