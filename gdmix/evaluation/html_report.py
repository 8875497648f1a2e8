"""The HTML report: one self-contained page of tables and inline SVG charts.

No JavaScript and no external assets (no ``href``/``src``), because the Kubeflow UI shows the
page in a sandboxed iframe that may be offline; the charts come from :mod:`.charts` as inline
``<svg>`` elements.
"""

from __future__ import annotations

import numpy as np

from gdmix.evaluation.charts import calibration_svg, histogram_svg, roc_svg
from gdmix.evaluation.formatting import escape, fmt, is_missing
from gdmix.evaluation.report import EvaluationReport

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 16px 24px; color: #202124; background: #fff; font-size: 14px; }
h1 { font-size: 20px; font-weight: 600; margin: 0 0 12px; }
h2 { font-size: 16px; font-weight: 600; margin: 28px 0 10px; padding-bottom: 4px;
     border-bottom: 1px solid #dadce0; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 4px 12px; border-bottom: 1px solid #e8eaed; text-align: right; white-space: nowrap; }
th { background: #f1f3f4; font-weight: 600; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
tbody tr:hover { background: #f8f9fa; }
.plots { display: flex; flex-wrap: wrap; gap: 16px 32px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 13px; font-weight: 600; margin-bottom: 4px; }
svg { max-width: 100%; height: auto; display: block; }
.note { color: #5f6368; font-style: italic; margin: 6px 0; }
.up { color: #188038; }
.down { color: #c5221f; }
"""

_LABELS = {
    "auc": "AUC",
    "aupr": "AUPR",
    "logloss": "Log loss",
    "rows": "Rows",
    "weight": "Total weight",
    "positive_rate": "Positive rate",
    "mean_predicted": "Mean predicted probability",
    "pass": "Pass",
    "coordinate": "Coordinate",
    "split": "Split",
}


def _table(header: list[str], rows: list[list[tuple[str, str]]]) -> str:
    """Rows of (cell html, css class) pairs; header cells are escaped here."""
    out = ["<table>", "<thead><tr>"]
    out += [f"<th>{escape(h)}</th>" for h in header]
    out.append("</tr></thead>")
    out.append("<tbody>")
    for row in rows:
        cells = "".join(f'<td class="{cls}">{cell}</td>' if cls else f"<td>{cell}</td>" for cell, cls in row)
        out.append(f"<tr>{cells}</tr>")
    out.append("</tbody></table>")
    return "\n".join(out)


def _cell(v) -> tuple[str, str]:
    if isinstance(v, str):
        return escape(v), "text"
    return escape(fmt(v)), ""


def _coordinate_table(rows: list[dict]) -> str:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    keys = [k for k in ("pass", "coordinate", "split") if k in keys] + [
        k for k in keys if k not in ("pass", "coordinate", "split")
    ]
    with_delta = "auc" in keys
    header = []
    for k in keys:
        header.append(_LABELS.get(k, k))
        if k == "auc" and with_delta:
            header.append("\u0394 AUC")
    previous: dict = {}
    body = []
    for row in rows:
        cells = []
        for k in keys:
            cells.append(_cell(row[k]) if k in row else ("", ""))
            if k == "auc" and with_delta:
                split = str(row.get("split", ""))
                value = row.get("auc")
                before = previous.get(split)
                if is_missing(value) or isinstance(value, str) or is_missing(before):
                    cells.append(("", ""))
                else:
                    d = float(value) - float(before)
                    sign = "+" if d >= 0 else "\u2212"
                    cls = "up" if d > 0 else ("down" if d < 0 else "")
                    cells.append((escape(f"{sign}{abs(d):.4f}"), cls))
                if not is_missing(value) and not isinstance(value, str):
                    previous[split] = value
        body.append(cells)
    return _table(header, body)


def render_html(report: EvaluationReport, title: str = "GDMix evaluation") -> str:
    """A self-contained HTML page for ``report``: tables and inline SVG plots, no scripts.

    Sections: overall metrics; ROC curve (with the diagonal) and calibration plot; per-entity
    AUC summaries with one histogram per entity column; the per-coordinate metrics table. All
    text is escaped. The page is pure ASCII (other characters become character references), so
    it displays correctly whatever encoding it is served with.
    """
    m = report.metrics
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8"/>',
        '<meta name="viewport" content="width=device-width, initial-scale=1"/>',
        f"<title>{escape(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{escape(title)}</h1>",
        f"<h2>Metrics ({escape(report.split)} data)</h2>" if report.split else "<h2>Metrics</h2>",
    ]
    order = ["auc", "aupr", "logloss", "rows", "weight", "positive_rate", "mean_predicted"]
    names = order + [k for k in m if k not in order]
    rows = [[(escape(_LABELS.get(k, k)), "text"), _cell(m[k])] for k in names if k in m]
    if report.split:
        rows.insert(0, [(escape(_LABELS["split"]), "text"), (escape(report.split), "text")])
    parts.append(_table(["Metric", "Value"], rows))
    for note in report.notes:
        parts.append(f'<p class="note">{escape(note)}</p>')

    parts.append("<h2>ROC curve and calibration</h2>")
    parts.append('<div class="plots">')
    if report.roc is not None:
        parts.append("<figure><figcaption>ROC curve</figcaption>")
        parts.append(roc_svg(report.roc[0], report.roc[1], m.get("auc", float("nan"))))
        parts.append("</figure>")
    else:
        parts.append('<p class="note">ROC curve omitted: it is undefined without both classes.</p>')
    if report.calibration:
        parts.append("<figure><figcaption>Calibration (quantile bins of the prediction)</figcaption>")
        parts.append(calibration_svg(report.calibration))
        parts.append("</figure>")
    else:
        parts.append('<p class="note">Calibration plot omitted: no bins with weight.</p>')
    parts.append("</div>")

    if report.entity_summaries:
        parts.append("<h2>Per-entity AUC</h2>")
        header = ["Entity", "Entities", "With AUC", "Mean", "Row-weighted mean", "P10", "Median", "P90"]
        stats = ["entities", "entities_with_auc", "mean", "row_weighted_mean", "p10", "median", "p90"]
        rows = [
            [(escape(name), "text")] + [_cell(s.get(k)) for k in stats]
            for name, s in report.entity_summaries.items()
        ]
        parts.append(_table(header, rows))
        parts.append(
            '<p class="note">Entities with a single class have no AUC; they are counted but '
            "not in the statistics.</p>"
        )
        parts.append('<div class="plots">')
        for index, (name, summary) in enumerate(report.entity_summaries.items()):
            aucs = np.asarray(report.entity_aucs.get(name, np.empty(0)), dtype=np.float64)
            aucs = aucs[~np.isnan(aucs)]
            if aucs.shape[0] == 0:
                parts.append(f'<p class="note">{escape(name)}: no entity has both classes; no histogram.</p>')
                continue
            parts.append(f"<figure><figcaption>{escape(name)}</figcaption>")
            parts.append(histogram_svg(name, aucs, summary, index))
            parts.append("</figure>")
        parts.append("</div>")

    if report.coordinate_metrics:
        parts.append("<h2>Metrics after each coordinate</h2>")
        parts.append(_coordinate_table(report.coordinate_metrics))
        if any("auc" in row for row in report.coordinate_metrics):
            parts.append(
                '<p class="note">\u0394 AUC: change from the previous row of the same split.</p>'
            )

    parts += ["</body>", "</html>", ""]
    return "\n".join(parts).encode("ascii", "xmlcharrefreplace").decode("ascii")
