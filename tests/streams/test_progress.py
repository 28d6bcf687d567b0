"""The worker's per-partition offset bookkeeping (streams.progress) against a brute-force model.

Whatever a consumer delivers (skips, redeliveries, rewinds to the committed
offset), the worker must handle every offset from where the partition was
assigned exactly once and in order.
"""

from hypothesis import given
from hypothesis import strategies as st

from genealogy.streams.progress import Progress, Verdict


def run(progress: Progress, partition: int, delivered: list[int]) -> list[int]:
    """What handle_in_order does with each delivered offset: the offsets it handles, in order."""
    handled = []
    for offset in delivered:
        verdict = progress.check(partition, offset)
        if verdict is Verdict.DUPLICATE:
            continue
        if verdict is Verdict.GAP:
            for skipped in range(progress.next_offset[partition], offset):
                handled.append(skipped)
                progress.handled(partition, skipped, progress.epoch, read_back=True)
        handled.append(offset)
        progress.handled(partition, offset, progress.epoch)
    return handled


def test_next_message_is_handled_and_a_redelivery_is_not():
    p = Progress()
    assert p.check(0, 5) is Verdict.UNKNOWN
    p.start(0, committed=5)
    assert p.check(0, 5) is Verdict.HANDLE
    p.handled(0, 5, p.epoch)
    assert p.check(0, 5) is Verdict.DUPLICATE
    assert p.check(0, 8) is Verdict.GAP
    assert p.next_offset == {0: 6}


def test_nothing_committed_starts_at_the_beginning():
    p = Progress()
    p.start(1, committed=-1001)  # librdkafka's OFFSET_INVALID
    assert p.check(1, 0) is Verdict.HANDLE


def test_a_message_finished_after_reassignment_does_not_count():
    p = Progress()
    p.start(0, committed=0)
    epoch = p.epoch
    p.reassigned(at=1.0)
    p.handled(0, 0, epoch)
    assert p.check(0, 0) is Verdict.UNKNOWN and p.assigned_at == 1.0


def test_behind_lists_partitions_short_of_their_end():
    p = Progress()
    p.start(0, committed=10)
    p.start(1, committed=3)
    assert p.behind({0: 10, 1: 7, 2: 4}) == {1: (3, 7)}


@given(committed=st.integers(0, 50), end=st.integers(0, 80),
       delivery=st.lists(st.tuples(st.sampled_from(["next", "skip", "rewind"]), st.integers(1, 5)), max_size=40))
def test_every_offset_handled_once_in_order_whatever_is_delivered(committed, end, delivery):
    end = committed + end
    # A consumer that mostly delivers in order, sometimes skips a few offsets and sometimes
    # rewinds to the committed offset and redelivers (what Faust does around rebalances).
    delivered, position = [], committed
    for kind, n in delivery:
        if kind == "skip":
            position += n
        elif kind == "rewind":
            position = max(committed, position - n)
        for _ in range(n):
            if position < end:
                delivered.append(position)
                position += 1
    p = Progress()
    p.start(0, committed)
    handled = run(p, 0, delivered)
    expected = list(range(committed, max(delivered) + 1)) if delivered else []
    assert handled == expected
    # The counters `genealogy status` shows: every skipped offset read back, every repeat noticed.
    # An offset is read back when a later one arrives first; every other delivery of it is a repeat.
    first = {o: delivered.index(o) if o in delivered else len(delivered) for o in expected}
    read_back = sum(any(later > o for later in delivered[:first[o]]) for o in expected)
    assert p.read_back == read_back
    assert p.redelivered == len(delivered) - (len(expected) - read_back)
    # What the stall check reads back: the rest up to the partition's end.
    assert p.behind({0: end}) == ({0: (p.next_offset[0], end)} if p.next_offset[0] < end else {})


def test_the_stall_checks_wake_up_batch_derives_nothing():
    """What a worker appends to a partition it is behind on: its only effect is to be a later offset."""
    from genealogy.domain.derive import derive

    out = derive({"batch_id": "wake:0:1", "source": "genealogy-worker", "sent_ms": 1, "events": []}, {}, 10_000, 3_600_000)
    assert not out.edges and not out.units and not out.facts and not out.rejected and not out.pending


class Send:
    """A producer send in flight, acked (or failed) when the test says so."""

    def __init__(self):
        self._done, self._error = False, None

    def ack(self, error: BaseException | None = None):
        self._done, self._error = True, error

    def done(self):
        return self._done

    def cancelled(self):
        return False

    def exception(self):
        return self._error


def test_a_message_counts_as_done_only_once_its_output_is_acked():
    """`genealogy status` reads delivered(): a handled message whose edges are still in the producer's
    buffer is not done (it reported a feed drained with edges still on their way)."""
    p = Progress()
    p.start(0, committed=10)
    first, second, third = [Send(), Send()], [Send()], []
    p.handled(0, 10, p.epoch, sends=first)
    p.handled(0, 11, p.epoch, sends=second)
    p.handled(0, 12, p.epoch, sends=third)  # nothing to send: done once those before it are
    assert p.next_offset == {0: 13} and p.delivered() == {0: 10}
    second[0].ack()
    assert p.delivered() == {0: 10}  # in order: offset 10 still waits for one of its sends
    first[0].ack()
    first[1].ack()
    assert p.delivered() == {0: 13}


def test_a_failed_send_keeps_the_partition_behind():
    p = Progress()
    p.start(0, committed=0)
    failed = Send()
    p.handled(0, 0, p.epoch, sends=[failed])
    failed.ack(error=RuntimeError("broker gone"))
    p.handled(0, 1, p.epoch)
    assert p.delivered() == {0: 0}
    p.reassigned(at=2.0)  # the partition resumes from its committed offset, which redelivers it
    assert p.delivered() == {}
