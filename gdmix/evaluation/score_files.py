"""Reading a scored dataset for evaluation: any Parquet with a label and a logit column, or
GDMix's score Avro.

Both ways a score file is evaluated read it here: ``gdmix evaluate`` (the numbers only, as
JSON) and the pipeline's evaluation step (the full report, per-entity AUC included). A file
that lacks a column is named, and labels other than 0/1 or scores that are not finite are
errors that name the column, never a metric computed on bad rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.score_avro import has_avro_scores, read_gdmix_scores
from gdmix.metrics import binary_metrics


@dataclass
class ScoredRows:
    labels: np.ndarray
    logits: np.ndarray
    weights: np.ndarray | None  # None when the data has no weight column
    entities: dict[str, np.ndarray]  # the requested entity id columns the data has


def read_scored(uri: str, label: str = "label", score: str = "score", weight: str | None = "weight",
                entities: list[str] = ()) -> ScoredRows:
    """The label, score, weight (if present) and entity id columns (those present) of every
    Parquet file under ``uri``, or of GDMix's score Avro files there (read as our columns:
    ``score`` is its ``predictionScore``; see :mod:`gdmix.io.score_avro`)."""
    if has_avro_scores(uri):
        tables = [(uri, read_gdmix_scores(uri))]
    else:
        files = fs.list_parquet_files(uri)
        if not files:
            raise DataError("no Parquet files found", path=uri)
        tables = ((path, fs.read_parquet(path)) for path in files)
    parts = []
    for path, table in tables:
        for column in (label, score):
            if column not in table.column_names:
                raise DataError("missing column", path=path, column=column)
        optional = [name for name in (weight, *entities) if name and name in table.column_names]
        parts.append(table.select([label, score, *optional]))
    table = pa.concat_tables(parts, promote_options="default")
    labels = table.column(label).to_numpy()
    logits = table.column(score).to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise DataError("labels must be 0 or 1", path=uri, column=label)
    if not np.isfinite(logits).all():
        raise DataError("scores must be finite", path=uri, column=score)
    weights = table.column(weight).to_numpy() if weight and weight in table.column_names else None
    ids = {name: table.column(name).to_numpy(zero_copy_only=False) for name in entities if name in table.column_names}
    return ScoredRows(labels, logits, weights, ids)


def evaluate_scores(uri: str, label: str = "label", score: str = "score", weight: str | None = "weight") -> dict:
    """AUC, log loss and AUPR of a score dataset (``gdmix evaluate``)."""
    rows = read_scored(uri, label, score, weight)
    return {"rows": len(rows.labels), **binary_metrics(rows.labels, rows.logits, rows.weights)}
