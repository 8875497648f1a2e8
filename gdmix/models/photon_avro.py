"""Linear models as Photon ML ``BayesianLinearModelAvro`` records, both ways.

Photon ML's and GDMix's model files hold one record per model: ``modelId`` (GDMix's
``"global model"`` for a fixed effect, the entity id as a string for a random effect),
``modelClass``, ``means`` and (nullable) ``variances`` as ``NameTermValueAvro{name, term,
value}`` lists, and ``lossFunction``. The intercept is the entry ``(INTERCEPT)`` / ``""``,
written first; ``variances`` lists the same entries as ``means``, in the same order.

Both directions go through the coefficient tables of :mod:`gdmix.models.linear` (the tables our
Parquet models are), so a model read from Avro is built by the same ``from_table`` as one read
from Parquet, and values pass through as float64 both ways: a round trip is bit-identical.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from gdmix.errors import DataError
from gdmix.models.linear import VARIANCE_COLUMN, is_intercept

#: GDMix's ``modelId`` of a fixed effect
FIXED_EFFECT_MODEL_ID = "global model"
LOGISTIC_REGRESSION_CLASS = "com.linkedin.photon.ml.supervised.classification.LogisticRegressionModel"
LINEAR_REGRESSION_CLASS = "com.linkedin.photon.ml.supervised.regression.LinearRegressionModel"
#: what GDMix writes as ``lossFunction`` (Photon's own field; GDMix leaves it empty)
LOSS_FUNCTION = ""


def table_to_records(table: pa.Table, model_ids: Iterable[str] | None = None) -> Iterator[dict]:
    """One record per model of a coefficient table whose every model starts with its intercept
    row (``FixedEffectModel.to_table``; ``RandomEffectModel.to_table``, entity by entity).
    ``model_ids``: the fixed effect's id; by default each model's ``entity``."""
    if table.num_rows == 0:
        return
    starts = np.flatnonzero(is_intercept(table))
    if len(starts) == 0 or starts[0] != 0:
        raise ValueError("a coefficient table must start each model with its intercept row")
    bounds = np.append(starts, table.num_rows)
    names, terms = table.column("name").to_pylist(), table.column("term").to_pylist()
    values = table.column("value").to_pylist()
    variances = table.column(VARIANCE_COLUMN).to_pylist() if VARIANCE_COLUMN in table.column_names else None
    if model_ids is None:
        model_ids = table.column("entity").take(pa.array(starts)).to_pylist()
    for model_id, first, stop in zip(model_ids, bounds[:-1], bounds[1:]):
        entries = range(first, stop)
        record = {
            "modelId": model_id,
            "modelClass": LOGISTIC_REGRESSION_CLASS,
            "means": [{"name": names[i], "term": terms[i], "value": values[i]} for i in entries],
            "variances": None,
            "lossFunction": LOSS_FUNCTION,
        }
        if variances is not None:
            record["variances"] = [{"name": names[i], "term": terms[i], "value": variances[i]} for i in entries]
        yield record


@dataclass
class RecordTable:
    """Records gathered into a coefficient table (``entity`` = ``modelId``), checked as they come."""

    entity: list[str] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    term: list[str] = field(default_factory=list)
    value: list[float] = field(default_factory=list)
    variance: list[float] = field(default_factory=list)
    has_variances: bool = False
    records: int = 0
    _seen: dict[str, tuple[str, int]] = field(default_factory=dict)

    def add(self, record: dict, source: str, index: int) -> None:
        """Append one record (``index``: its position in file ``source``, for error messages)."""
        model_id = record["modelId"]
        model_class = record.get("modelClass")
        if model_class not in (None, LOGISTIC_REGRESSION_CLASS):
            raise DataError(f"model '{model_id}' is a {model_class}; gdmix imports logistic regression models "
                            f"({LOGISTIC_REGRESSION_CLASS}) only", path=source, column="modelClass", row=index)
        if model_id in self._seen:
            first, row = self._seen[model_id]
            raise DataError(f"model '{model_id}' appears twice (first in {first}, record {row})",
                            path=source, column="modelId", row=index)
        self._seen[model_id] = (source, index)
        means = record["means"]
        variances = _variances_by_feature(record, source, index)
        self.has_variances |= variances is not None
        for entry in means:
            self.entity.append(model_id)
            self.name.append(entry["name"])
            self.term.append(entry["term"])
            self.value.append(entry["value"])
            self.variance.append(np.nan if variances is None else variances.pop((entry["name"], entry["term"]), np.nan))
        if variances:
            name, term = next(iter(variances))
            raise DataError(f"model '{model_id}' has a variance for ({name!r}, {term!r}) but no mean",
                            path=source, column="variances", row=index)
        self.records += 1

    def to_table(self) -> pa.Table:
        """``entity, name, term, value`` (and ``variance`` when any record had variances)."""
        columns = {
            "entity": pa.array(self.entity, pa.string()),
            "name": pa.array(self.name, pa.string()),
            "term": pa.array(self.term, pa.string()),
            "value": pa.array(self.value, pa.float64()),
        }
        if self.has_variances:
            columns[VARIANCE_COLUMN] = pa.array(self.variance, pa.float64())
        return pa.table(columns)


def _variances_by_feature(record: dict, source: str, index: int) -> dict[tuple[str, str], float] | None:
    """A record's variances keyed by (name, term); None when it has none."""
    if record.get("variances") is None:
        return None
    variances = {}
    for entry in record["variances"]:
        key = (entry["name"], entry["term"])
        if key in variances:
            raise DataError(f"model '{record['modelId']}' lists the variance of {key} twice",
                            path=source, column="variances", row=index)
        variances[key] = entry["value"]
    return variances
