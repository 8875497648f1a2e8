"""DeText input across workers: examples per second and peak resident memory per worker at 1 and
2 workers, on a synthetic text corpus ten times MovieLens-100K (1,000,000 training rows).

The corpus (generated here, never committed): ``uid``, a 0/1 ``label``, a ``title`` of 3-6 words
from a 2,000-word vocabulary (the label depends on two of its words) and a ``global`` bag of 3
of 200 wide features; 8 Parquet files of 32,768-row row groups; a 20,000-row validation split.

Timed, per run: one ``gdmix detext`` job (a fresh process tree; ``--workers 2`` runs two real
worker processes on 127.0.0.1, the way the pipeline runs them), every process limited to one
TensorFlow / BLAS thread so the numbers are per worker and per core. Recorded:

* ``examples_per_second_per_worker``: the job's training loop only (global examples per second
  divided by the workers: each worker computes its share of every global batch);
* ``peak_rss_bytes_per_worker``: the largest high-water mark (``VmHWM``) of the worker
  processes (the launcher excluded), read from /proc while the job runs;
* ``process_wall_seconds`` / ``process_cpu_seconds``: the whole job (start-up, reading the
  Parquet input, vocabulary, training, scoring, writing), CPU summed over every process.

Repeats are summarised by median and range (``bench.measure.summary``). ``--gdmix-root`` runs
the jobs against another copy of the source; ``--baseline ROOT`` runs every job against both
that copy (reported under ``before``) and this tree, alternately on the same corpus, so that a
loaded machine's drift falls on both sides alike (how the "before" numbers are taken).

    python -m bench.detext_scaling [--rows 1000000] [--steps 200] [--repeats 3] [--workers 1 2] [--baseline ROOT]

Default size on the 2-core VM: about 5-8 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench import measure
from gdmix.io.contract import FEATURE_BAG_TYPE, FEATURE_STRUCT
from gdmix.jobs.specs import DetextJobSpec, gdmix_command

ROWS = 1_000_000  # MovieLens-100K has 100,000 ratings
FILES = 8
ROW_GROUP = 32_768
VOCABULARY = 2_000
WIDE_FEATURES = 200


def run(rows: int = ROWS, steps: int = 200, repeats: int = 3, workers: tuple[int, ...] = (1, 2),
        batch_size: int = 256, gdmix_root: str | None = None, baseline: str | None = None) -> dict:
    sources = ([baseline] if baseline else []) + [gdmix_root]  # before, then after, in every repeat
    with tempfile.TemporaryDirectory(prefix="gdmix-detext-scaling-") as tmp:
        root = Path(tmp)
        _, generated = measure.timed(lambda: write_corpus(root, rows))
        config = write_config(root, steps, batch_size)
        results = {str(count): _measure(root, config, count, repeats, sources) for count in workers}
    before = {"before": {"source": baseline, "generate_seconds": generated,
                         "workers": {count: result[baseline] for count, result in results.items()}}} if baseline else {}
    return {"benchmark": "detext_scaling", "rows": rows, "validation_rows": _validation_rows(rows), "steps": steps,
            "batch_size": batch_size, "repeats": repeats, "generate_seconds": generated,
            "workers": {count: result[gdmix_root] for count, result in results.items()},
            "source": gdmix_root or "this tree", **before,
            "what_is_timed": {
                "examples_per_second_per_worker": "the DeText job's training loop (global examples/s / workers)",
                "peak_rss_bytes_per_worker": "max VmHWM over the worker processes (launcher excluded)",
                "process_*": "the whole gdmix detext job: start-up, reading, vocabulary, training, scoring, "
                             "writing; CPU of every process; 1 TensorFlow/BLAS thread per worker"}}


def _validation_rows(rows: int) -> int:
    return max(rows // 50, 1000)


def write_corpus(root: Path, rows: int, seed: int = 7) -> None:
    """``train/`` and ``validation/``: a learnable text corpus (see the module docstring)."""
    rng = np.random.default_rng(seed)
    words = np.array([f"w{k:04d}" for k in range(VOCABULARY)])
    for split, count, first in (("train", rows, 0), ("validation", _validation_rows(rows), rows)):
        folder = root / split
        folder.mkdir(parents=True)
        per_file = -(-count // FILES)
        for k, start in enumerate(range(0, count, per_file)):
            n = min(per_file, count - start)
            pq.write_table(_table(rng, words, first + start, n), folder / f"part-{k:05d}.parquet",
                           row_group_size=ROW_GROUP)


def _table(rng: np.random.Generator, words: np.ndarray, first_uid: int, n: int) -> pa.Table:
    """``n`` rows: titles of 3-6 Zipf-ish words, a label driven by the first two words, a wide bag."""
    lengths = rng.integers(3, 7, n)
    picks = np.minimum(rng.zipf(1.3, lengths.sum()) - 1, len(words) - 1)
    split_at = np.cumsum(lengths)[:-1]
    titles = [" ".join(part) for part in np.split(words[picks], split_at)]
    first_two = picks[np.concatenate([[0], split_at])]
    logit = np.where(first_two % 3 == 0, 1.5, -1.0) + rng.normal(0, 0.5, n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    features = rng.integers(0, WIDE_FEATURES, 3 * n)
    items = pa.StructArray.from_arrays([pa.array(np.char.add("f", features.astype(str))), pa.array(np.full(3 * n, "")),
                                        pa.array(rng.random(3 * n))], fields=list(FEATURE_STRUCT))
    bag = pa.ListArray.from_arrays(pa.array(np.arange(0, 3 * n + 1, 3, dtype=np.int32)), items, type=FEATURE_BAG_TYPE)
    return pa.table({"uid": np.arange(first_uid, first_uid + n, dtype=np.int64), "label": labels,
                     "title": pa.array(titles), "global": bag})


def write_config(root: Path, steps: int, batch_size: int) -> Path:
    """A DeText global model (CNN over the title, the wide bag) validated once, at the end."""
    raw = {"data": {"train": str(root / "train"), "validation": str(root / "validation")},
           "output": str(root / "unused"),
           "coordinates": [{"name": "deep", "type": "detext", "doc_text": ["title"], "wide_bag": "global",
                            "steps": steps, "eval_every": steps, "batch_size": batch_size}]}
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _measure(root: Path, config: Path, workers: int, repeats: int, sources: list[str | None]) -> dict:
    """Each source's summary at ``workers``; the sources' jobs alternate, repeat after repeat."""
    runs = {source: [] for source in sources}
    for repeat in range(max(1, repeats)):
        for k, source in enumerate(sources):
            runs[source].append(_one_job(root, config, workers, f"{repeat}-{k}", source))
    return {source: _summary(done, source) for source, done in runs.items()}


def _summary(runs: list[dict], gdmix_root: str | None) -> dict:
    pick = lambda key: measure.summary([r[key] for r in runs])  # noqa: E731
    return {"examples_per_second_per_worker": pick("examples_per_second_per_worker"),
            "peak_rss_bytes_per_worker": pick("peak_rss_bytes_per_worker"),
            "train_seconds": pick("train_seconds"), "process_wall_seconds": pick("wall_seconds"),
            "process_cpu_seconds": pick("cpu_seconds"), "threads": measure.thread_settings(_env(gdmix_root)),
            "runs": runs}


def _env(gdmix_root: str | None) -> dict:
    env = measure.one_thread_env(measure.repo_env())
    if gdmix_root:
        env["PYTHONPATH"] = gdmix_root + os.pathsep + env["PYTHONPATH"]
    return env


def _one_job(root: Path, config: Path, workers: int, repeat: str, gdmix_root: str | None) -> dict:
    """One job as a fresh process tree; the job's own throughput and per-process memory peaks."""
    output = root / f"job-{workers}-{repeat}"
    job = DetextJobSpec(config=str(config), coordinate="deep", output=str(output),
                        workers=workers if workers > 1 else None)
    command = gdmix_command(job.to_argv())
    before = os.times()
    tic = time.perf_counter()
    process = subprocess.Popen(command, env=_env(gdmix_root), cwd=gdmix_root, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    peaks: dict[int, int] = {}
    sampler = threading.Thread(target=_sample_peaks, args=(process, peaks), daemon=True)
    sampler.start()
    log, _ = process.communicate(timeout=3600)
    wall = time.perf_counter() - tic
    sampler.join()
    after = os.times()
    if process.returncode != 0:
        raise RuntimeError(f"gdmix detext ({workers} workers) failed with status {process.returncode}:\n{log[-4000:]}")
    solver = json.loads((output / "job.json").read_text())["solver"]
    worker_peaks = [peak for pid, peak in peaks.items() if workers == 1 or pid != process.pid]
    return {"examples_per_second_per_worker": solver["examples_per_second"] / workers,
            "train_seconds": solver["seconds"], "peak_rss_bytes_per_worker": max(worker_peaks, default=0),
            "peak_rss_bytes_each": sorted(worker_peaks), "wall_seconds": wall,
            "cpu_seconds": _children_cpu(after) - _children_cpu(before),
            "validation_auc": solver.get("best_metric")}


def _children_cpu(times: os.times_result) -> float:
    """User + system seconds of every waited-for child process so far."""
    return times.children_user + times.children_system


def _sample_peaks(process: subprocess.Popen, peaks: dict[int, int]) -> None:
    """Every 0.2 s, the high-water mark of resident memory of each process in the tree, by pid."""
    while process.poll() is None:
        stack = [process.pid]
        while stack:
            pid = stack.pop()
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                peak = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
                peaks[pid] = max(peaks.get(pid, 0), peak * 1024)
                stack += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            except (OSError, StopIteration, ValueError):
                continue
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gdmix-root", help="run the jobs against the gdmix package under this folder")
    parser.add_argument("--baseline", help="also run every job against the gdmix package under this folder, "
                                           "alternately (reported under 'before')")
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.steps, args.repeats, tuple(args.workers), args.batch_size,
                         args.gdmix_root, args.baseline), indent=2))


if __name__ == "__main__":
    main()
