"""The grid search that chooses ``examples/movielens-100k/lr-tuned.yaml``'s settings, on validation only.

Grid: coordinate-descent passes in {1, 3, 5} x per-user L2 in {1, 3, 5, 8, 20} x per-movie L2 in
{1, 3, 5, 8, 20} (the global fixed effect keeps ``lr.yaml``'s settings: L2 = 1, unpenalised
intercept). Each (per-user L2, per-movie L2) pair is trained once with 5 passes per split seed;
the model after pass p's last coordinate is exactly what a p-pass run produces (coordinate
descent is deterministic and each pass starts from the previous one), so one 5-pass run scores
passes 1, 3 and 5. The selection criterion is the mean VALIDATION AUC of the full model over the
split seeds (default 1, 2, 3; validation drawn with each seed). The splits are built with the
same fixed held-out test split as ``bench.movielens`` (``--test-fraction``, ``--test-seed``) so
train/validation rows match the reported runs, but the test rows are never given to training or
scoring here: test plays no part in the choice.

Prints the chosen settings and whether they match ``lr-tuned.yaml`` (``matches_lr_tuned_yaml``).

    python -m bench.movielens_tune [--seeds 1 2 3] [--l2 1 3 5 8 20] [--passes 1 3 5]
        [--test-fraction 0.1] [--test-seed 1000] [--source PATH]

Full size (25 pairs x 3 seeds, 5 passes each) on the 2-core VM: about 8 minutes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
from pathlib import Path

import yaml

from bench import measure
from bench.movielens import EXAMPLES, TEST_FRACTION, TEST_SEED, build, data_overrides

L2_GRID = (1.0, 3.0, 5.0, 8.0, 20.0)
PASSES = (1, 3, 5)
SEEDS = (1, 2, 3)


def tuned_settings() -> dict:
    """What ``lr-tuned.yaml`` says: passes and each random effect's L2."""
    raw = yaml.safe_load((EXAMPLES / "lr-tuned.yaml").read_text())
    l2 = {c["name"]: float(c.get("l2", 1.0)) for c in raw["coordinates"] if c["type"] == "random_effect"}
    return {"passes": int(raw.get("passes", 1)), "per_user_l2": l2.get("per_user"), "per_movie_l2": l2.get("per_movie")}


def run(seeds=SEEDS, l2_grid=L2_GRID, passes=PASSES, source: str | None = None, test_fraction: float = TEST_FRACTION,
        test_seed: int = TEST_SEED) -> dict:
    from gdmix.config import load_config
    from gdmix.game import train

    most = max(passes)
    scores: dict[tuple, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="gdmix-tune-") as tmp:
        for seed in seeds:
            data = Path(tmp) / f"ml-{seed}"
            build(data, seed, source, test_fraction, test_seed)
            for user_l2, movie_l2 in itertools.product(l2_grid, l2_grid):
                config = load_config(EXAMPLES / "lr.yaml", data_overrides(data, test=False) + [
                    f"output={Path(tmp) / 'out'}", f"passes={most}",
                    f"coordinates.per_user.l2={user_l2}", f"coordinates.per_movie.l2={movie_l2}"])
                result, _ = measure.timed(lambda: train(config))
                if any(c.get("test") for c in result.coordinates):
                    raise AssertionError("the tuning runs must not see the test split")
                for p in passes:
                    last = [c for c in result.coordinates if c["pass"] == p][-1]
                    scores.setdefault((p, user_l2, movie_l2), []).append(last["validation"]["auc"])
    table = [{"passes": p, "per_user_l2": u, "per_movie_l2": m, "mean_validation_auc": sum(v) / len(v),
              "validation_auc_per_seed": v} for (p, u, m), v in scores.items()]
    table.sort(key=lambda row: -row["mean_validation_auc"])
    best = table[0]
    chosen = {"passes": best["passes"], "per_user_l2": best["per_user_l2"], "per_movie_l2": best["per_movie_l2"]}
    shipped = tuned_settings()
    return {"benchmark": "movielens_tune", "seeds": list(seeds), "test_fraction": test_fraction, "test_seed": test_seed,
            "grid": {"passes": list(passes), "per_user_l2": list(l2_grid), "per_movie_l2": list(l2_grid)},
            "criterion": "mean validation AUC of the full model over the split seeds (test never used)",
            "chosen": chosen, "chosen_mean_validation_auc": best["mean_validation_auc"],
            "lr_tuned_yaml": shipped, "matches_lr_tuned_yaml": chosen == shipped,
            "top_10": table[:10], "grid_results": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--l2", type=float, nargs="+", default=list(L2_GRID))
    parser.add_argument("--passes", type=int, nargs="+", default=list(PASSES))
    parser.add_argument("--test-fraction", type=float, default=TEST_FRACTION)
    parser.add_argument("--test-seed", type=int, default=TEST_SEED)
    parser.add_argument("--source")
    args = parser.parse_args()
    result = run(args.seeds, args.l2, args.passes, args.source, args.test_fraction, args.test_seed)
    print(json.dumps({k: v for k, v in result.items() if k != "grid_results"}, indent=2))
    print(f"chosen: {result['chosen']} (mean validation AUC {result['chosen_mean_validation_auc']:.4f}); "
          f"lr-tuned.yaml: {result['lr_tuned_yaml']}; match: {result['matches_lr_tuned_yaml']}")


if __name__ == "__main__":
    main()
