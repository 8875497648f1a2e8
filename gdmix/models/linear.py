"""Coefficient tables: how linear models are written to and read from Parquet.

A fixed-effect model is rows ``name, term, value``; a random-effect model is rows
``entity, name, term, value`` (entity as string). The intercept is the row named
``(INTERCEPT)`` with term ``""`` and is always written, even when zero; other coefficients are
written only when non-zero (features an entity never saw are exactly zero and not stored).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

INTERCEPT_NAME = "(INTERCEPT)"
INTERCEPT_TERM = ""

FIXED_EFFECT_SCHEMA = pa.schema(
    [pa.field("name", pa.string()), pa.field("term", pa.string()), pa.field("value", pa.float64())]
)
RANDOM_EFFECT_SCHEMA = pa.schema([pa.field("entity", pa.string())] + list(FIXED_EFFECT_SCHEMA))


def is_intercept(table: pa.Table) -> np.ndarray:
    """Mask of the intercept rows of a coefficient table."""
    mask = pc.and_(
        pc.equal(table.column("name"), INTERCEPT_NAME),
        pc.equal(pc.fill_null(table.column("term"), ""), INTERCEPT_TERM),
    )
    return mask.to_numpy(zero_copy_only=False)
