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
"""

from __future__ import annotations

import contextlib
import json
import os
import time

import numpy as np
import pyarrow as pa

from gdmix.config import GdmixConfig, RandomEffectConfig
from gdmix.dataset import Dataset, to_dataset
from gdmix.distributed.cluster import worker_info
from gdmix.errors import ConfigError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.io.uid_join import read_offsets
from gdmix.layout import (
    PARTITION_MANIFEST, SPLITS, coordinate_done_uri, index_map_uri, model_uri, partition_done_uri, partition_name,
    partitions_uri, scores_uri,
)
from gdmix.models.random_effect import RandomEffectModel, fit_random_effect_model



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
    index_map = IndexMap.load(index_map_uri(prep_dir, spec.feature_bag)) if spec.feature_bag else IndexMap.empty()
    done, skipped = [], []
    for partition in mine:
        if fs.exists(_marker(output, coordinate, partition)):
            skipped.append(partition)
            continue
        tic = time.perf_counter()
        stats = _train_one(config, spec, prep_dir, partition, index_map, output, offsets, warm_start)
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
    fs.write_text_atomic(coordinate_done_uri(output, coordinate), fs.to_json(summary))


def _coordinate(config: GdmixConfig, name: str) -> tuple[RandomEffectConfig, str]:
    if config.prep is None:
        raise ConfigError("partitioned training reads the partitions of 'gdmix prep': the config needs 'prep'")
    spec = config.coordinate(name, RandomEffectConfig)
    check_fixed_l2(spec)
    return spec, config.prep.output


def check_fixed_l2(spec: RandomEffectConfig) -> None:
    """Partitions train independently, so a learned ``l2`` (one value from every entity's
    evidence) cannot be estimated per partition; until the partitions' evidence is reduced into
    one search, partitioned training needs a fixed ``l2``."""
    if spec.l2_auto is not None:
        raise ConfigError(f"coordinate '{spec.name}': l2: auto is supported by 'gdmix train' (in process) only, "
                          "not yet by partitioned training or the pipeline; set a number (e.g. the l2 that "
                          "'gdmix train' reports in metrics.json)")


def _marker(output: str, coordinate: str, partition: int) -> str:
    return partition_done_uri(output, coordinate, partition)


def _fault_injection(partitions_done: int) -> None:
    """Resilience testing: ``GDMIX_FAULT_AFTER_PARTITIONS=k`` kills this process (status 42)
    right after its k-th committed partition."""
    after = os.environ.get("GDMIX_FAULT_AFTER_PARTITIONS")
    if after is not None and partitions_done >= int(after):
        os._exit(42)


def _read_partition(prep_dir: str, spec: RandomEffectConfig, split: str, partition: int,
                    index_map: IndexMap, offsets: str | None) -> tuple[Dataset | None, np.ndarray | None]:
    """A partition's rows of one split (offsets added) and, for training rows, the active flags."""
    uri = fs.join(partitions_uri(prep_dir, spec.name, split), partition_name(partition))
    if not fs.exists(uri) or not fs.list_parquet_files(uri):
        return None, None
    flags = ("active",) if split == "train" else ()
    columns = ContractColumns(entities=(spec.entity,), bags=(spec.feature_bag,) if spec.feature_bag else (),
                              extra=flags)
    table = read_contract_table(uri, columns)
    data = to_dataset(table, {spec.feature_bag: index_map} if spec.feature_bag else {}, [spec.entity])
    if offsets:
        data.offset = data.offset + read_offsets(fs.join(offsets, split, partition_name(partition)), data.uid)
    active = table.table.column("active").to_numpy(zero_copy_only=False).astype(bool) if flags else None
    return data, active


def _train_one(config, spec: RandomEffectConfig, prep_dir: str, partition: int, index_map: IndexMap,
               output: str, offsets: str | None, warm_start: str | None) -> dict:
    train, flags = _read_partition(prep_dir, spec, "train", partition, index_map, offsets)
    if train is None:  # more partitions than the population fills: nothing to train or score
        return {"partition": partition, "rows": 0, "active_rows": 0, "validation_rows": 0, "test_rows": 0,
                "entities_trained": 0, "unconverged_entities": 0}
    data = {"train": train}
    for split in SPLITS[1:]:
        data[split] = _read_partition(prep_dir, spec, split, partition, index_map, offsets)[0]
    entities = train.entities[spec.entity]
    active = np.flatnonzero(flags)
    # prep already applied min_rows and max_rows (the active flag): train every active entity
    settings = spec.model_copy(update={"min_rows": 1, "max_rows": None})
    initial = _warm_start(warm_start, spec, partition, index_map, entities)
    model, report = fit_random_effect_model(
        entities.take(active), train.bag(spec.feature_bag)[active], train.label[active], train.weight[active],
        train.offset[active], settings, initial)
    staging = fs.join(output, ".staging", spec.name, partition_name(partition))
    fs.remove(staging)
    fs.write_parquet(model.to_table(index_map), fs.join(staging, "model"))
    for split, dataset in data.items():
        if dataset is not None:
            own = model.score(dataset.entities[spec.entity], dataset.bag(spec.feature_bag))
            fs.write_parquet(pa.table({
                "uid": dataset.uid, "label": dataset.label, "weight": dataset.weight,
                "score": dataset.offset + own, "coordinate_score": own,
            }), fs.join(staging, split))
    _commit_partition(staging, output, spec.name, partition, data)
    return report.as_dict() | {"partition": partition, "rows": train.num_rows, "active_rows": len(active),
                               "validation_rows": data["validation"].num_rows if data["validation"] else 0,
                               "test_rows": data["test"].num_rows if data["test"] else 0}


def _commit_partition(staging: str, output: str, coordinate: str, partition: int, data: dict) -> None:
    """Move a partition's staged files to their final places (replacing a half-done earlier try)."""
    targets = {"model": fs.join(model_uri(output, coordinate), partition_name(partition))}
    for split in SPLITS:
        if data[split] is not None:
            targets[split] = fs.join(scores_uri(output, coordinate, split), partition_name(partition))
    for name, target in targets.items():
        fs.commit_directory(fs.join(staging, name), target)
    fs.remove(staging)


def _warm_start(uri: str | None, spec: RandomEffectConfig, partition: int, index_map: IndexMap, entities):
    """The prior model of this partition (the same partitioning), if there is one."""
    if not uri:
        return None
    source = fs.join(model_uri(uri, spec.name), partition_name(partition))
    if not fs.exists(source):
        source = model_uri(uri, spec.name)
        if not fs.exists(source):
            return None
    prior = RandomEffectModel.from_table(fs.read_parquet_dir(source), index_map, source)
    return prior.warm_start_for(entities)
