"""After each coordinate: the score table update; at the end: the model export.

``update_scores`` folds a finished coordinate's scores into the score table (the pipeline's
store of :class:`gdmix.ledger.Ledger`) and records the metrics of the total score, what
``gdmix train`` reports after every coordinate; ``export_model`` assembles the trained model and
commits it as ``gdmix train`` does (so ``gdmix score`` and warm starts read it).
"""

from __future__ import annotations

from gdmix.artifacts import TrainedModel, load_models
from gdmix.config import GdmixConfig, RandomEffectConfig
from gdmix.errors import GdmixError
from gdmix.features.index_map import IndexMap
from gdmix.layout import coordinate_scores_uri, index_map_uri
from gdmix.ledger import Ledger
from gdmix.models.coordinates import make_coordinate
from gdmix.stages.training import check_complete


def update_scores(config: GdmixConfig, name: str, pass_number: int, model: str, scores: str | None,
                  output: str) -> dict:
    """The score table with ``name``'s new scores, written to ``output``; returns this step's metrics."""
    summary = check_complete(config, name, model)
    table = Ledger.load(scores) if scores else Ledger.initial(config)
    table.read_scores(name, coordinate_scores_uri(model, name), model)
    spec = next(c for c in config.coordinates if c.name == name)
    entity = spec.entity if isinstance(spec, RandomEffectConfig) else None
    row = table.record({"name": name, "type": spec.type, "pass": pass_number,
                        "train_seconds": summary.get("train_seconds", summary.get("seconds")),
                        "solver": summary.get("solver", summary)}, entity)
    table.save(output)
    return row


def export_model(config: GdmixConfig, scores: str, output: str) -> dict:
    """The whole model (every coordinate's latest) and the final scores, committed to ``output``."""
    table = Ledger.load(scores)
    coordinates = [make_coordinate(c) for c in config.coordinates]
    missing = [c.name for c in coordinates if c.name not in table.models]
    if missing:
        raise GdmixError(f"the score table has no model for {', '.join(missing)}")
    bags = sorted({c.feature_bag for c in coordinates if c.feature_bag})
    maps = {bag: IndexMap.load(index_map_uri(config.prep.output, bag)) for bag in bags}
    models = {}
    for coordinate in coordinates:
        models.update(load_models(table.models[coordinate.name], [coordinate], maps))
    return table.commit(output, TrainedModel(config.data, coordinates, maps, models))
