"""GDMix's score Avro, both ways: ``gdmix score --format gdmix-avro`` writes GDMix's records
(schema built by GDMix 0.3.0's own function), and score files a GDMix-era job wrote stand where
our Parquet scores do: a job's ``--offsets`` and ``gdmix evaluate``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import fastavro
import numpy as np
import pytest
from fastavro.validation import validate_many

from gdmix import cli
from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.score_avro import gdmix_score_schema, read_gdmix_scores
from gdmix.io.uid_join import read_offsets
from gdmix.metrics import binary_metrics

from interop_helpers import build_model, gdmix_functions, save, write_scoring_data

DEFAULT_COLUMNS = SimpleNamespace(uid_column_name="uid", prediction_score_column_name="predictionScore",
                                  label_column_name="label", weight_column_name="weight",
                                  prediction_score_per_coordinate_column_name="predictionScorePerCoordinate")


@pytest.mark.parametrize("has_weight", [True, False])
@pytest.mark.parametrize("per_coordinate", [True, False])
def test_the_score_schema_is_the_one_gdmix_builds(has_weight, per_coordinate):
    build = gdmix_functions("get_inference_output_avro_schema")["get_inference_output_avro_schema"]
    assert gdmix_score_schema(has_weight, per_coordinate) == build({}, per_coordinate, DEFAULT_COLUMNS, has_weight)


@pytest.fixture
def scored(tmp_path):
    model = save(build_model("string", False), tmp_path / "model")
    data = write_scoring_data(tmp_path / "data", "string")
    assert cli.main(["score", model, data, str(tmp_path / "parquet")]) == 0
    assert cli.main(["score", model, data, str(tmp_path / "avro"), "--format", "gdmix-avro"]) == 0
    return tmp_path


def _records(path):
    with open(path, "rb") as handle:
        reader = fastavro.reader(handle)
        return reader.writer_schema, list(reader)


def test_gdmix_avro_scores_are_gdmixs_records_per_coordinate(scored, capsys):
    parquet = fs.read_parquet_dir(str(scored / "parquet"))
    assert sorted(p.relative_to(scored / "avro").as_posix() for p in (scored / "avro").rglob("*.avro")) == [
        "global/part-00000.avro", "per_user/part-00000.avro"]
    cumulative = np.zeros(parquet.num_rows)
    for coordinate in ("global", "per_user"):
        schema, records = _records(scored / "avro" / coordinate / "part-00000.avro")
        assert validate_many(records, fastavro.parse_schema(gdmix_score_schema()))
        assert fastavro.schema.to_parsing_canonical_form(schema) == fastavro.schema.to_parsing_canonical_form(
            fastavro.parse_schema(gdmix_score_schema()))
        own = parquet.column(f"score_{coordinate}").to_numpy()
        cumulative = cumulative + own
        assert [r["uid"] for r in records] == parquet.column("uid").to_pylist()
        np.testing.assert_array_equal([r["predictionScorePerCoordinate"] for r in records], own.astype(np.float32))
        np.testing.assert_array_equal([r["predictionScore"] for r in records], cumulative.astype(np.float32))
        assert [r["label"] for r in records] == parquet.column("label").to_pylist()
        assert [r["weight"] for r in records] == parquet.column("weight").to_pylist()
    # the last coordinate's predictionScore is the model's score (float32, as GDMix writes it)
    np.testing.assert_allclose(cumulative, parquet.column("score").to_numpy(), rtol=1e-12)


def test_gdmix_scores_stand_for_a_coordinate_in_offsets_and_evaluation(scored, capsys):
    parquet = fs.read_parquet_dir(str(scored / "parquet"))
    uid = parquet.column("uid").to_numpy()
    wanted = uid[::-1].copy()
    offsets = read_offsets(str(scored / "avro" / "per_user"), wanted)
    own = parquet.column("score_per_user").to_numpy()
    np.testing.assert_array_equal(offsets, own.astype(np.float32).astype(np.float64)[::-1])

    capsys.readouterr()
    assert cli.main(["evaluate", str(scored / "avro" / "per_user")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    expected = binary_metrics(parquet.column("label").to_numpy(),
                              parquet.column("score").to_numpy().astype(np.float32).astype(np.float64),
                              parquet.column("weight").to_numpy())
    assert evaluated["rows"] == parquet.num_rows
    assert evaluated["auc"] == pytest.approx(expected["auc"], abs=1e-12)


def test_detext_scores_without_a_per_coordinate_column_offset_by_their_score(tmp_path):
    """DeText's score files (``uid, weight, label: int, predictionScore``): the score is the network's own."""
    schema = {"type": "record", "name": "detext", "fields": [
        {"name": "uid", "type": "long"}, {"name": "weight", "type": "float"}, {"name": "label", "type": "int"},
        {"name": "predictionScore", "type": "float"}]}
    (tmp_path / "scores").mkdir()
    with open(tmp_path / "scores" / "part-00000.avro", "wb") as handle:
        fastavro.writer(handle, schema, [{"uid": u, "weight": 1.0, "label": u % 2, "predictionScore": u / 4}
                                         for u in range(8)])
    np.testing.assert_array_equal(read_offsets(str(tmp_path / "scores"), np.array([3, 1])), [0.75, 0.25])
    with pytest.raises(DataError, match="no offset for uid 99"):
        read_offsets(str(tmp_path / "scores"), np.array([99]))


def test_an_avro_file_that_is_not_gdmix_scores_is_named(tmp_path):
    (tmp_path / "scores").mkdir()
    path = tmp_path / "scores" / "part-00000.avro"
    with open(path, "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "x", "fields": [{"name": "uid", "type": "long"}]},
                        [{"uid": 1}])
    with pytest.raises(DataError, match="predictionScore") as caught:
        read_gdmix_scores(str(tmp_path / "scores"))
    assert str(path) in str(caught.value)
    assert cli.main(["evaluate", str(tmp_path / "scores")]) == 1
