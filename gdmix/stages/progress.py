"""After each coordinate: the score table update; at the end: the model export.

``update_scores`` folds a finished coordinate's scores into the score table and records the
metrics of the total score (what ``gdmix train`` reports after every coordinate);
``export_model`` assembles the trained model in the layout of ``gdmix train`` (so ``gdmix
score`` and warm starts read it) with its ``metrics.json``.
"""

from __future__ import annotations

import pyarrow as pa

from gdmix import __version__
from gdmix.artifacts import METRICS_FILE, TrainedModel, index_map_uri, load_models, save_model, scores_uri
from gdmix.config import GdmixConfig, RandomEffectConfig
from gdmix.errors import GdmixError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.models.coordinates import make_coordinate
from gdmix.stages.training import check_complete
from gdmix.stages.score_table import ScoreTable


def update_scores(config: GdmixConfig, name: str, pass_number: int, model: str, scores: str | None,
                  output: str) -> dict:
    """The score table with ``name``'s new scores, written to ``output``; returns this step's metrics."""
    summary = check_complete(config, name, model)
    table = ScoreTable.load(scores) if scores else ScoreTable.initial(config)
    table.update(name, fs.join(model, "scores", name), model)
    spec = next(c for c in config.coordinates if c.name == name)
    entity = spec.entity if isinstance(spec, RandomEffectConfig) else None
    row = table.record({"name": name, "type": spec.type, "pass": pass_number,
                        "train_seconds": summary.get("train_seconds", summary.get("seconds")),
                        "solver": summary.get("solver", summary)}, entity)
    table.save(output)
    return row


def export_model(config: GdmixConfig, scores: str, output: str) -> dict:
    """The whole model (every coordinate's latest) and the final scores, committed to ``output``."""
    table = ScoreTable.load(scores)
    coordinates = [make_coordinate(c) for c in config.coordinates]
    missing = [c.name for c in coordinates if c.name not in table.models]
    if missing:
        raise GdmixError(f"the score table has no model for {', '.join(missing)}")
    bags = sorted({c.feature_bag for c in coordinates if c.feature_bag})
    maps = {bag: IndexMap.load(index_map_uri(config.prep.output, bag)) for bag in bags}
    models = {}
    for coordinate in coordinates:
        models.update(load_models(table.models[coordinate.name], [coordinate], maps))
    with fs.staged_directory(output) as staging:
        save_model(staging, TrainedModel(config.data, coordinates, maps, models))
        for split, rows in table.splits.items():
            cumulative = rows.column("offset").to_numpy().copy()
            for coordinate in coordinates:  # as gdmix train: the total after each coordinate, and its own
                own = rows.column(f"score_{coordinate.name}")
                cumulative = cumulative + own.to_numpy()
                fs.write_parquet(pa.table({"uid": rows.column("uid"), "label": rows.column("label"),
                                           "weight": rows.column("weight"), "score": cumulative,
                                           "coordinate_score": own}),
                                 scores_uri(staging, coordinate.name, split))
    metrics = {
        "gdmix_version": __version__,
        "data": {split: {"uri": getattr(config.data, split), "rows": rows.num_rows}
                 for split, rows in table.splits.items()},
        "coordinates": table.history,
        "final": {split: table.history[-1][split] for split in table.splits},
    }
    fs.write_text_atomic(fs.join(output, METRICS_FILE), fs.to_json(metrics))
    return metrics
