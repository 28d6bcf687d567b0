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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


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

    def reassigned(self, at: float) -> None:
        """Partitions may have moved: what was handled before says nothing about what comes next."""
        self.next_offset.clear()
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

    def handled(self, partition: int, offset: int, epoch: int, read_back: bool = False) -> None:
        """Record a handled message, unless the partitions were reassigned while it was handled."""
        if epoch == self.epoch and offset >= self.next_offset.get(partition, 0):
            self.next_offset[partition] = offset + 1
        self.read_back += read_back

    def behind(self, ends: dict[int, int]) -> dict[int, tuple[int, int]]:
        """Partitions whose end is past what was handled: partition -> (first missing, end)."""
        return {p: (self.next_offset[p], end) for p, end in ends.items()
                if p in self.next_offset and end > self.next_offset[p]}
