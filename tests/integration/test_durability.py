"""Every kind of stop, in the middle of a feed: nothing acknowledged is lost, no join state forgotten.

The stack runs as a user runs it, `genealogy up` in its own process. A station gateway (a durable
spool and its forwarder, in this process) feeds a simulated plant with out-of-order events, reel
changes, duplicates and invalid events. A third of the way in, the stack is stopped one way or
another; the gateway keeps capturing meanwhile; afterwards the stack carries on and the stored
edges must equal the brute-force reference of the whole feed.

* ``down``, ``ctrl-c``: `genealogy down`, or SIGINT to `genealogy up`; then `genealogy up` again.
* ``kill-each-child``: SIGKILL of the worker, then the service (sink), then the broker, then its
  object store, while capture flows; `genealogy up`'s supervisor must start each again by itself.
* ``power-cut``: SIGKILL of `genealogy up` and of every child at once; then `genealogy up` again.
  (The OS page cache survives this; what a real power cut adds is the fsync question, see
  ``Settings.broker_fsync``.)
* ``memory-broker-restart``: the stack on the ``memory://`` broker, which forgets everything at a
  stop, join state included; once what was captured is stored, `down` and `up`: the service
  rebuilds the join state from ClickHouse (genealogy.join_recovery) before the workers start.

On the durable broker the stack trims its log as it would after weeks (genealogy.retention), here
every second and after every few capture messages, and each stop comes only once the join table's
changelog and the capture topic have lost their head: a worker that starts again restores its
join state from a trimmed changelog.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from genealogy import schemas
from genealogy.client import ServiceClient, wait_drained
from genealogy.producers.simulator import Plant
from genealogy.producers.spool import Forwarder, Spool
from genealogy.settings import Settings
from tests.support.stack import check_against_reference, free_port, until

pytestmark = pytest.mark.integration

PLANT = dict(units=1_200, lot_size=300, faulty_units=40, seed=23, batch_size=25, disorder_ms=3_000,
             duplicate_every=11, bad_events=3, reel_size=200)


class UserStack:
    """`genealogy up` in a subprocess, on one data directory and fixed ports, started as often as needed."""

    def __init__(self, tmp_path: Path, broker_storage: str = "objectstore", **settings):
        self.settings = Settings(data_dir=tmp_path / "stack", broker_port=free_port(), http_port=free_port(),
                                 idle_flush_s=1.0, sink_flush_s=0.3, broker_storage=broker_storage, **settings)
        self.env = {**self.settings.child_env(), "GENEALOGY_INSTANCE": ""}
        self.proc: subprocess.Popen | None = None
        self.log = tmp_path / "up.log"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "genealogy.cli", *args], env=self.env, capture_output=True,
                              text=True, timeout=timeout)

    def up(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "genealogy.cli", "up"], env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT)
        until(lambda: self.proc.poll() is not None or self.cli("status", "--json").returncode == 0, 240, "`genealogy up` ready")
        assert self.proc.poll() is None, self.log.read_text()[-3000:]

    def state(self) -> dict:
        return json.loads((self.settings.data_dir / "run" / "stack.json").read_text())

    def restarts(self, child: str) -> int:
        return self.state().get("restarts", {}).get(child, {}).get("restarts", 0)

    def wait_exit(self, timeout: float = 120) -> None:
        self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(120)


class Gateway:
    """A station gateway: batches go to a durable spool; a forwarder sends them whenever a broker answers."""

    def __init__(self, settings: Settings, path: Path):
        self.serde = schemas.serde_for(settings)
        self.spool = Spool(path, default_topic=settings.topic_capture)
        self.forwarder = Forwarder(settings, self.spool)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.forwarder.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def capture(self, batches: list[dict], pace_s: float = 0.01) -> None:
        for batch in batches:
            self.spool.append(batch["source"].encode(), self.serde.encode(schemas.CAPTURE, batch))
            time.sleep(pace_s)

    def corrupt(self) -> None:
        self.spool.append(b"ASSY-1", b"\x07 not a capture batch")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        self.forwarder.close(timeout=5)
        self.spool.close()


# Trimming as after weeks of running, within a test's few hundred capture messages.
TRIM_OFTEN = dict(broker_trim_s=1.0, broker_trim_min_batches=1, changelog_checkpoint_records=10)


def first_kept_offsets(settings: Settings, topic: str) -> list[int]:
    """The base offset of the oldest batch each partition of ``topic`` still has in the broker's store."""
    partitions = (settings.data_dir / "broker").glob(f"*/o/clusters/*/topics/{topic}/partitions/*/records")
    return [min((int(f.name[:20]) for f in d.glob("*.batch")), default=0) for d in partitions]


def trimmed(settings: Settings) -> bool:
    return all(any(offset > 0 for offset in first_kept_offsets(settings, topic))
               for topic in (f"{settings.app_id}-station-join-changelog", settings.topic_capture))


def kill_child(stack: UserStack, child: str) -> None:
    before = stack.restarts(child)
    os.kill(stack.state()["children"][child], signal.SIGKILL)
    until(lambda: stack.restarts(child) > before, 120, f"the supervisor starting {child} again")
    assert stack.proc.poll() is None, "the stack stopped: " + stack.log.read_text()[-2000:]


def power_cut(stack: UserStack) -> None:
    state = stack.state()
    for pid in [state["pid"], *state["children"].values()]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    stack.wait_exit()


STOPS = {
    "down": lambda stack: (stack.cli("down"), stack.wait_exit(), stack.up()),
    "ctrl-c": lambda stack: (stack.proc.send_signal(signal.SIGINT), stack.wait_exit(), stack.up()),
    "kill-each-child": lambda stack: [kill_child(stack, child) for child in ("worker-1", "service", "broker", "objectstore")],
    "power-cut": lambda stack: (power_cut(stack), stack.up()),
    "memory-broker-restart": lambda stack: (wait_drained(ServiceClient.for_settings(stack.settings), settle_s=2.0),
                                            stack.cli("down"), stack.wait_exit(), stack.up()),
}
# The memory:// broker loses what it acknowledged and nobody stored yet: that stop drains first, and the
# gateway does not capture through it.
MEMORY = {"memory-broker-restart"}


@pytest.mark.parametrize("stop", list(STOPS))
def test_a_stop_mid_feed_ends_equal_to_the_reference(stop, tmp_path):
    stack = (UserStack(tmp_path, "memory") if stop in MEMORY else UserStack(tmp_path, "objectstore", **TRIM_OFTEN))
    plant = Plant(**PLANT).generate()
    batches = plant.batches()
    third = len(batches) // 3
    stack.up()
    gateway = Gateway(stack.settings, tmp_path / "gateway.db")
    try:
        gateway.capture(batches[:third])
        # Mid-stream: the worker has joined part of the feed (its join state holds loaded reels).
        until(lambda: gateway.forwarder.delivered >= third // 2, 120, "the first capture acknowledged")
        client = ServiceClient.for_settings(stack.settings)
        until(lambda: client.get("/status")[1]["counts"]["edges"] > 0, 120, "the first edges stored")
        if stop not in MEMORY:
            until(lambda: trimmed(stack.settings), 120, "the changelog and the capture topic trimmed", every=0.5)

        # The gateway keeps capturing through the stop.
        feeding = threading.Thread(target=gateway.capture, args=(batches[third:], 0.05), daemon=True)
        if stop not in MEMORY:
            feeding.start()
        STOPS[stop](stack)
        if stop in MEMORY:
            assert stack.cli("status", "--json").returncode == 0
            feeding.start()
        feeding.join(300)
        gateway.corrupt()
        until(lambda: len(gateway.spool) == 0, 240, "the gateway's spool drained into the broker", every=0.5)
        client = ServiceClient.for_settings(stack.settings)
        wait_drained(client, settle_s=4.0, timeout=300)
        # A stop is a pause at every station: events in flight may come after their station's idle flush
        # and be taken as late; the service corrects what they changed (sinks.late_corrector).
        rounds = client.get("/status")[1]["late_correction"]["runs"]
        until(lambda: client.get("/status")[1]["late_correction"]["runs"] > rounds, 60, "a correction round after the drain")
        wait_drained(client, settle_s=2.0, timeout=120)
        check_against_reference(client, plant, late_allowed=True)
    finally:
        gateway.close()
        stack.stop()
