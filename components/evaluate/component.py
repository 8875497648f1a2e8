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
    from gdmix_components._runtime import log_evaluation

    log_evaluation(evaluate_location(read_location(scores), split, list(entities), title), split, metrics, roc, report)
