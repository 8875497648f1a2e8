"""Values keyed by uid, looked up for the rows of a dataset: offsets, scores.

Every row must find its uid: a missing one is an error naming the file and the first missing
uid, never a silently dropped row or a silent zero (an inner join would lose such rows).
"""

from __future__ import annotations

import numpy as np

from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.score_avro import has_avro_scores, read_gdmix_scores


def lookup(keys: np.ndarray, values: np.ndarray, wanted: np.ndarray, source: str, what: str = "offset") -> np.ndarray:
    """``values`` of the ``wanted`` uids (``keys`` need not be sorted)."""
    order = np.argsort(keys, kind="stable")
    keys, values = keys[order], values[order]
    position = np.minimum(np.searchsorted(keys, wanted), max(len(keys) - 1, 0))
    missing = np.flatnonzero(keys[position] != wanted) if len(keys) else np.arange(len(wanted))
    if missing.size:
        count = "1 row has none" if missing.size == 1 else f"{missing.size} rows have none"
        raise DataError(f"no {what} for uid {int(wanted[missing[0]])} ({count})", path=source, column="uid")
    return values[position]


def read_offsets(uri: str, wanted: np.ndarray) -> np.ndarray:
    """The ``offset`` column of a (uid, offset) dataset for the ``wanted`` uids; or, for a
    coordinate scored by GDMix (its score Avro), that coordinate's own score
    (``predictionScorePerCoordinate``: see :mod:`gdmix.io.score_avro`)."""
    if has_avro_scores(uri):
        table = read_gdmix_scores(uri)
        return lookup(table.column("uid").to_numpy(), table.column("coordinate_score").to_numpy(), wanted, uri)
    table = fs.read_parquet_dir(uri, columns=["uid", "offset"])
    return lookup(table.column("uid").to_numpy(), table.column("offset").to_numpy(), wanted, uri)
