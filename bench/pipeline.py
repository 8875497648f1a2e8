"""The MovieLens example as a kfp.local pipeline run (what ``make demo`` does) against the same
configuration trained in one process by ``gdmix train``: wall time of each, the pipeline's
overhead, and the final validation AUC of both (they must agree).

    python -m bench.pipeline [--source PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "movielens-100k"


def run(source: str | None = None) -> dict:
    from gdmix.config import load_config_text
    from gdmix.datasets.movielens import build_movielens_100k
    from gdmix.game import train
    from pipelines.run import run_local

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "ml"
        build_movielens_100k(str(data), source=source, seed=42)
        text = (EXAMPLES / "lr.yaml").read_text()
        overrides = [f"data.train={data / 'train'}", f"data.validation={data / 'validation'}"]
        tic = time.perf_counter()
        metrics = run_local(text, overrides + [f"output={Path(tmp) / 'pipeline'}"], workdir=str(Path(tmp) / "root"))
        pipeline_seconds = time.perf_counter() - tic
        tic = time.perf_counter()
        result = train(load_config_text(text, overrides + [f"output={Path(tmp) / 'train'}"]))
        train_seconds = time.perf_counter() - tic
    return {"benchmark": "pipeline", "config": "examples/movielens-100k/lr.yaml",
            "pipeline_seconds": pipeline_seconds, "gdmix_train_seconds": train_seconds,
            "pipeline_validation_auc": metrics["final"]["validation"]["auc"],
            "gdmix_train_validation_auc": result.coordinates[-1]["validation"]["auc"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source")
    print(json.dumps(run(parser.parse_args().source), indent=2))


if __name__ == "__main__":
    main()
