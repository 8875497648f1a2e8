"""The coordinate-descent ledger: its rules, and the two stores agreeing on them."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import roc_auc_score

from gdmix.errors import DataError
from gdmix.evaluation.score_files import evaluate_scores, read_scored
from gdmix.io import fs
from gdmix.ledger import Ledger, SplitLedger


def _split(rng, n: int) -> SplitLedger:
    return SplitLedger(uid=np.arange(n, dtype=np.int64), label=(rng.random(n) < 0.4).astype(float),
                       weight=rng.uniform(0.5, 2.0, n), offset=rng.normal(size=n),
                       entities={"user": np.array([f"u{i % 7}" for i in range(n)], dtype=object)})


@pytest.fixture
def ledger() -> Ledger:
    rng = np.random.default_rng(0)
    book = Ledger({"train": _split(rng, 60), "validation": _split(rng, 30)})
    for name in ("global", "per_user"):
        for split, rows in book.splits.items():
            book.set_scores(name, split, rng.normal(size=rows.num_rows))
    return book


def test_offsets_are_the_other_coordinates_scores(ledger):
    train = ledger.splits["train"]
    offsets = ledger.offsets("global").column("offset").to_numpy()
    np.testing.assert_array_equal(offsets, train.scores["per_user"])  # the data's own offset is the job's to add
    np.testing.assert_allclose(train.total(), train.offset + train.scores["global"] + train.scores["per_user"])
    np.testing.assert_allclose(train.total(excluding="per_user"), train.offset + train.scores["global"])


def test_record_reports_every_split_and_per_entity_auc(ledger):
    row = ledger.record({"name": "per_user", "pass": 1}, entity="user")
    validation = ledger.splits["validation"]
    assert row["validation"]["auc"] == pytest.approx(
        roc_auc_score(validation.label, validation.total(), sample_weight=validation.weight))
    assert row["test"] is None  # a held-out split the run does not have
    assert row["per_entity_auc"]["entities"] == 7
    assert "test_per_entity_auc" not in row and ledger.history == [row]


def test_the_parquet_store_keeps_everything_the_rules_read(ledger, tmp_path):
    ledger.models["global"] = "s3://b/global"
    row = ledger.record({"name": "global", "pass": 1}, entity=None)
    ledger.save(str(tmp_path / "table"))
    again = Ledger.load(str(tmp_path / "table"))
    assert list(again.splits) == ["train", "validation"] and again.models == ledger.models
    assert again.history == [row]
    for split, rows in ledger.splits.items():
        loaded = again.splits[split]
        assert list(loaded.scores) == ["global", "per_user"]
        for name in ("uid", "label", "weight", "offset"):
            np.testing.assert_array_equal(getattr(loaded, name), getattr(rows, name))
        np.testing.assert_array_equal(loaded.entities["user"], rows.entities["user"])
        np.testing.assert_array_equal(loaded.total(), rows.total())
    table = fs.read_parquet_dir(str(tmp_path / "table" / "validation"))
    np.testing.assert_array_equal(table.column("score").to_numpy(), ledger.splits["validation"].total())


def test_written_scores_are_cumulative_in_coordinate_order(ledger, tmp_path):
    ledger.write_scores(str(tmp_path), ["global", "per_user"])
    train = ledger.splits["train"]
    first = fs.read_parquet_dir(str(tmp_path / "scores" / "global" / "train"))
    last = fs.read_parquet_dir(str(tmp_path / "scores" / "per_user" / "train"))
    np.testing.assert_allclose(first.column("score").to_numpy(), train.offset + train.scores["global"])
    np.testing.assert_array_equal(last.column("coordinate_score").to_numpy(), train.scores["per_user"])
    np.testing.assert_allclose(last.column("score").to_numpy(), train.total())


def test_score_files_name_the_file_and_column_at_fault(tmp_path):
    good = tmp_path / "scores"
    fs.write_parquet(pa.table({"label": [0.0, 1.0, 1.0], "score": [-1.0, 2.0, 0.5], "weight": [1.0, 1.0, 2.0]}),
                     str(good))
    result = evaluate_scores(str(good))
    assert result["rows"] == 3 and result["auc"] == pytest.approx(1.0)
    assert read_scored(str(good), weight=None).weights is None
    fs.write_parquet(pa.table({"label": [0.0, 2.0], "score": [0.0, 1.0]}), str(tmp_path / "labels"))
    with pytest.raises(DataError, match="labels must be 0 or 1"):
        read_scored(str(tmp_path / "labels"))
    fs.write_parquet(pa.table({"label": [0.0, 1.0]}), str(tmp_path / "no-score"))
    with pytest.raises(DataError, match="missing column") as raised:
        read_scored(str(tmp_path / "no-score"))
    assert "part-00000.parquet" in str(raised.value) and "score" in str(raised.value)


def test_the_initial_table_reads_the_columns_the_config_names(tmp_path):
    """Data whose uid, label, weight and offset columns have other names (``data.uid`` ...), as
    the training jobs read it; the table stores them under the contract's names."""
    from gdmix.config import GdmixConfig

    rows = {"row_id": [30, 10, 20], "clicked": [1.0, 0.0, 1.0], "w": [1.0, 2.0, 0.5], "o": [0.1, 0.2, 0.3],
            "user": ["a", "b", "a"], "bag": [[{"name": "x", "term": "", "value": 1.0}]] * 3}
    fs.write_parquet(pa.table(rows), str(tmp_path / "train"))
    config = GdmixConfig.model_validate({
        "data": {"train": str(tmp_path / "train"), "uid": "row_id", "label": "clicked", "weight": "w", "offset": "o"},
        "output": str(tmp_path / "out"),
        "coordinates": [{"name": "per_user", "type": "random_effect", "entity": "user", "feature_bag": "bag"}]})
    train = Ledger.initial(config).splits["train"]
    np.testing.assert_array_equal(train.uid, [10, 20, 30])  # sorted by uid
    np.testing.assert_array_equal(train.label, [0.0, 1.0, 1.0])
    np.testing.assert_array_equal(train.weight, [2.0, 0.5, 1.0])
    np.testing.assert_array_equal(train.offset, [0.2, 0.3, 0.1])
    assert list(train.entities["user"]) == ["b", "a", "a"]
