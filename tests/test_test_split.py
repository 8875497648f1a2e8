"""The optional held-out test split, end to end: dataset builders (MovieLens, synthetic), config,
Spark prep, ``gdmix train``, DeText's selection (validation only), and the pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from gdmix.config import validate_config
from gdmix.example_data.movielens import GENRES, build_movielens_100k, split_masks
from gdmix.example_data.synthetic import generate_synthetic, write_synthetic
from gdmix.errors import ConfigError, GdmixError
from gdmix.io import fs

from conftest import synthetic_config, write_titled_synthetic

HANG_GUARD = 300


def _read(path) -> pa.Table:
    return fs.read_parquet_dir(str(path))


def _uids(path) -> set[int]:
    return set(_read(path).column("uid").to_pylist())


# ----------------------------------------------------------------------------- MovieLens split


def test_three_way_split_is_disjoint_covers_and_keeps_validation_at_a_fifth():
    n = 100_000
    train, validation, test = split_masks(n, seed=42, test_fraction=0.1, test_seed=7)
    assert not (train & validation).any() and not (train & test).any() and not (validation & test).any()
    assert (train | validation | test).all()
    assert validation.mean() == pytest.approx(0.2, abs=0.005)
    assert test.mean() == pytest.approx(0.1, abs=0.005)
    assert train.mean() == pytest.approx(0.7, abs=0.005)
    # the test rows come from the test seed alone
    np.testing.assert_array_equal(test, np.random.default_rng(7).random(n) < 0.1)


def test_a_fixed_test_seed_gives_the_same_test_rows_for_every_seed():
    n = 20_000
    tests = [split_masks(n, seed, 0.15, test_seed=99)[2] for seed in (42, 1, 2, 3, 4, 5)]
    for other in tests[1:]:
        np.testing.assert_array_equal(tests[0], other)
    validations = [split_masks(n, seed, 0.15, test_seed=99)[1] for seed in (1, 2)]
    assert not np.array_equal(*validations)  # the seed still moves validation
    # without a test seed the test rows follow the seed
    assert not np.array_equal(split_masks(n, 1, 0.15)[2], split_masks(n, 2, 0.15)[2])


def test_without_a_test_split_validation_is_exactly_the_old_eighty_twenty():
    n = 100_000
    for seed in (42, 1, 5):
        train, validation, test = split_masks(n, seed)
        old_train = np.random.default_rng(seed).random(n) < 0.8
        np.testing.assert_array_equal(train, old_train)
        np.testing.assert_array_equal(validation, ~old_train)
        assert not test.any()


@pytest.mark.parametrize("fraction", [-0.1, 0.8, 0.95, float("nan")])
def test_impossible_test_fractions_are_refused(fraction, tmp_path):
    with pytest.raises(GdmixError, match="test_fraction"):
        split_masks(10, 0, fraction)
    with pytest.raises(GdmixError, match="test_fraction"):  # before looking for (or downloading) data
        build_movielens_100k(str(tmp_path / "out"), source=str(tmp_path / "absent"), test_fraction=fraction)


def _grouplens(folder: Path, ratings: int = 600) -> Path:
    """A tiny GroupLens-format ml-100k folder (made-up users, movies and ratings)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    users = [f"{u}|{20 + u}|{'M' if u % 2 else 'F'}|{['student', 'writer', 'other'][u % 3]}|0000{u}"
             for u in range(1, 31)]
    (folder / "u.user").write_text("\n".join(users) + "\n")
    movies = []
    for m in range(1, 21):
        flags = ["1" if g == m % len(GENRES) else "0" for g in range(len(GENRES))]
        movies.append(f"{m}|Movie {m} (19{70 + m})|01-Jan-19{70 + m}||http://x|" + "|".join(flags))
    (folder / "u.item").write_text("\n".join(movies) + "\n")
    rows = [f"{rng.integers(1, 31)}\t{rng.integers(1, 21)}\t{rng.integers(1, 6)}\t{880000000 + k}"
            for k in range(ratings)]
    (folder / "u.data").write_text("\n".join(rows) + "\n")
    return folder


def test_movielens_builder_writes_a_disjoint_test_split(tmp_path):
    source = str(_grouplens(tmp_path / "ml-100k"))
    out = tmp_path / "data"
    summary = build_movielens_100k(str(out), source=source, seed=3, test_fraction=0.25, test_seed=11)
    train, validation, test = (_uids(out / s) for s in ("train", "validation", "test"))
    assert not train & validation and not train & test and not validation & test
    assert train | validation | test == set(range(600))
    assert summary["test_rows"] == len(test) and summary["test"] == str(out / "test")
    assert summary["test_seed"] == 11 and summary["test_fraction"] == 0.25
    assert summary["train_rows"] + summary["validation_rows"] + summary["test_rows"] == summary["rows"] == 600
    expected = np.flatnonzero(split_masks(600, 3, 0.25, 11)[2])
    assert sorted(test) == expected.tolist()
    # another seed, the same test seed: the same test rows
    build_movielens_100k(str(tmp_path / "other"), source=source, seed=4, test_fraction=0.25, test_seed=11)
    assert _uids(tmp_path / "other" / "test") == test

    # no test split: validation as always, and an earlier build's test rows are gone
    plain = build_movielens_100k(str(out), source=source, seed=3)
    assert not (out / "test").exists() and "test" not in plain and "test_rows" not in plain
    old_train = np.random.default_rng(3).random(600) < 0.8
    assert sorted(_uids(out / "validation")) == np.flatnonzero(~old_train).tolist()


def test_cli_datasets_take_a_test_fraction(tmp_path, capsys):
    from gdmix import cli

    source = str(_grouplens(tmp_path / "ml-100k"))
    assert cli.main(["datasets", "movielens-100k", "--out", str(tmp_path / "ml"), "--source", source,
                     "--seed", "5", "--test-fraction", "0.1", "--test-seed", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["test_fraction"] == 0.1 and summary["test_seed"] == 2
    assert len(_uids(tmp_path / "ml" / "test")) == summary["test_rows"] > 0
    assert cli.main(["datasets", "synthetic", "--out", str(tmp_path / "syn"), "--rows", "2000",
                     "--entities", "user_id=20", "--test-fraction", "0.2"]) == 0
    paths = json.loads(capsys.readouterr().out)
    assert paths["test"] == str(tmp_path / "syn" / "test")
    assert 300 < len(_uids(paths["test"])) < 500


def test_synthetic_test_split_takes_only_training_rows():
    kwargs = dict(rows=5000, entities={"user_id": 50}, seed=4)
    before = generate_synthetic(**kwargs)
    after = generate_synthetic(**kwargs, test_fraction=0.25)
    assert before.test is None
    assert after.validation.equals(before.validation)  # validation is unchanged by a test split
    train, test = set(after.train.column("uid").to_pylist()), set(after.test.column("uid").to_pylist())
    assert not train & test and train | test == set(before.train.column("uid").to_pylist())
    assert 0.2 < after.test.num_rows / 5000 < 0.3
    with pytest.raises(GdmixError, match="test_fraction"):
        generate_synthetic(**kwargs, validation_fraction=0.5, test_fraction=0.5)


def test_config_test_keys():
    raw = synthetic_config("/d", "/o")
    assert validate_config(raw).data.test is None
    assert validate_config(raw | {"data": raw["data"] | {"test": "/d/test"}}).data.test == "/d/test"
    prep = {"input": {"path": "/raw"}, "output": "/p", "label": {"column": "y"}}
    config = validate_config(raw | {"prep": prep | {"split": {"validation_fraction": 0.2, "test_fraction": 0.1},
                                                    "test_input": None}})
    assert config.prep.split.test_fraction == 0.1
    assert validate_config(raw | {"prep": prep | {"split": {"validation_fraction": 0.2}}}).prep.split.test_fraction == 0
    with pytest.raises(ConfigError, match="validation_fraction \\+ test_fraction must be below 1"):
        validate_config(raw | {"prep": prep | {"split": {"validation_fraction": 0.5, "test_fraction": 0.5}}})
    with pytest.raises(ConfigError, match="prep.split.test_fraction"):
        validate_config(raw | {"prep": prep | {"split": {"validation_fraction": 0.5, "test_fraction": -0.1}}})


# ----------------------------------------------------------------------------- gdmix train


@pytest.fixture(scope="module")
def test_split_dir(tmp_path_factory) -> str:
    """The shared synthetic dataset's shape, with a held-out test split."""
    out = tmp_path_factory.mktemp("with-test")
    data = generate_synthetic(6000, {"user_id": 150, "item_id": 40}, global_features=12, global_nnz=4,
                              re_features=4, re_nnz=2, skew=0.8, seed=3, test_fraction=0.15)
    write_synthetic(str(out), data)
    return str(out)


def _with_test(data_dir: str, output: str, **overrides) -> dict:
    raw = synthetic_config(data_dir, output, **overrides)
    raw["data"]["test"] = f"{data_dir}/test"
    return raw


def test_gdmix_train_reports_test_metrics_of_its_written_test_scores(test_split_dir, tmp_path, capsys):
    from gdmix.game import train
    from gdmix.console import print_summary

    result = train(validate_config(_with_test(test_split_dir, str(tmp_path / "model"))))
    metrics = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert metrics["final"]["test"] == metrics["coordinates"][-1]["test"] == result.coordinates[-1]["test"]
    assert metrics["data"]["test"]["rows"] == _read(f"{test_split_dir}/test").num_rows
    for row in result.coordinates:
        scores = _read(tmp_path / "model" / "scores" / row["name"] / "test")
        assert scores.num_rows == metrics["data"]["test"]["rows"]
        labels, logits = scores.column("label").to_numpy(), scores.column("score").to_numpy()
        assert row["test"]["auc"] == pytest.approx(roc_auc_score(labels, logits), abs=1e-12)
        assert row["test"]["auc"] != row["validation"]["auc"]
        if row["type"] == "random_effect":
            assert row["test_per_entity_auc"]["entities_with_auc"] > 0
            assert row["per_entity_auc"] != row["test_per_entity_auc"]
    print_summary(result.coordinates)
    out = capsys.readouterr().out
    assert "test AUC" in out and "val AUC" in out and f"{result.coordinates[-1]['test']['auc']:.4f}" in out

    # without a test split: the key is there, None, and the summary has no test columns
    plain = train(validate_config(synthetic_config(test_split_dir, str(tmp_path / "plain"))))
    assert all(row["test"] is None for row in plain.coordinates)
    assert "test" not in json.loads((tmp_path / "plain" / "metrics.json").read_text())["final"]
    # the test split changes nothing that is trained or validated
    for got, want in zip(result.coordinates, plain.coordinates):
        assert got["validation"] == want["validation"] and got["train"] == want["train"]
    print_summary(plain.coordinates)
    assert "test AUC" not in capsys.readouterr().out


# ----------------------------------------------------------------------------- DeText selects on validation only

WORDS = ["amber", "basil", "cedar", "delta", "ember", "fjord", "garnet", "harbor"]


@pytest.fixture(scope="module")
def text_split_dir(tmp_path_factory) -> Path:
    """Synthetic rows with a title per item; ``test/`` = the validation rows with labels flipped."""
    root = tmp_path_factory.mktemp("detext-test")
    write_titled_synthetic(root, 2400, WORDS)
    (root / "test").mkdir()
    validation = _read(root / "validation")
    flipped = validation.set_column(validation.column_names.index("label"), "label",
                                    pa.array(1.0 - validation.column("label").to_numpy()))
    pq.write_table(flipped, root / "test" / "part-00000.parquet")
    return root


def _detext_config(root: Path, output: Path, test: bool) -> dict:
    data = {"train": str(root / "train"), "validation": str(root / "validation")}
    if test:
        data["test"] = str(root / "test")
    return {"data": data, "output": str(output),
            "coordinates": [{"name": "deep", "type": "detext", "doc_text": ["title"], "wide_bag": "global",
                             "steps": 60, "eval_every": 10, "batch_size": 64, "embedding_dim": 16,
                             "num_filters": 8, "hidden": [16], "learning_rate": 0.01}]}


def test_detext_never_selects_on_the_test_split(text_split_dir, tmp_path, monkeypatch):
    """A test split whose labels are the validation labels flipped would pick the worst step if it
    were read; the chosen step, the model and its validation metrics are those of a run without it,
    and the test metrics come from scoring that model (AUC = 1 - validation AUC)."""
    import gdmix.models.detext.coordinate as detext_coordinate
    from gdmix.game import train

    held_out_labels = []
    real_train_network = detext_coordinate.train_network

    def spy(network, config, rows, offsets, held_out, held_out_offsets, *args, **kwargs):
        held_out_labels.append(np.array(held_out.labels))
        return real_train_network(network, config, rows, offsets, held_out, held_out_offsets, *args, **kwargs)

    monkeypatch.setattr(detext_coordinate, "train_network", spy)
    with_test = train(validate_config(_detext_config(text_split_dir, tmp_path / "with", test=True)))
    without = train(validate_config(_detext_config(text_split_dir, tmp_path / "without", test=False)))
    validation_labels = _read(text_split_dir / "validation").column("label").to_numpy()
    for labels in held_out_labels:
        np.testing.assert_array_equal(labels, validation_labels)
    got, want = with_test.coordinates[0], without.coordinates[0]
    evaluations = [e for e in got["solver"]["evaluations"]]
    assert len(evaluations) >= 3
    assert got["solver"]["best_step"] == want["solver"]["best_step"]
    assert got["validation"]["auc"] == pytest.approx(want["validation"]["auc"], abs=1e-9)
    assert got["test"]["auc"] == pytest.approx(1.0 - got["validation"]["auc"], abs=1e-9)
    ours = _read(tmp_path / "with" / "scores" / "deep" / "test").sort_by("uid")
    theirs = _read(tmp_path / "with" / "scores" / "deep" / "validation").sort_by("uid")
    np.testing.assert_allclose(ours.column("coordinate_score").to_numpy(),
                               theirs.column("coordinate_score").to_numpy(), atol=1e-6)


def test_the_detext_job_scores_the_test_split_it_never_trains_on(text_split_dir, tmp_path):
    """``gdmix detext`` (the pipeline's DeText step) writes test scores from its chosen model."""
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(_detext_config(text_split_dir, tmp_path / "unused", test=True)))
    done = subprocess.run([sys.executable, "-m", "gdmix", "detext", str(config), "--coordinate", "deep",
                           "--output", str(tmp_path / "job")], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    job = json.loads((tmp_path / "job" / "job.json").read_text())
    assert job["rows"]["test"] == job["rows"]["validation"]
    test = _read(tmp_path / "job" / "scores" / "deep" / "test").sort_by("uid")
    validation = _read(tmp_path / "job" / "scores" / "deep" / "validation").sort_by("uid")
    np.testing.assert_allclose(test.column("coordinate_score").to_numpy(),
                               validation.column("coordinate_score").to_numpy(), atol=1e-6)
    np.testing.assert_array_equal(test.column("label").to_numpy(), 1.0 - validation.column("label").to_numpy())


# ----------------------------------------------------------------------------- Spark prep


def test_prep_writes_a_disjoint_test_split_beside_an_unchanged_validation(tmp_path):
    from gdmix.prep.features import UID_SEED
    from gdmix.prep.run import run_prep
    from gdmix.prep.spark import spark_session

    rows = 2000
    rng = np.random.default_rng(1)
    raw = pa.table({"id": np.arange(rows, dtype=np.int64) * 7 + 3, "rating": rng.integers(1, 6, rows),
                    "gender": rng.choice(["M", "F"], rows), "user_id": rng.integers(0, 50, rows)})
    (tmp_path / "raw").mkdir()
    pq.write_table(raw, tmp_path / "raw" / "part-0.parquet")
    prepared = tmp_path / "prepared"
    config = validate_config({
        "data": {"train": str(prepared / "train")}, "output": str(tmp_path / "model"),
        "coordinates": [{"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "g",
                         "partitions": 3}],
        "prep": {"input": {"path": str(tmp_path / "raw")}, "output": str(prepared), "uid": "id",
                 "label": {"column": "rating", "threshold": 3}, "bags": {"g": {"categorical": ["gender"]}},
                 "split": {"validation_fraction": 0.2, "test_fraction": 0.15, "seed": 5},
                 "spark": {"master": "local[2]", "driver_memory": "1g", "shuffle_partitions": 2}},
    })
    summary = run_prep(config, log=lambda m: None)
    train, validation, test = (_uids(prepared / s) for s in ("train", "validation", "test"))
    assert not train & validation and not train & test and not validation & test
    assert train | validation | test == set(raw.column("id").to_pylist())
    assert summary["test_rows"] == len(test) and 0.1 < len(test) / rows < 0.2
    partitioned = set()
    for p in range(3):
        part = prepared / "partitions" / "per_user" / "test" / f"partition={p}"
        if part.exists():
            partitioned |= _uids(part)
    assert partitioned == test
    # validation is what the two-way split of the same seed always drew
    from pyspark.sql import functions as F

    spark = spark_session(config.prep.spark, "gdmix-test")
    try:
        frame = spark.createDataFrame(raw.select(["id"]).rename_columns(["uid"]))
        bucket = F.abs(F.xxhash64(F.col("uid"), F.lit(5), F.lit(UID_SEED))) % 1_000_000
        expected = {r["uid"] for r in frame.filter(bucket < 200_000).collect()}
    finally:
        spark.stop()
    assert validation == expected


# ----------------------------------------------------------------------------- the pipeline


def test_pipeline_test_metrics_equal_gdmix_train(test_split_dir, tmp_path):
    from gdmix.game import train
    from gdmix_pipelines.run import run_local

    raw = _with_test(test_split_dir, str(tmp_path / "pipeline-model"))
    raw["coordinates"][1]["partitions"] = 2
    raw["coordinates"][2]["partitions"] = 2
    raw["pipeline"] = {"partition_groups": 2, "parallelism": 2, "fixed_effect_workers": 2}
    metrics = run_local(yaml.safe_dump(raw), workdir=str(tmp_path / "root"))
    reference = train(validate_config(raw | {"output": str(tmp_path / "train-model")}))
    assert len(metrics["coordinates"]) == len(reference.coordinates) == 3
    for got, want in zip(metrics["coordinates"], reference.coordinates):
        for split in ("validation", "test"):
            for key in ("auc", "logloss", "aupr"):
                assert got[split][key] == pytest.approx(want[split][key], abs=1e-7), (got["name"], split, key)
        if want["type"] == "random_effect":
            assert got["test_per_entity_auc"]["mean"] == pytest.approx(want["test_per_entity_auc"]["mean"], abs=1e-7)
    assert metrics["final"]["test"]["auc"] == pytest.approx(reference.coordinates[-1]["test"]["auc"], abs=1e-7)
    ours = _read(tmp_path / "pipeline-model" / "scores" / "per_item" / "test").sort_by("uid")
    theirs = _read(tmp_path / "train-model" / "scores" / "per_item" / "test").sort_by("uid")
    np.testing.assert_allclose(ours.column("score").to_numpy(), theirs.column("score").to_numpy(), atol=1e-6)
    # KFP outputs: test metrics logged by update_scores and the test evaluations, labelled reports
    outputs = [json.loads(p.read_text()) for p in (tmp_path / "root").glob("**/executor_output.json")]
    logged = {name for o in outputs for artifact in o.get("artifacts", {}).values()
              for a in artifact.get("artifacts", []) for name in a.get("metadata", {})}
    assert {"test_auc", "validation_auc", "test_logloss"} <= logged
    pages = [p.read_text() for p in (tmp_path / "root").glob("**/report")]  # a pass's are in its sub-DAG
    assert any("Metrics (test data)" in page for page in pages)
    assert any("GDMix model on test data" in page for page in pages)
    history = [page for page in pages if "Metrics after each coordinate" in page]
    assert len(history) == 6  # validation and test after each of the 3 coordinates
    assert all('<td class="text">test</td>' in page for page in history)  # labelled test rows


def test_pipeline_data_parameters_and_a_missing_test_split(tmp_path):
    from gdmix.errors import DataError
    from gdmix.stages.context import data_overrides, derived_prep
    from gdmix.stages.evaluation import evaluate_location
    from gdmix.layout import SCORE_TABLE_FILE

    contract = synthetic_config("/d", "/o")
    assert data_overrides(yaml.safe_dump(contract), "", "", "s3://b/test") == ["data.test=s3://b/test"]
    prepared = contract | {"prep": {"input": {"path": "/raw"}, "output": "/p", "label": {"column": "y"}}}
    assert data_overrides(yaml.safe_dump(prepared), "", "", "s3://b/t") == ["prep.test_input.path=s3://b/t"]
    with_test = validate_config(contract | {"data": contract["data"] | {"test": "/d/test"}})
    assert derived_prep(with_test)["test_input"] == {"path": "/d/test", "format": "parquet"}
    assert "test_input" not in derived_prep(validate_config(contract))
    # a score table without a test split is an error, never an evaluation of all its splits together
    table = tmp_path / "table"
    fs.write_parquet(pa.table({"uid": [1, 2], "label": [0.0, 1.0], "score": [0.1, 0.2]}), str(table / "train"))
    (table / SCORE_TABLE_FILE).write_text(json.dumps({"splits": ["train"], "models": {}, "history": []}))
    with pytest.raises(DataError, match="no test split"):
        evaluate_location(str(table), "test", [], "t")
