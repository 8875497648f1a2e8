"""``make bench``: run every benchmark, save its JSON under bench/results/, print a summary.

    python -m bench.run_all [NAME ...]     # default: all of them (see BENCHMARKS)
"""

from __future__ import annotations

import datetime
import json
import platform
import sys
from pathlib import Path

from bench import detext, fixed_effect, fixed_effect_scale, movielens, photon, pipeline, random_effect, scale

RESULTS = Path(__file__).resolve().parent / "results"
BENCHMARKS = {
    "random_effect": lambda: random_effect.run(baseline_entities=0),
    "fixed_effect": fixed_effect.run,
    "fixed_effect_scale": fixed_effect_scale.run,
    "movielens": movielens.run,
    "photon": photon.run,
    "scale": scale.run,
    "detext": detext.run,
    "pipeline": pipeline.run,
}


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    stamp = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine()}
    for name in sys.argv[1:] or list(BENCHMARKS):
        result = {**stamp, **BENCHMARKS[name]()}
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"== {name}")
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
