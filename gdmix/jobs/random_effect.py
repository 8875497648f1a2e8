"""``gdmix train-random-effect``: training a random effect partition by partition.

The rows come from ``gdmix prep`` (``<prep.output>/partitions/<coordinate>/``), already grouped
by entity into size-balanced partitions with their ``active`` flags. One partition at a time
is read, trained with the batched solver on its active rows, scored (all its rows, active and
passive, and its validation and test rows) and committed, so memory is bounded by the largest
partition, not the population.

Each partition commits on its own: its files are staged, moved into
``models/<coordinate>/partition=<p>/`` and ``scores/<coordinate>/{train,validation,test}/partition=<p>/``,
and only then does ``done/<coordinate>/partition=<p>.json`` appear. A rerun skips every
partition with that marker, so a killed worker costs only the partition it was on. Under
``TF_CONFIG`` (or ``--workers N``, which launches N local processes) worker k of n takes every
n-th partition of the list.

Under ``l2: auto`` the workers first learn the coordinate's ``l2`` together over all its
partitions (:mod:`gdmix.jobs.learned_l2`), record it, and then train every partition at it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time

import numpy as np
import pyarrow as pa

from gdmix.config import GdmixConfig, RandomEffectConfig
from gdmix.dataset import Dataset
from gdmix.distributed.cluster import worker_info
from gdmix.errors import ConfigError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.jobs.partition_data import (
    TrainingRows, coordinate_index_map, partition_settings, partition_warm_start, read_partition,
)
from gdmix.layout import (
    PARTITION_MANIFEST, SPLITS, coordinate_done_uri, learned_l2_uri, model_uri, partition_done_uri,
    partition_name, partitions_uri, scores_uri,
)
from gdmix.models.random_effect import PassMemo, RandomEffectModel, fit_random_effect_model


def partition_list(text: str, total: int) -> list[int]:
    """``"a:b"`` (half-open range), ``"3,5,8"``, or ``"all"``."""
    if text in ("all", ""):
        return list(range(total))
    try:
        if ":" in text:
            start, stop = text.split(":", 1)
            chosen = list(range(int(start or 0), int(stop or total)))
        else:
            chosen = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--partitions expects a:b, a list like 0,3,5, or all; got '{text}'") from None
    bad = [p for p in chosen if not 0 <= p < total]
    if bad:
        raise ConfigError(f"--partitions: {bad} outside 0..{total - 1}")
    return chosen


def train_partitions(config: GdmixConfig, coordinate: str, partitions: str, output: str, *,
                     offsets: str | None = None, warm_start: str | None = None, log=print) -> dict:
    """Train this worker's share of ``partitions``; returns what it did."""
    spec, prep_dir = _coordinate(config, coordinate)
    manifest = json.loads(fs.read_text(fs.join(partitions_uri(prep_dir, coordinate), PARTITION_MANIFEST)))
    chosen = partition_list(partitions, manifest["partitions"])
    info = worker_info()
    mine = chosen[info.index::info.count]
    index_map = coordinate_index_map(prep_dir, spec)
    learned = None
    if spec.l2_auto is not None and any(not fs.exists(_marker(output, coordinate, p)) for p in mine):
        learned = _learned_l2(spec, prep_dir, index_map, output, offsets, warm_start, manifest["partitions"], log)
    done, skipped = [], []
    for partition in mine:
        if fs.exists(_marker(output, coordinate, partition)):
            skipped.append(partition)
            continue
        tic = time.perf_counter()
        stats = _train_one(spec, prep_dir, partition, index_map, output, offsets, warm_start, learned)
        stats["seconds"] = time.perf_counter() - tic
        fs.write_text_atomic(_marker(output, coordinate, partition), fs.to_json(stats))
        done.append(partition)
        log(f"{coordinate} partition {partition}: {stats['entities_trained']:,} entities, "
            f"{stats['rows']:,} rows in {stats['seconds']:.2f}s")
        _fault_injection(len(done))
    complete = all(fs.exists(_marker(output, coordinate, p)) for p in range(manifest["partitions"]))
    if complete:
        # only now is no worker staging a partition of this coordinate (each one removes its own
        # partition's staging on commit; a killed try's leftovers are replaced by the rerun)
        with contextlib.suppress(FileNotFoundError):
            fs.remove(fs.join(output, ".staging", coordinate))
        _write_summary(output, coordinate, manifest["partitions"])
    return {"coordinate": coordinate, "worker": info.index, "trained": done, "skipped": skipped, "complete": complete}


def _write_summary(output: str, coordinate: str, partitions: int) -> None:
    """``done/<coordinate>.json`` once every partition is committed: totals over partitions."""
    stats = [json.loads(fs.read_text(_marker(output, coordinate, p))) for p in range(partitions)]
    totals = {key: sum(s.get(key, 0) for s in stats) for key in ("entities_trained", "rows", "active_rows",
                                                                 "validation_rows", "test_rows",
                                                                 "unconverged_entities")}
    summary = totals | {"partitions": partitions, "seconds": sum(s["seconds"] for s in stats),
                        "largest_partition_seconds": max(s["seconds"] for s in stats)}
    if fs.exists(learned_l2_uri(output, coordinate)):  # l2: auto: what the search found
        summary |= json.loads(fs.read_text(learned_l2_uri(output, coordinate)))
    fs.write_text_atomic(coordinate_done_uri(output, coordinate), fs.to_json(summary))


def _coordinate(config: GdmixConfig, name: str) -> tuple[RandomEffectConfig, str]:
    if config.prep is None:
        raise ConfigError("partitioned training reads the partitions of 'gdmix prep': the config needs 'prep'")
    return config.coordinate(name, RandomEffectConfig), config.prep.output


def _learned_l2(spec: RandomEffectConfig, prep_dir: str, index_map: IndexMap, output: str, offsets: str | None,
                warm_start: str | None, partitions: int, log) -> dict:
    """``l2: auto``: the coordinate's ``l2`` over all its partitions, searched by this job's
    workers together (TF collectives under ``TF_CONFIG``) or read from the output's record."""
    from gdmix.distributed.collective import connect
    from gdmix.jobs.learned_l2 import PartitionSource, learned_l2

    source = PartitionSource(spec, prep_dir, index_map, offsets, warm_start)
    info = worker_info()
    collective = connect(info) if info.distributed and not fs.exists(learned_l2_uri(output, spec.name)) else None
    return learned_l2(source, output, partitions, collective, log)


def _marker(output: str, coordinate: str, partition: int) -> str:
    return partition_done_uri(output, coordinate, partition)


def _fault_injection(partitions_done: int) -> None:
    """Resilience testing: ``GDMIX_FAULT_AFTER_PARTITIONS=k`` kills this process (status 42)
    right after its k-th committed partition."""
    after = os.environ.get("GDMIX_FAULT_AFTER_PARTITIONS")
    if after is not None and partitions_done >= int(after):
        os._exit(42)


def _train_one(spec: RandomEffectConfig, prep_dir: str, partition: int, index_map: IndexMap, output: str,
               offsets: str | None, warm_start: str | None, learned: dict | None) -> dict:
    """Train, score and commit one partition (at the learned ``l2`` under ``l2: auto``)."""
    train, flags = read_partition(prep_dir, spec, "train", partition, index_map, offsets)
    if train is None:  # more partitions than the population fills: nothing to train or score
        return {"partition": partition, "rows": 0, "active_rows": 0, "validation_rows": 0, "test_rows": 0,
                "entities_trained": 0, "unconverged_entities": 0}
    data = {"train": train}
    for split in SPLITS[1:]:
        data[split] = read_partition(prep_dir, spec, split, partition, index_map, offsets)[0]
    settings = partition_settings(spec)
    learned_intercept = None if learned is None else learned.get("intercept_l2")  # per_group: the intercept's own
    if learned is not None:
        settings = settings.model_copy(update={"l2": learned["l2"]})
    initial = partition_warm_start(warm_start, spec, partition, index_map, train.entities[spec.entity])
    rows = TrainingRows.active(train, flags, spec)
    memo = PassMemo()  # keeps the training rows' scores the solve computes
    model, report = fit_random_effect_model(rows.entities, rows.features, rows.labels, rows.weights, rows.offsets,
                                            settings, initial, intercept_l2=learned_intercept, memo=memo)
    if learned is not None:  # the next pass's search starts from it, as after 'gdmix train'
        model = dataclasses.replace(model, l2=learned["l2"], intercept_l2=learned_intercept)
    memo.model = model  # (the same coefficients either way)
    staging = fs.join(output, ".staging", spec.name, partition_name(partition))
    fs.remove(staging)
    model.write(fs.join(staging, "model"), index_map)
    for split, dataset in data.items():
        if dataset is not None:
            own = (_training_scores(model, memo, rows, train, flags, spec) if split == "train"
                   else model.score(dataset.entities[spec.entity], dataset.bag(spec.feature_bag)))
            fs.write_parquet(pa.table({
                "uid": dataset.uid, "label": dataset.label, "weight": dataset.weight,
                "score": dataset.offset + own, "coordinate_score": own,
            }), fs.join(staging, split))
    _commit_partition(staging, output, spec.name, partition, data)
    return report.as_dict() | {"partition": partition, "rows": train.num_rows, "active_rows": int(flags.sum()),
                               "validation_rows": data["validation"].num_rows if data["validation"] else 0,
                               "test_rows": data["test"].num_rows if data["test"] else 0}


def _training_scores(model: RandomEffectModel, memo: PassMemo, rows: TrainingRows, train: Dataset,
                     active: np.ndarray, spec: RandomEffectConfig) -> np.ndarray:
    """The model's scores of every training row: the active rows' as the solve computed them,
    the passive rows' (left out by ``max_rows``) scored now."""
    entities, features = train.entities[spec.entity], train.bag(spec.feature_bag)
    solved = memo.training_scores(model, rows.entities, rows.features, rows.labels, rows.weights)
    if solved is None:
        return model.score(entities, features)
    scores = np.empty(train.num_rows)
    scores[active] = solved
    passive = np.flatnonzero(~active)
    if len(passive):
        scores[passive] = model.score(entities.take(passive), features[passive])
    return scores


def _commit_partition(staging: str, output: str, coordinate: str, partition: int, data: dict) -> None:
    """Move a partition's staged files to their final places (replacing a half-done earlier try)."""
    targets = {"model": fs.join(model_uri(output, coordinate), partition_name(partition))}
    for split in SPLITS:
        if data[split] is not None:
            targets[split] = fs.join(scores_uri(output, coordinate, split), partition_name(partition))
    for name, target in targets.items():
        fs.commit_directory(fs.join(staging, name), target)
    fs.remove(staging)
