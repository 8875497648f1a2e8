"""After a coordinate: fold its scores into the score table, log the metrics of the total score and
evaluate it (validation: the report a pass shows after each coordinate)."""

from typing import List

from kfp.dsl import ClassificationMetrics, Dataset, HTML, Input, Metrics, Model, Output

from gdmix_components._shared import component


@component("trainer")
def update_scores(config: str, coordinate: str, pass_number: int, prepared: Input[Dataset], model: Input[Model],
                  table: Output[Dataset], metrics: Output[Metrics], roc: Output[ClassificationMetrics],
                  report: Output[HTML], scores: Input[Dataset] = None, partition_summaries: List[str] = [],
                  overrides: List[str] = [], data_root: str = "", title: str = "gdmix evaluation",
                  entities: List[str] = []):
    """``partition_summaries`` (a random effect's trainers, collected) only orders this step after them.
    The table's validation split is evaluated here (``roc``, ``report``, and the evaluation's
    metrics beside the table's ``<split>_<metric>`` ones), as the ``evaluate`` step would."""
    from gdmix.stages.context import stage_config
    from gdmix.stages.evaluation import evaluate_location
    from gdmix.stages.locations import claim_location, read_location
    from gdmix.stages.progress import update_scores as run
    from gdmix.stages.training import LEARNED_L2_KEYS
    from gdmix_components._runtime import log_evaluation

    settings = stage_config(config, overrides, read_location(prepared))
    written = claim_location(table, data_root)
    row = run(settings, coordinate, pass_number, read_location(model), read_location(scores) if scores else None,
              written)
    for split in ("train", "validation", "test"):  # e.g. validation_auc, test_auc
        for name, value in (row.get(split) or {}).items():
            if value is not None and value == value:  # nan is not a loggable metric
                metrics.log_metric(f"{split}_{name}", float(value))
    for name in LEARNED_L2_KEYS:  # l2: auto: what this pass learned
        if row.get("solver", {}).get(name) is not None:
            metrics.log_metric(f"learned_{name}", float(row["solver"][name]))
    log_evaluation(evaluate_location(written, "validation", list(entities), title), "validation", metrics, roc,
                   report)
