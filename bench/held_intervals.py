"""Sink-only cost of keeping held_intervals (containment intervals) as the facts arrive.

    python -m bench.held_intervals --events 200000 --repeat 5     (report: results/held-intervals.md)

A simulated plant is derived once (no Kafka); its DERIVED records go through the sink's flush
(kafka_sink.Rows.insert_into -> Writer, batches of sink_batch_rows) into a fresh embedded
ClickHouse, with the interval step (Writer._hold) and without it (what the sink did before), in
the same run, alternating. With --unpack-share, that share of the containers is also unpacked
whole a minute after its packing (most packings never are), so the step has stored packings to
recompute too. Rows per second of everything the flush inserted, by wall clock and by the process's
CPU time (chdb runs in the process: its threads count; other load on the machine does not); median
of --repeat runs; and the share of the flushes' wall time spent in the interval step.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from datetime import datetime, timezone
import statistics
import tempfile
import time
from pathlib import Path

from genealogy import schemas
from genealogy.domain.derive import derive
from genealogy.settings import Settings
from genealogy.sinks.connection import Connection
from genealogy.sinks.kafka_sink import Rows
from genealogy.sinks.writer import Writer

from bench.throughput import plant_for


def derived(n_events: int, unpack_share: float) -> list[dict]:
    plant = plant_for(n_events, 3)
    state: dict = {}
    records = []
    k = 0
    for batch in plant.batches():
        out = derive(batch, state, 10_000, 6 * 3600 * 1000)
        for edge in out.edges:  # the unpackings that share of the containers gets
            if edge["relation"] == "packed" and edge["parent"].startswith("container:") and edge["child"].startswith("serial:"):
                k += 1
                if unpack_share and k % round(1 / unpack_share) == 0:
                    out.unpacked.append({"child": "", "parent": edge["parent"], "event_ms": edge["event_ms"] + 60_000,
                                         "station": "PK", "source_event": f"un-{k}"})
        records.extend(schemas.derived_messages(batch["batch_id"], out))
    return records


def flush_all(workdir: Path, records: list[dict], hold: bool, batch_rows: int) -> dict:
    connection = Connection(f"chdb://{workdir / f'chdb-{time.time_ns()}'}")
    connection.migrate()
    writer = Writer(connection)
    in_hold = [0.0]
    if hold:
        step = writer._hold

        def timed(touched):
            t0 = time.perf_counter()
            step(touched)
            in_hold[0] += time.perf_counter() - t0
        writer._hold = timed
    else:
        writer._hold = lambda touched: None  # the sink before held_intervals
    rows, total, wall, cpu = Rows(), 0, 0.0, 0.0
    for n, record in enumerate(records):
        rows.add_derived(record)
        if len(rows) >= batch_rows or n == len(records) - 1:
            t0, c0 = time.perf_counter(), time.process_time()
            rows.insert_into(writer)
            wall += time.perf_counter() - t0
            cpu += time.process_time() - c0
            total += len(rows)
            rows = Rows()
    held = connection.rows("SELECT count() FROM held_intervals FINAL")[0][0]
    connection.close()
    return {"rows": total, "wall": total / wall, "cpu": total / cpu, "hold_share": in_hold[0] / wall, "held": held}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--unpack-share", type=float, nargs="+", default=[0.0, 0.01])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "held-intervals.md")
    args = ap.parse_args()
    batch_rows = Settings().sink_batch_rows
    lines = ["# held_intervals at the sink", "", f"`python -m bench.held_intervals {' '.join(sys.argv[1:])}`, "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.node()} {platform.machine()} "
             f"({os.cpu_count()} CPUs), {platform.python_implementation()} {platform.python_version()}", "", "```"]
    print("\n".join(lines))
    with tempfile.TemporaryDirectory(prefix="bench-held-") as tmp:
        for share in args.unpack_share:
            records = derived(args.events, share)
            runs: dict[bool, list[dict]] = {False: [], True: []}
            flush_all(Path(tmp), records, True, batch_rows)  # warm-up, not counted: the first chdb of a process is slower
            for k in range(args.repeat):
                for hold in ((False, True) if k % 2 == 0 else (True, False)):  # alternating: neither always goes first
                    runs[hold].append(flush_all(Path(tmp), records, hold, batch_rows))
            med = {hold: {k: statistics.median(r[k] for r in runs[hold]) for k in ("wall", "cpu", "hold_share")} for hold in runs}
            report = (f"unpack share {share}: {runs[True][0]['rows']:,} rows a run, held_intervals {sorted({r['held'] for r in runs[True]})}, "
                  f"{args.repeat} runs each, medians:\n"
                  f"  rows/s by wall clock: before {med[False]['wall']:,.0f}, after {med[True]['wall']:,.0f}, "
                  f"ratio {med[True]['wall'] / med[False]['wall']:.3f} (runs {[round(r['wall']) for r in runs[False]]} / {[round(r['wall']) for r in runs[True]]})\n"
                  f"  rows/s by CPU time:   before {med[False]['cpu']:,.0f}, after {med[True]['cpu']:,.0f}, "
                  f"ratio {med[True]['cpu'] / med[False]['cpu']:.3f}\n"
                  f"  interval step: {100 * med[True]['hold_share']:.1f}% of the flushes' wall time")
            print(report)
            lines.append(report)
    lines.append("```")
    args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
