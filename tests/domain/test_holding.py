"""genealogy.domain.holding.intervals, the rule the sink stores containment intervals by, against a replay."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from genealogy.domain import holding

T0 = 1_767_600_000_000


def replay(adds, ends):
    """Brute force: walk the facts in time order, each add an open token until an end of its child (or of
    everything) in its holder comes later; an end at the same instant as an add does not close it."""
    events = sorted([(at, 1, k) for k, (_, _, at, _) in enumerate(adds)] + [(at, 0, k) for k, (_, _, at) in enumerate(ends)])
    open_, to = set(), {}
    for at, is_add, k in events:
        if is_add:
            open_.add(k)
            continue
        child, holder, _ = ends[k]
        for a in sorted(open_):
            if adds[a][1] == holder and child in ("", adds[a][0]) and adds[a][2] < at:
                to[a] = at
                open_.discard(a)
    return [(c, h, at, to.get(k)) for k, (c, h, at, _) in enumerate(adds)]


def history(seed: int, n: int):
    rng = random.Random(seed)
    children, holders = [f"serial:P:U{i}" for i in range(3)], ["container:sscc:C0", "container:sscc:C1", "transaction:po:PO0"]
    adds, ends = [], []
    for k in range(n):
        t = T0 + 1_000 * rng.randrange(12)  # few instants: adds and ends at the same time too
        if rng.random() < 0.6:
            adds.append((rng.choice(children), rng.choice(holders), t, k))
        else:
            ends.append((rng.choice(children + [""]), rng.choice(holders), t))
    return adds, ends


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**6), st.integers(0, 40))
def test_intervals_equal_a_replay_in_any_arrival_order(seed, n):
    adds, ends = history(seed, n)
    expected = replay(adds, ends)
    assert holding.intervals(adds, ends) == expected
    rng = random.Random(seed)
    shuffled_ends = rng.sample(ends, len(ends)) + ends[: len(ends) // 2]  # any order, some redelivered
    assert holding.intervals(adds, shuffled_ends) == expected


def test_an_unpacking_of_everything_closes_every_child_and_one_at_the_same_instant_closes_nothing():
    adds = [("serial:P:A", "container:sscc:C", T0, 1), ("serial:P:B", "container:sscc:C", T0 + 5, 2),
            ("serial:P:A", "container:sscc:C", T0 + 10, 3)]
    ends = [("serial:P:A", "container:sscc:C", T0 + 7), ("", "container:sscc:C", T0 + 10), ("", "container:sscc:D", T0 + 1)]
    assert holding.intervals(adds, ends) == [("serial:P:A", "container:sscc:C", T0, T0 + 7),
                                             ("serial:P:B", "container:sscc:C", T0 + 5, T0 + 10),
                                             ("serial:P:A", "container:sscc:C", T0 + 10, None)]
