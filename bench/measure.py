"""Shared measurement helpers for every benchmark: timing, repeats, thread counts, subprocesses.

The rules (issue 10) these helpers exist for:

* wall time is never quoted alone: every measurement carries the CPU seconds spent
  (``time.process_time`` in-process, ``resource.getrusage(RUSAGE_CHILDREN)`` for subprocesses),
  and the threads each side could use (:func:`thread_settings`);
* repeated measurements are summarised by their median and range (:func:`summary`), never by the
  best run; the individual runs are kept;
* a side is limited to one thread with :func:`limit_threads` (numpy / scipy / sklearn BLAS and
  OpenMP pools through threadpoolctl) or, for TensorFlow, which fixes its pools at start-up, by
  running it in a subprocess with :func:`one_thread_env`.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

THREAD_VARIABLES = ("GDMIX_INTRA_OP_THREADS", "OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# machine and threads


def machine() -> dict:
    """Date, CPU model and count, memory: the stamp every result carries."""
    model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": model or platform.processor() or platform.machine(),
        "memory_gib": round(memory / 2**30, 1) if memory else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def blas_threads() -> dict:
    """Thread pools of the native libraries loaded in this process (threadpoolctl), by library."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return {"threadpoolctl": "not installed"}
    pools = {}
    for pool in threadpool_info():
        name = f"{pool.get('internal_api')}:{Path(pool.get('filepath', '?')).name}"
        pools[name] = pool.get("num_threads")
    return pools


def tensorflow_threads() -> dict | str:
    """TensorFlow's thread settings if TensorFlow is loaded in this process (never imports it).

    Uses ``gdmix.tf_runtime.thread_settings()`` when that exists, else TensorFlow's getters
    (0 means TensorFlow's default: one thread per core)."""
    if "tensorflow" not in sys.modules:
        return "not loaded in this process"
    try:
        from gdmix import tf_runtime

        settings = getattr(tf_runtime, "thread_settings", None)
        if callable(settings):
            return dict(settings())
    except Exception:  # pragma: no cover - best effort, a record never fails a benchmark
        pass
    tf = sys.modules["tensorflow"]
    try:
        return {"intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
                "inter_op": tf.config.threading.get_inter_op_parallelism_threads(),
                "note": "0 = TensorFlow's default (one per core)"}
    except Exception as error:  # pragma: no cover
        return f"unavailable: {error}"


def thread_settings(env: dict | None = None) -> dict:
    """Threads this process (or, with ``env``, a subprocess started with that environment) may use."""
    source = os.environ if env is None else env
    record = {"cpu_count": os.cpu_count(),
              "environment": {name: source.get(name) for name in THREAD_VARIABLES if source.get(name) is not None}}
    if env is None:
        record["blas_openmp"] = blas_threads()
        record["tensorflow"] = tensorflow_threads()
    return record


@contextlib.contextmanager
def limit_threads(threads: int | None):
    """Limit numpy/scipy/sklearn's BLAS and OpenMP pools, and the threads gdmix solves batches
    and scores rows on, to ``threads`` (None: leave them)."""
    if threads is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    from gdmix.solvers.parallel import limited_cores

    with threadpool_limits(limits=threads), limited_cores(threads):
        yield


def one_thread_env(base: dict | None = None, threads: int = 1) -> dict:
    """Environment for a subprocess limited to ``threads`` (TensorFlow, OpenMP, BLAS)."""
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env[name] = str(threads)
    return env


def machine_threads_env(base: dict | None = None) -> dict:
    """Environment for a subprocess that may use every core (no thread caps inherited)."""
    env = dict(os.environ if base is None else base)
    for name in THREAD_VARIABLES:
        env.pop(name, None)
    return env


# timing


def summary(values: list[float]) -> dict:
    """Median and range of repeated measurements (never the best run alone)."""
    values = [float(v) for v in values]
    if not values:
        return {"median": None, "min": None, "max": None, "repeats": 0, "runs": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "repeats": len(values), "runs": values}


def timed(function: Callable[[], Any]) -> tuple[Any, dict]:
    """Call ``function``; its result and ``{"wall_seconds", "cpu_seconds"}`` (CPU of this process,
    all its threads)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = function()
    return result, {"wall_seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}


def repeat(function: Callable[[], Any], repeats: int, threads: int | None = None) -> tuple[Any, dict]:
    """Run ``function`` ``repeats`` times (limited to ``threads`` if given); the last result and
    ``{"wall_seconds": summary, "cpu_seconds": summary, "threads": ...}``."""
    walls, cpus, result = [], [], None
    with limit_threads(threads):
        settings = thread_settings()
        for _ in range(max(1, repeats)):
            result, times = timed(function)
            walls.append(times["wall_seconds"])
            cpus.append(times["cpu_seconds"])
    return result, {"wall_seconds": summary(walls), "cpu_seconds": summary(cpus),
                    "threads_limit": threads if threads is not None else "machine", "threads": settings}


def rate(count: float, seconds: dict) -> dict:
    """Items per second from a timing summary: at the median, and the range (from max and min)."""
    return {"median": count / seconds["median"], "min": count / seconds["max"], "max": count / seconds["min"]}


# subprocesses


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _tree_sample(pid: int, cpu: dict[int, float] | None = None) -> int:
    """Resident bytes of a process and all its descendants (from /proc); with ``cpu``, also
    record each live process's CPU seconds so far (user + system) under its pid."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            if cpu is not None:
                fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
                cpu[current] = (int(fields[11]) + int(fields[12])) / _TICKS
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            stack += [int(child) for child in children]
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return total


def _tree_rss(pid: int) -> int:
    return _tree_sample(pid)


def rss_bytes() -> int:
    """Resident bytes of this process now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS"):
            return int(line.split()[1]) * 1024
    return 0


def run_process(command: list[str], env: dict | None = None, cwd: str | None = None, timeout: float | None = None,
                sample_memory: bool = True, check: bool = True) -> dict:
    """Run a command to completion: wall seconds (process start-up included), CPU seconds of the
    whole process tree, peak resident memory of the tree (sampled from /proc every 0.2 s),
    stdout, stderr.

    ``cpu_seconds`` is the larger of two counts: RUSAGE_CHILDREN (user + system of every
    descendant that was waited for; exact, but a descendant nobody waited for, such as a JVM
    killed at exit, is missing) and the per-process CPU seconds sampled from /proc while the tree
    runs (includes such processes, misses at most the last 0.2 s of each). Both are recorded."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    peak = [0]
    tree_cpu: dict[int, float] = {}

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_sample(process.pid, tree_cpu))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True) if sample_memory else None
    if sampler:
        sampler.start()
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise RuntimeError(f"{' '.join(command[:4])} timed out after {timeout} s:\n{stderr[-3000:]}")
    wall = time.perf_counter() - tic
    if sampler:
        sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if check and process.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:4])} failed with status {process.returncode}:\n"
                           f"{stderr[-3000:]}\n{stdout[-2000:]}")
    children_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sampled_cpu = sum(tree_cpu.values())
    return {
        "wall_seconds": wall,
        "cpu_seconds": max(children_cpu, sampled_cpu),
        "cpu_seconds_rusage_children": children_cpu,
        "cpu_seconds_sampled_tree": sampled_cpu if sample_memory else None,
        "peak_memory_bytes": peak[0] if sample_memory else None,
        "returncode": process.returncode, "stdout": stdout, "stderr": stderr,
    }


def repeat_process(command: list[str], repeats: int, env: dict | None = None, **kwargs) -> tuple[list[dict], dict]:
    """:func:`run_process` ``repeats`` times; the runs and the summaries of wall, CPU and memory."""
    runs = [run_process(command, env=env, **kwargs) for _ in range(max(1, repeats))]
    return runs, {"wall_seconds": summary([r["wall_seconds"] for r in runs]),
                  "cpu_seconds": summary([r["cpu_seconds"] for r in runs]),
                  "peak_memory_bytes": summary([r["peak_memory_bytes"] or 0 for r in runs])}


def python_module(module: str, *args: str) -> list[str]:
    """``python -m module args...`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def repo_env(base: dict | None = None) -> dict:
    """Environment whose PYTHONPATH lets a subprocess import ``bench`` and ``gdmix`` from this tree."""
    env = dict(os.environ if base is None else base)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
