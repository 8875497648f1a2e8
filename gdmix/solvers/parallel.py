"""Independent batches of small problems solved on every core.

A random effect's batches are independent problems of a few kilobytes each: BLAS threads
inside one batch's tiny matrix products only add overhead (measured: a second BLAS thread did
not shorten a tiny-entity pass at all), while solving different batches on different cores
nearly halves it on two. numpy releases the GIL inside its array operations, so threads do.
Native thread pools are held to one thread meanwhile, which also makes every batch's numbers
independent of how many cores the machine has.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from threadpoolctl import threadpool_limits

T = TypeVar("T")
R = TypeVar("R")

#: batches in flight per worker thread (bounds memory: a batch is about 16 MB of dense arrays)
IN_FLIGHT_PER_WORKER = 2


#: the process's thread cap, as the launchers and benchmarks set it for TensorFlow too
#: (gdmix.tf_runtime reads the same variable; solvers import nothing from gdmix)
THREADS_VARIABLE = "GDMIX_INTRA_OP_THREADS"
_limit: int | None = None  # set by :func:`limited_cores`


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, as a container's limit sets it),
    at most ``GDMIX_INTRA_OP_THREADS`` when that is set, and at most :func:`limited_cores`'s."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        cores = max(1, os.cpu_count() or 1)
    caps = [cap for cap in (_limit, os.environ.get(THREADS_VARIABLE)) if cap not in (None, "", "0")]
    return min([cores] + [max(1, int(cap)) for cap in caps])


@contextlib.contextmanager
def limited_cores(cores: int):
    """Batches on at most ``cores`` threads meanwhile (a benchmark's one-thread run)."""
    global _limit
    before, _limit = _limit, cores
    try:
        yield
    finally:
        _limit = before


def ordered_map(function: Callable[[T], R], items: Iterable[T], workers: int | None = None) -> Iterator[R]:
    """``function(item)`` for every item, yielded in the items' order, computed on ``workers``
    threads (default: every available core) with at most :data:`IN_FLIGHT_PER_WORKER` items per
    thread in flight; BLAS and OpenMP pools run one thread each meanwhile. ``function`` must not
    write shared state: the caller combines the results, in order."""
    workers = available_cores() if workers is None else max(1, workers)
    with threadpool_limits(limits=1):
        if workers == 1:
            yield from map(function, items)
            return
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="gdmix-batch") as pool:
            pending = deque()
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
