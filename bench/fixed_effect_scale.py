"""Fixed effect at scale: time to sklearn's optimum, per-evaluation throughput, 1 vs 2 workers.

Synthetic sparse data (default 2M rows x 100k features x 30 non-zeros per row, N(0,1) values,
labels from a true model), generated in memory from a seed, so workers build their shard without
I/O and the benchmark measures training alone. In one run:

* a reference optimum (our solver to round-off), then sklearn
  ``LogisticRegression(solver="lbfgs")`` on the same objective with its iterates' objective
  recorded (a callback added to the scipy call it makes), and gdmix's fixed effect with one
  worker; for each, the time at which the relative objective gap to the reference first falls
  to 1e-6;
* seconds per evaluation, non-zeros per second, and the share of this machine's memory read
  bandwidth (measured here) an evaluation uses;
* the same fit on 2 local worker processes (TF collective all-reduce), 1 thread each, against
  1 worker with 2 threads.

    python -m bench.fixed_effect_scale [--rows 2000000] [--features 100000] [--nnz 30]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

L2 = 1.0
GAP = 1e-6


def make_data(rows: int, features: int, nnz: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    cols = rng.integers(0, features, size=(rows, nnz), dtype=np.int32)
    cols.sort(axis=1)
    values = rng.normal(size=rows * nnz)
    indptr = np.arange(0, rows * nnz + 1, nnz, dtype=np.int64)
    x = sp.csr_matrix((values, cols.ravel(), indptr), shape=(rows, features))
    x.sum_duplicates()
    truth = rng.normal(scale=0.3, size=features)
    logits = x @ truth - 0.2
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logits))).astype(np.float64)
    return x, labels


def memory_read_bandwidth(threads: int = 2, gigabytes: float = 1.0) -> float:
    """Bytes per second read by ``threads`` threads summing disjoint halves of a large array."""
    data = np.ones(int(gigabytes * 1e9 / 8))
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(3):
        workers = [threading.Thread(target=np.sum, args=(part,)) for part in parts]
        tic = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        best = max(best, data.nbytes / (time.perf_counter() - tic))
    return best


def _config(max_iter=1000, gtol=1e-9, tol=1e-15):
    from gdmix.config import FixedEffectConfig

    return FixedEffectConfig(name="global", type="fixed_effect", l2=L2,
                             optimizer={"max_iter": max_iter, "gtol": gtol, "tol": tol})


def _fit(x, y, config, collective=None, record=None):
    """gdmix's fixed effect; ``record`` collects (seconds since start, objective) per iteration."""
    from gdmix.distributed.collective import SingleProcess
    from gdmix.models.fixed_effect import fit_fixed_effect

    tic = time.perf_counter()
    on_iteration = None if record is None else (lambda it, value: record.append((time.perf_counter() - tic, value)))
    model, report = fit_fixed_effect(x, y, np.ones(len(y)), np.zeros(len(y)), config, None, on_iteration,
                                     collective=collective or SingleProcess())
    return model, report, time.perf_counter() - tic


def _evaluation_seconds(x, y, collective=None) -> tuple[float, float]:
    """Median seconds of one data-term evaluation on these rows, and of one all-reduce of its
    result (0 without a collective), after a warm-up call."""
    from gdmix.models.fixed_effect import TfLogisticLoss

    loss = TfLogisticLoss(x, y, np.ones(len(y)), np.zeros(len(y)))
    theta = np.random.default_rng(1).normal(scale=0.01, size=x.shape[1] + 1)
    evaluations, reductions = [], []
    for _ in range(6):
        tic = time.perf_counter()
        value, gradient = loss(theta)
        evaluations.append(time.perf_counter() - tic)
        if collective is not None:
            tic = time.perf_counter()
            collective.sum(np.concatenate([[value], gradient]))
            reductions.append(time.perf_counter() - tic)
    return float(np.median(evaluations[1:])), float(np.median(reductions[1:])) if reductions else 0.0


def _time_to_gap(trajectory, reference: float) -> float | None:
    for seconds, value in trajectory:
        if (value - reference) / abs(reference) <= GAP:
            return seconds
    return None


def _sklearn_trajectory(x, y):
    """Fit sklearn's lbfgs, recording its iterates' objective (rescaled to gdmix's sum form)."""
    import scipy.optimize
    from sklearn.linear_model import LogisticRegression

    trajectory, original = [], scipy.optimize.minimize
    tic = time.perf_counter()

    def minimize(*args, **kwargs):
        kwargs["callback"] = lambda intermediate_result: trajectory.append(
            (time.perf_counter() - tic, float(intermediate_result.fun)))
        return original(*args, **kwargs)

    scipy.optimize.minimize = minimize
    try:
        model = LogisticRegression(C=1.0 / L2, solver="lbfgs", tol=1e-10, max_iter=2000).fit(x, y)
    finally:
        scipy.optimize.minimize = original
    seconds = time.perf_counter() - tic
    theta = np.concatenate([model.intercept_, model.coef_[0]])
    return theta, trajectory, seconds


def _objective(x, y, theta):
    z = x @ theta[1:] + theta[0]
    return float(np.sum(np.logaddexp(0, np.where(y > 0, -z, z))) + 0.5 * L2 * theta[1:] @ theta[1:])


def run(rows=2_000_000, features=100_000, nnz=30, seed=0) -> dict:
    x, y = make_data(rows, features, nnz, seed)
    bandwidth = memory_read_bandwidth()
    trajectory: list = []  # first, in a cold process: loading the op and tracing are included
    _, report, ours_seconds = _fit(x, y, _config(), record=trajectory)
    per_eval, _ = _evaluation_seconds(x, y)
    reference_model, _, _ = _fit(x, y, _config(gtol=1e-11, tol=0.0))
    reference = _objective(x, y, np.concatenate([[reference_model.intercept], reference_model.coef]))

    sk_theta, sk_trajectory, sk_seconds = _sklearn_trajectory(x, y)
    # sklearn minimises the same objective divided by the number of rows; rescale its iterates
    scale = _objective(x, y, sk_theta) / sk_trajectory[-1][1]
    sk_trajectory = [(t, v * scale) for t, v in sk_trajectory]
    bytes_per_eval = 12 * x.nnz + 32 * rows  # one pass over column ids, values and row arrays
    two = _two_workers(rows, features, nnz, seed)
    one_thread = _two_workers(rows, features, nnz, seed, workers=1)
    return {
        "benchmark": "fixed_effect_scale",
        "rows": rows, "features": features, "nonzeros": int(x.nnz), "l2": L2,
        "reference_objective": reference,
        "sklearn_lbfgs": {"seconds_to_gap_1e-6": _time_to_gap(sk_trajectory, reference),
                          "total_seconds": sk_seconds, "iterations": len(sk_trajectory),
                          "seconds_per_iteration": sk_seconds / max(len(sk_trajectory), 1)},
        "gdmix_1_worker": {"seconds_to_gap_1e-6": _time_to_gap(trajectory, reference),
                           "total_seconds_including_setup": ours_seconds, "iterations": report.iterations,
                           "evaluations": report.evaluations, "seconds_per_evaluation": per_eval,
                           "nonzeros_per_second": x.nnz / per_eval,
                           "bytes_per_evaluation": bytes_per_eval,
                           "memory_read_bandwidth_bytes_per_second": bandwidth,
                           "bandwidth_fraction": bytes_per_eval / per_eval / bandwidth,
                           "bytes_per_nonzero_in_memory": report.as_dict()["bytes_per_nonzero"]},
        "local_workers": {"1_worker_1_thread": one_thread, "2_workers_1_thread_each": two,
                          "speedup_2_vs_1_thread": one_thread["seconds_per_evaluation"] / two["seconds_per_evaluation"]},
    }


def _two_workers(rows, features, nnz, seed, workers=2) -> dict:
    """Launch ``workers`` local processes (1 intra-op thread each) running :func:`_worker`."""
    from gdmix.distributed.launcher import launch_local

    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "bench.fixed_effect_scale", "--worker", "--rows", str(rows),
                "--features", str(features), "--nnz", str(nnz), "--seed", str(seed), "--out", tmp]
        env = dict(os.environ, GDMIX_INTRA_OP_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        status = launch_local(argv, workers, env=env, output=open(os.devnull, "w"))
        if status != 0:
            raise RuntimeError(f"benchmark workers failed with status {status}")
        return json.loads((Path(tmp) / "worker-0.json").read_text())


def _worker(rows, features, nnz, seed, out) -> None:
    from gdmix.distributed.cluster import worker_info
    from gdmix.distributed.collective import connect

    info = worker_info()
    collective = connect(info)
    x, y = make_data(rows, features, nnz, seed)
    low, high = rows * info.index // info.count, rows * (info.index + 1) // info.count
    _, report, seconds = _fit(x[low:high], y[low:high], _config(), collective)
    evaluation, reduction = _evaluation_seconds(x[low:high], y[low:high], collective)
    result = {"workers": info.count, "fit_seconds": seconds, "evaluations": report.evaluations,
              "iterations": report.iterations, "seconds_per_local_evaluation": evaluation,
              "seconds_per_allreduce": reduction, "seconds_per_evaluation": evaluation + reduction}
    Path(out, f"worker-{info.index}.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--nnz", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.rows, args.features, args.nnz, args.seed, args.out)
    else:
        print(json.dumps(run(args.rows, args.features, args.nnz, args.seed), indent=2))


if __name__ == "__main__":
    main()
