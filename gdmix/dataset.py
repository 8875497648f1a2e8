"""A dataset held in memory in the form the solvers use: numpy columns and CSR feature bags.

Reading goes through the data contract (:mod:`gdmix.io.contract`), so everything here is already
validated; feature bags are mapped through the index maps built from the training data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from gdmix.features.bags import bag_to_csr, flatten_bag
from gdmix.features.index_map import IndexMap
from gdmix.io.contract import ContractTable


@dataclass(frozen=True)
class EntityIds:
    """An entity id column as integer codes into its distinct values (int64 or string ids)."""

    codes: np.ndarray
    values: pa.Array

    @classmethod
    def from_array(cls, column: pa.Array | pa.ChunkedArray) -> "EntityIds":
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        return cls(encoded.indices.to_numpy().astype(np.int64), encoded.dictionary)

    @property
    def num_entities(self) -> int:
        return len(self.values)

    def strings(self) -> pa.Array:
        """The distinct ids as strings, the form models store them in."""
        return pc.cast(self.values, pa.string())

    def take(self, rows: np.ndarray) -> "EntityIds":
        return EntityIds(self.codes[rows], self.values)


@dataclass
class Dataset:
    """Validated rows of one dataset, ready for training and scoring."""

    uid: np.ndarray
    label: np.ndarray | None
    weight: np.ndarray
    offset: np.ndarray
    entities: dict[str, EntityIds] = field(default_factory=dict)
    bags: dict[str, sp.csr_matrix] = field(default_factory=dict)
    columns: dict[str, pa.ChunkedArray] = field(default_factory=dict)  # other columns a model reads (texts)

    @property
    def num_rows(self) -> int:
        return len(self.uid)

    def bag(self, name: str | None) -> sp.csr_matrix:
        """The design matrix of a bag; no bag means an intercept-only model (zero columns)."""
        if name is None:
            return sp.csr_matrix((self.num_rows, 0), dtype=np.float64)
        return self.bags[name]


def build_index_maps(table: ContractTable, bags: Iterable[str]) -> dict[str, IndexMap]:
    """One index map per bag, from every feature occurrence in ``table`` (the training data)."""
    maps = {}
    for bag in bags:
        _, names, terms, _ = flatten_bag(table.table.column(bag))
        maps[bag] = IndexMap.from_features(names, terms)
    return maps


def to_dataset(table: ContractTable, index_maps: Mapping[str, IndexMap], entities: Iterable[str],
               columns: Iterable[str] = ()) -> Dataset:
    """Convert a validated table into numpy columns and CSR bags (one CSR per index map);
    ``columns`` are carried as they are (a DeText model's texts, dense features, list ids)."""
    t = table.table
    return Dataset(
        uid=t.column("uid").to_numpy(),
        label=t.column("label").to_numpy() if table.has_label else None,
        weight=t.column("weight").to_numpy(),
        offset=t.column("offset").to_numpy(),
        entities={name: EntityIds.from_array(t.column(name)) for name in entities},
        bags={bag: bag_to_csr(t.column(bag), imap, t.num_rows) for bag, imap in index_maps.items()},
        columns={name: t.column(name) for name in columns},
    )

