"""A restartable producer of the simulated plant through a spool, as a station gateway would run
(``python -m tests.support.plant_producer --spool PATH ...``); the store-and-forward tests kill and
restart it. Prints its report as JSON."""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from genealogy import schemas
from genealogy.producers.simulator import Plant
from genealogy.producers.spool import Forwarder, Spool
from genealogy.settings import Settings


def plant_mark(seed: int, units: int, batch_size: int) -> str:
    """Name of the spool mark where ``forward-plant`` records how many batches it has appended."""
    return f"plant:{seed}:{units}:{batch_size}"


def forward_plant(args, settings: Settings) -> dict:
    """Append the simulated plant's batches one by one as a station gateway would, forwarding as it
    goes. Progress is a mark written with each batch, so a restarted producer resumes after the last
    batch it appended instead of appending it again (and a killed one loses nothing it had appended)."""
    plant = Plant(units=args.units, lot_size=args.lot_size, faulty_units=args.faulty_units, seed=args.seed,
                  batch_size=args.batch_size).generate()
    batches = plant.batches()
    serde = schemas.serde_for(settings)
    spool = Spool(args.spool, default_topic=settings.topic_capture)
    forwarder = Forwarder(settings, spool)
    mark = plant_mark(args.seed, args.units, args.batch_size)
    start = spool.mark(mark)
    for n in range(start, len(batches)):
        batch = batches[n]
        spool.append_many([(settings.topic_capture, batch["source"].encode(), serde.encode(schemas.CAPTURE, batch))],
                          mark=(mark, n + 1))
        forwarder.pump(0)
        time.sleep(args.pace_ms / 1000)
    remaining = forwarder.forward_all(args.timeout)
    forwarder.close(timeout=1.0)  # forward_all has waited already
    return {"batches": len(batches), "resumed_at": start, "remaining": remaining, **forwarder.backlog()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spool", type=Path, required=True)
    parser.add_argument("--units", type=int, default=400)
    parser.add_argument("--lot-size", type=int, default=100)
    parser.add_argument("--faulty-units", type=int, default=20)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--pace-ms", type=float, default=0.0, help="pause after each batch, like a plant's pace")
    parser.add_argument("--timeout", type=float, default=120.0)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    report = forward_plant(args, Settings())  # GENEALOGY_* environment, as every process of the stack
    print(json.dumps(report), flush=True)
    return 0 if report["rows"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
