"""Which process computes which example of an update, under data parallel.

With N processes and gradient accumulation G, an update is N x G consecutive micro-batches of the sampler's order,
and accelerate deals them round-robin (micro-batch k to process k % N). Every process then waits for the slowest one
at the gradient all-reduce, so an update lasts as long as its longest share: with shuffled lengths (agent
trajectories of 1,500-4,000 tokens, 2 per micro-batch, 4 processes x 2) the longest share is ~15 % above the mean,
and a length-sorted order gives process 0 the longest micro-batch of every round (tests/test_balance.py; on 4 x H200
DDP ran 5 % faster with the re-deal: benchmarks/results/throughput.md). `BalancedBatchSampler` re-deals the examples
of each update among its micro-batches (packed rows: each keeps its number of examples, and their tokens are evened
out; padded batches: whole batches are dealt to the processes, since mixing lengths in a padded batch adds padding).
The update holds the same examples as on one process, and the loss is normalised over all of them
(toolgen/step.py), so it computes the same update: only where each example is computed changes.
"""

import torch


def deal(costs, bins, capacity):
    """Longest-processing-time first: items, largest cost first, each into the least loaded bin that still has room
    (`capacity` items a bin) -> [[item index, ...] per bin]. Ties go to the lower bin and the earlier item, so every
    process computes the same deal."""
    if len(costs) > bins * capacity:
        raise ValueError(f"{len(costs)} items do not fit {bins} bins of {capacity}")
    out, load = [[] for _ in range(bins)], [0] * bins
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        k = min((k for k in range(bins) if len(out[k]) < capacity), key=lambda k: load[k])
        out[k].append(i)
        load[k] += costs[i]
    return out


def balanced(batches, lengths, processes, packed):
    """One update's micro-batches (accelerate gives micro-batch k to process k % processes) re-dealt: the same
    examples, every micro-batch as many as before. packed: cost = tokens of an example, evened over the processes,
    then over each process's micro-batches (the step's memory); padded: cost = examples x longest of a batch, whole
    batches evened over the processes. A group with a short batch (the epoch's tail) is left as it is."""
    size, per_process = len(batches[0]), len(batches) // processes
    if any(len(b) != size for b in batches) or len(batches) % processes:
        return batches
    if packed:
        examples = [i for b in batches for i in b]
        shares = [[examples[j] for j in share] for share in deal([lengths[i] for i in examples], processes,
                                                                  per_process * size)]
        micro = [[[share[j] for j in m] for m in deal([lengths[i] for i in share], per_process, size)]
                 for share in shares]
    else:
        shares = deal([len(b) * max(lengths[i] for i in b) for b in batches], processes, per_process)
        micro = [[batches[j] for j in share] for share in shares]
    return [micro[p][j] for j in range(per_process) for p in range(processes)]


class BalancedBatchSampler(torch.utils.data.BatchSampler):
    """A BatchSampler (accelerate swaps its `sampler` for a seeded one and shards what it yields) whose every
    `processes x accumulation` batches are re-dealt by `balanced`."""

    def __init__(self, sampler, batch_size, lengths, processes, accumulation, packed):
        super().__init__(sampler, batch_size, drop_last=False)
        self.lengths, self.processes, self.packed = lengths, processes, packed
        self.group = processes * accumulation

    def __iter__(self):
        batches = []
        for batch in super().__iter__():
            batches.append(batch)
            if len(batches) == self.group:
                yield from balanced(batches, self.lengths, self.processes, self.packed)
                batches = []
        yield from batches
