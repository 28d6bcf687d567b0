"""Which capture offsets a worker has handled, so none is skipped and none handled twice.

Faust (faust-streaming 0.11) can drop messages around a rebalance without
processing them: its stream skips messages fetched under an older generation
or while flow control is suspended, and its fetch loop discards re-fetched
messages below a read offset that a concurrent seek did not reset. The
skipped offsets are never acked, so Faust's commit stalls in front of them,
but nothing re-delivers them while the worker lives: the join would go on
without a reel change, and `genealogy status` could not tell.

So the agent checks every message against the next offset it expects on that
partition: the consumer group's committed offset when the partition is
(re)assigned, then one past the last handled offset. A message beyond it
reveals a gap, which the worker reads straight from the topic and handles
first, in order; a message below it was handled already in this assignment.

What the worker reports as done (``delivered``) is stricter than handled: a message counts once
what it produced (edges, dead letters) is acked by the broker too. A busy worker can hold seconds
of output in its producer's buffer; counting it done earlier let `genealogy status` report a feed
as drained while hundreds of thousands of edges were still on their way.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol


class Delivery(Protocol):
    """A send in flight (asyncio.Future of the producer): done, and without exception, once acked."""
    def done(self) -> bool: ...
    def cancelled(self) -> bool: ...
    def exception(self) -> BaseException | None: ...


class Verdict(Enum):
    HANDLE = "handle"          # the next message: handle it
    DUPLICATE = "duplicate"    # handled already since the partition was assigned
    GAP = "gap"                # messages before it were skipped: handle those first
    UNKNOWN = "unknown"        # no start known for this partition yet


@dataclass
class Progress:
    """Capture partition -> next offset to handle, for the current assignment only."""

    next_offset: dict[int, int] = field(default_factory=dict)
    epoch: int = 0
    assigned_at: float = 0.0
    # Since the worker started, for `genealogy status`: how often Faust's consumer misbehaved.
    read_back: int = 0      # messages it skipped, which the worker read from the topic itself
    redelivered: int = 0    # messages it delivered again within one assignment, handled once only
    # partition -> (offset, its sends) for handled messages whose output the broker has not acked yet
    unacked: dict[int, deque] = field(default_factory=dict)

    def reassigned(self, at: float) -> None:
        """Partitions may have moved: what was handled before says nothing about what comes next."""
        self.next_offset.clear()
        self.unacked.clear()
        self.epoch += 1
        self.assigned_at = at

    def start(self, partition: int, committed: int) -> None:
        """Where the consumer resumes a newly assigned partition (its committed offset)."""
        self.next_offset.setdefault(partition, max(committed, 0))

    def check(self, partition: int, offset: int) -> Verdict:
        expected = self.next_offset.get(partition)
        if expected is None:
            return Verdict.UNKNOWN
        if offset < expected:
            self.redelivered += 1
            return Verdict.DUPLICATE
        return Verdict.GAP if offset > expected else Verdict.HANDLE

    def handled(self, partition: int, offset: int, epoch: int, read_back: bool = False,
                sends: Iterable[Delivery] = ()) -> None:
        """Record a handled message and the sends of its output, unless the partitions were reassigned
        while it was handled."""
        if epoch == self.epoch and offset >= self.next_offset.get(partition, 0):
            self.next_offset[partition] = offset + 1
            sends = [s for s in sends if not _acked(s)]
            if sends:
                self.unacked.setdefault(partition, deque()).append((offset, sends))
        self.read_back += read_back

    def delivered(self) -> dict[int, int]:
        """Partition -> next offset such that every message before it is handled and its output acked.
        A send that failed stays unacked: the partition then shows as behind, which it is."""
        out = {}
        for partition, next_offset in self.next_offset.items():
            pending = self.unacked.get(partition)
            while pending and all(_acked(s) for s in pending[0][1]):
                pending.popleft()
            out[partition] = pending[0][0] if pending else next_offset
        return out

    def behind(self, ends: dict[int, int]) -> dict[int, tuple[int, int]]:
        """Partitions whose end is past what was handled: partition -> (first missing, end)."""
        return {p: (self.next_offset[p], end) for p, end in ends.items()
                if p in self.next_offset and end > self.next_offset[p]}


def _acked(send: Delivery) -> bool:
    return send.done() and not send.cancelled() and send.exception() is None
