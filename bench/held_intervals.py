"""Sink-only cost of keeping held_intervals (containment intervals) as the facts arrive.

    python -m bench.held_intervals --events 300000 --repeat 3

A simulated plant is derived once (no Kafka); its DERIVED records go through the sink's flush
(kafka_sink.Rows.insert_into -> Writer, batches of sink_batch_rows) into a fresh embedded
ClickHouse, with the interval step (Writer._hold) and without it (what the sink did before), in
the same run, alternating. With --unpack-share, that share of the containers is also unpacked
whole a minute after its packing (most packings never are), so the step has stored packings to
recompute too. Rows per second of everything the flush inserted; median of --repeat runs.
"""

from __future__ import annotations

import argparse
import platform
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


def flush_all(workdir: Path, records: list[dict], hold: bool, batch_rows: int) -> tuple[float, int, int]:
    connection = Connection(f"chdb://{workdir / f'chdb-{time.time_ns()}'}")
    connection.migrate()
    writer = Writer(connection)
    if not hold:
        writer._hold = lambda touched: None  # the sink before held_intervals
    rows, total, elapsed = Rows(), 0, 0.0
    for n, record in enumerate(records):
        rows.add_derived(record)
        if len(rows) >= batch_rows or n == len(records) - 1:
            t0 = time.perf_counter()
            rows.insert_into(writer)
            elapsed += time.perf_counter() - t0
            total += len(rows)
            rows = Rows()
    held = connection.rows("SELECT count() FROM held_intervals FINAL")[0][0]
    connection.close()
    return elapsed, total, held


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--unpack-share", type=float, nargs="+", default=[0.0, 0.01])
    args = ap.parse_args()
    batch_rows = Settings().sink_batch_rows
    print(f"machine: {platform.node()} {platform.machine()}, {platform.python_implementation()} {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="bench-held-") as tmp:
        for share in args.unpack_share:
            records = derived(args.events, share)
            rates: dict[bool, list[float]] = {False: [], True: []}
            helds = set()
            for _ in range(args.repeat):
                for hold in (False, True):
                    elapsed, total, held = flush_all(Path(tmp), records, hold, batch_rows)
                    rates[hold].append(total / elapsed)
                    if hold:
                        helds.add(held)
            before, after = statistics.median(rates[False]), statistics.median(rates[True])
            print(f"unpack share {share}: {total:,} rows, held_intervals {sorted(helds)}; "
                  f"rows/s before {before:,.0f}, after {after:,.0f}, ratio {after / before:.3f} "
                  f"(runs before {[round(r) for r in rates[False]]}, after {[round(r) for r in rates[True]]})")


if __name__ == "__main__":
    main()
