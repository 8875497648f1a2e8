"""Coefficient tables: how linear models are written to and read from Parquet.

A fixed-effect model is rows ``name, term, value``; a random-effect model is rows
``entity, name, term, value`` (entity as string). The intercept is the row named
``(INTERCEPT)`` with term ``""`` and is always written, even when zero; other coefficients are
written only when non-zero (features an entity never saw are exactly zero and not stored).
A model trained with ``variance: simple | full`` has one more column, ``variance``; a fixed
effect with variances writes every coefficient, zero or not (each has its variance).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap

INTERCEPT_NAME = "(INTERCEPT)"
INTERCEPT_TERM = ""

FIXED_EFFECT_SCHEMA = pa.schema(
    [pa.field("name", pa.string()), pa.field("term", pa.string()), pa.field("value", pa.float64())]
)
RANDOM_EFFECT_SCHEMA = pa.schema([pa.field("entity", pa.string())] + list(FIXED_EFFECT_SCHEMA))
#: a coefficient table's column of the coefficients' variances (``variance: simple | full``)
VARIANCE_COLUMN = "variance"
#: the largest dense matrix a model's Hessian terms may take (``variance: full`` inverts one, the
#: ``l2: auto`` evidence takes one entity's determinant): rows or coefficients, whichever is smaller
MAX_DENSE_HESSIAN = 4000


def is_intercept(table: pa.Table) -> np.ndarray:
    """Mask of the intercept rows of a coefficient table."""
    mask = pc.and_(
        pc.equal(table.column("name"), INTERCEPT_NAME),
        pc.equal(pc.fill_null(table.column("term"), ""), INTERCEPT_TERM),
    )
    return mask.to_numpy(zero_copy_only=False)


def names_and_terms(index_map: IndexMap, columns: np.ndarray, dictionary: bool = False) -> tuple[pa.Array, pa.Array]:
    """(name, term) of each column index; -1 stands for the intercept. With ``dictionary``, as
    dictionary arrays over the names and terms the columns use: no string is built per row (what
    writing a large table wants; the values are the same)."""
    position = np.where(columns >= 0, columns, len(index_map))
    names = pa.concat_arrays([index_map.names, pa.array([INTERCEPT_NAME])])
    terms = pa.concat_arrays([index_map.terms, pa.array([INTERCEPT_TERM])])
    if not dictionary:
        return names.take(position), terms.take(position)
    used, codes = compact_codes(position, len(names))
    indices = pa.array(codes.astype(np.int32))
    return (pa.DictionaryArray.from_arrays(indices, names.take(used)),
            pa.DictionaryArray.from_arrays(indices, terms.take(used)))


def compact_codes(values: np.ndarray, bound: int) -> tuple[np.ndarray, np.ndarray]:
    """The distinct ``values`` (integers in ``[0, bound)``) in increasing order, and each value's
    position among them: by a mark per possible value when ``bound`` is not much larger than the
    values, else by sorting."""
    if bound > 8 * len(values):
        return np.unique(values, return_inverse=True)
    present = np.zeros(bound, dtype=bool)
    present[values] = True
    return np.flatnonzero(present), (np.cumsum(present) - 1)[values]


def check_unique_coefficients(table: pa.Table, keys: list[str], source: str) -> None:
    """A coefficient table must not hold the same (entity,) name, term twice."""
    counts = table.group_by(keys).aggregate([([], "count_all")])
    repeated = counts.filter(pc.greater(counts.column("count_all"), 1))
    if repeated.num_rows:
        first = {k: repeated.column(k)[0].as_py() for k in keys}
        raise DataError(f"coefficient {first} appears {repeated.column('count_all')[0].as_py()} times", path=source)
