"""Size-aware assignment of entities to partitions (bin packing), vectorized.

Hash partitioning puts a few giant entities wherever their hash falls, and the slowest
partition sets the pace of the whole random-effect stage. Here entities are placed largest
first, each on the partition with the fewest rows so far (the LPT rule, within 4/3 of the best
possible maximum). The largest entities are placed one at a time; the long tail, where many
entities share each size, is placed a whole size class at a time by water-filling (what the
one-at-a-time rule does with identical items), so millions of entities take array operations,
not a Python step each.
"""

from __future__ import annotations

import heapq

import numpy as np

EXACT_ROUNDS = 8  # the largest EXACT_ROUNDS * partitions entities are placed one by one


def assign_partitions(sizes: np.ndarray, partitions: int) -> np.ndarray:
    """Partition index (0..partitions-1) for every entity, balancing the sum of ``sizes``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    assignment = np.empty(len(sizes), dtype=np.int64)
    order = np.argsort(-sizes, kind="stable")
    exact = min(len(order), EXACT_ROUNDS * partitions)
    heap = [(0, p) for p in range(partitions)]
    for entity in order[:exact]:
        load, p = heapq.heappop(heap)
        assignment[entity] = p
        heapq.heappush(heap, (load + int(sizes[entity]), p))
    loads = np.zeros(partitions, dtype=np.int64)
    for load, p in heap:
        loads[p] = load
    tail = order[exact:]
    if len(tail):
        boundaries = np.flatnonzero(np.diff(sizes[tail])) + 1
        for group in np.split(tail, boundaries):  # one size class at a time, largest first
            counts = _water_fill(loads, int(sizes[group[0]]), len(group))
            assignment[group] = np.repeat(np.arange(partitions), counts)
            loads += counts * sizes[group[0]]
    return assignment


def _water_fill(loads: np.ndarray, size: int, count: int) -> np.ndarray:
    """How many of ``count`` items of equal ``size`` each partition gets, lightest first."""
    if size == 0:
        counts = np.zeros(len(loads), dtype=np.int64)
        counts[np.argsort(loads, kind="stable")[:1]] = count
        return counts
    low, high = int(loads.min()), int(loads.max()) + size * (count + 1)
    while low < high:  # the highest level L whose fill sum(floor((L - load) / size)) <= count
        level = (low + high + 1) // 2
        if np.sum(np.maximum(level - loads, 0) // size) <= count:
            low = level
        else:
            high = level - 1
    counts = np.maximum(low - loads, 0) // size
    rest = count - int(counts.sum())
    if rest:
        counts[np.argsort(loads + counts * size, kind="stable")[:rest]] += 1
    return counts


def partition_loads(sizes: np.ndarray, assignment: np.ndarray, partitions: int) -> np.ndarray:
    return np.bincount(assignment, weights=sizes, minlength=partitions).astype(np.int64)
