"""``make bench``: run every benchmark, save its JSON under bench/results/, print a summary."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

from bench import movielens, random_effect

RESULTS = Path(__file__).resolve().parent / "results"


def main() -> None:
    RESULTS.mkdir(exist_ok=True)
    stamp = {"date": datetime.date.today().isoformat(), "machine": platform.processor() or platform.machine()}
    for name, run in (("random_effect", lambda: random_effect.run(baseline_entities=0)),
                      ("movielens", movielens.run)):
        result = {**stamp, **run()}
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"== {name}")
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
