"""DeText: MovieLens-100K quality against GDMix's published DeText results, and training
throughput per core for the CNN and transformer encoders.

Quality: ``examples/movielens-100k/detext.yaml`` (a CNN over the movie title with the global
features as wide features, then per-user and per-movie random effects, 2 passes) on the
seed-42 split with the same held-out TEST split as ``bench.movielens`` (``--test-fraction``,
default 0.1, drawn with ``--test-seed``, default 1000); AUC of the cumulative model after every
coordinate of every pass on TEST (reported) and on validation (DeText keeps its best step by
validation only; test never steers training). GDMix published 0.7090 for its DeText global model
and 0.7680 after both random effects (validation AUC of its own unseeded split). Timed:
``gdmix.game.train`` in this process (reading, both passes, scoring, writing), wall and CPU
seconds, at the machine's threads (recorded).

Throughput: the same global model alone trained for a fixed number of steps with one
TensorFlow thread (``GDMIX_INTRA_OP_THREADS=1``, OMP/BLAS 1, a fresh ``gdmix detext`` process;
so examples per second is per core), once per encoder, same data and batch; the job's own
``examples_per_second`` covers its training loop only; the process's wall and CPU seconds
(start-up included) are recorded beside it.

    python -m bench.detext [--steps 300] [--test-fraction 0.1] [--test-seed 1000] [--source PATH]

Full size on the 2-core VM: about 5 minutes (quality ~1 min, 3 encoders x 3 repeats of 15-35 s).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import yaml

from bench import measure
from bench.movielens import TEST_FRACTION, TEST_SEED, build, data_overrides
from gdmix.jobs.specs import DetextJobSpec, gdmix_command

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "movielens-100k"
GDMIX_PUBLISHED = {"global": 0.7090, "per_user": 0.7665, "per_movie": 0.7680}
ENCODERS = ("cnn", "transformer", "lstm")


def run(steps: int = 300, source: str | None = None, test_fraction: float = TEST_FRACTION,
        test_seed: int = TEST_SEED, quality_steps: int | None = None, repeats: int = 3) -> dict:
    from gdmix.config import load_config
    from gdmix.game import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ml"
        split = build(data, 42, source, test_fraction, test_seed)
        overrides = data_overrides(data)
        shorter = [] if quality_steps is None else [f"coordinates.global.steps={quality_steps}",
                                                   f"coordinates.global.eval_every={quality_steps}"]
        config = load_config(EXAMPLES / "detext.yaml", overrides + [f"output={Path(tmp) / 'model'}"] + shorter)
        result, times = measure.timed(lambda: train(config))
        quality = {**times, "threads": measure.thread_settings(),
                   "steps_per_pass": config.coordinates[0].steps,
                   "split": {k: split.get(k) for k in ("seed", "train_rows", "validation_rows", "test_rows",
                                                       "test_seed", "test_fraction")},
                   "auc": [{"pass": c["pass"], "coordinate": c["name"], "test": (c.get("test") or {}).get("auc"),
                            "validation": c["validation"]["auc"]} for c in result.coordinates],
                   "gdmix_published": GDMIX_PUBLISHED}
        throughput = {encoder: _throughput(Path(tmp), overrides, encoder, steps, repeats) for encoder in ENCODERS}
    return {"benchmark": "detext", "quality": quality, "throughput_one_core": throughput, "steps": steps,
            "repeats": {"quality": 1, "throughput": repeats},
            "what_is_timed": {
                "quality": "gdmix.game.train in this process: reading, 2 passes (DeText + 2 random effects), "
                           "scoring train/validation/test, writing; machine threads",
                "throughput": "examples_per_second: the DeText job's training loop only, 1 thread; process_*: the "
                              "whole `gdmix detext` process (start-up, TensorFlow import, data, validation checks)"}}


def _throughput(root: Path, overrides: list[str], encoder: str, steps: int, repeats: int) -> dict:
    """One worker with one TF thread, ``repeats`` fresh processes: the job reports examples per second
    of its training loop; median and range over the repeats."""
    raw = yaml.safe_load((EXAMPLES / "detext.yaml").read_text())
    raw["coordinates"] = [raw["coordinates"][0] | {"encoder": encoder, "steps": steps, "eval_every": steps}]
    for item in overrides:
        key, value = item.split("=", 1)
        raw["data"][key.split(".")[1]] = value
    raw["data"].pop("test", None)  # the throughput runs train the global model alone; no test scoring
    config = root / f"{encoder}.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = measure.one_thread_env()
    solvers, processes = [], []
    for _ in range(max(1, repeats)):
        output = root / f"job-{encoder}"
        job = DetextJobSpec(config=str(config), coordinate="global", output=str(output))
        processes.append(measure.run_process(gdmix_command(job.to_argv()), env=env, timeout=3600))
        solvers.append(json.loads((output / "job.json").read_text())["solver"])
    return {"examples_per_second": measure.summary([s["examples_per_second"] for s in solvers]),
            "seconds": measure.summary([s["seconds"] for s in solvers]),
            "batch_size": raw["coordinates"][0]["batch_size"],
            "validation_auc": measure.summary([s["best_metric"] for s in solvers]),
            "threads": measure.thread_settings(env),
            "process_wall_seconds": measure.summary([p["wall_seconds"] for p in processes]),
            "process_cpu_seconds": measure.summary([p["cpu_seconds"] for p in processes])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--quality-steps", type=int, help="DeText steps per pass in the quality run (default: "
                        "detext.yaml's 1500; smaller only for a quick check)")
    parser.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    parser.add_argument("--test-seed", type=int, default=TEST_SEED)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per encoder (throughput)")
    parser.add_argument("--source")
    args = parser.parse_args()
    print(json.dumps(run(args.steps, args.source, args.test_fraction, args.test_seed, args.quality_steps,
                         args.repeats), indent=2))


if __name__ == "__main__":
    main()
