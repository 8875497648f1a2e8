"""What a report holds: :class:`EvaluationReport` and :func:`evaluate`, which fills it.

Kept apart from the HTML so the same numbers can be logged to Kubeflow or stored as JSON
without rendering anything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from gdmix import metrics as _metrics
from gdmix.evaluation.curves import calibration_bins, expit, roc_curve_points, validate


@dataclass
class EvaluationReport:
    """Everything the HTML page shows, also usable on its own (e.g. logged to Kubeflow).

    ``metrics``: auc, logloss, aupr (nan where undefined), rows, weight, positive_rate,
    mean_predicted. ``roc``: ``(fpr, tpr, thresholds)`` lists or None when undefined.
    ``entity_summaries[name]``: :func:`gdmix.metrics.per_entity_auc_summary`;
    ``entity_aucs[name]``: the defined per-entity AUCs (for histograms).
    ``coordinate_metrics``: rows given by the caller (one per pass and coordinate).
    ``notes``: why something is missing. ``split``: which data the metrics come from
    (``validation``, ``test``, ...), shown in the report; None when the caller did not say.
    """

    metrics: dict[str, float]
    roc: tuple[list[float], list[float], list[float]] | None = None
    calibration: list[dict] = field(default_factory=list)
    entity_summaries: dict[str, dict] = field(default_factory=dict)
    entity_aucs: dict[str, np.ndarray] = field(default_factory=dict)
    coordinate_metrics: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    split: str | None = None

    def to_dict(self) -> dict:
        """JSON-serializable form (nan becomes None; AUC arrays become lists)."""

        def clean(v):
            if isinstance(v, float | np.floating):
                return float(v) if math.isfinite(v) else None
            if isinstance(v, np.integer):
                return int(v)
            if isinstance(v, np.ndarray):
                return [clean(x) for x in v.tolist()]
            if isinstance(v, Mapping):
                return {str(k): clean(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [clean(x) for x in v]
            return v

        return clean(
            {
                "metrics": self.metrics,
                "roc": None if self.roc is None else dict(zip(("fpr", "tpr", "thresholds"), self.roc)),
                "calibration": self.calibration,
                "entity_summaries": self.entity_summaries,
                "entity_aucs": self.entity_aucs,
                "coordinate_metrics": self.coordinate_metrics,
                "notes": self.notes,
                "split": self.split,
            }
        )


def evaluate(
    labels,
    logits,
    weights=None,
    entities: dict[str, np.ndarray] | None = None,
    coordinate_metrics: list[dict] | None = None,
    *,
    max_roc_points: int = 200,
    n_calibration_bins: int = 10,
    split: str | None = None,
) -> EvaluationReport:
    """Evaluate a scored dataset: global metrics, ROC, calibration and per-entity AUC.

    ``entities`` maps an entity column name (e.g. ``"memberId"``) to its per-row ids; each gets
    a per-entity AUC summary and histogram. ``coordinate_metrics`` are rows such as
    ``{"pass": 1, "coordinate": "global", "split": "validation", "auc": 0.71, "logloss": 0.52}``
    from training, shown as a table of how the metrics moved after every coordinate (rows of
    every split, ``train``, ``validation`` and ``test``, each labelled). ``split`` names the data
    being evaluated (e.g. ``"test"``): the report labels its metrics with it.

    Raises ValueError for empty input, NaN/infinite logits, labels other than 0/1, negative
    weights or all-zero weights, and entity columns of the wrong length. A single class is not
    an error: AUC and AUPR are nan and the ROC curve is omitted with a note.
    """
    y, z, w = validate(labels, logits, weights)
    n = y.shape[0]
    notes: list[str] = []

    values = _metrics.binary_metrics(y, z, w)
    ww = np.ones(n) if w is None else w
    total = float(ww.sum())
    pos_weight = float(np.dot(ww, y))
    values.update(
        rows=n,
        weight=total,
        positive_rate=pos_weight / total,
        mean_predicted=float(np.dot(ww, expit(z)) / total),
    )

    roc = None
    if 0.0 < pos_weight < total:
        roc = roc_curve_points(y, z, w, max_points=max_roc_points)
    else:
        which = "positive (label 1)" if pos_weight == 0.0 else "negative (label 0)"
        notes.append(
            f"The data has no {which} rows with non-zero weight: AUC, AUPR and the ROC curve "
            "are undefined."
        )

    calibration = calibration_bins(y, z, w, bins=n_calibration_bins)

    summaries: dict[str, dict] = {}
    entity_aucs: dict[str, np.ndarray] = {}
    for name, ids in (entities or {}).items():
        ids = np.asarray(ids).reshape(-1)
        if ids.shape[0] != n:
            raise ValueError(f"entity column {name!r} has {ids.shape[0]} rows, labels have {n}")
        summaries[name] = _metrics.per_entity_auc_summary(ids, y, z, w)
        _, aucs, _ = _metrics.grouped_auc(ids, y, z, w)
        entity_aucs[name] = aucs[~np.isnan(aucs)]

    rows = []
    for i, row in enumerate(coordinate_metrics or []):
        if not isinstance(row, Mapping):
            raise TypeError(f"coordinate_metrics[{i}] must be a mapping, got {type(row).__name__}")
        rows.append({str(k): v for k, v in row.items()})

    return EvaluationReport(
        metrics=values,
        roc=roc,
        calibration=calibration,
        entity_summaries=summaries,
        entity_aucs=entity_aucs,
        coordinate_metrics=rows,
        notes=notes,
        split=split,
    )
