"""``l2: auto``: a random effect's ridge learned as the prior precision that maximises the
Laplace approximation of the marginal likelihood (issue 12)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import scipy.sparse as sp
from scipy.optimize import minimize
from scipy.special import expit

from gdmix.config import RandomEffectConfig, validate_config
from gdmix.dataset import Dataset, EntityIds
from gdmix.errors import ConfigError
from gdmix.features.index_map import IndexMap
from gdmix.models.coordinates import make_coordinate
from gdmix.models.random_effect import fit_random_effect


def _grouped(entities: int, rows, sigma: float, q: int, seed: int, density: float = 1.0):
    """Binary rows of ``entities`` groups whose coefficients (intercept too) are N(0, sigma^2)."""
    rng = np.random.default_rng(seed)
    counts = np.full(entities, rows) if np.isscalar(rows) else rng.integers(rows[0], rows[1] + 1, entities)
    codes = np.repeat(np.arange(entities), counts)
    x = rng.normal(size=(len(codes), q)) * (rng.random((len(codes), q)) < density)
    coefficients = rng.normal(scale=sigma, size=(entities, q + 1))
    z = coefficients[codes, 0] + np.einsum("nq,nq->n", x, coefficients[codes, 1:])
    labels = (rng.random(len(codes)) < expit(z)).astype(float)
    return codes, sp.csr_matrix(x), labels, np.ones(len(codes)), rng.normal(scale=0.3, size=len(codes))


def _config(**settings) -> RandomEffectConfig:
    return RandomEffectConfig(name="per_user", type="random_effect", entity="user", **({"l2": "auto"} | settings))


@pytest.mark.parametrize("sigma", [0.5, 1.5])
def test_the_estimated_prior_deviation_is_within_ten_percent_of_the_truth(sigma):
    codes, x, labels, weights, offsets = _grouped(2000, 20, sigma, q=2, seed=7)
    *_, report = fit_random_effect(codes, x, labels, weights, offsets, _config())
    assert report.prior_variance == pytest.approx(1.0 / report.l2)
    assert report.l2 ** -0.5 == pytest.approx(sigma, rel=0.10)
    assert report.unconverged_entities == 0


def _oracle_log_evidence(codes, x, labels, weights, offsets, l2: float, intercept_prior: bool) -> float:
    """The Laplace log evidence summed over entities, each optimised by scipy on its own rows
    and its Hessian built densely: ``-f* + d/2 log l2 - 1/2 log det H`` (a flat intercept prior
    when ``intercept_prior`` is False; constants dropped)."""
    total = 0.0
    for entity in np.unique(codes):
        rows = codes == entity
        design = np.hstack([np.ones((rows.sum(), 1)), x[rows].toarray()])
        y, w, o = labels[rows], weights[rows], offsets[rows]
        penalty = np.full(design.shape[1], l2)
        if not intercept_prior:
            penalty[0] = 0.0 if 0 < y.mean() < 1 else l2  # a one-label entity keeps a ridge (as the solver does)

        def objective(theta):
            z = design @ theta + o
            value = np.sum(w * (np.logaddexp(0, z) - y * z)) + 0.5 * np.sum(penalty * theta * theta)
            return value, design.T @ (w * (expit(z) - y)) + penalty * theta

        theta = minimize(objective, np.zeros(design.shape[1]), jac=True, method="BFGS",
                         options={"gtol": 1e-10, "maxiter": 10_000}).x
        z = design @ theta + o
        s = w * expit(z) * (1 - expit(z))
        hessian = design.T @ (s[:, None] * design) + np.diag(penalty)
        prior = 0.5 * np.sum(np.log(penalty[penalty > 0]))
        total += -objective(theta)[0] + prior - 0.5 * np.linalg.slogdet(hessian)[1]
    return total


@pytest.mark.parametrize("intercept_prior, max_dense_features, rows", [(True, 512, (1, 9)), (False, 512, (5, 15)),
                                                                      (True, 2, (1, 9))])
def test_the_estimate_is_the_laplace_optimum_found_by_brute_force(intercept_prior, max_dense_features, rows):
    """Groups of 1 to 9 rows (single-row entities take the closed form), sparse features (local
    subspaces); ``max_dense_features=2`` sends the larger entities down the L-BFGS path. With a
    flat intercept prior, groups this small put the optimum at l2 -> 0 (see
    test_an_optimum_at_the_search_bound_is_reported), so that case has 5 to 15 rows."""
    codes, x, labels, weights, offsets = _grouped(40, rows, 1.0, q=4, seed=3, density=0.6)
    config = _config(regularize_intercept=intercept_prior, solver={"max_dense_features": max_dense_features})
    *_, report = fit_random_effect(codes, x, labels, weights, offsets, config)
    def brute_force(grid):
        evidence = [_oracle_log_evidence(codes, x, labels, weights, offsets, np.exp(g), intercept_prior) for g in grid]
        best = int(np.argmax(evidence))
        assert 0 < best < len(grid) - 1, "the oracle's optimum must lie inside its grid"
        return grid[best], evidence

    coarse, _ = brute_force(np.arange(np.log(0.05), np.log(20.0), 0.25))
    step = 0.05
    best, evidence = brute_force(np.arange(coarse - 0.5, coarse + 0.5 + step / 2, step))
    assert abs(np.log(report.l2) - best) <= step
    assert report.log_evidence == pytest.approx(max(evidence), abs=0.05)


def test_an_optimum_at_the_search_bound_is_reported():
    """Tiny groups with a flat intercept prior: the evidence keeps growing as l2 -> 0."""
    codes, x, labels, weights, offsets = _grouped(40, (1, 9), 1.0, q=4, seed=3, density=0.6)
    *_, report = fit_random_effect(codes, x, labels, weights, offsets, _config(regularize_intercept=False))
    assert report.l2_at_search_bound
    *_, report = fit_random_effect(codes, x, labels, weights, offsets, _config())
    assert not report.l2_at_search_bound


def test_a_later_pass_starts_from_the_last_estimate(tmp_path):
    codes, x, labels, weights, offsets = _grouped(500, 12, 1.0, q=2, seed=5)
    data = Dataset(uid=np.arange(len(codes)), label=labels, weight=weights, offset=np.zeros(len(codes)),
                   entities={"user": EntityIds.from_array(pa.array(codes))}, bags={"per_user": x})
    coordinate = make_coordinate(_config(feature_bag="per_user"))
    first, cold = coordinate.fit(data, offsets)
    second, warm = coordinate.fit(data, offsets, first)
    assert warm["l2"] == pytest.approx(cold["l2"], rel=0.02)
    assert warm["l2_evaluations"] < cold["l2_evaluations"]
    # the estimate travels with the saved model, so a warm start from disk resumes there too
    index_map = IndexMap.from_features(pa.array([f"f{i}" for i in range(x.shape[1])]), pa.array([""] * x.shape[1]))
    coordinate.save(second, str(tmp_path / "model"), index_map)
    assert coordinate.load(str(tmp_path / "model"), index_map).l2 == second.l2

def test_l2_auto_in_the_configuration():
    assert _config().l2_auto.init == 1.0
    assert _config(l2={"auto": True, "init": 3}).l2_auto.init == 3.0
    assert _config(l2=2.5).l2_auto is None
    with pytest.raises(ValueError, match="l2 must be positive"):
        _config(l2=0)
    raw = {"data": {"train": "/d"}, "output": "/o",
           "coordinates": [{"name": "u", "type": "random_effect", "entity": "user", "l2": "auto"}]}
    assert validate_config(raw).coordinates[0].l2_auto is not None
    with pytest.raises(ConfigError):
        validate_config(raw | {"coordinates": [raw["coordinates"][0] | {"l2": {"auto": True, "typo": 1}}]})


def test_partitioned_training_and_the_pipeline_refuse_a_learned_l2_with_a_clear_error(synthetic_dir, tmp_path):
    import yaml

    from conftest import synthetic_config
    from gdmix.stages.context import run_config

    raw = synthetic_config(synthetic_dir, str(tmp_path / "o"))
    raw["coordinates"][1]["l2"] = "auto"
    with pytest.raises(ConfigError, match="per_user.*l2: auto is supported by 'gdmix train'"):
        run_config(yaml.safe_dump(raw))


def test_gdmix_train_reports_the_learned_l2_per_pass(synthetic_dir, tmp_path):
    from conftest import synthetic_config
    from gdmix.game import train

    raw = synthetic_config(synthetic_dir, str(tmp_path / "o"), passes=2)
    raw["coordinates"][1]["l2"] = "auto"
    result = train(validate_config(raw))
    learned = [c["solver"]["l2"] for c in result.coordinates if c["name"] == "per_user"]
    assert len(learned) == 2 and all(value > 0 for value in learned)
    assert "l2" not in result.coordinates[2]["solver"]  # per_item keeps its fixed l2
    from rich.console import Console

    from gdmix.console import summary_table

    console = Console(record=True, width=300)
    console.print(summary_table(result.coordinates))
    shown = console.export_text()
    assert shown.count("learned l2") == 2 and f"{learned[-1]:.4g}" in shown
