"""Feature index maps: (name, term) <-> column index of one feature bag.

Built once from the training data, saved with the model (``index_maps/<bag>/``) and used to
turn any dataset's name-term-value bags into sparse matrices with the same columns; features
unknown to the map are ignored. Lookups never concatenate name and term into one string (no
separator can be safe for arbitrary names); they dictionary-encode names and terms separately
and combine the two codes into one integer key, which is exact and vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gdmix.errors import DataError
from gdmix.io import fs

INDEX_MAP_SCHEMA = pa.schema(
    [pa.field("index", pa.int64()), pa.field("name", pa.string()), pa.field("term", pa.string())]
)


@dataclass(frozen=True)
class IndexMap:
    """The features of one bag in index order (lexicographic by name, then term)."""

    names: pa.Array
    terms: pa.Array

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", _KeyLookup(self.names, self.terms))

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_features(cls, names: pa.Array, terms: pa.Array) -> "IndexMap":
        """The map of the distinct (name, term) pairs among the given feature occurrences."""
        table = pa.table({"name": names, "term": terms})
        distinct = table.group_by(["name", "term"]).aggregate([])
        distinct = distinct.sort_by([("name", "ascending"), ("term", "ascending")])
        return cls(distinct.column("name").combine_chunks(), distinct.column("term").combine_chunks())

    @classmethod
    def empty(cls) -> "IndexMap":
        return cls(pa.array([], pa.string()), pa.array([], pa.string()))

    def lookup(self, names: pa.Array, terms: pa.Array) -> np.ndarray:
        """Column index of each (name, term) pair, -1 where the feature is unknown."""
        return self._lookup(names, terms)

    def to_table(self) -> pa.Table:
        return pa.table(
            {"index": pa.array(np.arange(len(self), dtype=np.int64)), "name": self.names, "term": self.terms},
            schema=INDEX_MAP_SCHEMA,
        )

    def save(self, uri: str) -> None:
        fs.write_parquet(self.to_table(), uri)

    @classmethod
    def load(cls, uri: str) -> "IndexMap":
        table = fs.read_parquet_dir(uri).sort_by("index")
        index = table.column("index").to_numpy()
        if not np.array_equal(index, np.arange(len(index))):
            raise DataError("index map indices are not 0..n-1", path=uri, column="index")
        return cls(table.column("name").combine_chunks(), table.column("term").combine_chunks())


class _KeyLookup:
    """Vectorized (name, term) -> index via two dictionary encodings and a sorted integer key."""

    def __init__(self, names: pa.Array, terms: pa.Array) -> None:
        self.unique_names = pc.unique(names)
        self.unique_terms = pc.unique(terms)
        keys = self._keys(names, terms)
        self.order = np.argsort(keys, kind="stable")
        self.sorted_keys = keys[self.order]

    def _keys(self, names: pa.Array, terms: pa.Array) -> np.ndarray:
        name_code = pc.index_in(names, value_set=self.unique_names)
        term_code = pc.index_in(terms, value_set=self.unique_terms)
        known = pc.and_(pc.is_valid(name_code), pc.is_valid(term_code)).to_numpy(zero_copy_only=False)
        n_terms = max(len(self.unique_terms), 1)
        name_np = pc.fill_null(name_code, 0).to_numpy().astype(np.int64)
        term_np = pc.fill_null(term_code, 0).to_numpy().astype(np.int64)
        keys = name_np * n_terms + term_np
        keys[~known] = -1
        return keys

    def __call__(self, names: pa.Array, terms: pa.Array) -> np.ndarray:
        keys = self._keys(names, terms)
        if len(self.sorted_keys) == 0:
            return np.full(len(keys), -1, dtype=np.int64)
        position = np.searchsorted(self.sorted_keys, keys)
        position = np.minimum(position, len(self.sorted_keys) - 1)
        found = (self.sorted_keys[position] == keys) & (keys >= 0)
        return np.where(found, self.order[position], -1).astype(np.int64)
