"""Scoring new data with a trained model (``gdmix score``, the pipeline's score step).

Scores are logits: ``score`` is the data's offset plus every coordinate's score, and
``score_<coordinate>`` is each coordinate alone. Rows of entities without a model get 0 from
that random effect; features unknown to the model's index maps are ignored.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gdmix.artifacts import load_model
from gdmix.dataset import to_dataset
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.metrics import binary_metrics


def score_dataset(model_dir: str, data_uri: str, out_uri: str, posterior: str = "mean",
                  sample_seed: int = 0) -> dict:
    """Score every row of ``data_uri`` and write ``out_uri`` (staged); returns a summary.

    ``posterior="sample"`` scores with one draw (seeded by ``sample_seed``) from the posterior
    of every coordinate saved with variances (``variance: simple | full``), the others at their
    mean: a sampled score for exploration. Without any such coordinate it is an error.
    """
    if posterior not in ("mean", "sample"):
        raise GdmixError(f"posterior must be 'mean' or 'sample', got {posterior!r}")
    trained = load_model(model_dir)
    sampled = []
    if posterior == "sample":
        rng = np.random.default_rng(sample_seed)
        for name, model in trained.models.items():
            if getattr(model, "variances", None) is not None:
                trained.models[name] = model.sample(rng)
                sampled.append(name)
        if not sampled:
            raise GdmixError(f"{model_dir}: --posterior sample needs a coordinate trained with variance: simple or "
                             "full; this model has none")
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
    if posterior == "sample":
        summary["sampled"] = {"coordinates": sampled, "seed": sample_seed}
    if data.label is not None:
        summary["metrics"] = binary_metrics(data.label, total, data.weight)
    return summary

