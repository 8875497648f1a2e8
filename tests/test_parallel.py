"""Batches solved on every core: the same numbers as one at a time, in order, failures raised."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gdmix.config import RandomEffectConfig
from gdmix.models.random_effect import fit_random_effect
from gdmix.solvers import parallel
from gdmix.solvers.parallel import IN_FLIGHT_PER_WORKER, ordered_map


def test_results_come_in_order_with_bounded_work_in_flight():
    started, lock = [], threading.Lock()

    def slow_square(k):
        with lock:
            started.append(k)
        time.sleep(0.002 * (k % 3))  # finish out of order
        return k * k

    consumed = []
    for value in ordered_map(slow_square, range(40), workers=3):
        consumed.append(value)
        with lock:  # never more than the window ahead of what was consumed
            assert len(started) <= len(consumed) + IN_FLIGHT_PER_WORKER * 3
    assert consumed == [k * k for k in range(40)]


def test_a_failing_item_raises_in_the_caller():
    def fail_on_seven(k):
        if k == 7:
            raise ValueError("item 7")
        return k

    with pytest.raises(ValueError, match="item 7"):
        list(ordered_map(fail_on_seven, range(20), workers=2))


@pytest.mark.parametrize("l2", [1.0, "auto"])
def test_a_random_effect_is_bit_identical_on_one_core_and_on_several(monkeypatch, l2):
    rng = np.random.default_rng(3)
    counts = rng.integers(1, 9, 3000)
    codes = np.repeat(np.arange(3000), counts)
    import scipy.sparse as sp

    x = sp.random(len(codes), 40, density=0.2, random_state=4, format="csr")
    labels = (rng.random(len(codes)) < 0.4).astype(float)
    weights, offsets = np.ones(len(codes)), rng.normal(scale=0.2, size=len(codes))
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=l2)
    monkeypatch.setattr("gdmix.native.entity_kernels.CHUNK_ENTITIES", 256)  # several kernel calls too
    results = {}
    for cores in (1, 3):
        monkeypatch.setattr(parallel, "available_cores", lambda cores=cores: cores)
        results[cores] = fit_random_effect(codes, x, labels, weights, offsets, config)
    one, several = results[1], results[3]
    assert one[3].batches > 3  # several batches, so the threads really share them
    for a, b in zip(one[:2], several[:2]):
        assert np.array_equal(a, b)
    assert (one[2] != several[2]).nnz == 0
    assert one[3].as_dict() == several[3].as_dict()


def test_the_thread_cap_and_a_benchmarks_limit_bound_the_cores(monkeypatch):
    from gdmix.solvers.parallel import available_cores, limited_cores

    monkeypatch.setattr(parallel.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.delenv("GDMIX_INTRA_OP_THREADS", raising=False)
    assert available_cores() == 4
    monkeypatch.setenv("GDMIX_INTRA_OP_THREADS", "2")
    assert available_cores() == 2
    with limited_cores(1):
        assert available_cores() == 1
    monkeypatch.setenv("GDMIX_INTRA_OP_THREADS", "0")  # 0: no cap, as for TensorFlow
    assert available_cores() == 4
