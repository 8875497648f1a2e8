"""Batch scoring: a trained gdmix model applied to contract data (uid-keyed logits per coordinate)."""

from typing import List

from kfp.dsl import ClassificationMetrics, Dataset, HTML, Input, Metrics, Model, Output

from gdmix_components._shared import component


@component("trainer")
def score(model: Input[Model], data: Input[Dataset], scores: Output[Dataset], metrics: Output[Metrics],
          roc: Output[ClassificationMetrics], report: Output[HTML], split: str = "", data_root: str = "",
          evaluate: bool = False, title: str = "gdmix evaluation", entities: List[str] = []):
    """``split`` picks ``<data>/<split>/`` (e.g. the prepared artifact's ``validation``); empty: ``data`` itself.
    ``evaluate``: also evaluate the scores (labelled data), as the ``evaluate`` step would, in this
    step (``metrics``, ``roc``, ``report``; left empty otherwise)."""
    from gdmix.io import fs
    from gdmix.scoring import score_dataset
    from gdmix.stages.locations import claim_location, read_location

    source = fs.join(read_location(data), split) if split else read_location(data)
    written = claim_location(scores, data_root)
    summary = score_dataset(read_location(model), source, written)
    scores.metadata.update({"rows": summary["rows"], **summary.get("metrics", {})})
    if evaluate:
        from gdmix.stages.evaluation import evaluate_location
        from gdmix_components._runtime import log_evaluation

        log_evaluation(evaluate_location(written, split, list(entities), title), split, metrics, roc, report)
