"""The ``gdmix`` command, in process: success paths and clear failures without outputs."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gdmix import cli
from gdmix.errors import GdmixError
from gdmix.io import fs

from conftest import bag, synthetic_config
from test_datasets import write_grouplens


def _write_config(tmp_path, raw) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_train_score_evaluate(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "model"
    config = _write_config(tmp_path, synthetic_config(synthetic_dir, str(out)))
    assert cli.main(["train", config, "--set", "coordinates.per_item.l2=2.5"]) == 0
    printed = capsys.readouterr().out
    assert "GDMix training summary" in printed and "per_item" in printed
    assert json.loads((out / "model.json").read_text())["coordinates"][2]["l2"] == 2.5

    assert cli.main(["score", str(out), f"{synthetic_dir}/validation", str(tmp_path / "scored")]) == 0
    summary = json.loads(capsys.readouterr().out)
    scored = fs.read_parquet_dir(str(tmp_path / "scored"))
    assert scored.column_names == ["uid", "item_id", "user_id", "label", "weight", "score", "score_global",
                                   "score_per_user", "score_per_item"]
    trained = fs.read_parquet_dir(str(out / "scores" / "per_item" / "validation"))
    np.testing.assert_allclose(scored.column("score").to_numpy(), trained.column("score").to_numpy(), atol=1e-10)
    metrics = json.loads((out / "metrics.json").read_text())
    assert summary["metrics"]["auc"] == pytest.approx(metrics["final"]["validation"]["auc"], abs=1e-12)

    assert cli.main(["evaluate", str(tmp_path / "scored")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["auc"] == pytest.approx(summary["metrics"]["auc"], abs=1e-12)
    assert evaluated["rows"] == scored.num_rows


def test_scoring_unlabeled_data_with_unknown_entities_and_features(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "model"
    config = _write_config(tmp_path, synthetic_config(synthetic_dir, str(out)))
    assert cli.main(["train", config]) == 0
    fresh = pa.table({
        "uid": pa.array([1, 2], pa.int64()),
        "user_id": pa.array([10**9, 0], pa.int64()),  # an entity never seen
        "item_id": pa.array([0, 0], pa.int64()),
        "global": bag([[("never", "seen", 5.0)], []]),
        "per_user_id": bag([[], []]),
        "per_item_id": bag([[], []]),
    })
    (tmp_path / "fresh").mkdir()
    pq.write_table(fresh, tmp_path / "fresh" / "part-0.parquet")
    capsys.readouterr()
    assert cli.main(["score", str(out), str(tmp_path / "fresh"), str(tmp_path / "s")]) == 0
    scored = fs.read_parquet_dir(str(tmp_path / "s"))
    assert "label" not in scored.column_names
    assert scored.column("score_per_user").to_pylist()[0] == 0.0  # no model for that user
    global_scores = scored.column("score_global").to_pylist()
    assert global_scores[0] == pytest.approx(global_scores[1])  # unknown feature ignored


def _bad_dataset(tmp_path, synthetic_dir, change) -> str:
    table = fs.read_parquet_dir(f"{synthetic_dir}/train")
    table = change(table)
    root = tmp_path / "bad"
    root.mkdir()
    pq.write_table(table, root / "part-00000.parquet")
    return str(root)


def _set_column(name, values):
    return lambda t: t.set_column(t.column_names.index(name), name, values)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t: t.drop_columns(["per_user_id"]), "column 'per_user_id': missing feature bag column"),
        (lambda t: _set_column("label", pa.array(np.where(np.arange(t.num_rows) == 5, 2.0, t.column("label").to_numpy())))(t),
         "column 'label', row 5: label 2.0 is not 0 or 1"),
        (lambda t: _set_column("uid", pa.array(np.where(np.arange(t.num_rows) == 9, 0, t.column("uid").to_numpy())))(t),
         "column 'uid', row 9: duplicate uid 0"),
        (lambda t: _set_column("global", bag([[("g", "0", float("nan"))]] + [[]] * (t.num_rows - 1)))(t),
         "column 'global', row 0: feature (g, 0) has non-finite value nan"),
        (lambda t: t.slice(0, 0), "dataset is empty"),
    ],
)
def test_bad_input_fails_clearly_without_outputs(synthetic_dir, tmp_path, capsys, change, message):
    bad = _bad_dataset(tmp_path, synthetic_dir, change)
    out = tmp_path / "model"
    raw = synthetic_config(synthetic_dir, str(out))
    raw["data"]["train"] = bad
    assert cli.main(["train", _write_config(tmp_path, raw)]) == 1
    error = capsys.readouterr().err
    assert message in error and str(tmp_path / "bad") in error and "Traceback" not in error
    assert not out.exists() and not list(tmp_path.glob(".model*"))


def test_unknown_config_key_fails_without_outputs(synthetic_dir, tmp_path, capsys):
    out = tmp_path / "model"
    raw = synthetic_config(synthetic_dir, str(out))
    raw["coordinates"][1]["l2_reg"] = 3
    assert cli.main(["train", _write_config(tmp_path, raw)]) == 1
    assert "coordinates[1].l2_reg: unknown key" in capsys.readouterr().err
    assert not out.exists()
    assert cli.main(["train", _write_config(tmp_path, synthetic_config(synthetic_dir, str(out))),
                     "--set", "coordinates.per_user.l2=-1"]) == 1
    assert "coordinates[1].l2" in capsys.readouterr().err


def test_failed_rerun_keeps_the_previous_complete_output(synthetic_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "model"
    config = _write_config(tmp_path, synthetic_config(synthetic_dir, str(out)))
    assert cli.main(["train", config]) == 0
    before = (out / "metrics.json").read_text()

    def explode(*args, **kwargs):
        raise GdmixError("simulated failure while writing")

    monkeypatch.setattr("gdmix.ledger.Ledger.write_scores", explode)
    assert cli.main(["train", config]) == 1
    assert (out / "metrics.json").read_text() == before
    assert not list(tmp_path.glob(".model.staging-*"))


def test_datasets_synthetic_command(tmp_path, capsys):
    assert cli.main(["datasets", "synthetic", "--out", str(tmp_path / "s"), "--rows", "500",
                     "--entities", "user_id=20,item_id=5", "--seed", "3"]) == 0
    table = fs.read_parquet_dir(str(tmp_path / "s" / "train"))
    assert {"uid", "label", "user_id", "item_id", "global", "per_user_id", "per_item_id"} <= set(table.column_names)
    assert cli.main(["datasets", "synthetic", "--out", str(tmp_path / "t"), "--rows", "5", "--entities", "user_id"]) == 1


def test_demo_on_prepared_movielens(tmp_path, capsys):
    source = write_grouplens(tmp_path / "ml-100k")
    workdir = tmp_path / "demo"
    assert cli.main(["datasets", "movielens-100k", "--out", str(workdir / "movielens-100k"), "--source", str(source)]) == 0
    assert cli.main(["demo", "--workdir", str(workdir)]) == 0
    printed = capsys.readouterr().out
    assert "per_movie" in printed
    metrics = json.loads((workdir / "model" / "metrics.json").read_text())
    assert [c["name"] for c in metrics["coordinates"]] == ["global", "per_user", "per_movie"]
