"""``make bench``: run every benchmark, save its JSON under bench/results/, print a summary.

    python -m bench.run_all [NAME ...]     # default: all of them (see BENCHMARKS)

Every result carries the date, the machine (CPU model and count, memory) and this process's
thread settings (``bench.measure``); each benchmark records the threads of each side itself.
Expected time of each on the project's 2-core VM (each module's docstring says what it runs):

==================== ======== ==========================================================
random_effect         ~3 min   3 repeats, baseline on 10,000 sampled entities
fixed_effect          ~0.5 min
fixed_effect_scale    ~10 min  3 repeats (sklearn newton-cg reference once)
photon                ~4 min   3 repeats of the GAME job from Parquet
photon_x2             ~6 min   only when named: the same job at twice the entities (3.1M rows), once
scale_large           ~9.5 min 10M and 30M rows, once each (``scale`` adds 3M: ~11 min)
movielens             ~2 min   6 split seeds, lr / lr-tuned / lr-auto
detext                ~5 min
pipeline              ~6 min   2 repeats of pipeline and gdmix train, 1 gdmix demo
movielens_tune        ~10 min  only when named (the grid search behind lr-tuned.yaml)
empirical_bayes       ~3 min   l2: auto against a fixed l2 (3 repeats); lr-auto against lr-tuned
profile_random_effect ~3 min   the tiny-entity random effect's cold and warm passes: throughput and a cProfile
pipeline_steps        ~12 min  per-step start-up vs work, the small 2-pass job's ratio, 1 gdmix demo
detext_scaling        ~6 min   DeText input sharded: examples/s and memory per worker at 1 and 2 workers
==================== ======== ==========================================================

``make bench`` (no names) runs :data:`DEFAULT`: about 51 minutes on the 2-core VM (estimates
scaled from small runs; each JSON records ``benchmark_wall_seconds``). ``scale`` (with the 3M
size), ``photon_x2`` and ``movielens_tune`` run when named: ``python -m bench.run_all scale movielens_tune``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from bench import (detext, detext_scaling, empirical_bayes, fixed_effect, fixed_effect_scale, measure, movielens,
                   movielens_tune, photon, pipeline, pipeline_steps, profile_random_effect, random_effect, scale)

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = {
    "random_effect": lambda: random_effect.run(baseline_entities=10_000, repeats=3),
    "fixed_effect": fixed_effect.run,
    "fixed_effect_scale": lambda: fixed_effect_scale.run(repeats=3),
    "photon": lambda: photon.run(baseline_entities=3000, repeats=3),
    "photon_x2": lambda: photon.run(baseline_entities=3000, repeats=1, scale=2.0),
    "scale": lambda: scale.run(sizes=((3_000_000, 1_000_000), (10_000_000, 3_333_333), (30_000_000, 10_000_000))),
    "scale_large": lambda: scale.run(sizes=((10_000_000, 3_333_333), (30_000_000, 10_000_000))),
    "movielens": movielens.run,
    "movielens_tune": movielens_tune.run,
    "detext": detext.run,
    "pipeline": lambda: pipeline.run(repeats=2, demo_repeats=1),
    "empirical_bayes": empirical_bayes.run,
    "profile_random_effect": profile_random_effect.run,
    "pipeline_steps": lambda: pipeline_steps.run(repeats=2, demo=True, demo_repeats=1),
    "detext_scaling": detext_scaling.run,
}
# what `make bench` runs: every comparison, within ~45 minutes on 2 cores
DEFAULT = ["random_effect", "fixed_effect", "fixed_effect_scale", "photon", "scale_large", "movielens", "detext",
           "pipeline", "empirical_bayes", "profile_random_effect", "pipeline_steps", "detext_scaling"]
# a benchmark saved under another name than its key
SAVED_AS = {"scale_large": "scale"}


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    names = sys.argv[1:] or DEFAULT
    unknown = [name for name in names if name not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    for name in names:
        stamp = {"machine": measure.machine(), "threads_run_all": measure.thread_settings()}
        tic = time.perf_counter()
        result = BENCHMARKS[name]()
        result = {**stamp, "benchmark_wall_seconds": time.perf_counter() - tic, **result}
        (RESULTS / f"{SAVED_AS.get(name, name)}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"== {name} ({result['benchmark_wall_seconds']:.0f} s)")
        print(json.dumps({k: v for k, v in result.items() if k not in ("runs", "grid_results")}, indent=2)[:6000])


if __name__ == "__main__":
    main()
