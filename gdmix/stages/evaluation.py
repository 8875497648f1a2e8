"""The evaluation step: a scored dataset -> metrics, ROC points and the HTML report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from gdmix.errors import DataError
from gdmix.evaluation import evaluate, render_html
from gdmix.evaluation.score_files import read_scored
from gdmix.io import fs
from gdmix.layout import SCORE_TABLE_FILE, SPLITS


@dataclass
class StepEvaluation:
    metrics: dict[str, float]  # finite values only (what KFP's Metrics accepts)
    roc: tuple[list[float], list[float], list[float]] | None
    html: str


def evaluate_location(location: str, split: str, entities: list[str], title: str) -> StepEvaluation:
    """Evaluate ``<location>/<split>/`` of a score table, or the Parquet at ``location`` itself
    (scores of ``split``'s rows); the report names the split its metrics come from."""
    source = fs.join(location, split)
    if not fs.exists(source):
        if fs.exists(fs.join(location, SCORE_TABLE_FILE)):  # never the union of a score table's splits
            raise DataError(f"the score table has no {split} split (is data.{split} set?)", path=location)
        source = location
    rows = read_scored(source, entities=entities)
    try:
        report = evaluate(rows.labels, rows.logits, rows.weights, rows.entities, _history(location),
                          split=split or None)
    except ValueError as exc:
        raise DataError(str(exc), path=source) from None
    metrics = {name: float(value) for name, value in report.metrics.items() if _finite(value)}
    for name, summary in report.entity_summaries.items():
        for key in ("mean", "row_weighted_mean"):
            if _finite(summary.get(key)):
                metrics[f"{name}_auc_{key}"] = float(summary[key])
    return StepEvaluation(metrics, report.roc, render_html(report, title))


def _history(location: str) -> list[dict]:
    """The score table's metrics after every coordinate, as rows of the report's table."""
    meta = fs.join(location, SCORE_TABLE_FILE)
    if not fs.exists(meta):
        return []
    rows = []
    for step in json.loads(fs.read_text(meta))["history"]:
        solver = step.get("solver") or {}  # l2: auto: the ridges this pass learned
        learned = {f"learned {key.replace('_', ' ')}": solver[key] for key in ("l2", "intercept_l2")
                   if solver.get(key) is not None}
        for split in SPLITS:
            if step.get(split):
                rows.append({"pass": step["pass"], "coordinate": step["name"], "split": split,
                             "auc": step[split]["auc"], "logloss": step[split]["logloss"]} | learned)
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
