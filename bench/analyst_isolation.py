"""Recall latency while analysts run heavy SQL, against idle: is the analyst sandbox isolated?

    python -m bench.analyst_isolation --units 5000 --requests 300

An embedded stack (Tansu, one Faust worker, chdb sink + query service) gets a simulated plant;
once drained, GET /recall?lot=<faulty lot> is timed `--requests` times with nothing else running,
then again while `--analysts` clients keep POST /sql busy with a cross join that runs until the
analyst time cap (max_execution_time) stops it. Results: bench/results/analyst-isolation-<analysts>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from genealogy.client import ServiceClient, wait_drained
from genealogy.producers.publisher import Publisher
from genealogy.producers.simulator import Plant
from genealogy.kafka import free_port
from genealogy.settings import Settings
from genealogy.stack import Stack

HEAVY = "SELECT count() FROM edges AS a, edges AS b, edges AS c WHERE a.child != c.parent"
RESULTS = Path(__file__).parent / "results"


def timings(client: ServiceClient, lot: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        code, body = client.get("/recall", lot=lot)
        out.append((time.perf_counter() - started) * 1000)
        assert code == 200, body
    return out


def summary(ms: list[float]) -> dict:
    ms = sorted(ms)
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p95_ms": round(ms[int(0.95 * (len(ms) - 1))], 1),
            "max_ms": round(ms[-1], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=5000)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--analysts", type=int, default=2)
    ap.add_argument("--analyst-max-execution-s", type=float, default=5.0)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        s = Settings(data_dir=Path(tmp) / "stack", broker_port=free_port(), http_port=free_port(),
                     idle_flush_s=1.0, sink_flush_s=0.3, analyst_max_execution_s=args.analyst_max_execution_s)
        stack = Stack(s)
        stack.start()
        try:
            p = Plant(units=args.units, lot_size=max(200, args.units // 5), faulty_units=max(10, args.units // 50),
                      seed=7, batch_size=40).generate()
            Publisher(s).publish(p.batches())
            client = ServiceClient.for_settings(s)
            status = wait_drained(client, settle_s=3.0, timeout=600)
            idle = timings(client, p.faulty_lot, args.requests)

            stop = threading.Event()
            analyst_answers: list[tuple[int, float, str]] = []

            def analyst():
                own = ServiceClient.for_settings(s)
                while not stop.is_set():
                    started = time.perf_counter()
                    code, body = own.post("/sql", {"sql": HEAVY})
                    analyst_answers.append((code, time.perf_counter() - started, body.get("error", "")[:80]))

            threads = [threading.Thread(target=analyst) for _ in range(args.analysts)]
            for t in threads:
                t.start()
            time.sleep(0.5)
            busy = timings(client, p.faulty_lot, args.requests)
            stop.set()
            for t in threads:
                t.join()
        finally:
            stack.stop()

    result = {"date": datetime.now(tz=timezone.utc).isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, {__import__('os').cpu_count()} CPUs",
              "edges": status["counts"]["edges"], "units": args.units, "analysts": args.analysts,
              "analyst_query": HEAVY, "analyst_max_execution_s": args.analyst_max_execution_s,
              "idle": summary(idle), "busy": summary(busy),
              "analyst_answers": [{"status": c, "s": round(t, 2), "error": e} for c, t, e in analyst_answers]}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"analyst-isolation-{args.analysts}.json").write_text(json.dumps(result, indent=1))
    lines = [f"# Recall while analysts run heavy SQL, {result['date']}", "",
             f"Machine: {result['machine']}. Store: {result['edges']:,} edges ({args.units:,} units). "
             f"{args.analysts} analyst clients loop `{HEAVY}`, each stopped by its "
             f"{args.analyst_max_execution_s:g} s cap; recall of the faulty lot, {args.requests} requests each.", "",
             "| | recall p50 | recall p95 | recall max |", "|---|---|---|---|"]
    for name in ("idle", "busy"):
        r = result[name]
        lines.append(f"| {name} | {r['p50_ms']} ms | {r['p95_ms']} ms | {r['max_ms']} ms |")
    answers = result["analyst_answers"]
    lines += ["", f"Analyst answers while measuring: {len(answers)}, statuses "
              f"{sorted({a['status'] for a in answers})}, e.g. `{answers[0]['error'] if answers else ''}`."]
    (RESULTS / f"analyst-isolation-{args.analysts}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
