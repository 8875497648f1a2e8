"""Coefficient variances of random effects (``variance: simple | full``, issue 12): against the
exact Hessian at the optimum, inverted by numpy."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.special import expit

from gdmix.config import RandomEffectConfig, validate_config
from gdmix.dataset import EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.models.random_effect import RandomEffectModel, fit_random_effect_model


def _data(seed: int = 0):
    """Entities of 1 to 12 rows over 6 sparse features: single-row entities (closed form), fewer
    rows than local features (row-space solver) and more (primal)."""
    rng = np.random.default_rng(seed)
    counts = rng.integers(1, 13, 30)
    codes = np.repeat(np.arange(30), counts)
    x = rng.normal(size=(len(codes), 6)) * (rng.random((len(codes), 6)) < 0.5)
    labels = (rng.random(len(codes)) < expit(rng.normal(size=len(codes)))).astype(float)
    return (EntityIds.from_array(pa.array(codes)), sp.csr_matrix(x), labels, rng.uniform(0.5, 2.0, len(codes)),
            rng.normal(scale=0.5, size=len(codes)))


def _exact(model: RandomEffectModel, entities, x, labels, weights, offsets, config, full: bool):
    """Per entity: [intercept, coefficients of its local features] variances from numpy."""
    out = {}
    x = x.toarray()
    for row, entity in enumerate(model.entity_ids.to_pylist()):
        rows = entities.codes == int(entity)
        local = np.flatnonzero(np.abs(x[rows]).sum(axis=0) > 0)
        design = np.hstack([np.ones((rows.sum(), 1)), x[rows][:, local]])
        theta = np.concatenate([[model.intercepts[row]], model.coef[row].toarray()[0, local]])
        z = design @ theta + offsets[rows]
        s = weights[rows] * expit(z) * (1 - expit(z))
        one_label = labels[rows].min() == labels[rows].max()
        intercept_ridge = config.l2 if config.regularize_intercept or one_label else 0.0
        hessian = design.T @ (s[:, None] * design) + np.diag(np.r_[intercept_ridge, np.full(len(local), config.l2)])
        out[row] = (local, np.diag(np.linalg.inv(hessian)) if full else 1.0 / np.diag(hessian))
    return out


@pytest.mark.parametrize("kind", ["simple", "full"])
@pytest.mark.parametrize("regularize_intercept, max_dense_features", [(True, 512), (False, 512), (True, 3)])
def test_variances_equal_the_exact_hessian_s(kind, regularize_intercept, max_dense_features):
    entities, x, labels, weights, offsets = _data()
    config = RandomEffectConfig(name="u", type="random_effect", entity="e", l2=0.8, variance=kind,
                                regularize_intercept=regularize_intercept,
                                solver={"max_dense_features": max_dense_features})
    model, _ = fit_random_effect_model(entities, x, labels, weights, offsets, config)
    assert model.variances is not None
    for row, (local, expected) in _exact(model, entities, x, labels, weights, offsets, config,
                                          kind == "full").items():
        got = np.concatenate([[model.variances.intercepts[row]], model.variances.coef[row].toarray()[0, local]])
        np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_variances_travel_in_the_coefficient_table(tmp_path):
    entities, x, labels, weights, offsets = _data(1)
    config = RandomEffectConfig(name="u", type="random_effect", entity="e", l2=1.0, variance="full")
    model, _ = fit_random_effect_model(entities, x, labels, weights, offsets, config)
    index_map = IndexMap.from_features(pa.array([f"f{i}" for i in range(6)]), pa.array([""] * 6))
    table = model.to_table(index_map)
    assert table.column_names[-1] == "variance" and pa.compute.min(table.column("variance")).as_py() > 0
    fs.write_parquet(table, str(tmp_path / "m"))
    again = RandomEffectModel.from_table(fs.read_parquet_dir(str(tmp_path / "m")), index_map)
    np.testing.assert_array_equal(again.variances.intercepts, model.variances.intercepts)
    assert abs(again.variances.coef - model.variances.coef.multiply(model.coef != 0)).max() == 0
    without, _ = fit_random_effect_model(entities, x, labels, weights, offsets, config.model_copy(
        update={"variance": "none"}))
    assert without.variances is None and "variance" not in without.to_table(index_map).column_names


def test_entities_carried_over_from_a_model_without_variances_have_none_known():
    entities, x, labels, weights, offsets = _data(2)
    config = RandomEffectConfig(name="u", type="random_effect", entity="e", l2=1.0, variance="simple")
    prior, _ = fit_random_effect_model(entities, x, labels, weights, offsets, config.model_copy(
        update={"variance": "none"}))
    first = entities.codes < 10
    model, _ = fit_random_effect_model(entities.take(np.flatnonzero(first)), x[first], labels[first], weights[first],
                                       offsets[first], config)
    merged = model.carry_over(prior, pa.array([str(code) for code in range(10)]))
    assert merged.num_entities == 30 and np.isnan(merged.variances.intercepts[model.num_entities:]).all()
    assert not np.isnan(merged.variances.intercepts[:model.num_entities]).any()


def test_gdmix_train_writes_the_variance_column(synthetic_dir, tmp_path):
    from conftest import synthetic_config
    from gdmix.game import train

    raw = synthetic_config(synthetic_dir, str(tmp_path / "o"))
    raw["coordinates"][1]["variance"] = "full"
    train(validate_config(raw))
    table = fs.read_parquet_dir(str(tmp_path / "o" / "models" / "per_user"))
    assert "variance" in table.column_names and np.all(table.column("variance").to_numpy() > 0)
    assert "variance" not in fs.read_parquet_dir(str(tmp_path / "o" / "models" / "per_item")).column_names


def test_a_posterior_draw_has_the_saved_variances():
    entities, x, labels, weights, offsets = _data(3)
    config = RandomEffectConfig(name="u", type="random_effect", entity="e", l2=1.0, variance="full")
    model, _ = fit_random_effect_model(entities, x, labels, weights, offsets, config)
    rng = np.random.default_rng(0)
    draws = np.array([model.sample(rng).intercepts for _ in range(4000)])
    np.testing.assert_allclose(draws.mean(axis=0), model.intercepts, atol=4 * np.sqrt(model.variances.intercepts.max() / 4000))
    np.testing.assert_allclose(draws.var(axis=0), model.variances.intercepts, rtol=0.1)
    one, again = model.sample(np.random.default_rng(5)), model.sample(np.random.default_rng(5))
    np.testing.assert_array_equal(one.coef.toarray(), again.coef.toarray())
    assert (one.coef != model.coef).nnz > 0 and one.coef.nnz == model.coef.nnz  # stored entries only


def test_gdmix_score_with_a_posterior_draw(synthetic_dir, tmp_path, capsys):
    from conftest import synthetic_config
    from gdmix import cli
    import yaml

    raw = synthetic_config(synthetic_dir, str(tmp_path / "o"))
    raw["coordinates"][1]["variance"] = "simple"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 0
    validation = f"{synthetic_dir}/validation"
    runs = {}
    for name, extra in {"mean": [], "a": ["--posterior", "sample", "--sample-seed", "1"],
                        "b": ["--posterior", "sample", "--sample-seed", "1"],
                        "c": ["--posterior", "sample", "--sample-seed", "2"]}.items():
        assert cli.main(["score", str(tmp_path / "o"), validation, str(tmp_path / name), *extra]) == 0
        runs[name] = fs.read_parquet_dir(str(tmp_path / name))
    assert '"coordinates": [\n      "per_user"\n    ]' in capsys.readouterr().out
    np.testing.assert_array_equal(runs["a"].column("score").to_numpy(), runs["b"].column("score").to_numpy())
    assert not np.array_equal(runs["a"].column("score").to_numpy(), runs["c"].column("score").to_numpy())
    np.testing.assert_array_equal(runs["a"].column("score_per_item").to_numpy(),  # no variances: its mean
                                  runs["mean"].column("score_per_item").to_numpy())
    assert not np.array_equal(runs["a"].column("score_per_user").to_numpy(),
                              runs["mean"].column("score_per_user").to_numpy())
    raw["coordinates"][1]["variance"] = "none"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 0
    assert cli.main(["score", str(tmp_path / "o"), validation, str(tmp_path / "d"), "--posterior", "sample"]) == 1
    assert "needs a coordinate trained with variance" in capsys.readouterr().err
