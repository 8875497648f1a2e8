import numpy as np
import pytest

from gdmix.prep.binpack import assign_partitions, partition_loads


@pytest.mark.parametrize("exponent", [1.2, 1.6, 2.0])
def test_power_law_sizes_are_balanced_within_1_2x_of_the_mean(exponent):
    rng = np.random.default_rng(int(exponent * 10))
    sizes = np.minimum(rng.zipf(exponent, 200_000), 5_000)  # giant entities capped, as max_rows does
    partitions = 32
    loads = partition_loads(sizes, assign_partitions(sizes, partitions), partitions)
    assert loads.sum() == sizes.sum()
    assert loads.max() <= 1.2 * loads.mean()
    hashed = np.bincount(np.arange(len(sizes)) % partitions, weights=sizes, minlength=partitions)
    assert loads.max() <= hashed.max()  # never worse than hashing


def test_one_giant_entity_gets_a_partition_to_itself():
    sizes = np.array([1000] + [1] * 1000)
    assignment = assign_partitions(sizes, 4)
    giant = assignment[0]
    assert np.sum(assignment == giant) == 1
    loads = partition_loads(sizes, assignment, 4)
    assert sorted(loads.tolist()) == [333, 333, 334, 1000]


def test_every_entity_gets_a_valid_partition_and_it_is_deterministic():
    sizes = np.random.default_rng(3).integers(1, 50, 1234)
    a = assign_partitions(sizes, 7)
    assert a.min() >= 0 and a.max() <= 6 and len(a) == 1234
    assert np.array_equal(a, assign_partitions(sizes, 7))
    assert len(assign_partitions(np.array([], dtype=np.int64), 3)) == 0
