import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import roc_auc_score

from gdmix.config import validate_config
from gdmix.dataset import to_dataset
from gdmix.errors import ConfigError, DataError
from gdmix.game import train
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.models.fixed_effect import fit_fixed_effect
from gdmix.models.random_effect import fit_random_effect

from conftest import synthetic_config


@pytest.fixture(scope="module")
def trained(synthetic_dir, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("run") / "model")
    config = validate_config(synthetic_config(synthetic_dir, out))
    return config, train(config)


def _read(path):
    return fs.read_parquet_dir(str(path))


def test_output_layout_and_schemas(trained):
    config, result = trained
    out = config.output
    for bag in ("global", "per_item_id", "per_user_id"):
        assert _read(f"{out}/index_maps/{bag}").column_names == ["index", "name", "term"]
    assert _read(f"{out}/models/global").column_names == ["name", "term", "value"]
    user_model = _read(f"{out}/models/per_user")
    assert user_model.column_names == ["entity", "name", "term", "value"]
    intercepts = user_model.filter(pc.equal(user_model.column("name"), "(INTERCEPT)"))
    assert intercepts.num_rows == result.coordinates[1]["solver"]["entities_trained"]
    assert set(pc.unique(intercepts.column("term")).to_pylist()) == {""}
    for name in ("global", "per_user", "per_item"):
        for split in ("train", "validation"):
            table = _read(f"{out}/scores/{name}/{split}")
            assert table.column_names == ["uid", "label", "weight", "score", "coordinate_score"]
    spec = json.loads(open(f"{out}/model.json").read())
    assert [c["name"] for c in spec["coordinates"]] == ["global", "per_user", "per_item"]


def test_scores_are_cumulative_and_metrics_match_sklearn(trained):
    config, result = trained
    out = config.output
    metrics = json.loads(open(f"{out}/metrics.json").read())
    assert [(c["name"], c["pass"]) for c in metrics["coordinates"]] == [("global", 1), ("per_user", 1), ("per_item", 1)]
    previous = None
    for entry in metrics["coordinates"]:
        table = _read(f"{out}/scores/{entry['name']}/validation")
        score = table.column("score").to_numpy()
        own = table.column("coordinate_score").to_numpy()
        if previous is not None:
            np.testing.assert_allclose(score, previous + own, atol=1e-12)
        previous = score
        auc = roc_auc_score(table.column("label").to_numpy(), score, sample_weight=table.column("weight").to_numpy())
        assert entry["validation"]["auc"] == pytest.approx(auc, abs=1e-12)
        assert entry["train_seconds"] >= 0
    assert metrics["coordinates"][2]["validation"]["auc"] > metrics["coordinates"][0]["validation"]["auc"] + 0.02
    per_entity = metrics["coordinates"][1]["per_entity_auc"]
    assert per_entity["entities_with_auc"] > 10 and 0.5 < per_entity["mean"] < 1.0
    assert metrics["final"]["validation"] == metrics["coordinates"][-1]["validation"]


def test_first_pass_is_gdmix_chaining(trained, synthetic_dir):
    """Pass 1, FE -> RE1 -> RE2, equals training each with the previous cumulative score as offset."""
    config, result = trained
    table = read_contract_table(config.data.train, ContractColumns(entities=("item_id", "user_id"),
                                                                   bags=("global", "per_item_id", "per_user_id")))
    train_data = to_dataset(table, result.model.index_maps, ["item_id", "user_id"])
    fe_config, user_config, item_config = config.coordinates
    fe, _ = fit_fixed_effect(train_data.bags["global"], train_data.label, train_data.weight, train_data.offset, fe_config)
    offset = train_data.offset + fe.score(train_data.bags["global"])
    np.testing.assert_allclose(result.model.models["global"].coef, fe.coef, atol=1e-10)
    users = train_data.entities["user_id"]
    codes, intercepts, _, _ = fit_random_effect(users.codes, train_data.bags["per_user_id"], train_data.label,
                                                train_data.weight, offset, user_config)
    model = result.model.models["per_user"]
    rows = model.rows_for(users)[codes]
    np.testing.assert_allclose(model.intercepts[rows], intercepts, atol=1e-10)


def test_more_passes_keep_improving_training_fit(synthetic_dir, tmp_path):
    config = validate_config(synthetic_config(synthetic_dir, str(tmp_path / "m"), passes=3))
    result = train(config)
    entries = result.coordinates
    assert [(e["name"], e["pass"]) for e in entries][-3:] == [("global", 3), ("per_user", 3), ("per_item", 3)]
    train_logloss = [e["train"]["logloss"] for e in entries]
    assert train_logloss[-1] <= train_logloss[2] + 1e-9  # after pass 3 no worse than after pass 1
    # coordinate descent settles: the last pass barely moves the fixed effect
    assert entries[-3]["solver"]["iterations"] <= entries[0]["solver"]["iterations"]
    # what random effects kept from pass to pass (layouts, scores) is gone before the outputs
    memos = [c.memo for c in result.model.coordinates if hasattr(c, "memo")]
    assert len(memos) == 2 and all(m.problem is None and m.scores is None for m in memos)


def test_warm_start_reproduces_previous_run(trained, tmp_path):
    config, result = trained
    raw = config.model_dump()
    raw["output"] = str(tmp_path / "again")
    raw["warm_start"] = config.output
    raw["coordinates"][0]["optimizer"]["max_iter"] = 0
    for coordinate in raw["coordinates"][1:]:
        coordinate["solver"]["max_iter"] = 0
    again = train(validate_config(raw))
    for name in ("global", "per_user", "per_item"):
        first = _read(f"{config.output}/scores/{name}/validation").column("score").to_numpy()
        second = _read(f"{tmp_path}/again/scores/{name}/validation").column("score").to_numpy()
        np.testing.assert_allclose(second, first, atol=1e-9)
    assert again.coordinates[-1]["validation"]["auc"] == pytest.approx(result.coordinates[-1]["validation"]["auc"])


def test_any_coordinate_list(synthetic_dir, tmp_path):
    raw = synthetic_config(synthetic_dir, str(tmp_path / "a"))
    raw["coordinates"] = [
        {"name": "bias", "type": "fixed_effect"},  # intercept only
        {"name": "users", "type": "random_effect", "entity": "user_id"},  # random intercepts
        {"name": "g1", "type": "fixed_effect", "feature_bag": "global"},
        {"name": "g2", "type": "fixed_effect", "feature_bag": "per_item_id", "l2": 3.0},
    ]
    result = train(validate_config(raw))
    assert [c["name"] for c in result.coordinates] == ["bias", "users", "g1", "g2"]
    assert result.model.models["users"].coef.shape[1] == 0
    only_random = synthetic_config(synthetic_dir, str(tmp_path / "b"))
    only_random["coordinates"] = [only_random["coordinates"][1]]
    assert train(validate_config(only_random)).coordinates[0]["validation"]["auc"] > 0.5


def test_recovers_the_true_fixed_effect(tmp_path):
    from gdmix.example_data.synthetic import generate_synthetic, write_synthetic

    data = generate_synthetic(20000, {"user_id": 200}, global_features=8, global_nnz=4, random_scale=0.5, seed=11)
    write_synthetic(str(tmp_path / "d"), data)
    config = validate_config(synthetic_config(str(tmp_path / "d"), str(tmp_path / "m")) | {
        "coordinates": [{"name": "global", "type": "fixed_effect", "feature_bag": "global"},
                        {"name": "per_user", "type": "random_effect", "entity": "user_id",
                         "feature_bag": "per_user_id"}], "passes": 2})
    result = train(config)
    truth = {(r["name"], r["term"]): r["value"] for r in data.fixed_truth.to_pylist()}
    learned = _read(f"{tmp_path}/m/models/global").to_pylist()
    pairs = np.array([(truth[(r["name"], r["term"])], r["value"]) for r in learned if (r["name"], r["term"]) in truth])
    assert np.corrcoef(pairs.T)[0, 1] > 0.95
    assert result.coordinates[-1]["validation"]["auc"] > result.coordinates[0]["validation"]["auc"]


def _small_table(n, users, labels, weights=None):
    from conftest import bag

    columns = {
        "uid": pa.array(np.arange(n, dtype=np.int64)),
        "label": pa.array(labels, pa.float64()),
        "user": pa.array(users),
        "g": bag([[("x", "", float(i % 3) - 1.0)] for i in range(n)]),
    }
    if weights is not None:
        columns["weight"] = pa.array(weights, pa.float64())
    return pa.table(columns)


def _write(table, path):
    path.mkdir(parents=True)
    pq.write_table(table, path / "part-00000.parquet")
    return str(path)


def _small_config(train_uri, validation_uri, output, **random_effect):
    return validate_config({
        "data": {"train": train_uri, "validation": validation_uri},
        "output": output,
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "g"},
            {"name": "per_user", "type": "random_effect", "entity": "user", "feature_bag": "g", **random_effect},
        ],
    })


def test_string_ids_unseen_entities_and_a_random_effect_without_models(tmp_path):
    rng = np.random.default_rng(0)
    users = [f"user-{i % 7}" for i in range(140)]
    train_uri = _write(_small_table(140, users, (rng.random(140) < 0.5).astype(float)), tmp_path / "train")
    validation = _small_table(30, [f"new-{i % 4}" if i % 2 else "user-1" for i in range(30)],
                              (rng.random(30) < 0.5).astype(float))
    validation_uri = _write(validation, tmp_path / "validation")
    result = train(_small_config(train_uri, validation_uri, str(tmp_path / "m")))
    scores = _read(tmp_path / "m" / "scores" / "per_user" / "validation")
    own = scores.column("coordinate_score").to_numpy()
    assert np.all(own[1::2] == 0.0) and np.all(own[0::2] != 0.0)  # unseen users score 0
    # min_rows above every entity's size: no models at all, and nothing breaks
    empty = train(_small_config(train_uri, validation_uri, str(tmp_path / "e"), min_rows=1000))
    assert empty.coordinates[1]["solver"]["entities_trained"] == 0
    assert _read(tmp_path / "e" / "models" / "per_user").num_rows == 0
    np.testing.assert_array_equal(_read(tmp_path / "e" / "scores" / "per_user" / "validation")
                                  .column("coordinate_score").to_numpy(), 0.0)
    assert result.coordinates[1]["per_entity_auc"]["entities"] == 3  # user-1, new-1, new-3


def test_one_class_validation_writes_null_metrics(tmp_path):
    users = [i % 5 for i in range(100)]
    train_uri = _write(_small_table(100, users, np.arange(100) % 2), tmp_path / "train")
    validation_uri = _write(_small_table(10, users[:10], np.ones(10)), tmp_path / "validation")
    train(_small_config(train_uri, validation_uri, str(tmp_path / "m")))
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())  # strict JSON: no NaN
    assert metrics["coordinates"][0]["validation"]["auc"] is None
    assert metrics["coordinates"][0]["validation"]["logloss"] > 0


def test_degenerate_training_data_is_rejected(tmp_path):
    users = [i % 5 for i in range(50)]
    weightless = _write(_small_table(50, users, np.arange(50) % 2, np.zeros(50)), tmp_path / "w")
    with pytest.raises(DataError, match="weight 0"):
        train(_small_config(weightless, None, str(tmp_path / "m")))
    one_label = _write(_small_table(50, users, np.ones(50)), tmp_path / "one")
    with pytest.raises(DataError, match="label 1.*no finite optimum"):
        train(_small_config(one_label, None, str(tmp_path / "m")))
    assert not (tmp_path / "m").exists()


def test_warm_start_rules(tmp_path):
    rng = np.random.default_rng(1)
    users = [i % 6 for i in range(240)]
    labels = (rng.random(240) < 0.5).astype(float)
    train_uri = _write(_small_table(240, users, labels), tmp_path / "train")
    first = _small_config(train_uri, None, str(tmp_path / "first"))
    train(first)
    # a coordinate that changed its entity cannot start from the old model
    changed = first.model_dump()
    changed.update(output=str(tmp_path / "x"), warm_start=str(tmp_path / "first"))
    changed["coordinates"][1]["entity"] = "uid"
    with pytest.raises(ConfigError, match="entity 'uid' but 'user'"):
        train(validate_config(changed))
    # user 0 now has too few rows: it must get no model (score 0), not its old one
    subset = [i for i in range(240) if users[i] != 0 or i < 6]
    small = _write(_small_table(240, users, labels).take(subset), tmp_path / "subset")
    again = first.model_dump()
    again.update(output=str(tmp_path / "again"), warm_start=str(tmp_path / "first"))
    again["data"]["train"] = small
    again["coordinates"][1]["min_rows"] = 10
    result = train(validate_config(again))
    model = result.model.models["per_user"]
    assert "0" not in model.entity_ids.to_pylist() and len(model.entity_ids) == 5


def test_object_store_uris(tmp_path):
    """Data and outputs behind an fsspec URI (the in-memory file system stands in for s3://)."""
    import fsspec

    memory = fsspec.filesystem("memory")
    rng = np.random.default_rng(2)
    n = 600
    users = np.arange(n) % 4
    x = np.arange(n) % 3 - 1.0  # the global feature of _small_table
    user_bias = np.array([-2.0, -0.7, 0.7, 2.0])[users]  # what only the per-user intercepts can explain
    true_logit = 1.0 * x + user_bias
    labels = (rng.random(n) < 1 / (1 + np.exp(-true_logit))).astype(float)
    table = _small_table(n, users.tolist(), labels)
    with memory.open("/bucket/train/part-00000.parquet", "wb") as handle:
        pq.write_table(table, handle)
    result = train(_small_config("memory://bucket/train", None, "memory://bucket/model"))
    assert memory.exists("/bucket/model/metrics.json")
    assert set(fs.read_parquet_dir("memory://bucket/model/models/per_user").column("entity").to_pylist()) == {"0", "1", "2", "3"}
    oracle = roc_auc_score(labels, true_logit)  # the ranking of the model that generated the labels
    global_only = roc_auc_score(labels, x)
    assert oracle > global_only + 0.1  # the random effect matters on this data
    final = result.coordinates[-1]["train"]["auc"]
    assert final == pytest.approx(oracle, abs=0.01)  # both coordinates count, aligned with their rows
    assert result.coordinates[0]["train"]["auc"] == pytest.approx(global_only, abs=0.01)
    # the scores written to the object store are the rows' own: sklearn on them gives the same AUC
    stored = fs.read_parquet_dir("memory://bucket/model/scores/per_user/train").sort_by("uid")
    assert stored.column("uid").to_pylist() == list(range(n))
    assert roc_auc_score(labels, stored.column("score").to_numpy()) == pytest.approx(final, abs=1e-12)
