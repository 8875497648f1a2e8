"""Reading one entity partition of a random effect: its rows, its training rows, its prior model.

``gdmix prep`` writes each random effect's rows grouped by entity into partitions
(``<prep>/partitions/<coordinate>/<split>/partition=<p>/``) with an ``active`` flag on the
training rows (prep already applied ``min_rows`` and ``max_rows``). Both the partition trainer
(:mod:`gdmix.jobs.random_effect`) and the ``l2: auto`` search over partitions
(:mod:`gdmix.jobs.learned_l2`) read partitions through here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from gdmix.config import RandomEffectConfig
from gdmix.dataset import Dataset, EntityIds, load_dataset
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.contract import ContractColumns
from gdmix.io.uid_join import read_offsets
from gdmix.layout import index_map_uri, model_uri, partition_name, partitions_uri
from gdmix.models.random_effect import RandomEffectModel, WarmStart


def coordinate_index_map(prep_dir: str, spec: RandomEffectConfig) -> IndexMap:
    """The index map of the coordinate's feature bag (empty for an intercept-only effect)."""
    return IndexMap.load(index_map_uri(prep_dir, spec.feature_bag)) if spec.feature_bag else IndexMap.empty()


def read_partition(prep_dir: str, spec: RandomEffectConfig, split: str, partition: int, index_map: IndexMap,
                   offsets: str | None) -> tuple[Dataset | None, np.ndarray | None]:
    """A partition's rows of one split (offsets added) and, for training rows, the active flags;
    ``(None, None)`` when the partition has no rows of that split."""
    uri = fs.join(partitions_uri(prep_dir, spec.name, split), partition_name(partition))
    if not fs.exists(uri) or not fs.list_parquet_files(uri):
        return None, None
    flags = ("active",) if split == "train" else ()
    columns = ContractColumns(entities=(spec.entity,), bags=(spec.feature_bag,) if spec.feature_bag else (),
                              extra=flags)
    data, _ = load_dataset(uri, columns, {spec.feature_bag: index_map} if spec.feature_bag else {})
    if offsets:
        data.offset = data.offset + read_offsets(fs.join(offsets, split, partition_name(partition)), data.uid)
    active = data.columns["active"].to_numpy(zero_copy_only=False).astype(bool) if flags else None
    return data, active


@dataclass
class TrainingRows:
    """A partition's active training rows, as the random-effect solver takes them."""

    entities: EntityIds
    features: sp.csr_matrix
    labels: np.ndarray
    weights: np.ndarray
    offsets: np.ndarray

    @classmethod
    def active(cls, train: Dataset, active: np.ndarray, spec: RandomEffectConfig) -> "TrainingRows":
        rows = np.flatnonzero(active)
        return cls(train.entities[spec.entity].take(rows), train.bag(spec.feature_bag)[rows], train.label[rows],
                   train.weight[rows], train.offset[rows])


def partition_settings(spec: RandomEffectConfig) -> RandomEffectConfig:
    """The coordinate's settings for a prepared partition: prep already applied ``min_rows`` and
    ``max_rows`` (the active flag), so every active entity trains."""
    return spec.model_copy(update={"min_rows": 1, "max_rows": None})


def partition_warm_start(uri: str | None, spec: RandomEffectConfig, partition: int, index_map: IndexMap,
                         entities: EntityIds) -> WarmStart | None:
    """The prior model of this partition (an earlier output with the same partitioning, or a
    whole model directory), if there is one."""
    if not uri:
        return None
    source = fs.join(model_uri(uri, spec.name), partition_name(partition))
    if not fs.exists(source):
        source = model_uri(uri, spec.name)
        if not fs.exists(source):
            return None
    prior = RandomEffectModel.from_table(fs.read_parquet_dir(source), index_map, source)
    return prior.warm_start_for(entities)
