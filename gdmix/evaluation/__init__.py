"""Evaluation of a scored dataset: ROC curve, calibration, per-entity AUC and an HTML report.

The numbers come from :mod:`gdmix.metrics` (pure numpy, equal to scikit-learn); this package
adds the curves a person looks at and renders everything as one self-contained HTML page: no
JavaScript, no external assets, charts drawn by matplotlib as inline SVG. The Kubeflow UI shows
such a page in an iframe (an ``HTML`` artifact), and the ROC points fit
``ClassificationMetrics.log_roc_curve(fpr, tpr, threshold)`` as they are. Nothing here imports
Kubeflow.

One module per job, so each can be read and tested alone: :mod:`.curves` (ROC and calibration
data, numpy only), :mod:`.report` (:class:`EvaluationReport` and :func:`evaluate`),
:mod:`.charts` (matplotlib rendering), :mod:`.html_report` (the page), :mod:`.score_files`
(reading a score dataset; ``gdmix evaluate``). The names below are the
package's interface; importers use ``from gdmix.evaluation import ...``.

Typical use in a pipeline component::

    report = evaluate(labels, logits, weights, entities={"memberId": member_ids},
                      coordinate_metrics=history)
    if report.roc is not None:
        roc_metrics.log_roc_curve(*report.roc)
    with open(html_artifact.path, "w", encoding="utf-8") as f:
        f.write(render_html(report, title="GDMix validation"))
"""

from gdmix.evaluation.curves import calibration_bins, roc_curve, roc_curve_points
from gdmix.evaluation.html_report import render_html
from gdmix.evaluation.report import EvaluationReport, evaluate

__all__ = [
    "EvaluationReport",
    "calibration_bins",
    "evaluate",
    "render_html",
    "roc_curve",
    "roc_curve_points",
]
