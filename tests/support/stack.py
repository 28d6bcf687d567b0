"""Helpers of the integration tests: a stack per test on free ports, SQL through the service,
the comparison of stored edges with the brute-force reference, and the CLI as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
import time

from genealogy.client import ServiceClient, wait_drained
from genealogy.kafka import free_port
from genealogy.settings import Settings
from genealogy.stack import Stack
from genealogy.producers.simulator import Plant
from tests.support import reference

__all__ = ["ServiceClient", "wait_drained", "free_port", "until", "start_stack", "sql", "edge_difference",
           "check_against_reference", "cli"]


def until(condition, timeout: float, what: str, every: float = 0.1):
    """Poll ``condition`` until it returns something true (returned); TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"{what} not within {timeout:.0f} s")


def start_stack(tmp_path, workers=1, **settings) -> Stack:
    s = Settings(data_dir=tmp_path / "stack", broker_port=free_port(), http_port=free_port(), workers=workers,
                 idle_flush_s=1.0, sink_flush_s=0.3, **settings)
    stack = Stack(s)
    stack.start()
    return stack


def sql(client, query, **params):
    code, body = client.post("/sql", {"sql": query, "parameters": params})
    assert code == 200, body
    return body["rows"]


def edge_difference(stored: set, expected: set, examples: int = 5) -> str:
    """What a failed comparison needs to be diagnosed: counts by relation and a few edges of each, not a set dump."""
    lines = []
    for label, edges in (("missing", expected - stored), ("extra", stored - expected)):
        by_relation: dict[str, list] = {}
        for edge in sorted(edges):
            by_relation.setdefault(edge[2], []).append(edge)
        for relation, group in sorted(by_relation.items()):
            lines.append(f"{label} {relation}: {len(group)}, e.g. {group[:examples]}")
    return "\n".join(lines)


def check_against_reference(client: ServiceClient, p: Plant, late_allowed: bool = False) -> None:
    """Stored edges, recall and trace equal the brute-force reference; dead letters are the feed's bad events
    and its corrupt message. ``late_allowed``: material events the join took as late are dead-lettered too
    (a stop of the stack is a pause at every station); the edges must be right all the same."""
    bad = {e["event_id"] for _, e in p.all_events() if e["event_id"].startswith("bad-")}
    valid = reference.unique(p.all_events(), skip_ids=bad)
    expected = reference.edges(valid)
    stored = {tuple(r) for r in sql(client, "SELECT DISTINCT child, parent, relation FROM edges")}
    assert stored == expected, edge_difference(stored, expected)

    # No doubled edge: one edge_id per (endpoints, relation, source events), whatever was redelivered.
    ids, keys = sql(client, "SELECT uniqExact(edge_id), uniqExact(child, parent, relation, source_event) FROM edges")[0]
    assert ids == keys

    code, r = client.get("/recall", lot=p.faulty_lot)
    assert code == 200, r
    reached = reference.reach_forward(expected, p.faulty_lot)
    assert r["serial_scope"]["units"] == sorted(n for n in reached if n.startswith("serial:"))
    assert r["serial_scope"]["count"] == p.faulty_units
    assert r["shipments"] == sorted(n for n in reached if n.startswith("shipment:"))
    assert r["lot_scope"]["production_lots"] == reference.lot_scope(expected, reference.production_lots(valid), p.faulty_lot)

    unit = "serial:PRD-500:P00000123"
    code, t = client.get("/trace", serial=unit)
    below = reference.reach_backward(expected, unit)
    leaves = {n for n in below if not any(p == n for _, p, _ in expected)}
    assert code == 200 and leaves and set(t["leaves"]) == leaves
    assert t["supplier_lots"] == sorted(n for n in leaves if n.startswith("lot:"))

    dead = {(stage, kind): n for stage, kind, n in sql(
        client, "SELECT stage, event_kind, uniqExact(dead_letter_id) FROM dead_letters GROUP BY stage, event_kind")
        if not (late_allowed and stage == "late")}
    assert dead == {("validate", "genealogy.UnitCompleted"): 1, ("validate", "genealogy.ComponentInstalled"): 1,
                    ("validate", "genealogy.Packed"): 1, ("decode", ""): 1}


def cli(stack, *args):
    env = {**os.environ, **stack.settings.child_env()}
    return subprocess.run([sys.executable, "-m", "genealogy.cli", *args, "--data-dir", str(stack.settings.data_dir)],
                          env=env, capture_output=True, text=True, timeout=120)
