"""GDMix's score files (Avro), both ways.

GDMix wrote every coordinate's scores as Avro records of the schema its
``get_inference_output_avro_schema`` builds (GDMix 0.3.0, ``gdmix/util/io_utils.py``; vendored
as ``tests/upstream/gdmix-0.3.0/io_utils.py``, where a test builds the schema with GDMix's own
function and compares): record ``validation_result`` with ``uid: long``, ``predictionScore:
float`` (the logit *with* the offset: the cumulative score of every coordinate so far),
``label: ["null", "float"]``, ``weight: float`` (when the data has weights) and
``predictionScorePerCoordinate: float`` (this coordinate's own logit). DeText's score files
have no per-coordinate column: their ``predictionScore`` is the network's own logit.

Read, such a file becomes our score columns: ``uid``, ``score`` (predictionScore),
``coordinate_score`` (predictionScorePerCoordinate, or predictionScore where there is none),
``label`` and ``weight`` (when present), so a coordinate scored by a GDMix-era job can stand
wherever our Parquet scores do (offsets, evaluation).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.avro_files import AVRO_SUFFIX, list_avro_files, read_records, write_records

UID, SCORE, LABEL, WEIGHT, PER_COORDINATE = "uid", "predictionScore", "label", "weight", "predictionScorePerCoordinate"
RECORD_NAME = "validation_result"


def gdmix_score_schema(has_weight: bool = True, has_logits_per_coordinate: bool = True) -> dict:
    """The schema GDMix's ``get_inference_output_avro_schema`` builds with its default column
    names (``tests/test_interop_scores.py`` checks it against GDMix's own function)."""
    fields = [{"name": UID, "type": "long"},
              {"name": SCORE, "type": "float"},
              {"name": LABEL, "type": ["null", "float"], "default": None}]
    if has_weight:
        fields.append({"name": WEIGHT, "type": "float"})
    if has_logits_per_coordinate:
        fields.append({"name": PER_COORDINATE, "type": "float"})
    return {"name": RECORD_NAME, "type": "record", "fields": fields}


def write_gdmix_scores(uri: str, uid: np.ndarray, cumulative: np.ndarray, own: np.ndarray,
                       label: np.ndarray | None, weight: np.ndarray) -> int:
    """One coordinate's scores as GDMix's ``part-00000.avro`` in folder ``uri`` (staged by the caller)."""
    labels = [None] * len(uid) if label is None else label.tolist()

    def records() -> Iterator[dict]:
        for row in zip(uid.tolist(), cumulative.tolist(), labels, weight.tolist(), own.tolist()):
            yield dict(zip((UID, SCORE, LABEL, WEIGHT, PER_COORDINATE), row))

    return write_records(fs.join(uri, "part-00000.avro"), gdmix_score_schema(), records())


def has_avro_scores(uri: str) -> bool:
    """Whether ``uri`` is a score dataset in Avro (it holds ``.avro`` files and no Parquet; one listing)."""
    if not fs.exists(uri):
        return False
    files = fs.list_data_files(uri, (AVRO_SUFFIX, *fs.PARQUET_SUFFIXES))
    return bool(files) and all(path.endswith(AVRO_SUFFIX) for path in files)


def read_gdmix_scores(uri: str) -> pa.Table:
    """Every GDMix score record under ``uri`` as columns ``uid, score, coordinate_score`` (and
    ``label``, ``weight`` where the files have them); a file without ``uid`` or
    ``predictionScore`` is an error naming it."""
    files = list_avro_files(uri)
    if not files:
        raise DataError("no Avro files found", path=uri)
    parts = [_read_file(path) for path in files]
    return pa.concat_tables(parts, promote_options="default")


def _read_file(path: str) -> pa.Table:
    columns: dict[str, list] = {}
    names = None
    for row, record in enumerate(read_records(path)):
        if names is None:
            names = [n for n in (UID, SCORE, LABEL, WEIGHT, PER_COORDINATE) if n in record]
            for required in (UID, SCORE):
                if required not in record:
                    raise DataError("not a GDMix score file: missing field", path=path, column=required)
            columns = {name: [] for name in names}
        for name in names:
            columns[name].append(record[name])
    if names is None:
        return pa.table({"uid": pa.array([], pa.int64()), "score": pa.array([], pa.float64()),
                         "coordinate_score": pa.array([], pa.float64())})
    uid = pa.array(columns[UID], pa.int64())
    score = pa.array(columns[SCORE], pa.float64())
    table = {"uid": uid, "score": score,
             "coordinate_score": pa.array(columns[PER_COORDINATE], pa.float64()) if PER_COORDINATE in columns else score}
    if LABEL in columns:
        table["label"] = pa.array(columns[LABEL], pa.float64())
    if WEIGHT in columns:
        table["weight"] = pa.array(columns[WEIGHT], pa.float64())
    return pa.table(table)
