"""The evaluation step: a scored dataset -> metrics, ROC points and the HTML report."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from gdmix.errors import DataError
from gdmix.evaluation import evaluate, render_html
from gdmix.io import fs
from gdmix.stages.score_table import META_FILE, SPLITS


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
        if fs.exists(fs.join(location, META_FILE)):  # never the union of a score table's splits
            raise DataError(f"the score table has no {split} split (is data.{split} set?)", path=location)
        source = location
    table = fs.read_parquet_dir(source)
    for column in ("label", "score"):
        if column not in table.column_names:
            raise DataError("missing column", path=source, column=column)
    weights = table.column("weight").to_numpy() if "weight" in table.column_names else None
    ids = {name: table.column(name).to_numpy(zero_copy_only=False) for name in entities if name in table.column_names}
    try:
        report = evaluate(table.column("label").to_numpy(), table.column("score").to_numpy(), weights, ids,
                          _history(location), split=split or None)
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
    meta = fs.join(location, META_FILE)
    if not fs.exists(meta):
        return []
    rows = []
    for step in json.loads(fs.read_text(meta))["history"]:
        for split in SPLITS:
            if step.get(split):
                rows.append({"pass": step["pass"], "coordinate": step["name"], "split": split,
                             "auc": step[split]["auc"], "logloss": step[split]["logloss"]})
    return rows


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
