"""Coefficient variances of the fixed effect (``variance: simple | full``): against the exact
Hessian at the optimum, inverted by numpy, in process and on distributed workers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp
import yaml
from scipy.special import expit

from gdmix.config import FixedEffectConfig, validate_config
from gdmix.errors import ConfigError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.losses import logistic_tf
from gdmix.models.fixed_effect import FixedEffectModel, fit_fixed_effect
from gdmix.models.linear import FIXED_EFFECT_SCHEMA

from conftest import dense_bag

TIGHT = {"gtol": 1e-13, "tol": 0.0}  # the optimum to round-off, so the Hessian there is the test's


def _data(seed: int = 0, rows: int = 300, width: int = 6):
    """Dense features, weights and offsets."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, width))
    offsets = rng.normal(scale=0.5, size=rows)
    labels = (rng.random(rows) < expit(x @ rng.normal(size=width) + 0.3 + offsets)).astype(float)
    return x, labels, rng.uniform(0.5, 2.0, rows), offsets


def _config(**kw) -> FixedEffectConfig:
    return FixedEffectConfig(name="g", type="fixed_effect", l2=0.7, optimizer=TIGHT, **kw)


def _exact(model: FixedEffectModel, x, weights, offsets, config: FixedEffectConfig) -> np.ndarray:
    """[intercept, coefficients] variances from the Hessian written out by hand."""
    design = np.hstack([np.ones((len(x), 1)), x])
    z = design @ np.concatenate([[model.intercept], model.coef]) + offsets
    s = weights * expit(z) * (1 - expit(z))
    penalty = np.full(design.shape[1], config.l2)
    penalty[0] = config.l2 if config.regularize_intercept else 0.0
    hessian = design.T @ (s[:, None] * design) + np.diag(penalty)
    return np.diag(np.linalg.inv(hessian)) if config.variance == "full" else 1.0 / np.diag(hessian)


@pytest.mark.parametrize("kind", ["simple", "full"])
@pytest.mark.parametrize("regularize_intercept, block", [(False, None), (True, None), (True, 50)])
def test_variances_equal_the_exact_hessian_s(kind, regularize_intercept, block, monkeypatch):
    """``block``: the Hessian read from the tensors in many row blocks, summed."""
    if block is not None:
        monkeypatch.setattr(logistic_tf, "HESSIAN_BLOCK_NONZEROS", block)
    x, labels, weights, offsets = _data()
    config = _config(variance=kind, regularize_intercept=regularize_intercept)
    model, report = fit_fixed_effect(sp.csr_matrix(x), labels, weights, offsets, config)
    assert report.converged
    np.testing.assert_allclose(model.variances.of_theta(), _exact(model, x, weights, offsets, config), rtol=1e-6)


def test_no_variances_by_default():
    x, labels, weights, offsets = _data(1)
    model, _ = fit_fixed_effect(sp.csr_matrix(x), labels, weights, offsets, _config())
    assert model.variances is None


def test_variances_round_trip_through_the_coefficient_table(tmp_path):
    """Every coefficient is written with its variance (an all-zero feature too: 1 / l2), and
    read back bit for bit; without variances the table is the plain three-column one."""
    x, labels, weights, offsets = _data(2)
    x = np.hstack([x, np.zeros((len(x), 1))])
    index_map = IndexMap.from_features(pa.array([f"f{i}" for i in range(7)]), pa.array([""] * 7))
    config = _config(variance="full")
    model, _ = fit_fixed_effect(sp.csr_matrix(x), labels, weights, offsets, config)
    assert model.coef[6] == 0.0 and model.variances.coef[6] == pytest.approx(1.0 / config.l2, rel=1e-12)
    table = model.to_table(index_map)
    assert table.column_names == ["name", "term", "value", "variance"] and table.num_rows == 8
    fs.write_parquet(table, str(tmp_path / "m"))
    again = FixedEffectModel.from_table(fs.read_parquet_dir(str(tmp_path / "m")), index_map)
    assert again.intercept == model.intercept and np.array_equal(again.coef, model.coef)
    assert again.variances.intercept == model.variances.intercept
    np.testing.assert_array_equal(again.variances.coef, model.variances.coef)

    wider = IndexMap.from_features(pa.array([f"f{i}" for i in range(8)]), pa.array([""] * 8))
    assert np.isnan(FixedEffectModel.from_table(table, wider).variances.coef[7])  # not in the table: unknown

    plain, _ = fit_fixed_effect(sp.csr_matrix(x), labels, weights, offsets, config.model_copy(
        update={"variance": "none"}))
    plain_table = plain.to_table(index_map)
    assert plain_table.schema == FIXED_EFFECT_SCHEMA and plain_table.num_rows == 7  # zero coefficient not stored
    assert FixedEffectModel.from_table(plain_table, index_map).variances is None


def test_full_variances_of_too_many_features_fail_before_training():
    features = sp.random(50, 4000, density=0.002, random_state=0, format="csr")
    labels = np.arange(50) % 2.0
    with pytest.raises(ConfigError, match="fixed effect 'g': variance: full .* 4,001 coefficients.*variance: simple"):
        fit_fixed_effect(features, labels, np.ones(50), np.zeros(50), _config(variance="full"))
    model, _ = fit_fixed_effect(features, labels, np.ones(50), np.zeros(50), _config(variance="simple"))
    assert np.all(model.variances.coef > 0)


def test_a_posterior_draw_has_the_saved_variances():
    x, labels, weights, offsets = _data(3)
    model, _ = fit_fixed_effect(sp.csr_matrix(x), labels, weights, offsets, _config(variance="simple"))
    rng = np.random.default_rng(0)
    draws = np.array([np.concatenate([[d.intercept], d.coef]) for d in (model.sample(rng) for _ in range(4000))])
    variances = model.variances.of_theta()
    np.testing.assert_allclose(draws.mean(axis=0), np.concatenate([[model.intercept], model.coef]),
                               atol=4 * np.sqrt(variances.max() / 4000))
    np.testing.assert_allclose(draws.var(axis=0), variances, rtol=0.1)
    one, again = model.sample(np.random.default_rng(5)), model.sample(np.random.default_rng(5))
    assert one.intercept == again.intercept and np.array_equal(one.coef, again.coef)


def test_gdmix_score_samples_the_fixed_effect(synthetic_dir, tmp_path, capsys):
    """``gdmix train`` writes the fixed effect's variances; ``--posterior sample`` draws from them."""
    from conftest import synthetic_config
    from gdmix import cli

    raw = synthetic_config(synthetic_dir, str(tmp_path / "o"))
    raw["coordinates"] = raw["coordinates"][:2]
    raw["coordinates"][0]["variance"] = "simple"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    assert cli.main(["train", str(tmp_path / "c.yaml")]) == 0
    table = fs.read_parquet_dir(str(tmp_path / "o" / "models" / "global"))
    assert np.all(table.column("variance").to_numpy() > 0)
    runs = {}
    for name, extra in {"mean": [], "a": ["--posterior", "sample", "--sample-seed", "1"],
                        "b": ["--posterior", "sample", "--sample-seed", "1"]}.items():
        assert cli.main(["score", str(tmp_path / "o"), f"{synthetic_dir}/validation", str(tmp_path / name),
                         *extra]) == 0
        runs[name] = fs.read_parquet_dir(str(tmp_path / name))
    assert '"coordinates": [\n      "global"\n    ]' in capsys.readouterr().out
    np.testing.assert_array_equal(runs["a"].column("score").to_numpy(), runs["b"].column("score").to_numpy())
    sampled, mean = (runs[name].column("score_global").to_numpy() for name in ("a", "mean"))
    assert not np.array_equal(sampled, mean)
    np.testing.assert_array_equal(runs["a"].column("score_per_user").to_numpy(),  # no variances: its mean
                                  runs["mean"].column("score_per_user").to_numpy())


def _write_dataset(root: Path) -> str:
    x, labels, weights, offsets = _data(4, rows=600)
    root.mkdir(parents=True)
    table = pa.table({"uid": pa.array(np.arange(600), pa.int64()), "label": pa.array(labels),
                      "weight": pa.array(weights), "offset": pa.array(offsets), "global": dense_bag(x)})
    pq.write_table(table, root / "part-00000.parquet", row_group_size=200)
    return str(root)


def _job_variances(tmp: Path, train: str, workers: int) -> np.ndarray:
    """``gdmix fixed-effect --workers N``'s variances, ordered by (name, term)."""
    config = {"data": {"train": train}, "output": "unused",
              "coordinates": [{"name": "global", "type": "fixed_effect", "feature_bag": "global", "l2": 0.7,
                               "variance": "full", "optimizer": TIGHT}]}
    validate_config(config)
    path, output = tmp / f"config-{workers}.yaml", tmp / f"out-{workers}"
    path.write_text(yaml.safe_dump(config))
    command = [sys.executable, "-m", "gdmix", "fixed-effect", str(path), "--coordinate", "global",
               "--output", str(output), "--workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert done.returncode == 0, done.stderr[-3000:]
    table = fs.read_parquet_dir(str(output / "models" / "global")).sort_by([("name", "ascending"),
                                                                            ("term", "ascending")])
    return table.column("variance").to_numpy()


def test_distributed_workers_match_one_worker(tmp_path):
    train = _write_dataset(tmp_path / "train")
    one, two = _job_variances(tmp_path, train, 1), _job_variances(tmp_path, train, 2)
    assert len(one) == 7 and np.all(one > 0)
    np.testing.assert_allclose(two, one, rtol=1e-8, atol=0)
