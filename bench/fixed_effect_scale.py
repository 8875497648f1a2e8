"""Fixed effect at scale: time to sklearn's optimum at equal threads, per-evaluation throughput,
memory actually used, and the end-to-end fit on 1 and 2 local workers.

Synthetic sparse data (default 2M rows x 100k features x 30 non-zeros per row, N(0,1) values,
labels from a true model), generated once and saved (``.npy``) so every subprocess loads the same
matrix. The objective is the same on both sides: ``sum_i logloss_i + L2/2 ||beta||^2`` with an
unpenalised intercept (gdmix's ``FixedEffectConfig`` default, ``regularize_intercept: false``);
sklearn's ``LogisticRegression(C=1/L2, fit_intercept=True)`` minimises the same objective divided
by the number of rows (its recorded values are multiplied back).

* Reference optimum: sklearn's own tight solution, ``newton-cholesky`` (tol 1e-10) when the
  dense features x features Hessian fits (``--newton-cholesky-max-features``, default 10,000),
  else ``newton-cg`` (tol 1e-10, Hessian-free Newton; at 100k features newton-cholesky would need
  an 80 GB Hessian). The best objective any side reaches is also recorded.
* Time to a relative objective gap of 1e-6 (from the objective value at every point each solver
  evaluates, timed from the start of its fit on the in-memory CSR matrix, set-up included):
  sklearn ``lbfgs`` with its defaults (tol 1e-4, max_iter 100; its final gap is recorded, it may
  stop short of 1e-6) and with a tight tol (1e-10), sklearn ``newton-cholesky`` (when it fits),
  sklearn ``newton-cg`` and gdmix. sklearn runs in this process under threadpoolctl limits;
  gdmix runs in a fresh subprocess per repeat (TensorFlow fixes its thread pools at start-up),
  with ``GDMIX_INTRA_OP_THREADS``/``OMP_NUM_THREADS``/``OPENBLAS_NUM_THREADS``.
  Everything at one thread each; gdmix and (where it can use them) newton-cholesky also at the
  machine's threads. sklearn's lbfgs and newton-cg evaluate the loss with ``n_threads=1`` and
  scipy's single-threaded sparse products, so their time does not depend on the thread limit.
* Per evaluation (gdmix): seconds, non-zeros per second, resident memory of the tensors (RSS
  before/after building them) and the bytes per second that implies; the "12 bytes per
  non-zero + 32 per row" figure is by construction (dtype sizes) and labelled so.
* Workers: the whole fit (tensor set-up to optimum) on 2 local worker processes (1 thread each,
  TF collective all-reduce) against 1 process at 1 thread and at the machine's threads, beside
  the per-evaluation speed-up; launch wall time (process start-up and loading included) and CPU
  seconds of all workers (RUSAGE_CHILDREN).

    python -m bench.fixed_effect_scale [--rows 2000000] [--features 100000] [--nnz 30] [--repeats 3]
        [--newton-cholesky-max-features 10000] [--reference-repeats 1] [--no-workers] [--seed 0]

Full size on the 2-core VM: about 10 minutes (generation ~30 s; sklearn newton-cg, the reference,
once, ~2 min; lbfgs defaults 3 x ~30 s and tight 3 x ~45 s; gdmix 2 x 3 subprocesses of ~20 s;
2 workers 3 launches of ~25 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from bench import measure

L2 = 1.0
GAP = 1e-6
EVALUATIONS = 6


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


def save_data(root: Path, x: sp.csr_matrix, y: np.ndarray) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for name, array in (("indptr", x.indptr), ("indices", x.indices), ("data", x.data), ("labels", y)):
        np.save(root / f"{name}.npy", array)
    (root / "shape.json").write_text(json.dumps(list(x.shape)))


def load_data(root: Path, low: int | None = None, high: int | None = None):
    shape = json.loads((root / "shape.json").read_text())
    indptr = np.load(root / "indptr.npy", mmap_mode="r")
    low, high = low or 0, shape[0] if high is None else high
    a, b = int(indptr[low]), int(indptr[high])
    x = sp.csr_matrix((np.array(np.load(root / "data.npy", mmap_mode="r")[a:b]),
                       np.array(np.load(root / "indices.npy", mmap_mode="r")[a:b]),
                       np.array(indptr[low:high + 1]) - a), shape=(high - low, shape[1]))
    return x, np.array(np.load(root / "labels.npy", mmap_mode="r")[low:high])


def memory_read_bandwidth(threads: int = 2, gigabytes: float = 1.0) -> dict:
    """Bytes per second read by ``threads`` threads summing disjoint parts of a large array
    (median and range of 3 runs)."""
    data = np.ones(int(gigabytes * 1e9 / 8))
    parts = np.array_split(data, threads)
    rates = []
    for _ in range(3):
        workers = [threading.Thread(target=np.sum, args=(part,)) for part in parts]
        tic = time.perf_counter()
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        rates.append(data.nbytes / (time.perf_counter() - tic))
    return measure.summary(rates)


def objective(x, y, theta) -> float:
    """gdmix's objective: summed log loss + L2/2 ||beta||^2, intercept theta[0] unpenalised."""
    z = x @ theta[1:] + theta[0]
    return float(np.sum(np.logaddexp(0, np.where(y > 0, -z, z))) + 0.5 * L2 * theta[1:] @ theta[1:])


def time_to_gap(trajectory, reference: float, gap: float = GAP) -> float | None:
    for seconds, value in trajectory:
        if (value - reference) / abs(reference) <= gap:
            return seconds
    return None


# sklearn, in this process


def sklearn_fit(x, y, solver: str, **options):
    """Fit sklearn's LogisticRegression, recording (seconds since the fit started, objective in
    gdmix's sum form) at every point its solver evaluates the loss."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.linear_model._linear_loss import LinearModelLoss

    trajectory, scale = [], float(len(y))  # sklearn's loss is the sum form divided by sum of weights
    originals = {name: getattr(LinearModelLoss, name) for name in ("loss", "loss_gradient")}
    tic = time.perf_counter()

    def recording(name):
        original = originals[name]

        def wrapper(self, *args, **kwargs):
            out = original(self, *args, **kwargs)
            value = out[0] if isinstance(out, tuple) else out
            trajectory.append((time.perf_counter() - tic, float(value) * scale))
            return out
        return wrapper

    for name in originals:
        setattr(LinearModelLoss, name, recording(name))
    try:
        tic = time.perf_counter()
        wall, cpu = time.perf_counter(), time.process_time()
        model = LogisticRegression(C=1.0 / L2, solver=solver, **options).fit(x, y)
        times = {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    finally:
        for name, original in originals.items():
            setattr(LinearModelLoss, name, original)
    theta = np.concatenate([model.intercept_, model.coef_[0]])
    return {"theta": theta, "trajectory": trajectory, "times": times, "iterations": int(np.max(model.n_iter_))}


def sklearn_runs(x, y, solver: str, repeats: int, threads: int | None, options: dict) -> dict:
    """``repeats`` fits at a thread limit; timing summaries, iterations, the last trajectory and theta."""
    runs = []
    with measure.limit_threads(threads):
        settings = measure.thread_settings()
        for _ in range(max(1, repeats)):
            runs.append(sklearn_fit(x, y, solver, **options))
    return {"runs": runs, "threads": settings, "threads_limit": threads or "machine", "options": options,
            "wall_seconds": measure.summary([r["times"]["wall_seconds"] for r in runs]),
            "cpu_seconds": measure.summary([r["times"]["cpu_seconds"] for r in runs])}


# gdmix, in subprocesses


def _config(max_iter=1000, gtol=1e-9, tol=1e-15):
    from gdmix.config import FixedEffectConfig

    return FixedEffectConfig(name="global", type="fixed_effect", l2=L2,
                             optimizer={"max_iter": max_iter, "gtol": gtol, "tol": tol})


def _start_tensorflow() -> None:
    """Import TensorFlow and start its runtime before any clock starts (a worker's collective
    set-up does this too), so the single-process and worker fits time the same work."""
    from gdmix.tf_runtime import import_tensorflow

    tf = import_tensorflow()
    float(tf.reduce_sum(tf.constant([1.0, 2.0])))


def _gdmix_fit(x, y, collective=None):
    """gdmix's fixed effect from the in-memory CSR matrix; (theta, report, trajectory, times)."""
    from gdmix.distributed.collective import SingleProcess
    from gdmix.models.fixed_effect import fit_fixed_effect

    trajectory = []
    tic = time.perf_counter()
    cpu = time.process_time()
    model, report = fit_fixed_effect(x, y, np.ones(len(y)), np.zeros(len(y)), _config(), None,
                                     lambda it, value: trajectory.append((time.perf_counter() - tic, value)),
                                     collective=collective or SingleProcess())
    times = {"wall_seconds": time.perf_counter() - tic, "cpu_seconds": time.process_time() - cpu}
    return np.concatenate([[model.intercept], model.coef]), report, trajectory, times


def _evaluations(x, y, collective=None) -> dict:
    """Per-evaluation seconds (median of 5 after a warm-up) and the resident memory the tensors
    add (RSS before and after building them)."""
    from gdmix.losses.logistic_tf import TfLogisticLoss

    before = measure.rss_bytes()
    loss = TfLogisticLoss(x, y, np.ones(len(y)), np.zeros(len(y)))
    after = measure.rss_bytes()
    theta = np.random.default_rng(1).normal(scale=0.01, size=x.shape[1] + 1)
    evaluations, reductions = [], []
    for _ in range(EVALUATIONS):
        tic = time.perf_counter()
        value, gradient = loss(theta)
        evaluations.append(time.perf_counter() - tic)
        if collective is not None:
            tic = time.perf_counter()
            collective.sum(np.concatenate([[value], gradient]))
            reductions.append(time.perf_counter() - tic)
    return {"seconds_per_local_evaluation": measure.summary(evaluations[1:]),
            "seconds_per_allreduce": measure.summary(reductions[1:]) if reductions else None,
            "rss_added_by_tensors_bytes": after - before,
            "tensor_bytes_by_construction": int(loss.memory_bytes)}


def _part_gdmix(data: Path, out: Path) -> None:
    """Subprocess: one gdmix fit (cold: op load and tracing included), then the evaluation probe."""
    x, y = load_data(data)
    _start_tensorflow()
    theta, report, trajectory, times = _gdmix_fit(x, y)
    probe = _evaluations(x, y)
    result = {"theta": theta.tolist(), "trajectory": trajectory, "times": times, "iterations": report.iterations,
              "evaluations": report.evaluations, "bytes_per_nonzero_by_construction": report.as_dict()["bytes_per_nonzero"],
              "threads": measure.thread_settings(), **probe}
    out.write_text(json.dumps(result))


def _part_worker(data: Path, out: Path) -> None:
    """Subprocess: one worker of a local cluster fitting its contiguous shard of rows."""
    from gdmix.distributed.cluster import worker_info
    from gdmix.distributed.collective import connect

    info = worker_info()
    collective = connect(info)
    rows = json.loads((data / "shape.json").read_text())[0]
    low, high = rows * info.index // info.count, rows * (info.index + 1) // info.count
    x, y = load_data(data, low, high)
    _start_tensorflow()
    theta, report, _, times = _gdmix_fit(x, y, collective)
    probe = _evaluations(x, y, collective)
    result = {"workers": info.count, "fit": times, "iterations": report.iterations, "evaluations": report.evaluations,
              "theta_head": theta[:5].tolist(), "threads": measure.thread_settings(), **probe}
    (out / f"worker-{info.index}.json").write_text(json.dumps(result))


def gdmix_runs(data: Path, tmp: Path, repeats: int, threads: int | None) -> dict:
    env = measure.repo_env(measure.one_thread_env() if threads == 1 else measure.machine_threads_env())
    runs, processes = [], []
    for k in range(max(1, repeats)):
        out = tmp / f"gdmix-{threads}-{k}.json"
        processes.append(measure.run_process(measure.python_module("bench.fixed_effect_scale", "--part", "gdmix",
                                                                   "--data", str(data), "--out", str(out)), env=env))
        runs.append(json.loads(out.read_text()))
    return {"runs": runs, "threads_limit": threads or "machine", "threads": runs[-1]["threads"],
            "fit_wall_seconds": measure.summary([r["times"]["wall_seconds"] for r in runs]),
            "fit_cpu_seconds": measure.summary([r["times"]["cpu_seconds"] for r in runs]),
            "process_wall_seconds": measure.summary([p["wall_seconds"] for p in processes]),
            "process_cpu_seconds": measure.summary([p["cpu_seconds"] for p in processes]),
            "process_peak_memory_bytes": measure.summary([p["peak_memory_bytes"] for p in processes]),
            "seconds_per_evaluation": measure.summary([r["seconds_per_local_evaluation"]["median"] for r in runs])}


def worker_runs(data: Path, tmp: Path, workers: int, repeats: int) -> dict:
    import resource

    from gdmix.distributed.launcher import launch_local

    runs = []
    for k in range(max(1, repeats)):
        out = tmp / f"workers-{workers}-{k}"
        out.mkdir()
        argv = measure.python_module("bench.fixed_effect_scale", "--part", "worker", "--data", str(data), "--out", str(out))
        env = measure.repo_env(measure.one_thread_env())
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        tic = time.perf_counter()
        with open(os.devnull, "w") as sink:
            status = launch_local(argv, workers, env=env, output=sink)
        wall = time.perf_counter() - tic
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if status != 0:
            raise RuntimeError(f"benchmark workers failed with status {status}")
        chief = json.loads((out / "worker-0.json").read_text())
        chief["launch_wall_seconds"] = wall
        chief["launch_cpu_seconds"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        runs.append(chief)
    return {"workers": workers, "threads_per_worker": 1, "runs": runs, "threads": runs[-1]["threads"],
            "fit_wall_seconds": measure.summary([r["fit"]["wall_seconds"] for r in runs]),
            "launch_wall_seconds": measure.summary([r["launch_wall_seconds"] for r in runs]),
            "launch_cpu_seconds_all_workers": measure.summary([r["launch_cpu_seconds"] for r in runs]),
            "seconds_per_evaluation": measure.summary(
                [r["seconds_per_local_evaluation"]["median"] + r["seconds_per_allreduce"]["median"] for r in runs]),
            "seconds_per_allreduce": measure.summary([r["seconds_per_allreduce"]["median"] for r in runs])}


def _solver_summary(side: dict, reference: float, x, y) -> dict:
    """Time to the gap and final gap of each run of one side; drops bulky fields."""
    runs = side.pop("runs")
    to_gap = [time_to_gap(r["trajectory"], reference) for r in runs]
    final = [(objective(x, y, np.asarray(r["theta"])) - reference) / abs(reference) for r in runs]
    reached = [t for t in to_gap if t is not None]
    side.update({
        "seconds_to_gap": measure.summary(reached) if len(reached) == len(runs) else
        {"reached_in_runs": len(reached), "of_runs": len(runs), **measure.summary(reached)},
        "final_relative_gap": measure.summary(final),
        "iterations": [r["iterations"] for r in runs],
        "objective_evaluations": [len(r["trajectory"]) for r in runs],
    })
    return side


def run(rows=2_000_000, features=100_000, nnz=30, seed=0, repeats=3, newton_cholesky_max_features=10_000,
        workers=True, reference_repeats=1) -> dict:
    (x, y), generation = measure.timed(lambda: make_data(rows, features, nnz, seed))
    result = {"benchmark": "fixed_effect_scale", "rows": rows, "features": features, "nonzeros": int(x.nnz), "l2": L2,
              "gap": GAP, "generation": generation,
              "objective": "sum of log losses + L2/2 ||beta||^2, intercept unpenalised (gdmix FixedEffectConfig "
                           "defaults; sklearn LogisticRegression(C=1/L2, fit_intercept=True) minimises it divided "
                           "by the number of rows, multiplied back here)",
              "what_is_timed": {
                  "sklearn": "LogisticRegression.fit on the in-memory CSR matrix, in this process (input checks "
                             "and set-up included); seconds_to_gap from the fit's start to the first evaluated point "
                             "within the gap",
                  "gdmix": "fit_fixed_effect on the in-memory CSR matrix in a fresh subprocess (tensor set-up, fused "
                           "op load and tracing included; TensorFlow's import and runtime start, and loading the .npy "
                           "data, are in process_wall_seconds only)",
                  "workers": "fit_wall_seconds: the chief's whole fit (tensor set-up to optimum, all-reduce "
                             "included); launch_wall_seconds: process start-up, TensorFlow import, loading each "
                             "shard, the fit and the evaluation probe"}}
    with tempfile.TemporaryDirectory(prefix="gdmix-fe-scale-") as name:
        tmp = Path(name)
        save_data(tmp / "data", x, y)
        result["memory_read_bandwidth_bytes_per_second"] = {
            "machine_threads": memory_read_bandwidth(os.cpu_count() or 1), "1_thread": memory_read_bandwidth(1)}

        # sklearn's own reference optimum: the first run of its tight Newton solver (1 thread)
        nc = features <= newton_cholesky_max_features
        ref_solver = "newton-cholesky" if nc else "newton-cg"
        tight = {"tol": 1e-10, "max_iter": 1000}
        sk = {f"{ref_solver}_tight_1_thread": sklearn_runs(x, y, ref_solver, reference_repeats, 1, tight)}
        reference_run = sk[f"{ref_solver}_tight_1_thread"]
        reference = objective(x, y, reference_run["runs"][0]["theta"])
        result["reference"] = {"solver": ref_solver, "options": tight,
                               "why": "newton-cholesky needs a dense features x features Hessian"
                               if not nc else "sklearn's most accurate solver for this size",
                               "objective": reference, "run": f"the first of the {ref_solver}_tight_1_thread runs"}
        sk["lbfgs_defaults_1_thread"] = sklearn_runs(x, y, "lbfgs", repeats, 1, {})
        sk["lbfgs_tight_1_thread"] = sklearn_runs(x, y, "lbfgs", repeats, 1, {"tol": 1e-10, "max_iter": 10_000})
        if nc:
            sk["newton-cholesky_tight_machine_threads"] = sklearn_runs(
                x, y, "newton-cholesky", repeats, None, {"tol": 1e-10, "max_iter": 1000})
        ours = {"gdmix_1_thread": gdmix_runs(tmp / "data", tmp, repeats, 1),
                "gdmix_machine_threads": gdmix_runs(tmp / "data", tmp, repeats, None)}
        best = min([reference] + [objective(x, y, np.asarray(r["theta"])) for side in (*sk.values(), *ours.values())
                                  for r in side["runs"]])
        result["reference"]["best_objective_any_side"] = best
        result["reference"]["reference_gap_to_best"] = (reference - best) / abs(reference)
        result["sklearn"] = {name: _solver_summary(side, reference, x, y) for name, side in sk.items()}
        result["gdmix"] = {}
        for name, side in ours.items():
            for r in side["runs"]:
                r.pop("threads", None)
            per_eval = side["seconds_per_evaluation"]["median"]
            probe = side["runs"][-1]
            side = _solver_summary(side, reference, x, y)
            side["per_evaluation"] = {
                "seconds": per_eval, "nonzeros_per_second": x.nnz / per_eval,
                "rss_added_by_tensors_bytes": probe["rss_added_by_tensors_bytes"],
                "measured_bytes_per_nonzero": probe["rss_added_by_tensors_bytes"] / x.nnz,
                "measured_bytes_per_second": probe["rss_added_by_tensors_bytes"] / per_eval,
                "measured_fraction_of_read_bandwidth": probe["rss_added_by_tensors_bytes"] / per_eval
                / result["memory_read_bandwidth_bytes_per_second"][
                    "1_thread" if name == "gdmix_1_thread" else "machine_threads"]["median"],
                "tensor_bytes_by_construction": probe["tensor_bytes_by_construction"],
                "bytes_per_nonzero_by_construction": probe["bytes_per_nonzero_by_construction"],
                "note": "measured_* use the resident memory the tensors added; *_by_construction come from dtype sizes",
            }
            result["gdmix"][name] = side
        sk_lbfgs = result["sklearn"]["lbfgs_tight_1_thread"]["seconds_to_gap"].get("median")
        ours_one = result["gdmix"]["gdmix_1_thread"]["seconds_to_gap"].get("median")
        result["speedup_to_gap_1_thread"] = {
            "vs_sklearn_lbfgs_tight": sk_lbfgs / ours_one if sk_lbfgs and ours_one else None,
            f"vs_sklearn_{ref_solver}": (result["sklearn"][f"{ref_solver}_tight_1_thread"]["seconds_to_gap"].get("median")
                                         or float("nan")) / ours_one if ours_one else None}
        if workers:
            two = worker_runs(tmp / "data", tmp, 2, repeats)
            one_thread = result["gdmix"]["gdmix_1_thread"]
            machine_threads = result["gdmix"]["gdmix_machine_threads"]
            result["local_workers"] = {
                "2_workers_1_thread_each": two,
                "end_to_end_fit_seconds": {"1_process_1_thread": one_thread["fit_wall_seconds"],
                                           "1_process_machine_threads": machine_threads["fit_wall_seconds"],
                                           "2_workers_1_thread_each": two["fit_wall_seconds"]},
                "speedup_fit_2_workers_vs_1_thread": one_thread["fit_wall_seconds"]["median"]
                / two["fit_wall_seconds"]["median"],
                "speedup_fit_2_workers_vs_1_process_machine_threads": machine_threads["fit_wall_seconds"]["median"]
                / two["fit_wall_seconds"]["median"],
                "speedup_per_evaluation_2_workers_vs_1_thread": one_thread["per_evaluation"]["seconds"]
                / two["seconds_per_evaluation"]["median"],
            }
    result["threads_this_process"] = measure.thread_settings()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--features", type=int, default=100_000)
    parser.add_argument("--nnz", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--newton-cholesky-max-features", type=int, default=10_000)
    parser.add_argument("--no-workers", action="store_true", help="skip the 2-worker runs")
    parser.add_argument("--reference-repeats", type=int, default=1,
                        help="runs of sklearn's tight Newton solver (the reference; ~2 min each at full size)")
    parser.add_argument("--part", choices=("gdmix", "worker"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.part == "gdmix":
        _part_gdmix(Path(args.data), Path(args.out))
    elif args.part == "worker":
        _part_worker(Path(args.data), Path(args.out))
    else:
        print(json.dumps(run(args.rows, args.features, args.nnz, args.seed, args.repeats,
                             args.newton_cholesky_max_features, not args.no_workers, args.reference_repeats),
                         indent=2))


if __name__ == "__main__":
    sys.exit(main())
