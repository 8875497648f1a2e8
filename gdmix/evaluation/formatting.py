"""How numbers and text read in the report, shared by the charts and the tables.

One formatter for both, so the AUC in the ROC legend reads exactly as in the metrics table.
"""

from __future__ import annotations

import html
import math

import numpy as np


def escape(text) -> str:
    """``text`` as HTML/XML character data or attribute value (quotes included)."""
    return html.escape(str(text), quote=True)


def is_missing(v) -> bool:
    return v is None or (isinstance(v, float | np.floating) and not math.isfinite(v))


def fmt(v, digits: int = 4) -> str:
    """A table cell: n/a for missing, grouped integers, fixed decimals for floats."""
    if is_missing(v):
        return "n/a"
    if isinstance(v, bool | np.bool_):
        return str(bool(v))
    if isinstance(v, int | np.integer):
        return f"{int(v):,}"
    if isinstance(v, float | np.floating):
        v = float(v)
        if v.is_integer() and abs(v) >= 1e4:
            return f"{v:,.0f}"
        if 1e3 <= abs(v) < 1e9:
            return f"{v:,.2f}"
        if v != 0 and (abs(v) >= 1e6 or abs(v) < 10 ** -digits):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}f}"
    return str(v)
