"""When a holder held a child: the interval of each packing, association and transaction link.

A packed, associated or transacted edge child -> holder holds from its time to the first unpacking
(end of the association, unlinking from the transaction) of that child, or of everything in the
holder (child ""), strictly after it; with none, it is still held. Each add gets its own interval,
whatever else was added or taken out of the holder: so the sink can recompute the intervals of
only the pairs a flush touched, in any arrival order, and get what a replay of all facts gives.
The sink stores them (table held_intervals); recall reads them (genealogy.domain.recall.containment).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

# Relations whose edge holds for a time, until an unpacking ends it.
HELD = ("packed", "associated", "transacted")

Add = tuple[str, str, int, object]  # (child, holder, at, edge key)
End = tuple[str, str, int]          # (child or "" = everything, holder, at)
Interval = tuple[str, str, int, int | None]  # (child, holder, from, to or None = still held)


def intervals(adds: Iterable[Add], ends: Iterable[End]) -> list[Interval]:
    """One interval per add, in the order of the adds: from its time to the first end of that child,
    or of everything in that holder, strictly after it; None when there is none."""
    by_pair: dict[tuple[str, str], list[int]] = defaultdict(list)
    for child, holder, at in ends:
        by_pair[(child, holder)].append(at)
    out: list[Interval] = []
    for child, holder, at, _ in adds:
        if (child, holder) not in by_pair and ("", holder) not in by_pair:  # most packings are never undone
            out.append((child, holder, at, None))
            continue
        to = min((t for t in by_pair.get((child, holder), ()) if t > at), default=None)
        everything = min((t for t in by_pair.get(("", holder), ()) if t > at), default=None)
        if to is None or (everything is not None and everything < to):
            to = everything
        out.append((child, holder, at, to))
    return out
