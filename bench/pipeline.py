"""The MovieLens example as a kfp.local pipeline run against ``gdmix train``, and ``gdmix demo`` timed.

All three are the actual commands, each a fresh process tree timed from process start (Python
start-up, imports, TensorFlow, Spark's JVM for the pipeline's prep step included): wall seconds,
CPU seconds of the whole tree (RUSAGE_CHILDREN, and the per-process CPU sampled from /proc,
whichever is larger: see ``bench.measure.run_process``) and peak resident memory of the tree.

* ``gdmix pipeline run examples/movielens-100k/lr.yaml --local`` (what ``make demo`` runs: every
  step a local process: Spark prep, the fixed effect on 2 TF workers, each random effect as 4
  partition-group tasks, scoring, evaluation) on a prebuilt seed-42 split;
* ``gdmix train examples/movielens-100k/lr.yaml`` on the same split, one process;
* ``gdmix demo --workdir FRESH`` (``make demo`` after ``make setup``): builds MovieLens-100K from the
  RecBole wheel already cached in ``$GDMIX_CACHE`` / ``~/.cache/gdmix`` (the download is not
  timed: the wheel is fetched once before the clock starts), then runs the pipeline.

GDMix's published "2 minutes" (16 cores) is its whole Kubeflow workflow; the pipeline run here is
the like-for-like comparison, not the in-process seconds of ``bench.movielens``. The final
validation AUC of the pipeline and of ``gdmix train`` must agree (recorded).

    python -m bench.pipeline [--repeats 3] [--demo-repeats N] [--no-demo] [--source PATH]

Full size on the 2-core VM: about 12 minutes (3 x pipeline ~105 s, 3 x gdmix train ~8 s, 3 x demo
~110 s); ``make bench`` runs 2 repeats and one demo, about 6 minutes.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from bench import measure

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "movielens-100k"
GDMIX_PUBLISHED = {"minutes": 2, "cores": 16, "what": "GDMix's MovieLens LR workflow (its README)"}


def _final_auc(output: Path) -> float:
    metrics = json.loads((output / "metrics.json").read_text())
    return metrics["final"]["validation"]["auc"]


def run(repeats: int = 3, source: str | None = None, demo: bool = True, demo_repeats: int | None = None) -> dict:
    from gdmix.example_data.movielens import build_movielens_100k, fetch_recbole_wheel

    if source is None:
        source = fetch_recbole_wheel()  # cached once, outside every clock
    env = measure.repo_env(measure.machine_threads_env())
    config = str(EXAMPLES / "lr.yaml")
    results = {}
    with tempfile.TemporaryDirectory(prefix="gdmix-pipeline-bench-") as tmp:
        root = Path(tmp)
        data = root / "ml"
        build_movielens_100k(str(data), source=source, seed=42)
        sets = [f"data.train={data / 'train'}", f"data.validation={data / 'validation'}"]
        aucs = {"pipeline": [], "gdmix_train": [], "demo": []}
        commands = {
            "pipeline": lambda k: measure.python_module(
                "gdmix", "pipeline", "run", config, "--local", "--workdir", str(root / f"pipeline-root-{k}"),
                *[a for s in sets + [f"output={root / f'pipeline-{k}'}"] for a in ("--set", s)]),
            "gdmix_train": lambda k: measure.python_module(
                "gdmix", "train", config, *[a for s in sets + [f"output={root / f'train-{k}'}"] for a in ("--set", s)]),
        }
        outputs = {"pipeline": lambda k: root / f"pipeline-{k}", "gdmix_train": lambda k: root / f"train-{k}",
                   "demo": lambda k: root / f"demo-{k}" / "model"}
        if demo:
            commands["demo"] = lambda k: measure.python_module("gdmix", "demo", "--workdir", str(root / f"demo-{k}"))
        for name, command in commands.items():
            runs = []
            for k in range(max(1, demo_repeats if name == "demo" and demo_repeats else repeats)):
                runs.append(measure.run_process(command(k), env=env, cwd=str(root)))
                aucs[name].append(_final_auc(outputs[name](k)))
                if name == "demo":
                    shutil.rmtree(root / f"demo-{k}", ignore_errors=True)
            results[name] = {
                "command": " ".join(command(0)[1:]),
                "wall_seconds": measure.summary([r["wall_seconds"] for r in runs]),
                "cpu_seconds": measure.summary([r["cpu_seconds"] for r in runs]),
                "cpu_seconds_rusage_children": measure.summary([r["cpu_seconds_rusage_children"] for r in runs]),
                "peak_memory_gib": measure.summary([r["peak_memory_bytes"] / 2**30 for r in runs]),
                "final_validation_auc": aucs[name],
            }
    agree = max(aucs["pipeline"] + aucs["gdmix_train"]) - min(aucs["pipeline"] + aucs["gdmix_train"])
    return {
        "benchmark": "pipeline", "config": "examples/movielens-100k/lr.yaml", "split_seed": 42,
        "what_is_timed": {
            "pipeline": "`gdmix pipeline run CONFIG --local` as a fresh process tree: start-up, kfp.local, every "
                        "task as a local process (Spark prep, 2 TF workers, partition trainers, scoring, evaluation)",
            "gdmix_train": "`gdmix train CONFIG` as a fresh process: start-up, TensorFlow import, reading, training, "
                           "scoring, writing",
            "demo": "`gdmix demo --workdir FRESH` (make demo after make setup): building MovieLens-100K from the "
                    "cached RecBole wheel, then the pipeline; the wheel's download is not timed"},
        "threads": {"environment": "no thread caps (machine threads); the pipeline's launcher shares the cores "
                                   "among its 2 fixed-effect workers", **measure.thread_settings(env)},
        "gdmix_published": GDMIX_PUBLISHED,
        **results,
        "pipeline_overhead_seconds": results["pipeline"]["wall_seconds"]["median"]
        - results["gdmix_train"]["wall_seconds"]["median"],
        "auc_spread_pipeline_vs_train": agree,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo-repeats", type=int, help="repeats of gdmix demo (default: --repeats)")
    parser.add_argument("--no-demo", action="store_true")
    parser.add_argument("--source")
    args = parser.parse_args()
    print(json.dumps(run(args.repeats, args.source, not args.no_demo, args.demo_repeats), indent=2))


if __name__ == "__main__":
    main()
