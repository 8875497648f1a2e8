"""Scoring new data with a trained model (``gdmix score``, the pipeline's score step).

Scores are logits: ``score`` is the data's offset plus every coordinate's score, and
``score_<coordinate>`` is each coordinate alone. Rows of entities without a model get 0 from
that random effect; features unknown to the model's index maps are ignored.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gdmix.artifacts import load_model
from gdmix.dataset import load_dataset
from gdmix.errors import GdmixError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns
from gdmix.io.score_avro import write_gdmix_scores
from gdmix.metrics import binary_metrics


#: how ``gdmix score`` writes its scores: our Parquet table, or GDMix's score Avro
SCORE_FORMATS = ("parquet", "gdmix-avro")


def score_dataset(model_dir: str, data_uri: str, out_uri: str, posterior: str = "mean",
                  sample_seed: int = 0, form: str = "parquet") -> dict:
    """Score every row of ``data_uri`` and write ``out_uri`` (staged); returns a summary.

    ``form="gdmix-avro"`` writes GDMix's score files instead of one Parquet table: one folder
    per coordinate, ``<out>/<coordinate>/part-00000.avro``, each record holding the cumulative
    logit of the coordinates up to that one (with the data's offset) as ``predictionScore`` and
    the coordinate's own as ``predictionScorePerCoordinate``, as GDMix's coordinates wrote them
    in turn (the last coordinate's ``predictionScore`` is the model's score).

    ``posterior="sample"`` scores with one draw (seeded by ``sample_seed``) from the posterior
    of every coordinate saved with variances (``variance: simple | full``), the others at their
    mean: a sampled score for exploration. Without any such coordinate it is an error.
    """
    if posterior not in ("mean", "sample"):
        raise GdmixError(f"posterior must be 'mean' or 'sample', got {posterior!r}")
    if form not in SCORE_FORMATS:
        raise GdmixError(f"score format must be one of {', '.join(SCORE_FORMATS)}, got {form!r}")
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
    data, _ = load_dataset(data_uri, columns, trained.index_maps)
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
        if form == "gdmix-avro":
            _write_gdmix_avro(staging, data, per_coordinate)
        else:
            fs.write_parquet(pa.table(output), staging)
    summary = {"rows": data.num_rows, "output": out_uri, "format": form}
    if posterior == "sample":
        summary["sampled"] = {"coordinates": sampled, "seed": sample_seed}
    if data.label is not None:
        summary["metrics"] = binary_metrics(data.label, total, data.weight)
    return summary



def _write_gdmix_avro(staging: str, data, per_coordinate: dict[str, np.ndarray]) -> None:
    """Each coordinate's GDMix score file, cumulative scores in coordinate order."""
    cumulative = data.offset.copy()
    for name, own in per_coordinate.items():
        cumulative = cumulative + own
        write_gdmix_scores(fs.join(staging, name), data.uid, cumulative, own, data.label, data.weight)
