"""Scoring new data with a trained model, and evaluating score files.

Scores are logits: ``score`` is the data's offset plus every coordinate's score, and
``score_<coordinate>`` is each coordinate alone. Rows of entities without a model get 0 from
that random effect; features unknown to the model's index maps are ignored.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gdmix.artifacts import load_model
from gdmix.dataset import to_dataset
from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.metrics import binary_metrics


def score_dataset(model_dir: str, data_uri: str, out_uri: str) -> dict:
    """Score every row of ``data_uri`` and write ``out_uri`` (staged); returns a summary."""
    trained = load_model(model_dir)
    entities = sorted({c.entity for c in trained.coordinates if c.entity})
    extra = tuple(dict.fromkeys(name for c in trained.coordinates for name in c.columns))
    columns = ContractColumns(
        uid=trained.data.uid, label=trained.data.label, label_required=False,
        weight=trained.data.weight, offset=trained.data.offset,
        entities=tuple(entities), bags=tuple(sorted(trained.index_maps)), extra=extra,
    )
    table = read_contract_table(data_uri, columns)
    data = to_dataset(table, trained.index_maps, entities, extra)
    per_coordinate = {c.name: c.score(trained.models[c.name], data) for c in trained.coordinates}
    total = data.offset + sum(per_coordinate.values(), np.zeros(data.num_rows))
    output = {"uid": pa.array(data.uid)}
    for entity in entities:  # kept so that evaluations can compute per-entity AUC
        ids = data.entities[entity]
        output[entity] = ids.values.take(pa.array(ids.codes))
    if data.label is not None:
        output["label"] = pa.array(data.label)
    output["weight"] = pa.array(data.weight)
    output["score"] = pa.array(total)
    for name, scores in per_coordinate.items():
        output[f"score_{name}"] = pa.array(scores)
    with fs.staged_directory(out_uri) as staging:
        fs.write_parquet(pa.table(output), staging)
    summary = {"rows": data.num_rows, "output": out_uri}
    if data.label is not None:
        summary["metrics"] = binary_metrics(data.label, total, data.weight)
    return summary


def evaluate_scores(uri: str, label: str = "label", score: str = "score", weight: str | None = "weight") -> dict:
    """AUC, log loss and AUPR of a score dataset (any Parquet with label and logit columns)."""
    files = fs.list_parquet_files(uri)
    if not files:
        raise DataError("no Parquet files found", path=uri)
    parts = []
    for path in files:
        table = fs.read_parquet(path)
        for column in (label, score):
            if column not in table.column_names:
                raise DataError("missing column", path=path, column=column)
        wanted = [label, score] + ([weight] if weight and weight in table.column_names else [])
        parts.append(table.select(wanted))
    table = pa.concat_tables(parts, promote_options="default")
    labels = table.column(label).to_numpy()
    logits = table.column(score).to_numpy()
    weights = table.column(weight).to_numpy() if weight in table.column_names else None
    if not np.isin(labels, (0, 1)).all():
        raise DataError("labels must be 0 or 1", path=uri, column=label)
    if not np.isfinite(logits).all():
        raise DataError("scores must be finite", path=uri, column=score)
    return {"rows": len(labels), **binary_metrics(labels, logits, weights)}
