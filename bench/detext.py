"""DeText: MovieLens-100K quality against GDMix's published DeText results, and training
throughput per core for the CNN and transformer encoders.

Quality: ``examples/movielens-100k/detext.yaml`` (a CNN over the movie title with the global
features as wide features, then per-user and per-movie random effects, 2 passes) on the
seed-42 split; GDMix published 0.7090 for its DeText global model and 0.7680 after both random
effects. Throughput: the same global model alone trained for a fixed number of steps with one
TensorFlow thread (so examples per second is per core), once per encoder, same data and batch.

    python -m bench.detext [--steps 300] [--source PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "movielens-100k"
GDMIX_PUBLISHED = {"global": 0.7090, "per_user": 0.7665, "per_movie": 0.7680}
ENCODERS = ("cnn", "transformer", "lstm")


def run(steps: int = 300, source: str | None = None) -> dict:
    from gdmix.config import load_config
    from gdmix.datasets.movielens import build_movielens_100k
    from gdmix.game import train

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ml"
        build_movielens_100k(str(data), source=source, seed=42)
        overrides = [f"data.train={data / 'train'}", f"data.validation={data / 'validation'}"]
        config = load_config(EXAMPLES / "detext.yaml", overrides + [f"output={Path(tmp) / 'model'}"])
        tic = time.perf_counter()
        result = train(config)
        quality = {"seconds": time.perf_counter() - tic,
                   "validation_auc": [{"pass": c["pass"], "coordinate": c["name"], "auc": c["validation"]["auc"]}
                                      for c in result.coordinates],
                   "gdmix_published": GDMIX_PUBLISHED}
        throughput = {encoder: _throughput(Path(tmp), overrides, encoder, steps) for encoder in ENCODERS}
    return {"benchmark": "detext", "quality": quality, "throughput_one_core": throughput, "steps": steps}


def _throughput(root: Path, overrides: list[str], encoder: str, steps: int) -> dict:
    """One worker with one TF thread: the job reports examples per second of its training loop."""
    raw = yaml.safe_load((EXAMPLES / "detext.yaml").read_text())
    raw["coordinates"] = [raw["coordinates"][0] | {"encoder": encoder, "steps": steps, "eval_every": steps}]
    for item in overrides:
        key, value = item.split("=", 1)
        raw["data"][key.split(".")[1]] = value
    config = root / f"{encoder}.yaml"
    config.write_text(yaml.safe_dump(raw))
    env = dict(os.environ, GDMIX_INTRA_OP_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "gdmix", "detext", str(config), "--coordinate", "global",
                           "--output", str(root / f"job-{encoder}")], capture_output=True, text=True, env=env,
                          timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    job = json.loads((root / f"job-{encoder}" / "job.json").read_text())
    solver = job["solver"]
    return {"examples_per_second": solver["examples_per_second"], "seconds": solver["seconds"],
            "batch_size": raw["coordinates"][0]["batch_size"], "validation_auc": solver["best_metric"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--source")
    args = parser.parse_args()
    print(json.dumps(run(args.steps, args.source), indent=2))


if __name__ == "__main__":
    main()
