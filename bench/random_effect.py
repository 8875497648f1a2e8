"""Random-effect throughput: vectorized batched Newton vs a GDMix-style per-entity scipy loop.

The baseline is what GDMix ran for every entity: local indexing of the entity's features, then
``scipy.optimize.fmin_l_bfgs_b`` on the summed, L2-penalised log loss (tight tolerances so both
sides reach the same optimum). It is timed on a random sample of entities (all of them with
``--baseline-entities 0``) and its per-entity rate is compared with ours on the whole
population; solutions on the sample must agree to 1e-5.

    python -m bench.random_effect [--entities 100000] [--rows-per-entity 10] [--baseline-entities 3000]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import scipy.sparse as sp
from scipy.optimize import fmin_l_bfgs_b
from scipy.special import expit

from gdmix.config import RandomEffectConfig
from gdmix.models.random_effect import fit_random_effect


def make_problem(entities: int, rows_per_entity: int, width: int, nnz_per_row: int, seed: int):
    """Entities with Poisson-distributed row counts, sparse N(0,1) features, true effects."""
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


def gdmix_style_entity(x: sp.csr_matrix, y, w, o, l2: float):
    """One entity the GDMix way: local indexing, then fmin_l_bfgs_b (intercept penalised too)."""
    local = np.unique(x.indices)
    design = sp.hstack([sp.csr_matrix(np.ones((x.shape[0], 1))), x[:, local]], format="csr")

    def objective(theta):
        z = design @ theta + o
        residual = w * (expit(z) - y)
        value = np.sum(w * (np.logaddexp(0, z) - y * z)) + 0.5 * l2 * theta @ theta
        return value, design.T @ residual + l2 * theta

    theta, _, _ = fmin_l_bfgs_b(objective, np.zeros(design.shape[1]), m=10, factr=10, pgtol=1e-10, maxiter=1000)
    return theta[0], local, theta[1:]


def run(entities=100_000, rows_per_entity=10, width=50, nnz_per_row=5, baseline_entities=3000, seed=0) -> dict:
    codes, features, labels, weights, offsets = make_problem(entities, rows_per_entity, width, nnz_per_row, seed)
    config = RandomEffectConfig(name="re", type="random_effect", entity="e", l2=1.0)

    tic = time.perf_counter()
    trained, intercepts, coef, report = fit_random_effect(codes, features, labels, weights, offsets, config)
    ours = time.perf_counter() - tic

    rng = np.random.default_rng(seed + 1)
    sample = np.arange(entities) if baseline_entities in (0, None) or baseline_entities >= entities else \
        np.sort(rng.choice(entities, baseline_entities, replace=False))
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(entities + 1))
    sorted_x, sorted_y, sorted_w, sorted_o = features[order], labels[order], weights[order], offsets[order]
    max_error = 0.0
    tic = time.perf_counter()
    solutions = []
    for e in sample:
        rows = slice(starts[e], starts[e + 1])
        solutions.append(gdmix_style_entity(sorted_x[rows], sorted_y[rows], sorted_w[rows], sorted_o[rows], 1.0))
    baseline = time.perf_counter() - tic
    for e, (b, local, beta) in zip(sample, solutions):
        max_error = max(max_error, abs(b - intercepts[e]), float(np.max(np.abs(coef[e].toarray()[0, local] - beta), initial=0)))

    ours_rate = entities / ours
    baseline_rate = len(sample) / baseline
    return {
        "benchmark": "random_effect_throughput",
        "entities": entities,
        "rows": int(len(codes)),
        "mean_rows_per_entity": float(len(codes) / entities),
        "mean_local_features": float(np.mean(np.diff(coef.indptr))),
        "ours_seconds": ours,
        "ours_models_per_second": ours_rate,
        "baseline_entities_timed": int(len(sample)),
        "baseline_seconds": baseline,
        "baseline_models_per_second": baseline_rate,
        "baseline_seconds_extrapolated_to_all": entities / baseline_rate,
        "speedup": ours_rate / baseline_rate,
        "max_abs_coefficient_difference": max_error,
        "newton_iterations_mean": report.iterations_mean,
        "unconverged_entities": report.unconverged_entities,
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--rows-per-entity", type=int, default=10)
    parser.add_argument("--width", type=int, default=50)
    parser.add_argument("--nnz-per-row", type=int, default=5)
    parser.add_argument("--baseline-entities", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.entities, args.rows_per_entity, args.width, args.nnz_per_row,
                         args.baseline_entities, args.seed), indent=2))


if __name__ == "__main__":
    main()
