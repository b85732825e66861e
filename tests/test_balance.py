"""Re-dealing an update's examples among the processes (toolgen/balance.py): by hand, and on agent-like lengths.
That a 2-process stage still computes the single process's updates is tests/test_distributed.py (balancing is on)."""

import random

import pytest
from torch.utils.data import BatchSampler, SequentialSampler

from toolgen.balance import BalancedBatchSampler, balanced, deal


def test_deal_fills_the_least_loaded_bin_with_room_largest_first():
    # by hand: 5 -> bin 0; 4 -> 1; 3 -> 1 (4 < 5); 3 -> 0 (5 < 7); 2 -> 1 (7 < 8); 1 -> 0, the only bin with room
    assert deal([5, 1, 4, 2, 3, 3], bins=2, capacity=3) == [[0, 5, 1], [2, 4, 3]]
    with pytest.raises(ValueError, match="7 items do not fit 2 bins of 3"):
        deal([1] * 7, bins=2, capacity=3)


def test_packed_rows_even_out_the_tokens_of_the_micro_batches():
    lengths = {0: 10, 1: 9, 2: 2, 3: 1}
    # tokens per micro-batch 19 and 3 before; 10 + 1 and 9 + 2 after
    assert balanced([[0, 1], [2, 3]], lengths, processes=2, packed=True) == [[0, 3], [1, 2]]


def test_packed_rows_are_evened_over_the_processes_then_over_each_ones_micro_batches():
    lengths = [8, 7, 6, 5, 4, 3, 2, 1]
    # by hand: the processes get 8+5+4+1 and 7+6+3+2 (18 each); then process 0's micro-batches 8+1 and 5+4,
    # process 1's 7+2 and 6+3; micro-batch k goes to process k % 2
    assert balanced([[0, 1], [2, 3], [4, 5], [6, 7]], lengths, processes=2, packed=True) == \
        [[0, 7], [1, 6], [3, 4], [2, 5]]


def test_padded_batches_stay_whole_and_even_out_the_processes():
    lengths = {0: 10, 1: 10, 2: 9, 3: 9, 4: 2, 5: 2, 6: 1, 7: 1}
    out = balanced([[0, 1], [2, 3], [4, 5], [6, 7]], lengths, processes=2, packed=False)
    # batch costs (examples x longest) 20, 18, 4, 2: process 0 gets 20 + 2, process 1 18 + 4; micro-batch k goes to
    # process k % 2, each process's batches in the order dealt
    assert out == [[0, 1], [2, 3], [6, 7], [4, 5]]


def test_a_group_with_a_short_batch_is_left_alone():
    assert balanced([[0, 1], [2]], {0: 1, 1: 5, 2: 9}, processes=2, packed=True) == [[0, 1], [2]]


def shares(batches, processes, accumulation, lengths):
    """Tokens of each process in each update, as accelerate deals micro-batch k to process k % processes."""
    group = processes * accumulation
    return [[sum(lengths[i] for b in batches[u:u + group][p::processes] for i in b) for p in range(processes)]
            for u in range(0, len(batches) - group + 1, group)]


@pytest.mark.parametrize("packed", [True, False])
def test_every_update_keeps_its_examples_and_its_slowest_share_shrinks(packed):
    rng = random.Random(0)
    lengths = [rng.randint(1500, 4000) for _ in range(403)]   # agent-like; 403: a short last batch
    plain = list(BatchSampler(SequentialSampler(lengths), 2, drop_last=False))
    dealt = list(BalancedBatchSampler(SequentialSampler(lengths), 2, lengths, 4, 2, packed))
    assert len(dealt) == len(plain) == 202 and [len(b) for b in dealt] == [len(b) for b in plain]
    for u in range(0, len(plain), 8):   # the same examples in every update (the tail's included)
        assert sorted(i for b in dealt[u:u + 8] for i in b) == sorted(i for b in plain[u:u + 8] for i in b)

    def excess(batches):   # the slowest process's tokens over the mean, averaged over the updates
        return sum(max(s) / (sum(s) / len(s)) for s in shares(batches, 4, 2, lengths)) / (len(lengths) // 16) - 1
    assert excess(plain) > 0.10
    assert excess(dealt) < (0.02 if packed else 0.10)
