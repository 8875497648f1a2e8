"""Evaluation for the Kubeflow UI: metrics, ROC curve and an HTML report with plots."""

from typing import List

from kfp.dsl import ClassificationMetrics, Dataset, HTML, Input, Metrics, Output

from gdmix_components._shared import component


@component("trainer")
def evaluate(scores: Input[Dataset], metrics: Output[Metrics], roc: Output[ClassificationMetrics],
             report: Output[HTML], split: str = "validation", title: str = "gdmix evaluation",
             entities: List[str] = []):
    """``scores``: a score table (``<split>/`` inside) or any Parquet with label, score (logit), weight.
    Metrics of a split other than validation are logged with its name first (``test_auc``)."""
    from gdmix.stages.evaluation import evaluate_location
    from gdmix.stages.locations import read_location

    result = evaluate_location(read_location(scores), split, list(entities), title)
    prefix = "" if split in ("", "validation") else f"{split}_"
    for name, value in result.metrics.items():
        metrics.log_metric(prefix + name, value)
    if result.roc is not None:  # None when the labels hold one class only
        roc.log_roc_curve(*result.roc)
    with open(report.path, "w", encoding="utf-8") as handle:
        handle.write(result.html)
