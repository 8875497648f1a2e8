"""The fixed-effect stage: one entrypoint for a local process, N local workers or a TFJob.

Every worker runs :func:`run_fixed_effect_job` with the same arguments; ``TF_CONFIG`` tells it
which worker it is. A worker

1. reads its shard of the training (and validation, test) rows, balanced by row count;
2. agrees with the others on the data: total rows and weight, globally unique uids (uids are
   shuffled by hash through the job's working directory), and one feature index map (given, or
   built from every worker's distinct features);
3. trains with the data term summed by a collective all-reduce, checkpointing its point every
   ``checkpoint_every`` iterations into the working directory (a restarted job resumes there),
   and with ``variance: simple | full`` sums its shard's Hessian at the optimum the same way
   (from the optimiser's tensors: :meth:`~gdmix.models.fixed_effect.FixedEffectProblem.variances`);
4. scores its shards and writes ``scores/<coordinate>/{train,validation,test}/part-<worker>.parquet``.

The chief then writes the model, commits the whole output in one step (no half-written score
set is ever visible) and writes ``job.json`` last as the completion marker
(:class:`gdmix.jobs.commit.StagedOutput`, shared with the DeText job). Any worker's
failure fails every worker (see :func:`gdmix.distributed.collective.agree`).
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import time

import numpy as np
import pyarrow as pa

from gdmix.artifacts import TrainedModel, load_models
from gdmix.config import FixedEffectConfig, GdmixConfig
from gdmix.dataset import Dataset, DatasetReading, read_dataset
from gdmix.distributed.cluster import worker_info
from gdmix.distributed.collective import agree, connect
from gdmix.distributed.exchange import Exchange
from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.checkpoint import Checkpoint
from gdmix.io.contract import ContractColumns
from gdmix.io.uid_join import read_offsets
from gdmix.jobs.commit import StagedOutput
from gdmix.layout import SPLITS, index_map_uri
from gdmix.models.coordinates import FixedEffectCoordinate
from gdmix.models.fixed_effect import FixedEffectModel, FixedEffectProblem


def run_fixed_effect_job(
    config: GdmixConfig,
    coordinate: str,
    output: str,
    *,
    offsets: str | None = None,
    index_maps: str | None = None,
    warm_start: str | None = None,
    checkpoint_every: int = 50,
    timeout_seconds: float = 600.0,
    log=print,
) -> dict:
    """Run this process's part of the job; returns the job summary (the same on every worker)."""
    started = time.perf_counter()
    info = worker_info()
    collective = connect(info, timeout_seconds)  # before any other TensorFlow work
    spec = config.coordinate(coordinate, FixedEffectConfig)
    workdir = _working_directory(output, config, coordinate, offsets, index_maps, warm_start)
    exchange = Exchange(fs.join(workdir, "exchange"), collective)
    who = f"worker {info.index}/{info.count}"

    readings = agree(collective, lambda: _read_shards(config, spec, info.index, info.count))
    counts = collective.sum(np.array([readings["train"].num_rows, readings["train"].total("weight")]))
    agree(collective, lambda: _check_training_set(config, counts))
    agree(collective, lambda: _check_unique_uids(readings, exchange))
    bag_map = agree(collective, lambda: _index_map(spec, readings["train"], index_maps, exchange))
    maps = {spec.feature_bag: bag_map} if spec.feature_bag else {}
    data = agree(collective, lambda: {split: reading.finish(maps) for split, reading in readings.items()})
    readings.clear()  # finished: their parts are released
    train = data["train"]
    base = {"train": train.offset + agree(collective, lambda: _external_offsets(offsets, train))}
    for split in SPLITS[1:]:
        if split in data:
            base[split] = data[split].offset
    initial = agree(collective, lambda: _warm_start_model(warm_start, spec, maps))
    log(f"{who}: {train.num_rows:,} training rows, {train.bag(spec.feature_bag).nnz:,} non-zeros")

    # errors raised here come from all-reduced values, so every worker raises them together
    problem = FixedEffectProblem.build(train.bag(spec.feature_bag), train.label, train.weight, base["train"],
                                       spec, collective)
    train.bags.clear()  # from here on the optimiser's tensors are the only copy: 12 bytes per non-zero
    model, report = problem.solve(
        initial, _fault_injection(info.index),
        Checkpoint(fs.join(workdir, "checkpoint.npz"), checkpoint_every, writer=info.is_chief),
    )
    theta = np.concatenate([[model.intercept], model.coef])
    memory = collective.sum(np.array([report.memory_bytes, report.nonzeros, report.nonzero_bytes]))
    staged = StagedOutput(workdir, output)
    for split, dataset in data.items():
        own = problem.data_term.logits(theta) if split == "train" else model.score(dataset.bag(spec.feature_bag))
        staged.write_scores(spec.name, split, info.index, dataset, base[split], own)
    summary = {
        "coordinate": spec.name,
        "workers": info.count,
        "rows": {split: int(collective.sum(np.array([d.num_rows]))[0]) for split, d in data.items()},
        "solver": report.as_dict() | {"memory_bytes": int(memory[0]),
                                      "bytes_per_nonzero": memory[2] / max(memory[1], 1.0),
                                      "bytes_per_row": (memory[0] - memory[2]) / max(counts[0], 1.0)},
        "train_seconds": time.perf_counter() - started,
    }
    staged.commit(collective, info.is_chief,
                  TrainedModel(config.data, [FixedEffectCoordinate(spec)], maps, {spec.name: model}), summary)
    log(f"{who}: done in {summary['train_seconds']:.1f}s ({report.iterations} iterations)")
    return summary | {"chief": info.is_chief}


def _fault_injection(worker: int):
    """Resilience testing: ``GDMIX_FAULT_WORKER=k GDMIX_FAULT_ITERATION=i`` makes worker k die
    abruptly (exit status 42, no clean-up) when the optimiser reaches iteration i."""
    target, iteration = os.environ.get("GDMIX_FAULT_WORKER"), os.environ.get("GDMIX_FAULT_ITERATION")
    if target is None or iteration is None or int(target) != worker:
        return None

    def maybe_die(done: int, _value: float) -> None:
        if done >= int(iteration):
            os._exit(42)

    return maybe_die


def _working_directory(output: str, config: GdmixConfig, *identity) -> str:
    """A hidden sibling of ``output`` named after what the job computes, so a restarted job (same
    arguments) finds its checkpoint there and a different job never does."""
    key = hashlib.sha256(json.dumps([output, config.model_dump(mode="json"), *identity],
                                    sort_keys=True, default=str).encode()).hexdigest()[:16]
    parent, name = posixpath.split(output.rstrip("/"))
    return posixpath.join(parent, f".{name}.job-{key}")


def _read_shards(config: GdmixConfig, spec: FixedEffectConfig, index: int, count: int) -> dict[str, DatasetReading]:
    """This worker's shard of every split, read row group by row group; the bags stay coded
    until the workers agree on the index map (:func:`_index_map`)."""
    columns = ContractColumns(uid=config.data.uid, label=config.data.label, weight=config.data.weight,
                              offset=config.data.offset, bags=(spec.feature_bag,) if spec.feature_bag else ())
    uris = {split: getattr(config.data, split) for split in SPLITS}
    return {split: read_dataset(uri, columns, shard=(index, count)) for split, uri in uris.items() if uri}


def _check_training_set(config: GdmixConfig, counts: np.ndarray) -> None:
    rows, weight = counts
    if rows == 0:
        raise DataError("dataset is empty (0 rows)", path=config.data.train)
    if weight <= 0:
        raise DataError("every training row has weight 0: nothing to train on",
                        path=config.data.train, column=config.data.weight or "weight")


def _check_unique_uids(readings: dict[str, DatasetReading], exchange: Exchange) -> None:
    """uids are unique within each shard already; here across shards, bucketed by a hash."""
    count = exchange.collective.size
    for split, reading in readings.items():
        uids = reading.uid()
        bucket = (uids.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) >> np.uint64(40)) % np.uint64(count)
        received = np.concatenate(exchange.shuffle(f"uids-{split}", [uids[bucket == k] for k in range(count)]))
        values, seen = np.unique(received, return_counts=True)
        if (seen > 1).any():
            raise DataError(f"duplicate uid {int(values[seen > 1][0])} in the {split} data "
                            "(found by comparing the shards of different workers); uids must be unique",
                            column="uid")


def _index_map(spec: FixedEffectConfig, train: DatasetReading, given: str | None, exchange: Exchange) -> IndexMap:
    """The bag's index map: the given one, or the union of every worker's features."""
    if spec.feature_bag is None:
        return IndexMap.empty()
    if given:
        return IndexMap.load(index_map_uri(given, spec.feature_bag))
    local = train.index_maps()[spec.feature_bag]
    parts = exchange.all_gather_table("features", pa.table({"name": local.names, "term": local.terms}))
    everything = pa.concat_tables(parts)
    return IndexMap.from_features(everything.column("name").combine_chunks(), everything.column("term").combine_chunks())


def _external_offsets(uri: str | None, train: Dataset) -> np.ndarray:
    """Offsets keyed by uid (the other coordinates' scores), joined to this shard's rows.

    Every training row must have one: a missing uid is an error, never a silently dropped row.
    """
    if uri is None:
        return np.zeros(train.num_rows)
    return read_offsets(uri, train.uid)


def _warm_start_model(uri: str | None, spec: FixedEffectConfig, maps: dict[str, IndexMap]) -> FixedEffectModel | None:
    if not uri:
        return None
    return load_models(uri, [FixedEffectCoordinate(spec)], maps).get(spec.name)

