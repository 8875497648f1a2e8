"""``l2: auto`` for a random effect trained partition by partition.

Given the ridge ``l2`` the entities are independent, so the Laplace evidence of ``l2`` is a sum
over entities and therefore over partitions. Each worker solves its share of the coordinate's
partitions at ``l2`` (warm-started from its solution at the nearest ``l2`` already tried), sums
their evidence, and one all-reduce gives the coordinate's evidence on every worker; every worker
then takes the same next step of the same search as ``gdmix train``
(:func:`gdmix.models.empirical_bayes.estimate_l2`), because the reduced sums are bit-identical.

The search always covers every partition of the coordinate (the evidence is the coordinate's,
whichever partitions a job trains), and its result is recorded once, in
``learned_l2/<coordinate>.json`` of the output, before any partition trains: a rerun, another
worker or a later partition group of the pipeline trains at the recorded ``l2`` and never
searches again, so every partition of a coordinate is trained at the same ``l2``.

Partitions stay on the object store between evaluations unless they fit in
:data:`SEARCH_CACHE_BYTES` of memory together, so memory stays bounded by the largest partition
plus what the search keeps per entity: its coefficients and their tangents in ``l2`` at up to
three ``l2`` values (see :func:`gdmix.models.empirical_bayes.estimate_l2`).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import numpy as np

from gdmix.config import RandomEffectConfig
from gdmix.distributed.collective import Collective, SingleProcess, agree, barrier
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.jobs.partition_data import TrainingRows, partition_settings, partition_warm_start, read_partition
from gdmix.layout import learned_l2_uri, model_uri, partition_name
from gdmix.models.empirical_bayes import estimate_l2, estimate_l2_per_group, initial_ridges
from gdmix.models.random_effect import (
    INTERCEPT_L2_METADATA, L2_METADATA, entity_problems, evidence_fields, initial_solution, learned_l2_report,
    learned_ridge,
)

#: partitions kept in memory between the search's evaluations while they fit in this many bytes
#: together; the rest are read again at every evaluation
SEARCH_CACHE_BYTES = 2 << 30


@dataclass
class PartitionSource:
    """Where a coordinate's partitions come from: the prepared rows, the offsets beside them,
    the warm start."""

    spec: RandomEffectConfig
    prep_dir: str
    index_map: IndexMap
    offsets: str | None
    warm_start: str | None

    def problem(self, partition: int):
        """The partition's entity problems and its rows' entity ids, or ``(None, None)`` for a
        partition with no training rows."""
        train, active = read_partition(self.prep_dir, self.spec, "train", partition, self.index_map, self.offsets)
        if train is None:
            return None, None
        rows = TrainingRows.active(train, active, self.spec)
        problem = entity_problems(rows.entities.codes, rows.features, rows.labels, rows.weights, rows.offsets,
                                  partition_settings(self.spec))
        return problem, train.entities[self.spec.entity]

    def start(self, partition: int, problem, entities):
        """Where the solver starts on ``problem``: the warm start's solution for the partition."""
        initial = partition_warm_start(self.warm_start, self.spec, partition, self.index_map, entities)
        return initial_solution(problem, initial)


@dataclass
class PartitionSolutions:
    """Every partition's solution at one ``l2``, with the coordinate's evidence there (summed
    over partitions and workers): what :func:`estimate_l2` keeps per point it tried."""

    parts: dict[int, object]
    l2: float | None
    evidence: dict[str, float] = field(default_factory=dict)
    evaluations: int = 0
    intercept_l2: float | None = None  # the intercept's own ridge (``per_group``)

    def __getattr__(self, name: str):
        # the evidence fields (log_evidence, ...) read as attributes, as on one problem's solution
        evidence = self.__dict__.get("evidence", {})
        if name in evidence:
            return evidence[name]
        raise AttributeError(name)


class PartitionProblems:
    """This worker's share of a coordinate's partitions, solvable at any ``l2`` as one problem."""

    def __init__(self, source: PartitionSource, partitions: list[int], collective: Collective):
        self.source, self.partitions, self.collective = source, partitions, collective
        self._cache: dict[int, object] = {}
        self._cached_bytes = 0

    def start(self, initial_l2: float | None, initial_intercept_l2: float | None = None) -> PartitionSolutions:
        """Every partition's warm start, carrying the previous pass's ``l2`` (and intercept's)."""
        parts = {}
        for partition in self.partitions:
            problem, entities = self._load(partition)
            if problem is not None:
                parts[partition] = self.source.start(partition, problem, entities)
        return PartitionSolutions(parts, initial_l2, intercept_l2=initial_intercept_l2)

    def solve(self, l2: float, start: PartitionSolutions, progress=None, evidence: bool = False,
              intercept_l2: float | None = None) -> PartitionSolutions:
        """Every partition at ``l2`` (and ``intercept_l2``) from ``start``; with ``evidence``, the
        evidence summed over this worker's partitions, then over workers."""
        parts: dict[int, object] = {}

        def local() -> np.ndarray:
            sums = np.zeros(len(evidence_fields()))
            for partition, part_start in start.parts.items():
                solution = self._load(partition)[0].solve(l2, part_start, evidence=evidence, intercept_l2=intercept_l2)
                parts[partition] = solution
                if evidence:
                    sums += [getattr(solution, name) for name in evidence_fields()]
            return sums

        totals = self.collective.sum(agree(self.collective, local))
        return PartitionSolutions(parts, l2, dict(zip(evidence_fields(), map(float, totals))) if evidence else {},
                                  intercept_l2=intercept_l2)

    def _load(self, partition: int):
        """A partition's problem and entity ids: from memory when cached, else read."""
        if partition in self._cache:
            return self._cache[partition]
        loaded = self.source.problem(partition)
        size = _footprint(loaded[0])
        if self._cached_bytes + size <= SEARCH_CACHE_BYTES:
            self._cache[partition] = loaded
            self._cached_bytes += size
        return loaded


def _footprint(problem) -> int:
    """Bytes held by a partition's problem (its layout's arrays and its row vectors)."""
    if problem is None:
        return 0
    return problem.layout.nbytes + sum(values.nbytes for values in (problem.labels, problem.weights, problem.offsets))


def learned_l2(source: PartitionSource, output: str, partitions: int, collective: Collective | None = None,
               log=print) -> dict:
    """The coordinate's ``l2`` (and what the search found: :func:`learned_l2_report`), from the
    record in ``output`` when there is one, else by searching over all ``partitions`` (worker k
    of n solving every n-th) and recording the result."""
    spec = source.spec
    record_uri = learned_l2_uri(output, spec.name)
    if fs.exists(record_uri):
        return json.loads(fs.read_text(record_uri))
    collective = collective or SingleProcess()
    tic = time.perf_counter()
    problems = PartitionProblems(source, list(range(partitions))[collective.rank::collective.size], collective)
    previous, previous_intercept = previous_ridges(source.warm_start, spec.name)
    start = problems.start(previous, previous_intercept)
    if spec.l2_auto.per_group:
        solution = estimate_l2_per_group(problems, *initial_ridges(spec.l2_auto.init, previous, previous_intercept),
                                         start)
    else:
        solution = estimate_l2(problems, spec.l2_auto.init if previous is None else previous, start)
    record = learned_l2_report(solution) | {"l2_search_seconds": time.perf_counter() - tic,
                                            "l2_search_workers": collective.size}
    if collective.rank == 0:
        fs.write_text_atomic(record_uri, fs.to_json(record))
    barrier(collective)  # no partition trains before the record exists (a rerun must find it)
    intercept = (f", intercept l2 {record['intercept_l2']:.4g} "
                 f"(prior variance {record['intercept_prior_variance']:.4g})" if "intercept_l2" in record else "")
    log(f"{spec.name}: learned l2 {record['l2']:.4g} (prior variance {record['prior_variance']:.4g}){intercept} in "
        f"{record['l2_evaluations']} solves over {partitions} partitions, {record['l2_search_seconds']:.2f}s")
    return record


def previous_ridges(warm_start: str | None, coordinate: str) -> tuple[float | None, float | None]:
    """The ``l2`` the previous pass learned and its intercept's (``per_group``; else None): its
    record, else the metadata of its model files (a model directory of ``gdmix train``); None on
    a cold start."""
    if not warm_start:
        return None, None
    record_uri = learned_l2_uri(warm_start, coordinate)
    if fs.exists(record_uri):
        record = json.loads(fs.read_text(record_uri))
        return float(record["l2"]), record.get("intercept_l2")
    models = model_uri(warm_start, coordinate)
    for directory in (fs.join(models, partition_name(0)), models):
        files = fs.list_parquet_files(directory) if fs.exists(directory) else []
        if files:
            schema = fs.parquet_schema(files[0])
            return learned_ridge(schema, L2_METADATA), learned_ridge(schema, INTERCEPT_L2_METADATA)
    return None, None
