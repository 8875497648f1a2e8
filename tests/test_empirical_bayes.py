"""``l2: auto``: a random effect's ridge learned as the prior precision that maximises the
Laplace approximation of the marginal likelihood (issue 12)."""

from __future__ import annotations

import gc
import weakref

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
from gdmix.models.empirical_bayes import (
    L2_SEARCH_BOUNDS, L2_SEARCH_XTOL, estimate_l2, estimate_l2_per_group, initial_ridges,
)
from gdmix.models.random_effect import (
    _Solution, entity_problems, fit_random_effect, fit_random_effect_model, initial_solution,
)


def _grouped(entities: int, rows, sigma: float, q: int, seed: int, density: float = 1.0,
             intercept_sigma: float | None = None):
    """Binary rows of ``entities`` groups whose coefficients (intercept too, unless
    ``intercept_sigma`` is its own) are N(0, sigma^2)."""
    rng = np.random.default_rng(seed)
    counts = np.full(entities, rows) if np.isscalar(rows) else rng.integers(rows[0], rows[1] + 1, entities)
    codes = np.repeat(np.arange(entities), counts)
    x = rng.normal(size=(len(codes), q)) * (rng.random((len(codes), q)) < density)
    scale = sigma if intercept_sigma is None else np.r_[intercept_sigma, np.full(q, sigma)]
    coefficients = rng.normal(scale=scale, size=(entities, q + 1))
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


def _oracle_log_evidence(codes, x, labels, weights, offsets, l2: float, intercept_prior: bool,
                         intercept_l2: float | None = None) -> float:
    """The Laplace log evidence summed over entities, each optimised by scipy on its own rows
    and its Hessian built densely: ``-f* + d/2 log l2 - 1/2 log det H`` (a flat intercept prior
    when ``intercept_prior`` is False, the intercept's ridge ``intercept_l2`` where given;
    constants dropped)."""
    total = 0.0
    for entity in np.unique(codes):
        rows = codes == entity
        design = np.hstack([np.ones((rows.sum(), 1)), x[rows].toarray()])
        y, w, o = labels[rows], weights[rows], offsets[rows]
        penalty = np.full(design.shape[1], l2)
        if intercept_l2 is not None:
            penalty[0] = intercept_l2
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


@pytest.mark.parametrize("rows, settings", [
    ((2, 9), {}),  # batches, primal and row space (fewer rows than features), intercept under the prior
    ((2, 9), {"regularize_intercept": False}),  # flat intercept; one-label entities' intercept ridge is l2
    ((2, 9), {"regularize_intercept": False, "one_label_intercept_l2": 2.0}),  # ... or a fixed ridge
    (1, {}),  # single rows, in closed form
    (1, {"regularize_intercept": False}),
    ((1, 9), {"solver": {"max_dense_features": 2}}),  # larger entities on the sparse path
])
def test_the_evidence_slope_matches_finite_differences(rows, settings):
    """``log_evidence_slope`` (exact: through the optimum's move) against central differences of
    ``log_evidence`` in log l2, on every path an entity can take."""
    codes, x, labels, weights, offsets = _grouped(60, rows, 1.0, q=4, seed=11, density=0.6)
    config = _config(**({"solver": {"tol": 1e-12}} | settings))
    problem = entity_problems(codes, x, labels, weights, offsets, config)
    start = initial_solution(problem, None)
    h = 1e-3
    for l2 in (0.3, 3.0):
        at = problem.solve(l2, start, evidence=True)
        ahead, behind = (problem.solve(l2 * np.exp(sign * h), at, evidence=True) for sign in (1, -1))
        assert at.log_evidence_slope == pytest.approx((ahead.log_evidence - behind.log_evidence) / (2 * h),
                                                      rel=1e-4, abs=1e-4)
        assert abs(at.log_evidence_slope) > 0.1


def test_the_evidence_fields_are_the_search_s_inputs():
    assert _Solution.EVIDENCE_FIELDS == ("log_evidence", "log_evidence_slope", "log_evidence_intercept_slope")


class _Stub:
    """What a solve returns, as far as the search looks (hashable, so its liveness can be tracked)."""

    def __init__(self, l2, log_evidence, log_evidence_slope):
        self.l2, self.log_evidence, self.log_evidence_slope, self.evaluations = l2, log_evidence, log_evidence_slope, 0


class _Curve:
    """A stand-in problem whose evidence is a known function of log l2: it counts the solves and
    the most solutions alive when one starts."""

    def __init__(self, evidence, slope):
        self.evidence, self.slope, self.calls, self.most_alive = evidence, slope, 0, 0
        self.alive = weakref.WeakSet()

    def solve(self, l2, start, progress=None, evidence=False):
        assert evidence and start is not None
        gc.collect()
        self.most_alive = max(self.most_alive, len(self.alive))
        self.calls += 1
        x = float(np.log(l2))
        solution = _Stub(l2, self.evidence(x), self.slope(x))
        self.alive.add(solution)
        return solution


def _concave(peak: float, scale: float = 1000.0) -> _Curve:
    """A smooth, lopsided, concave evidence with its maximum at ``peak``."""
    shift = np.arctanh(0.3) - peak
    return _Curve(lambda x: -scale * (np.log(np.cosh(x + shift)) - 0.3 * (x + shift)),
                  lambda x: -scale * (np.tanh(x + shift) - 0.3))


@pytest.mark.parametrize("peak", [0.55, -0.3, 3.2, -7.9, 12.5])
@pytest.mark.parametrize("warm", [False, True])
def test_the_search_lands_within_its_tolerance_and_counts_its_solves(peak, warm):
    curve = _concave(peak)
    initial = np.exp(peak + 0.2) if warm else 1.0
    solution = estimate_l2(curve, initial, _Stub(initial if warm else None, 0.0, 0.0))
    assert abs(np.log(solution.l2) - peak) <= L2_SEARCH_XTOL
    assert solution.evaluations == curve.calls
    assert curve.most_alive <= 2  # the best so far and the next start (the third is being computed)


def test_the_search_needs_three_solves_cold_and_two_warm_near_the_optimum():
    """Exact slopes: two points bracket the maximiser, a third lands on it; a warm pass that
    starts there needs one probe."""
    curve = _concave(0.55)
    cold = estimate_l2(curve, 1.0, _Stub(None, 0.0, 0.0))
    assert cold.evaluations == 3
    curve = _concave(0.55)
    previous = np.exp(0.55 + L2_SEARCH_XTOL / 4)  # the last pass's estimate, within the tolerance
    warm = estimate_l2(curve, previous, _Stub(previous, 0.0, 0.0))
    assert warm.evaluations == 2 and warm.l2 == previous


@pytest.mark.parametrize("direction", [1, -1])
def test_the_search_stops_at_its_bound_when_the_evidence_keeps_growing(direction):
    curve = _Curve(lambda x: direction * x - 0.01 * x * x, lambda x: direction - 0.02 * x)
    solution = estimate_l2(curve, 1.0, _Stub(None, 0.0, 0.0))
    assert np.log(solution.l2) == pytest.approx(L2_SEARCH_BOUNDS[direction > 0])
    assert solution.evaluations == curve.calls


@pytest.mark.parametrize("ripple_at", [-5.6, -5.3, -2.5])
def test_a_ripple_on_a_rising_evidence_does_not_stop_the_search(ripple_at):
    """A local maximum 0.3 nat high (as tiny groups with a flat intercept prior give, see
    test_an_optimum_at_the_search_bound_is_reported) is stepped over, to the bound."""

    def bump(x):
        return 0.3 * np.exp(-(x - ripple_at) ** 2 / 0.08)

    curve = _Curve(lambda x: -0.5 * x + bump(x), lambda x: -0.5 - (x - ripple_at) / 0.04 * bump(x))
    solution = estimate_l2(curve, 1.0, _Stub(None, 0.0, 0.0))
    assert np.log(solution.l2) == pytest.approx(L2_SEARCH_BOUNDS[0])


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


# --- l2: {auto: true, per_group: true}: a prior variance for the intercept and one for the coefficients


def _per_group(**settings) -> RandomEffectConfig:
    return _config(**({"l2": {"auto": True, "per_group": True}} | settings))


def test_per_group_recovers_the_intercept_and_the_coefficients_prior_deviations():
    """sigma0 = 1.5 (intercept), sigma1 = 0.4 (slopes), 2,000 entities x 20 rows. With 20 binary
    rows for two slopes this small the Laplace evidence puts sigma1 about 5 % low on average over
    seeds (0.36-0.40; unbiased at 60 rows); the intercept's is within 2 %."""
    codes, x, labels, weights, offsets = _grouped(2000, 20, 0.4, q=2, seed=7, intercept_sigma=1.5)
    *_, report = fit_random_effect(codes, x, labels, weights, offsets, _per_group())
    assert report.intercept_l2 ** -0.5 == pytest.approx(1.5, rel=0.10)
    assert report.l2 ** -0.5 == pytest.approx(0.4, rel=0.10)
    assert report.intercept_prior_variance == pytest.approx(1.0 / report.intercept_l2)
    assert report.prior_variance == pytest.approx(1.0 / report.l2)
    assert report.unconverged_entities == 0 and not report.l2_at_search_bound
    *_, shared = fit_random_effect(codes, x, labels, weights, offsets, _config())
    assert report.log_evidence > shared.log_evidence  # two variances explain these data better than one
    assert shared.intercept_l2 is None


@pytest.mark.parametrize("rows, q, density, max_dense_features", [
    ((3, 15), 2, 1.0, 512),  # batches (primal and row space)
    ((1, 12), 3, 0.6, 2),  # single rows in closed form, and larger entities on the sparse path
])
def test_per_group_is_the_laplace_optimum_found_by_brute_force(rows, q, density, max_dense_features):
    """The search's (l2, intercept_l2) against the independent oracle's evidence on a 2-D grid:
    a coarse grid (step 0.5 in both log ridges) finds nothing better, and on a fine one (step
    0.05) around the estimate the maximum is the estimate itself."""
    codes, x, labels, weights, offsets = _grouped(60, rows, 0.5 + 0.1 * (q - 2), q=q, seed=q + 1, density=density,
                                                  intercept_sigma=1.5)
    config = _per_group(solver={"max_dense_features": max_dense_features})
    *_, report = fit_random_effect(codes, x, labels, weights, offsets, config)
    assert (report.sparse_entities > 0) == (max_dense_features == 2)

    def grid(step: float) -> np.ndarray:
        shifts = np.exp(step * np.arange(-2, 3))
        return np.array([[_oracle_log_evidence(codes, x, labels, weights, offsets, report.l2 * a, True,
                                               report.intercept_l2 * b) for b in shifts] for a in shifts])

    assert grid(0.5).max() <= report.log_evidence + 1e-6
    fine = grid(0.05)
    assert np.unravel_index(fine.argmax(), fine.shape) == (2, 2)
    assert report.log_evidence == pytest.approx(fine[2, 2], abs=1e-6)


@pytest.mark.parametrize("rows, settings", [
    ((2, 9), {}),  # batches, primal and row space
    (1, {}),  # single rows, in closed form
    ((1, 9), {"solver": {"max_dense_features": 2}}),  # larger entities on the sparse path
])
def test_the_per_group_slopes_match_finite_differences(rows, settings):
    """With a separate intercept ridge, ``log_evidence_slope`` is the slope in log l2 alone and
    ``log_evidence_intercept_slope`` in log intercept_l2 alone; at intercept_l2 = l2 they add up to
    the shared slope, and the evidence is the shared one."""
    codes, x, labels, weights, offsets = _grouped(60, rows, 1.0, q=4, seed=11, density=0.6)
    config = _per_group(**({"solver": {"tol": 1e-12}} | settings))
    problem = entity_problems(codes, x, labels, weights, offsets, config)
    start = initial_solution(problem, None)
    h = 1e-3
    for l2, intercept_l2 in ((0.3, 8.0), (3.0, 0.2)):
        at = problem.solve(l2, start, evidence=True, intercept_l2=intercept_l2)
        ahead, behind = (problem.solve(l2 * np.exp(sign * h), at, evidence=True, intercept_l2=intercept_l2)
                         for sign in (1, -1))
        assert at.log_evidence_slope == pytest.approx((ahead.log_evidence - behind.log_evidence) / (2 * h),
                                                      rel=1e-4, abs=1e-4)
        ahead, behind = (problem.solve(l2, at, evidence=True, intercept_l2=intercept_l2 * np.exp(sign * h))
                         for sign in (1, -1))
        assert at.log_evidence_intercept_slope == pytest.approx(
            (ahead.log_evidence - behind.log_evidence) / (2 * h), rel=1e-4, abs=1e-4)
        assert abs(at.log_evidence_intercept_slope) > 0.01
    shared, apart = (problem.solve(1.3, start, evidence=True, intercept_l2=value) for value in (None, 1.3))
    assert apart.log_evidence == pytest.approx(shared.log_evidence, rel=1e-12)
    assert apart.log_evidence_slope + apart.log_evidence_intercept_slope == pytest.approx(shared.log_evidence_slope,
                                                                                          rel=1e-10)
    assert shared.log_evidence_intercept_slope == 0.0


def test_per_group_needs_a_penalised_intercept():
    assert _per_group().l2_auto.per_group and not _config().l2_auto.per_group
    with pytest.raises(ValueError, match="'per_user'.*per_group.*regularize_intercept is false"):
        _per_group(regularize_intercept=False)
    raw = {"data": {"train": "/d"}, "output": "/o", "coordinates": [
        {"name": "u", "type": "random_effect", "entity": "user", "l2": {"auto": True, "per_group": True},
         "regularize_intercept": False}]}
    with pytest.raises(ConfigError, match="coordinate 'u'"):
        validate_config(raw)


def test_a_later_per_group_pass_starts_from_both_estimates(tmp_path):
    """The warm pass starts at the last (intercept_l2, l2) and needs fewer solves; both travel
    with the saved model; a fixed-l2 fit at the learned ridges (what a partition trains) is the
    search's solution."""
    codes, x, labels, weights, offsets = _grouped(500, 12, 0.5, q=2, seed=5, intercept_sigma=1.5)
    data = Dataset(uid=np.arange(len(codes)), label=labels, weight=weights, offset=np.zeros(len(codes)),
                   entities={"user": EntityIds.from_array(pa.array(codes))}, bags={"per_user": x})
    coordinate = make_coordinate(_per_group(feature_bag="per_user"))
    first, cold = coordinate.fit(data, offsets)
    second, warm = coordinate.fit(data, offsets, first)
    assert first.intercept_l2 == cold["intercept_l2"] and first.l2 == cold["l2"]
    assert warm["intercept_l2"] == pytest.approx(cold["intercept_l2"], rel=0.02)
    assert warm["l2"] == pytest.approx(cold["l2"], rel=0.02)
    assert warm["l2_evaluations"] < cold["l2_evaluations"]
    index_map = IndexMap.from_features(pa.array([f"f{i}" for i in range(x.shape[1])]), pa.array([""] * x.shape[1]))
    coordinate.save(second, str(tmp_path / "model"), index_map)
    loaded = coordinate.load(str(tmp_path / "model"), index_map)
    assert (loaded.l2, loaded.intercept_l2) == (second.l2, second.intercept_l2)

    fixed = _config(feature_bag="per_user", l2=cold["l2"], solver={"tol": 1e-12})
    model, report = fit_random_effect_model(data.entities["user"], x, labels, weights, offsets, fixed,
                                            intercept_l2=cold["intercept_l2"])
    np.testing.assert_allclose(model.intercepts, first.intercepts, atol=1e-6)
    assert "intercept_l2" not in report.as_dict()  # a fixed l2: nothing learned


class _Surface:
    """A stand-in problem whose evidence is a known function of (log l2, log intercept_l2)."""

    def __init__(self, peak, coupling: float, scales=(1000.0, 100.0)):
        self.peak, self.calls, self.most_alive = np.asarray(peak, dtype=float), 0, 0
        self.mixing, self.scales = np.array([[1.0, coupling], [coupling, 1.0]]), np.asarray(scales)
        self.alive = weakref.WeakSet()

    def _u(self, x):
        return self.mixing @ (x - self.peak) + np.arctanh(0.3)

    def evidence(self, x) -> float:  # lopsided and concave: linear far on one side, flat on the other
        u = self._u(x)
        return float(-np.sum(self.scales * (np.log(np.cosh(u)) - 0.3 * u)))

    def gradient(self, x) -> np.ndarray:
        return -self.mixing.T @ (self.scales * (np.tanh(self._u(x)) - 0.3))

    def solve(self, l2, start, progress=None, evidence=False, intercept_l2=None):
        assert evidence and start is not None and intercept_l2 is not None
        gc.collect()
        self.most_alive = max(self.most_alive, len(self.alive))
        self.calls += 1
        x = np.log([l2, intercept_l2])
        solution = _Stub(l2, self.evidence(x), self.gradient(x)[0])
        solution.log_evidence_intercept_slope, solution.intercept_l2 = self.gradient(x)[1], intercept_l2
        self.alive.add(solution)
        return solution

    def maximiser(self) -> np.ndarray:
        """The maximiser within the search's range, by scipy."""
        return minimize(lambda x: (-self.evidence(x), -self.gradient(x)), np.zeros(2), jac=True, method="L-BFGS-B",
                        bounds=[L2_SEARCH_BOUNDS] * 2, options={"ftol": 1e-15, "gtol": 1e-10}).x


@pytest.mark.parametrize("peak", [(0.5, -0.8), (1.8, -0.8), (-3.0, 4.0), (8.0, -9.0), (-20.0, 1.0), (20.0, 20.0)])
@pytest.mark.parametrize("coupling", [0.0, 0.5, -0.8])
@pytest.mark.parametrize("warm", [False, True])
def test_the_per_group_search_lands_within_its_tolerance(peak, coupling, warm):
    """Interior optima, optima on the edge of the range in one or both ridges, curvatures 10x
    apart and strongly coupled ridges; every solve warm-started from at most two kept solutions.
    Near the start (as the evidence's optimum usually is) a cold search takes about 7-11 solves
    and a warm one 4-6; an optimum many units away on this surface's linear flank, more."""
    surface = _Surface(peak, coupling)
    truth = surface.maximiser()
    if warm:
        l2, intercept_l2 = np.exp(truth + [0.1, -0.15])
        solution = estimate_l2_per_group(surface, l2, intercept_l2, _Stub(l2, 0.0, 0.0))
    else:
        solution = estimate_l2_per_group(surface, 1.0, 1.0, _Stub(None, 0.0, 0.0))
    assert np.abs(np.log([solution.l2, solution.intercept_l2]) - truth).max() <= L2_SEARCH_XTOL
    assert solution.evaluations == surface.calls
    if max(abs(truth)) < 2:
        assert solution.evaluations <= (6 if warm else 12)
    assert surface.most_alive <= 2


def test_the_per_group_search_starts_from_the_last_estimates():
    assert initial_ridges(1.0, None, None) == (1.0, 1.0)
    assert initial_ridges(1.0, 3.0, None) == (3.0, 3.0)  # a pass without per_group: the shared l2 for both
    assert initial_ridges(1.0, 3.0, 0.5) == (3.0, 0.5)


def test_the_summary_shows_both_learned_ridges():
    from rich.console import Console

    from gdmix.console import summary_table

    solver = {"entities_trained": 3, "l2": 4.0, "prior_variance": 0.25, "intercept_l2": 0.5,
              "intercept_prior_variance": 2.0}
    console = Console(record=True, width=300)
    console.print(summary_table([{"name": "per_user", "type": "random_effect", "pass": 1, "solver": solver}]))
    assert "learned l2 4 (prior variance 0.25), intercept l2 0.5 (prior variance 2)" in console.export_text()
