"""DeText: text handling, encoders, losses, distributed training, export and scoring."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml

from gdmix.config import DetextConfig, validate_config
from gdmix.errors import ConfigError
from gdmix.io import fs

HANG_GUARD = 600
WORDS = np.array(["alpha", "beta", "gamma", "delta", "omega", "sigma", "tau", "rho"])


def _config(**overrides) -> DetextConfig:
    values = {"name": "deep", "type": "detext", "doc_text": ["title"], "steps": 20, "eval_every": 10,
              "batch_size": 32, "embedding_dim": 8, "num_filters": 4, "num_units": 8, "hidden": [8]}
    return DetextConfig(**(values | overrides))


def _texts(*values):
    from gdmix.models.detext.text import text_array

    return text_array(values)


# ------------------------------------------------------------------------------------------
# text
# ------------------------------------------------------------------------------------------

def test_normalisation_and_bad_text_input():
    from gdmix.models.detext.text import build_vocabulary, make_tokenizer_layer, tokens

    raw = _texts("Ça VA, très-BIEN!", "", None, b"\xff\xfe broken \xc3", "x" * 10_000, "   ", "日本語 テキスト")
    words = [[w.decode() for w in row] for row in tokens(tf_constant(raw), max_bytes=64, max_len=4).to_list()]
    assert words[0] == ["ça", "va", "très", "bien"]  # unicode case folding, punctuation splits
    assert words[1] == [] and words[2] == [] and words[5] == []  # empty and missing fields
    assert words[3] == ["broken"]  # invalid UTF-8 replaced, not an error
    assert words[4] == ["x" * 64]  # an over-long field is cut (bytes, then word length)
    assert words[6] == ["日本語", "テキスト"]
    vocabulary = build_vocabulary([raw], 64, 4, size=6, min_count=1)
    assert vocabulary[:2] == ["[PAD]", "[UNK]"] and len(vocabulary) == 6
    assert vocabulary == build_vocabulary([raw[::-1]], 64, 4, size=6, min_count=1)  # order-independent
    ids = make_tokenizer_layer(vocabulary, 64, 4)(tf_constant(_texts("BIEN unseen", ""))).numpy()
    assert ids.shape == (2, 4) and ids[0, 0] == vocabulary.index("bien") and ids[0, 1] == 1 and not ids[1].any()


def tf_constant(values):
    from gdmix.tf_runtime import import_tensorflow

    return import_tensorflow().constant(values, dtype="string")


# ------------------------------------------------------------------------------------------
# encoders and the network
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("encoder", ["cnn", "lstm", "transformer"])
def test_encoders_give_one_vector_per_text_and_zero_for_empty_text(encoder):
    from gdmix.models.detext.encoders import make_encoder
    from gdmix.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    config = _config(encoder=encoder, max_len=5)
    layer = make_encoder(config, vocab_size=20, name="enc")
    ids = tf.constant([[3, 4, 5, 0, 0], [0, 0, 0, 0, 0], [7, 0, 0, 0, 0]])
    out = layer(ids).numpy()
    assert out.shape == (3, config.num_units) and np.isfinite(out).all()
    assert not out[1].any() and out[0].any()
    # padding does not change a text's vector
    longer = tf.concat([ids, tf.zeros([3, 3], tf.int32)], axis=1)[:, :5]
    np.testing.assert_allclose(layer(longer).numpy(), out, atol=1e-6)


def test_pretrained_encoder_from_a_local_saved_model(tmp_path):
    from gdmix.tf_runtime import import_tensorflow

    tf = import_tensorflow()

    class CharCounts(tf.Module):  # a stand-in "pretrained" text encoder
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def __call__(self, texts):
            return {"vector": tf.stack([tf.cast(tf.strings.length(texts), tf.float32),
                                        tf.cast(tf.strings.length(tf.strings.regex_replace(texts, "[^a]", "")),
                                                tf.float32)], axis=1)}

    module = CharCounts()
    tf.saved_model.save(module, str(tmp_path / "encoder"), signatures={"serving_default": module.__call__})
    from gdmix.models.detext.encoders import load_pretrained

    layer = load_pretrained(str(tmp_path / "encoder"), "pre")
    np.testing.assert_allclose(layer(tf.constant(["banana", ""])).numpy(), [[6, 3], [0, 0]])
    rows, offsets = _rows(200, seed=1)
    from gdmix.models.detext.model import DetextModel
    from gdmix.models.detext.training import train_network

    config = _config(encoder="pretrained", pretrained_path=str(tmp_path / "encoder"))
    model = DetextModel.create(config, [], 0, rows.dense)
    train_network(model.network, config, rows, offsets, log=lambda m: None)
    assert np.isfinite(model.score(rows)).all()


def _rows(n: int, seed: int = 0, groups: bool = False):
    from gdmix.models.detext.data import DetextRows

    rng = np.random.default_rng(seed)
    item = rng.integers(0, 30, n)
    titles = _texts(*[f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]}" for i in item])
    labels = (rng.random(n) < 1 / (1 + np.exp(-(item % 8 - 3.5)))).astype(np.float32)
    group = np.repeat(np.arange(n // 5 + 1), 5)[:n] if groups else None
    return DetextRows({"title": titles}, None, np.zeros((n, 0), np.float32), labels, np.ones(n, np.float32),
                      group), np.zeros(n)


# ------------------------------------------------------------------------------------------
# losses and batches
# ------------------------------------------------------------------------------------------

def test_ranking_losses_match_a_plain_reference():
    from gdmix.models.detext.losses import listwise, pairwise, pointwise
    from gdmix.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    rng = np.random.default_rng(5)
    groups = np.repeat(np.arange(6), rng.integers(1, 6, 6))
    n = len(groups)
    logits, labels = rng.normal(size=n), rng.integers(0, 3, n).astype(float)
    weights = np.repeat(rng.uniform(0.5, 2, 6), np.bincount(groups))

    pair_total = pair_weight = list_total = list_weight = 0.0
    for g in np.unique(groups):
        s, y, w = logits[groups == g], labels[groups == g], weights[groups == g][0]
        pairs = [(i, j) for i in range(len(s)) for j in range(len(s)) if y[i] > y[j]]
        if pairs:
            pair_total += w * np.mean([np.log1p(np.exp(-(s[i] - s[j]))) for i, j in pairs])
            pair_weight += w
        if y.sum() > 0:
            list_total += w * -(y * (s - np.log(np.exp(s).sum()))).sum() / y.sum()
            list_weight += w
    t = [tf.constant(v) for v in (logits, labels, weights, groups)]
    got = pairwise(*t)
    assert float(got[0]) == pytest.approx(pair_total) and float(got[1]) == pytest.approx(pair_weight)
    got = listwise(*t)
    assert float(got[0]) == pytest.approx(list_total) and float(got[1]) == pytest.approx(list_weight)
    binary = (labels > 0).astype(float)
    expected = (weights * (np.log1p(np.exp(logits)) - binary * logits)).sum()
    assert float(pointwise(t[0], tf.constant(binary), t[2])[0]) == pytest.approx(expected)


def test_workers_split_each_global_batch_exactly():
    from gdmix.models.detext.data import Batches, TrainingShard

    for groups in (False, True):
        rows, offsets = _rows(103, groups=groups)
        batches = Batches(rows, 16, seed=3, by_group=groups)
        workers = [TrainingShard.in_memory(rows, offsets, rank, 3)[0] for rank in range(3)]
        for _ in range(20):
            batch = batches.next()
            shares = [worker.local(batch) + worker.start for worker in workers]  # global row positions
            assert sorted(np.concatenate(shares)) == sorted(batch)
            if groups:  # a list never spans two workers
                owners = [set(rows.groups[s]) for s in shares]
                assert not (owners[0] & owners[1]) and not (owners[1] & owners[2])


def test_config_rules():
    with pytest.raises(ValueError, match="group"):
        _config(loss="pairwise")
    with pytest.raises(ConfigError, match="not log-odds"):
        validate_config({"data": {"train": "x"}, "output": "o", "coordinates": [
            _config(loss="listwise", group="q").model_dump(), {"name": "re", "type": "random_effect", "entity": "u"}]})


# ------------------------------------------------------------------------------------------
# jobs: 1 vs 2 workers, export, scoring
# ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_data(tmp_path_factory):
    from conftest import write_titled_synthetic

    root = tmp_path_factory.mktemp("detext")
    write_titled_synthetic(root, 3000, WORDS)
    return root


def _job_config(root: Path, tmp_path: Path, **detext) -> Path:
    raw = {"data": {"train": str(root / "train"), "validation": str(root / "validation")},
           "output": str(tmp_path / "unused"),
           "coordinates": [{"name": "deep", "type": "detext", "doc_text": ["title"], "wide_bag": "global",
                            "steps": 40, "eval_every": 20, "batch_size": 64} | detext]}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _run_job(config: Path, output: Path, *extra: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "gdmix", "detext", str(config), "--coordinate", "deep",
                           "--output", str(output), *extra], capture_output=True, text=True, timeout=HANG_GUARD)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((output / "job.json").read_text())


def test_one_and_two_workers_follow_the_same_trajectory(text_data, tmp_path):
    config = _job_config(text_data, tmp_path)
    one = _run_job(config, tmp_path / "one")
    two = _run_job(config, tmp_path / "two", "--workers", "2")
    assert two["workers"] == 2 and two["backend"] == "tf"
    losses = lambda job: np.array([loss for _, loss in job["solver"]["train_loss"]])  # noqa: E731
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-4)
    auc = lambda job: [e["auc"] for e in job["solver"]["evaluations"]]  # noqa: E731
    np.testing.assert_allclose(auc(two), auc(one), atol=1e-4)


def _require_horovod() -> None:
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        if os.environ.get("GDMIX_REQUIRE_HOROVOD") == "1":
            raise
        pytest.skip("Horovod is not installed (make horovod); GDMIX_REQUIRE_HOROVOD=1 makes this a failure")


def test_horovod_workers_follow_the_same_trajectory(text_data, tmp_path):
    _require_horovod()
    config = _job_config(text_data, tmp_path)
    one = _run_job(config, tmp_path / "one")
    two = _run_job(config, tmp_path / "two", "--workers", "2", "--launcher", "horovod")
    assert two["workers"] == 2 and two["backend"] == "horovod"
    losses = lambda job: np.array([loss for _, loss in job["solver"]["train_loss"]])  # noqa: E731
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-4)


def test_saved_model_scores_equal_training_scores(text_data, tmp_path):
    from gdmix.models.detext.model import load_serving
    from gdmix.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    output = tmp_path / "model"
    _run_job(_job_config(text_data, tmp_path, encoder="transformer", dense=["true_logit"]), output)
    serve = load_serving(str(output / "models" / "deep" / "saved_model"))
    scored = fs.read_parquet_dir(str(output / "scores" / "deep" / "validation")).sort_by("uid")
    raw = pq.read_table(text_data / "validation").sort_by("uid")
    from gdmix.features.index_map import IndexMap
    from gdmix.features.bags import bag_to_csr
    from gdmix.models.detext.data import _padded

    csr = bag_to_csr(raw.column("global"), IndexMap.load(str(output / "index_maps" / "global")), raw.num_rows)
    ids, values = _padded(csr, np.arange(raw.num_rows))
    dense = raw.column("true_logit").to_numpy().reshape(-1, 1).astype(np.float32)
    logits = serve(text_title=tf.constant(raw.column("title").to_pylist()), wide_ids=tf.constant(ids),
                   wide_values=tf.constant(values), dense=tf.constant(dense),
                   offset=tf.zeros([raw.num_rows]))["logit"].numpy()
    np.testing.assert_allclose(logits, scored.column("coordinate_score").to_numpy(), atol=1e-5)


def test_detext_then_random_effect_in_coordinate_descent(text_data, tmp_path, monkeypatch):
    """Two passes of ``gdmix train``: in pass 2 DeText trains (and picks its best step) on the
    random effect's pass-1 scores as offsets, on the training and the validation rows."""
    import gdmix.models.detext.coordinate as detext_coordinate
    from gdmix.game import train
    from gdmix.models.random_effect import RandomEffectModel
    from gdmix.scoring import score_dataset

    seen = []  # what DeText's training loop receives, per pass
    real_train_network = detext_coordinate.train_network

    def spy_train_network(network, config, rows, offsets, held_out, held_out_offsets, *args, **kwargs):
        seen.append({"train": np.array(offsets), "validation": np.array(held_out_offsets),
                     "train_labels": np.array(rows.labels), "validation_labels": np.array(held_out.labels)})
        return real_train_network(network, config, rows, offsets, held_out, held_out_offsets, *args, **kwargs)

    monkeypatch.setattr(detext_coordinate, "train_network", spy_train_network)
    re_models = []  # the random effect's model after each of its fits
    from gdmix.models import coordinates as coordinate_module

    real_fit = coordinate_module.RandomEffectCoordinate.fit

    def spy_fit(self, *args, **kwargs):
        model, report = real_fit(self, *args, **kwargs)
        # a copy: coordinate descent writes the next warm pass over this model's arrays
        re_models.append(dataclasses.replace(model, coef=model.coef.copy(), intercepts=model.intercepts.copy()))
        return model, report

    monkeypatch.setattr(coordinate_module.RandomEffectCoordinate, "fit", spy_fit)

    raw = {"data": {"train": str(text_data / "train"), "validation": str(text_data / "validation")},
           "output": str(tmp_path / "model"), "passes": 2,
           "coordinates": [{"name": "deep", "type": "detext", "doc_text": ["title"], "wide_bag": "global",
                            "steps": 60, "eval_every": 30, "batch_size": 64},
                           {"name": "per_user", "type": "random_effect", "entity": "user_id",
                            "feature_bag": "per_user_id"}]}
    result = train(validate_config(raw))
    aucs = [c["validation"]["auc"] for c in result.coordinates]
    assert aucs[0] > 0.6 and aucs[-1] > aucs[0]
    assert len(seen) == 2 and len(re_models) == 2
    assert not seen[0]["train"].any() and not seen[0]["validation"].any()  # pass 1: nothing to add yet
    # pass 2: the offsets are the random effect's pass-1 scores, computed here from its
    # coefficients (intercept + w . x of each row's user), not by gdmix's scoring code
    first = re_models[0]
    assert isinstance(first, RandomEffectModel)
    for split, offsets in (("train", seen[1]["train"]), ("validation", seen[1]["validation"])):
        expected, labels = _random_effect_scores(first, text_data / split, str(tmp_path / "model"))
        np.testing.assert_array_equal(seen[1][f"{split}_labels"], labels)  # the same rows in the same order
        assert np.abs(expected).max() > 0.1  # a signal worth carrying
        np.testing.assert_allclose(offsets, expected, atol=1e-9, err_msg=split)
    summary = score_dataset(str(tmp_path / "model"), str(text_data / "validation"), str(tmp_path / "scored"))
    assert summary["metrics"]["auc"] == pytest.approx(aucs[-1], abs=1e-6)


def _random_effect_scores(model, data_dir: Path, model_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """intercept + coef . features of each row's entity (0 for entities without a model), in the
    rows' file order, straight from the raw parquet bag and the model's own arrays; and the labels."""
    from gdmix.features.index_map import IndexMap

    raw = fs.read_parquet_dir(str(data_dir))
    table = IndexMap.load(str(Path(model_dir) / "index_maps" / "per_user_id")).to_table().to_pylist()
    column = {(f["name"], f["term"]): f["index"] for f in table}
    row_of = {str(e): k for k, e in enumerate(model.entity_ids.to_pylist())}
    coef = model.coef.toarray()
    out = np.zeros(raw.num_rows)
    for r, (user, features) in enumerate(zip(raw.column("user_id").to_pylist(),
                                             raw.column("per_user_id").to_pylist())):
        k = row_of.get(str(user))
        if k is not None:
            out[r] = model.intercepts[k] + sum(coef[k, column[(f["name"], f["term"])]] * f["value"]
                                               for f in features if (f["name"], f["term"]) in column)
    return out, raw.column("label").to_numpy()


def test_detext_fits_only_what_the_offset_does_not_explain():
    """The offset carries a strong signal that the wide feature could also learn; with the offset
    given, the network's own logit must learn only the weak text signal (the residual), while
    a run given zero offsets learns the offset's signal itself."""
    from gdmix.models.detext.data import DetextRows
    from gdmix.models.detext.model import DetextModel
    from gdmix.models.detext.text import build_vocabulary
    from gdmix.models.detext.training import train_network
    from scipy.sparse import csr_matrix

    rng = np.random.default_rng(21)
    n = 2000
    item = rng.integers(0, 64, n)
    x = rng.normal(size=n)
    offset = 2.5 * x  # e.g. the random effects' scores
    weak = 0.8 * ((item % 8) - 3.5) / 3.5  # what the text explains on top of it
    labels = (rng.random(n) < 1 / (1 + np.exp(-(offset + weak)))).astype(np.float32)
    titles = _texts(*[f"{WORDS[i % 8]} {WORDS[(i // 8) % 8]}" for i in item])
    rows = DetextRows({"title": titles}, csr_matrix(x.reshape(-1, 1)), np.zeros((n, 0), np.float32), labels,
                      np.ones(n, np.float32), None)
    config = _config(steps=250, eval_every=250, batch_size=64, learning_rate=0.02, hidden=[8])
    vocabulary = build_vocabulary([titles], 2048, 16, 100, 1)

    def own_logit(offsets):
        model = DetextModel.create(config, vocabulary, 1, rows.dense)
        train_network(model.network, config, rows, offsets, log=lambda m: None)
        return model.score(rows)  # the network alone, offsets excluded

    with_offset, without = own_logit(offset), own_logit(np.zeros(n))
    corr = lambda a, b: float(np.corrcoef(a, b)[0, 1])  # noqa: E731
    assert abs(corr(with_offset, offset)) < 0.2, corr(with_offset, offset)  # did not re-learn the offset
    assert corr(with_offset, weak) > 0.8, corr(with_offset, weak)  # learned the rest
    assert corr(without, offset) > 0.8, corr(without, offset)  # the signal is learnable without the offset


def test_stop_reason_tells_a_plateau_from_a_spent_step_budget():
    from gdmix.models.detext.model import DetextModel
    from gdmix.models.detext.text import build_vocabulary
    from gdmix.models.detext.training import train_network

    rows, offsets = _rows(200, seed=4)
    held_out, held_offsets = _rows(200, seed=5)
    vocabulary = build_vocabulary([rows.texts["title"]], 2048, 16, 100, 1)

    def report(validation: bool, **overrides):
        config = _config(**overrides)
        model = DetextModel.create(config, vocabulary, 0, rows.dense)
        found = train_network(model.network, config, rows, offsets, *((held_out, held_offsets) if validation else ()),
                              log=lambda m: None)
        return found.as_dict()

    # full batches: every step's loss is the training loss itself
    spent = report(False, steps=20, batch_size=200, learning_rate=0.002)
    assert spent["stop_reason"] == "step_budget" and spent["converged"] is False
    assert spent["train_loss"][-1][1] < spent["train_loss"][0][1]  # it was still improving
    flat = report(False, steps=400, batch_size=200, learning_rate=0.05)
    assert flat["stop_reason"] == "loss_plateau" and flat["converged"] is True
    rising = report(True, steps=20, eval_every=10, batch_size=200, learning_rate=0.002)
    assert [e["step"] for e in rising["evaluations"]] == [10, 20] and rising["best_step"] == 20
    assert rising["stop_reason"] == "step_budget" and rising["converged"] is False
    peaked = report(True, steps=200, eval_every=20, batch_size=200, learning_rate=0.05)
    assert peaked["best_step"] < 200
    assert peaked["stop_reason"] == "validation_plateau" and peaked["converged"] is True


class _TwoWorkers:
    """Worker 0 of two identical workers (the other's sums are its own): enough to run the loop."""

    rank, size = 0, 2

    def sum(self, values):
        return 2.0 * np.asarray(values, dtype=np.float64)

    def max(self, values):
        return np.asarray(values, dtype=np.float64)


@pytest.mark.parametrize("distribution, installed, warned", [
    ("auto", False, True), ("auto", True, False), ("collective", False, False)])
def test_auto_distribution_says_when_it_falls_back_to_tf_collectives(monkeypatch, distribution, installed, warned):
    import warnings

    import gdmix.models.detext.training as training
    from gdmix.models.detext.model import DetextModel

    monkeypatch.setattr(training, "horovod_installed", lambda: installed)
    rows, offsets = _rows(40)
    config = _config(steps=1, distribution=distribution)
    model = DetextModel.create(config, ["[PAD]", "[UNK]", "alpha"], 0, rows.dense)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        training.train_network(model.network, config, rows, offsets, collective=_TwoWorkers(), log=lambda m: None)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)
                and "Horovod" in str(w.message)]
    if warned:
        assert len(messages) == 1 and "TF collective" in messages[0] and "make horovod" in messages[0]
    else:
        assert messages == []


def test_pipeline_with_a_detext_fixed_effect_matches_gdmix_train(text_data, tmp_path):
    """The kfp.local pipeline: DeText on 2 workers (Horovod ranks when installed, else TF
    collective workers), then a partitioned random effect; the same metrics as gdmix train."""
    from gdmix.game import train
    from gdmix_pipelines.run import run_local

    raw = {"data": {"train": str(text_data / "train"), "validation": str(text_data / "validation")},
           "output": str(tmp_path / "pipeline-model"), "passes": 2,  # pass 2: DeText on the residuals
           "coordinates": [{"name": "deep", "type": "detext", "doc_text": ["title"], "wide_bag": "global",
                            "steps": 40, "eval_every": 10, "batch_size": 64},
                           {"name": "per_user", "type": "random_effect", "entity": "user_id",
                            "feature_bag": "per_user_id"}],
           "pipeline": {"fixed_effect_workers": 2, "partition_groups": 2, "parallelism": 2}}
    metrics = run_local(yaml.safe_dump(raw), workdir=str(tmp_path / "root"))
    expected = train(validate_config(raw | {"output": str(tmp_path / "train-model")}))
    for got, want in zip(metrics["coordinates"], expected.coordinates, strict=True):
        assert got["validation"]["auc"] == pytest.approx(want["validation"]["auc"], abs=1e-3)
    jobs = [json.loads(p.read_text()) for p in (tmp_path / "root").glob("**/detext*/model/job.json")]
    assert len(jobs) == 2 and all(job["workers"] == 2 for job in jobs)
    expected_steps = [c["solver"]["best_step"] for c in expected.coordinates if c["type"] == "detext"]
    assert sorted(job["solver"]["best_step"] for job in jobs) == sorted(expected_steps)


def test_detext_as_an_mpijob_on_a_fake_cluster(text_data, tmp_path):
    """backend: kubernetes renders an MPIJob whose launcher runs horovodrun; the fake operator
    runs that command here."""
    _require_horovod()
    import gdmix.stages.training as coordinates
    from gdmix.stages.backends import Launch
    from gdmix.stages.context import run_config
    from test_stage_backends import RunningOperator, _options

    raw = yaml.safe_load(_job_config(text_data, tmp_path).read_text())
    raw["pipeline"] = {"backend": "kubernetes", "namespace": "gdmix", "fixed_effect_workers": 2}
    config = run_config(yaml.safe_dump(raw)).model_dump(mode="json")
    config["data"] = raw["data"]
    config = validate_config(config)
    from gdmix.dataset import build_index_maps
    from gdmix.io.contract import ContractColumns, read_contract_table

    table = read_contract_table(str(text_data / "train"), ContractColumns(bags=("global",)))
    build_index_maps(table, ["global"])["global"].save(str(tmp_path / "prepared" / "index_maps" / "global"))
    config = config.model_copy(update={"prep": config.prep.model_copy(update={"output": str(tmp_path / "prepared")})})
    operator = RunningOperator()
    original = coordinates.run_workers
    coordinates.run_workers = lambda *a, **k: original(*a, **k, job_options=_options(operator))
    try:
        summary = coordinates.train_fixed_effect(config, "deep", str(tmp_path / "deep"), None, None,
                                                 Launch.from_config(config, image="localhost/gdmix-detext:1"),
                                                 log=lambda m: None)
    finally:
        coordinates.run_workers = original
    job = operator.created[0]
    assert job["kind"] == "MPIJob" and job["spec"]["mpiReplicaSpecs"]["Worker"]["replicas"] == 2
    assert summary["workers"] == 2 and summary["backend"] == "horovod" and operator.deleted


@pytest.mark.parametrize("loss", ["pairwise", "listwise"])
def test_ranking_losses_learn_to_rank(loss):
    """Lists of 5 rows; the label follows the first title word. Ranking training raises NDCG@3."""
    from gdmix.models.detext.model import DetextModel
    from gdmix.models.detext.text import build_vocabulary
    from gdmix.models.detext.training import evaluate_metric, train_network

    rows, offsets = _rows(600, seed=2, groups=True)
    held_out, held_offsets = _rows(300, seed=3, groups=True)
    config = _config(loss=loss, group="q", metric="ndcg@3", steps=60, eval_every=30, learning_rate=0.01)
    model = DetextModel.create(config, build_vocabulary([rows.texts["title"]], 2048, 16, 100, 1), 0, rows.dense)
    model._build()
    before = evaluate_metric("ndcg@3", model.score(held_out), held_out)
    report = train_network(model.network, config, rows, offsets, held_out, held_offsets, log=lambda m: None)
    after = evaluate_metric("ndcg@3", model.score(held_out), held_out)
    assert after > before + 0.05 and report.best_metric == pytest.approx(after)


def test_best_checkpoint_follows_the_metric_direction():
    from gdmix.models.detext.training import _better, metric_direction

    assert metric_direction(_config(metric="logloss")) == "min" and metric_direction(_config()) == "max"
    assert _better(0.4, 0.5, "min") and not _better(0.6, 0.5, "min") and _better(0.6, 0.5, "max")
    assert _better(0.1, None, "max") and not _better(float("nan"), 0.5, "max")
