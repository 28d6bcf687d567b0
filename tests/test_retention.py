"""Which of a partition's record batches the broker's log trimming may delete (genealogy.retention)."""

from hypothesis import given
from hypothesis import strategies as st

from genealogy.retention import deletable


def brute_force(base_offsets: list[int], below: int) -> int:
    """Delete a prefix of batches, each holding only offsets below ``below``; keep the newest batch."""
    n = 0
    for i in range(len(base_offsets) - 1):
        records = range(base_offsets[i], base_offsets[i + 1])
        if all(offset < below for offset in records):
            n = i + 1
        else:
            break
    return n


@given(st.lists(st.integers(1, 50), max_size=30), st.integers(0, 2_000))
def test_deletable_equals_brute_force(sizes, below):
    bases = [sum(sizes[:i]) for i in range(len(sizes))]
    assert deletable(bases, below) == brute_force(bases, below)


def test_the_batch_holding_the_bound_and_the_newest_batch_are_kept():
    assert deletable([0, 10, 20, 30], 25) == 2   # 20..29 holds 25: kept
    assert deletable([0, 10, 20, 30], 30) == 3   # only the newest is left
    assert deletable([0, 10, 20, 30], 10_000) == 3
    assert deletable([0], 10_000) == 0
    assert deletable([], 5) == 0
