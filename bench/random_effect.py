"""Random-effect throughput: vectorized batched Newton vs a GDMix-style per-entity scipy loop.

Baseline: what GDMix's random-effect consumer runs for every entity
(linkedin/gdmix ``gdmix-trainer/src/gdmix/models/custom/binary_logistic_regression.py``): a
column of ones prepended with ``scipy.sparse.hstack``, then ``scipy.optimize.fmin_l_bfgs_b``
with separate loss and gradient functions, both divided by the entity's number of rows. It runs
twice, each on the same fixed random sample of entities (``--baseline-entities``, default
10,000; 0 = all) whose rows are sliced out before the clock starts (GDMix's producer did that
in another process):

* ``gdmix_defaults``: GDMix's own settings (:data:`GDMIX_DEFAULTS`, with where each comes from);
* ``equal_accuracy``: tight settings (factr 10, pgtol 1e-10, maxiter 1000) that reach the
  optimum our solver reaches, so the comparison is at equal accuracy.

For each, the max abs coefficient difference to ours on the sample is recorded. Ours
(``fit_random_effect`` on the whole population) runs at the machine's threads and at one
thread (threadpoolctl limits on the BLAS/OpenMP pools); the baseline runs at one thread (it is
single-threaded scipy code anyway). Per-entity rates are compared per core: ours at one
thread against the baseline at one thread, and per CPU-second. Every timing is the median and
range of ``--repeats`` runs (wall and CPU seconds).

    python -m bench.random_effect [--entities 100000] [--rows-per-entity 10] [--width 50]
        [--nnz-per-row 5] [--baseline-entities 10000] [--baseline-indexing global|local]
        [--repeats 3] [--seed 0]

Full size (the defaults) on the 2-core VM: about 3 minutes (ours 2 x 3 runs of ~3-6 s; the
baseline 2 settings x 3 runs over 10,000 entities, ~10-20 s each; data generation ~10 s).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import scipy.sparse as sp
from scipy.optimize import fmin_l_bfgs_b
from scipy.special import expit

from bench import measure
from gdmix.config import RandomEffectConfig
from gdmix.models.random_effect import fit_random_effect

EPS = float(np.finfo(float).eps)
GDMIX_SOURCE = (
    "linkedin/gdmix gdmix-trainer/src/gdmix/models/custom/base_lr_params.py: lbfgs_tolerance=1e-12, "
    "num_of_lbfgs_iterations=100, num_of_lbfgs_curvature_pairs=10, regularize_bias=True; "
    "random_effect_lr_lbfgs_model.py: precision=lbfgs_tolerance/np.finfo(float).eps, REParams."
    "enable_local_indexing=False; binary_logistic_regression.py: fmin_l_bfgs_b(func=_loss, fprime=_gradient, "
    "m=corrections, factr=precision, maxiter=max_iter) without pgtol (scipy's default 1e-5), loss and gradient "
    "divided by the number of rows. (The 1e-12 tolerance is also what its MovieLens example sets.)"
)
GDMIX_DEFAULTS = {"factr": 1e-12 / EPS, "pgtol": 1e-5, "maxiter": 100, "m": 10, "source": GDMIX_SOURCE}
EQUAL_ACCURACY = {"factr": 10.0, "pgtol": 1e-10, "maxiter": 1000, "m": 10,
                  "source": "tight settings chosen so the baseline reaches the optimum our solver reaches"}


def make_problem(entities: int, rows_per_entity: int, width: int, nnz_per_row: int, seed: int):
    """Entities with Poisson-distributed row counts (at least one row each), sparse N(0,1)
    features, labels from true per-entity effects, random offsets."""
    rng = np.random.default_rng(seed)
    counts = np.maximum(rng.poisson(rows_per_entity, entities), 1)
    codes = np.repeat(np.arange(entities), counts)
    rows = len(codes)
    cols = np.argsort(rng.random((rows, width)), axis=1)[:, :nnz_per_row].ravel()
    features = sp.csr_matrix(
        (rng.normal(size=rows * nnz_per_row), (np.repeat(np.arange(rows), nnz_per_row), cols)),
        shape=(rows, width),
    )
    truth = rng.normal(scale=0.5, size=(entities, width))
    logits = np.asarray(features.multiply(truth[codes]).sum(axis=1)).ravel() + rng.normal(scale=0.5, size=entities)[codes]
    labels = (rng.random(rows) < expit(logits)).astype(float)
    offsets = rng.normal(scale=0.3, size=rows)
    return codes, features, labels, np.ones(rows), offsets


def gdmix_style_entity(x: sp.csr_matrix, y, w, o, l2: float, settings: dict = GDMIX_DEFAULTS,
                       indexing: str = "global"):
    """One entity the way GDMix's consumer trains it (see the module docstring): intercept
    penalised, objective and gradient divided by the number of rows, separate loss and gradient
    callbacks. ``indexing="global"`` (GDMix's default) solves over every column of the bag,
    ``"local"`` over the entity's own columns only. Returns (intercept, columns, coefficients)."""
    if indexing == "local":
        columns = np.unique(x.indices)
        x = x[:, columns]
    else:
        columns = np.arange(x.shape[1])
    design = sp.hstack((np.ones((x.shape[0], 1)), x))  # as GDMix's _add_column_of_ones
    n = x.shape[0]

    def loss(theta):
        z = design.dot(theta) + o
        cost = w * (np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z))))
        return (cost.sum() + 0.5 * l2 * theta.dot(theta)) / n

    def gradient(theta):
        residual = w * (expit(design.dot(theta) + o) - y)
        return (design.T.dot(residual) + l2 * theta) / n

    theta, _, _ = fmin_l_bfgs_b(loss, np.zeros(design.shape[1]), fprime=gradient, m=settings["m"],
                                factr=settings["factr"], pgtol=settings["pgtol"], maxiter=settings["maxiter"])
    return theta[0], columns, theta[1:]


def entity_slices(codes, features, labels, weights, offsets, sample):
    """The rows of each sampled entity, sliced out (GDMix's producer's work, not timed)."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    x, y, w, o = features[order], labels[order], weights[order], offsets[order]
    starts = np.searchsorted(sorted_codes, sample, side="left")
    ends = np.searchsorted(sorted_codes, sample, side="right")
    return [(x[a:b], y[a:b], w[a:b], o[a:b]) for a, b in zip(starts, ends)]


def run_baseline(slices, l2: float, settings: dict, indexing: str, repeats: int) -> tuple[list, dict]:
    """The per-entity loop over pre-sliced entities at one thread, ``repeats`` times."""
    return measure.repeat(lambda: [gdmix_style_entity(*s, l2, settings, indexing) for s in slices], repeats, threads=1)


def coefficient_difference(sample, solutions, trained, intercepts, coef) -> float:
    """Max abs difference between ours and the baseline's intercepts and coefficients on the sample."""
    positions = np.searchsorted(trained, sample)
    if not np.array_equal(trained[np.minimum(positions, len(trained) - 1)], sample):
        raise AssertionError("a sampled entity was not trained by gdmix")
    worst = 0.0
    for position, (b, columns, beta) in zip(positions, solutions):
        ours = coef[position].toarray()[0]
        worst = max(worst, abs(b - intercepts[position]), float(np.max(np.abs(ours[columns] - beta), initial=0.0)))
    return worst


def compare(entities: int, ours: dict, ours_one: dict, baseline: dict, sample_size: int) -> dict:
    """Per-entity rates and ratios (median, and the range from the extreme runs)."""
    ours_rate = measure.rate(entities, ours_one["wall_seconds"])
    base_rate = measure.rate(sample_size, baseline["wall_seconds"])
    ours_cpu_rate = measure.rate(entities, ours_one["cpu_seconds"])
    base_cpu_rate = measure.rate(sample_size, baseline["cpu_seconds"])
    ours_machine_cpu = measure.rate(entities, ours["cpu_seconds"])
    return {
        "baseline_models_per_second_1_thread": base_rate,
        "baseline_models_per_cpu_second": base_cpu_rate,
        "speedup_per_core_1_thread_wall": {
            "median": ours_rate["median"] / base_rate["median"],
            "min": ours_rate["min"] / base_rate["max"], "max": ours_rate["max"] / base_rate["min"]},
        "speedup_per_cpu_second_ours_1_thread": ours_cpu_rate["median"] / base_cpu_rate["median"],
        "speedup_per_cpu_second_ours_machine_threads": ours_machine_cpu["median"] / base_cpu_rate["median"],
        "speedup_wall_ours_machine_threads_vs_baseline_1_thread":
            measure.rate(entities, ours["wall_seconds"])["median"] / base_rate["median"],
    }


def run(entities=100_000, rows_per_entity=10, width=50, nnz_per_row=5, baseline_entities=10_000, seed=0,
        repeats=3, baseline_indexing="global") -> dict:
    codes, features, labels, weights, offsets = make_problem(entities, rows_per_entity, width, nnz_per_row, seed)
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=1.0)

    def ours_fit():
        return fit_random_effect(codes, features, labels, weights, offsets, config)

    (trained, intercepts, coef, report), ours = measure.repeat(ours_fit, repeats)
    _, ours_one = measure.repeat(ours_fit, repeats, threads=1)

    rng = np.random.default_rng(seed + 1)
    sample = np.arange(entities) if baseline_entities in (0, None) or baseline_entities >= entities else \
        np.sort(rng.choice(entities, baseline_entities, replace=False))
    slices = entity_slices(codes, features, labels, weights, offsets, sample)
    baselines = {}
    for name, settings in (("gdmix_defaults", GDMIX_DEFAULTS), ("equal_accuracy", EQUAL_ACCURACY)):
        solutions, timing = run_baseline(slices, config.l2, settings, baseline_indexing, repeats)
        baselines[name] = {
            "settings": settings, "indexing": baseline_indexing, **timing,
            "max_abs_coefficient_difference_to_ours": coefficient_difference(sample, solutions, trained, intercepts, coef),
            **compare(entities, ours, ours_one, timing, len(sample)),
        }
    return {
        "benchmark": "random_effect_throughput",
        "entities": entities,
        "rows": int(len(codes)),
        "entities_without_rows": int(entities - len(np.unique(codes))),
        "mean_rows_per_entity": float(len(codes) / entities),
        "mean_local_features": float(np.mean(np.diff(coef.indptr))),
        "l2": config.l2,
        "what_is_timed": {
            "ours": "fit_random_effect on the whole population from in-memory arrays (grouping rows by entity "
                    "included); data generation excluded",
            "baseline": "the per-entity fmin_l_bfgs_b loop over the sampled entities, their rows already sliced "
                        "out (slicing excluded); GDMix's coefficient thresholding and output writing excluded",
        },
        "ours_machine_threads": {**ours, "models_per_second": measure.rate(entities, ours["wall_seconds"]),
                                 "models_per_cpu_second": measure.rate(entities, ours["cpu_seconds"])},
        "ours_1_thread": {**ours_one, "models_per_second": measure.rate(entities, ours_one["wall_seconds"]),
                          "models_per_cpu_second": measure.rate(entities, ours_one["cpu_seconds"])},
        "baseline_entities_timed": int(len(sample)),
        "baseline_sample": f"{len(sample)} entities drawn without replacement with numpy default_rng({seed + 1})"
                           if len(sample) < entities else "all entities",
        "baseline": baselines,
        "newton_iterations_mean": report.iterations_mean,
        "unconverged_entities": report.unconverged_entities,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--rows-per-entity", type=int, default=10)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--nnz-per-row", type=int, default=5)
    parser.add_argument("--baseline-entities", type=int, default=10_000, help="0: all entities")
    parser.add_argument("--baseline-indexing", choices=("global", "local"), default="global",
                        help="GDMix's enable_local_indexing (default False, i.e. global)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.entities, args.rows_per_entity, args.width, args.nnz_per_row, args.baseline_entities,
                         args.seed, args.repeats, args.baseline_indexing), indent=2))


if __name__ == "__main__":
    main()
