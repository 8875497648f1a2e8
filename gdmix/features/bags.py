"""Name-term-value feature bags -> sparse design matrices.

The in-memory form of a bag is a CSR matrix with float64 values and int32 column indices
(12 bytes per non-zero and 4 per row while the indices fit in int32): compact enough to hold the fixed effect's data in memory
for the whole optimisation instead of re-reading files on every evaluation.

Conversion goes through a :class:`CodedBag`: every occurrence is coded as one of the bag's
distinct features, so the index map is consulted once per distinct feature, not once per
occurrence, and strings are never compared row by row. Parquet already stores names and terms
as dictionaries; read that way (:func:`gdmix.io.contract.iter_coded_pieces`) the occurrences
are integers from the start.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from gdmix.features.index_map import IndexMap

# (name, term) pairs are coded through a dense table up to this many cells, by a sort beyond
DENSE_PAIR_LIMIT = 1 << 22


def flatten_bag(bag: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, pa.Array, pa.Array, np.ndarray]:
    """(row of each feature occurrence, names, terms, values) of a normalised bag column."""
    bag = _one_chunk(bag)
    rows = pc.list_parent_indices(bag).to_numpy().astype(np.int64, copy=False)
    items = pc.list_flatten(bag)
    values = items.field("value").to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    return rows, items.field("name"), items.field("term"), values


@dataclass(frozen=True)
class CodedBag:
    """A bag as CSR parts whose column is a code into the bag's own distinct features.

    ``names[k], terms[k]`` is feature ``k``; ``codes`` has one entry per occurrence. The same
    feature may have two codes (an explicit empty term and a null one): converting to a matrix
    sums them, as it sums a feature repeated within a row.
    """

    indptr: np.ndarray
    codes: np.ndarray
    values: np.ndarray
    names: pa.Array
    terms: pa.Array

    @property
    def num_rows(self) -> int:
        return len(self.indptr) - 1

    @classmethod
    def from_column(cls, bag: pa.Array | pa.ChunkedArray) -> "CodedBag":
        """From a validated bag column, normalised (strings) or dictionary-coded; a null term
        is the empty term."""
        bag = _one_chunk(bag)
        items = pc.list_flatten(bag)
        name_codes, names = _text_codes(items.field("name"))
        term_codes, terms = _text_codes(items.field("term"))
        pair = name_codes * max(len(terms), 1) + term_codes
        codes, distinct = _dense_codes(pair, len(names) * len(terms))
        offsets = bag.offsets.to_numpy().astype(np.int64, copy=False)
        return cls(
            indptr=offsets - offsets[0],
            codes=codes,
            # a copy: a view would keep the row group's Arrow buffers (the whole struct) alive
            values=np.array(items.field("value").to_numpy(zero_copy_only=False), dtype=np.float64),
            names=names.take(pa.array(distinct // max(len(terms), 1))),
            terms=terms.take(pa.array(distinct % max(len(terms), 1))),
        )

    def to_csr(self, column_of_code: np.ndarray, width: int) -> sp.csr_matrix:
        """The matrix with feature ``k`` in column ``column_of_code[k]``; a code mapped to -1
        (a feature the index map does not know) is dropped."""
        columns = column_of_code[self.codes] if len(self.codes) else np.zeros(0, np.int64)
        indptr, values = self.indptr, self.values
        known = columns >= 0
        if not known.all():
            rows = np.repeat(np.arange(self.num_rows), np.diff(indptr))[known]
            indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=self.num_rows))])
            columns, values = columns[known], values[known]
        matrix = sp.csr_matrix((values, columns.astype(np.int32, copy=False), indptr),
                               shape=(self.num_rows, width))
        matrix.sum_duplicates()
        matrix.eliminate_zeros()
        return matrix


def bag_to_csr(bag: pa.Array | pa.ChunkedArray, index_map: IndexMap, num_rows: int) -> sp.csr_matrix:
    """Sparse matrix of a bag in ``index_map``'s columns; unknown features are dropped.

    A feature repeated within one row has its values summed (usual sparse semantics); explicit
    zeros are dropped, so they never widen a random-effect entity's feature subspace.
    """
    coded = CodedBag.from_column(bag)
    if coded.num_rows != num_rows:
        raise ValueError(f"bag has {coded.num_rows} rows, expected {num_rows}")
    return coded.to_csr(index_map.lookup(coded.names, coded.terms), len(index_map))


def _one_chunk(bag: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(bag, pa.ChunkedArray):
        return bag.combine_chunks() if bag.num_chunks != 1 else bag.chunk(0)
    return bag


def _text_codes(text: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """(code of each value, the strings coded): a null is coded as an empty string."""
    encoded = text if pa.types.is_dictionary(text.type) else pc.dictionary_encode(text)
    dictionary = pc.cast(encoded.dictionary, pa.string())
    codes = encoded.indices
    if codes.null_count:
        codes = pc.fill_null(codes, len(dictionary))
        dictionary = pa.concat_arrays([dictionary, pa.array([""], pa.string())])
    return codes.to_numpy().astype(np.int64, copy=False), dictionary


def _dense_codes(keys: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """(int32 code of each key in 0..k-1, the k distinct keys in increasing order)."""
    if cells <= DENSE_PAIR_LIMIT:
        used = np.zeros(cells, dtype=bool)
        used[keys] = True
        distinct = np.flatnonzero(used)
        code_of_key = np.cumsum(used, dtype=np.int32) - 1
        return code_of_key[keys], distinct
    distinct, codes = np.unique(keys, return_inverse=True)
    return codes.astype(np.int32, copy=False), distinct
