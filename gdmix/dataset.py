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

from gdmix.errors import DataError
from gdmix.features.bags import CodedBag, bag_to_csr, flatten_bag
from gdmix.features.index_map import IndexMap
from gdmix.io.contract import (ContractColumns, ContractTable, FilePiece, check_same_types, check_unique_uids,
                               iter_coded_pieces, locate_row)
from gdmix.memory import FreedMemory, aligned_empty


@dataclass(frozen=True)
class EntityIds:
    """An entity id column as integer codes into its distinct values (int64 or string ids).

    The codes are Arrow's own dictionary indices (int32, 4 bytes a row, not widened to 8: a
    dataset holds a code per row for every entity column); whoever needs 64-bit codes widens
    them for the call."""

    codes: np.ndarray
    values: pa.Array

    @classmethod
    def from_array(cls, column: pa.Array | pa.ChunkedArray) -> "EntityIds":
        encoded = pc.dictionary_encode(column)
        if isinstance(encoded, pa.ChunkedArray):
            encoded = encoded.combine_chunks()
        return cls(encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary)

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


def load_dataset(uri: str, columns: ContractColumns, index_maps: Mapping[str, IndexMap] | None = None,
                 shard: tuple[int, int] | None = None, rows: tuple[int, int] | None = None,
                 ) -> tuple[Dataset, dict[str, IndexMap]]:
    """Read, validate and convert a dataset one row group at a time: the same rules and errors
    as :func:`gdmix.io.contract.read_contract_table` followed by :func:`to_dataset`, without
    ever holding the whole dataset as Arrow. With no ``index_maps`` (training data) they are
    built from the data's features, as :func:`build_index_maps` does.

    Why: the Arrow form of a bag (strings per occurrence) is several times its CSR; holding it
    whole next to the CSR set the peak memory of training. Here the peak is the CSR plus one row
    group, and each distinct feature is looked up once per row group, not once per occurrence.
    """
    reading = read_dataset(uri, columns, index_maps, shard, rows)
    maps = dict(index_maps) if index_maps is not None else reading.index_maps()
    return reading.finish(maps), maps


def read_dataset(uri: str, columns: ContractColumns, index_maps: Mapping[str, IndexMap] | None = None,
                 shard: tuple[int, int] | None = None, rows: tuple[int, int] | None = None) -> "DatasetReading":
    """The first half of :func:`load_dataset`: every row group read, validated and converted,
    the bags in the given maps' columns or, without maps, kept coded until :meth:`DatasetReading.finish`
    gets them (a distributed job agrees on one map across workers in between). An empty dataset
    is an error unless only a shard or a row range was asked for."""
    reading, freed = DatasetReading(columns), FreedMemory()
    for piece, table in iter_coded_pieces(uri, columns, shard, rows):
        reading.add(piece, table, index_maps)
        size = table.nbytes
        del table
        freed.freed(size)  # the row groups' Arrow buffers and temporaries: else the heap keeps them all
    if reading.num_rows == 0 and shard is None and rows is None:
        raise DataError("dataset is empty (0 rows)", path=str(uri))
    reading.check_unique_uids()
    return reading


class DatasetReading:
    """The converted row groups of one dataset, until :meth:`finish` joins them."""

    def __init__(self, columns: ContractColumns):
        self.columns = columns
        self.pieces: list[FilePiece] = []
        self.schema: pa.Schema | None = None
        self.numbers: dict[str, list[np.ndarray]] = {}  # uid, label, weight, offset
        self.arrays: dict[str, list[pa.Array]] = {}  # entity ids and carried columns
        self.bags: dict[str, list[CodedBag | sp.csr_matrix]] = {bag: [] for bag in columns.bags}
        self.labelled = True

    @property
    def num_rows(self) -> int:
        return sum(len(uid) for uid in self.numbers.get("uid", []))

    def add(self, piece: FilePiece, table: pa.Table, index_maps: Mapping[str, IndexMap] | None) -> None:
        if self.schema is None:
            self.schema = table.schema
        else:
            check_same_types(self.schema, self.pieces[0].path, table.schema, piece.path)
        self.pieces.append(piece)
        self.labelled &= "label" in table.column_names
        for name in ("uid", "label", "weight", "offset"):
            if name in table.column_names:
                self.numbers.setdefault(name, []).append(table.column(name).to_numpy())
        for name in (*self.columns.entities, *self.columns.extra):
            self.arrays.setdefault(name, []).extend(table.column(name).chunks)
        for bag in self.columns.bags:
            coded = CodedBag.from_column(table.column(bag))
            if index_maps is not None:  # convert now: the CSR is smaller than the coded form
                imap = index_maps[bag]
                coded = coded.to_csr(imap.lookup(coded.names, coded.terms), len(imap))
            self.bags[bag].append(coded)

    def index_maps(self) -> dict[str, IndexMap]:
        """One map per bag over the distinct features of every row group."""
        maps = {}
        for bag, parts in self.bags.items():
            names = pa.concat_arrays([part.names for part in parts])
            terms = pa.concat_arrays([part.terms for part in parts])
            maps[bag] = IndexMap.from_features(names, terms)
        return maps

    def total(self, name: str) -> float:
        """The sum of a numeric column (``weight``) over the rows read."""
        return float(sum(values.sum() for values in self.numbers.get(name, [])))

    def uid(self) -> np.ndarray:
        return np.concatenate(self.numbers["uid"])

    def check_unique_uids(self) -> None:
        """A repeated uid is an error naming both of its files and rows."""
        sizes = np.array([len(uid) for uid in self.numbers["uid"]], dtype=np.int64)
        starts = np.cumsum(sizes) - sizes
        check_unique_uids(self.uid(), lambda row: locate_row(self.pieces, starts, row), self.columns.uid)

    def finish(self, index_maps: Mapping[str, IndexMap]) -> Dataset:
        """The dataset, its bags in ``index_maps``' columns. Call once: the row groups' parts
        are released as they are joined."""
        uid = np.concatenate(self.numbers.pop("uid"))
        numeric = {name: _joined(self.numbers.pop(name)) for name in ("label", "weight", "offset")
                   if name in self.numbers}
        return Dataset(
            uid=uid,
            label=numeric.get("label") if self.labelled else None,
            weight=numeric["weight"],
            offset=numeric["offset"],
            entities={name: EntityIds.from_array(self._column(name)) for name in self.columns.entities},
            bags={bag: _stack_rows(self.bags.pop(bag), index_maps[bag]) for bag in list(self.bags)},
            columns={name: self._column(name) for name in self.columns.extra},
        )

    def _column(self, name: str) -> pa.ChunkedArray:
        return pa.chunked_array(self.arrays[name], type=self.schema.field(name).type)


def _joined(parts: list[np.ndarray]) -> np.ndarray:
    """The parts end to end; all zeros (offsets, when the data has none) as a fresh zero array,
    whose pages the system maps only when written (8 bytes a row that are never resident)."""
    if all(not part.any() for part in parts):
        return np.zeros(sum(len(part) for part in parts), dtype=np.result_type(*parts) if parts else np.float64)
    return np.concatenate(parts)


def _stack_rows(parts: list[CodedBag | sp.csr_matrix], index_map: IndexMap) -> sp.csr_matrix:
    """The row groups' matrices one under another, each part freed as soon as it is copied (the
    peak is the result plus one part, not twice the result); the non-zeros are aligned so that
    the fixed effect's TensorFlow tensors can share them instead of copying."""
    width = len(index_map)
    for k, part in enumerate(parts):
        if isinstance(part, CodedBag):
            parts[k] = part.to_csr(index_map.lookup(part.names, part.terms), width)
    num_rows = sum(part.shape[0] for part in parts)
    nnz = sum(part.nnz for part in parts)
    index_type = np.int32 if max(nnz, width) < np.iinfo(np.int32).max else np.int64
    data, indices = aligned_empty(nnz, np.float64), aligned_empty(nnz, index_type)
    indptr = np.empty(num_rows + 1, index_type)
    indptr[0], row, at = 0, 0, 0
    freed = FreedMemory()
    while parts:
        part = parts.pop(0)
        rows, count = part.shape[0], part.nnz
        data[at:at + count], indices[at:at + count] = part.data, part.indices
        indptr[row + 1:row + rows + 1] = part.indptr[1:] + at
        row, at = row + rows, at + count
        del part
        freed.freed(count * (data.itemsize + indices.itemsize))  # handed back as the result grows
    return sp.csr_matrix((data, indices, indptr), shape=(num_rows, width))
