"""A GAME job shaped like Photon ML's published local performance test (linkedin/photon-ml PR #256).

Photon's test: 1,545,820 rows, 616 global features; a random effect of 673,373 entities
(1 / 2.29 / 276 rows per entity, 36.7 features per entity) and two of 260 and 288 entities
(about 5,900 and 5,400 rows, 31 features); 3 coordinate-descent passes; training took 38-42
minutes. This benchmark builds synthetic data of that shape in memory (labels from a true
GLMix model, 10 % held out), runs gdmix's coordinate descent on it (3 passes, outputs
written), and measures the large random effect's throughput against a GDMix-style per-entity
``fmin_l_bfgs_b`` loop on a sample of its entities (models per CPU-second, so per core).

    python -m bench.photon [--baseline-entities 3000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

import numpy as np
import pyarrow as pa
import scipy.sparse as sp

from bench.random_effect import gdmix_style_entity
from gdmix.config import validate_config
from gdmix.dataset import Dataset, EntityIds
from gdmix.features.index_map import IndexMap
from gdmix.game import Split, coordinate_descent
from gdmix.models.random_effect import fit_random_effect

SHAPE = {
    "global_features": 616, "global_nnz": 30,
    "re1_entities": 673_373, "re1_features": 200, "re1_nnz": 16, "re1_zipf": 2.33, "re1_max_rows": 276,
    "re23_entities": (260, 288), "re23_features": 31, "re23_nnz": 10,
}


def _sparse(rng, rows, width, nnz):
    cols = np.argsort(rng.random((rows, width)), axis=1)[:, :nnz] if width <= 256 else \
        rng.integers(0, width, (rows, nnz))
    cols = np.sort(cols, axis=1).astype(np.int32)
    matrix = sp.csr_matrix((rng.normal(size=rows * nnz), cols.ravel(), np.arange(0, rows * nnz + 1, nnz)),
                           shape=(rows, width))
    matrix.sum_duplicates()
    return matrix


def make_data(seed: int = 0, shape: dict = SHAPE):
    """Rows in random order with one entity of each random effect; returns (train, validation)."""
    rng = np.random.default_rng(seed)
    counts = np.minimum(rng.zipf(shape["re1_zipf"], shape["re1_entities"]), shape["re1_max_rows"])
    rows = int(counts.sum())
    re1 = rng.permutation(np.repeat(np.arange(shape["re1_entities"]), counts))
    re2 = rng.integers(0, shape["re23_entities"][0], rows)
    re3 = rng.integers(0, shape["re23_entities"][1], rows)
    bags = {
        "global": _sparse(rng, rows, shape["global_features"], shape["global_nnz"]),
        "re1": _sparse(rng, rows, shape["re1_features"], shape["re1_nnz"]),
        "re2": _sparse(rng, rows, shape["re23_features"], shape["re23_nnz"]),
        "re3": _sparse(rng, rows, shape["re23_features"], shape["re23_nnz"]),
    }
    logit = bags["global"] @ rng.normal(scale=0.1, size=shape["global_features"])
    logit += rng.normal(scale=0.8, size=shape["re1_entities"])[re1]
    logit += np.asarray(bags["re1"].multiply(rng.normal(scale=0.2, size=(shape["re1_entities"], 1))[re1]).sum(1)).ravel()
    logit += rng.normal(scale=0.5, size=shape["re23_entities"][0])[re2]
    logit += rng.normal(scale=0.5, size=shape["re23_entities"][1])[re3]
    labels = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.float64)
    entities = {"re1_id": re1, "re2_id": re2, "re3_id": re3}
    held_out = rng.random(rows) < 0.1

    def subset(mask):
        index = np.flatnonzero(mask)
        return Dataset(
            uid=index.astype(np.int64), label=labels[index], weight=np.ones(len(index)), offset=np.zeros(len(index)),
            entities={name: EntityIds(codes[index].astype(np.int64), pa.array(np.arange(codes.max() + 1)))
                      for name, codes in entities.items()},
            bags={name: matrix[index] for name, matrix in bags.items()},
        )

    return subset(~held_out), subset(held_out)


def _index_maps(shape: dict) -> dict[str, IndexMap]:
    def names(prefix, width):
        return IndexMap(pa.array([prefix] * width), pa.array([f"{k:05d}" for k in range(width)]))

    return {"global": names("g", shape["global_features"]), "re1": names("r1", shape["re1_features"]),
            "re2": names("r2", shape["re23_features"]), "re3": names("r3", shape["re23_features"])}


def run(baseline_entities: int = 3000, seed: int = 0) -> dict:
    tic = time.perf_counter()
    train, validation = make_data(seed)
    generation = time.perf_counter() - tic
    with tempfile.TemporaryDirectory() as out:
        config = validate_config({
            "data": {"train": "in-memory", "validation": "in-memory"},
            "output": out, "passes": 3,
            "coordinates": [
                {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
                {"name": "per_re1", "type": "random_effect", "entity": "re1_id", "feature_bag": "re1"},
                {"name": "per_re2", "type": "random_effect", "entity": "re2_id", "feature_bag": "re2"},
                {"name": "per_re3", "type": "random_effect", "entity": "re3_id", "feature_bag": "re3"},
            ],
        })
        tic = time.perf_counter()
        result = coordinate_descent(config, [Split("train", train, {}), Split("validation", validation, {})],
                                    _index_maps(SHAPE))
        total = time.perf_counter() - tic
    coordinates = [{"name": c["name"], "pass": c["pass"], "seconds": round(c["train_seconds"], 3),
                    "validation_auc": round(c["validation"]["auc"], 4)} for c in result.coordinates]

    # throughput of the large random effect, ours vs the GDMix-style per-entity loop, per CPU-second
    codes = train.entities["re1_id"].codes
    x, y, w, o = train.bags["re1"], train.label, train.weight, train.offset
    spec = config.coordinates[1]
    wall, cpu = time.perf_counter(), time.process_time()
    trained, *_ = fit_random_effect(codes, x, y, w, o, spec)
    ours_wall, ours_cpu = time.perf_counter() - wall, time.process_time() - cpu
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(codes.max() + 2))
    sample = np.random.default_rng(seed + 1).choice(trained, min(baseline_entities, len(trained)), replace=False)
    sorted_x, sorted_y, sorted_w, sorted_o = x[order], y[order], w[order], o[order]
    wall, cpu = time.perf_counter(), time.process_time()
    for entity in sample:  # each entity's rows are already sliced out, as GDMix's producer did
        rows = slice(starts[entity], starts[entity + 1])
        gdmix_style_entity(sorted_x[rows], sorted_y[rows], sorted_w[rows], sorted_o[rows], spec.l2)
    base_wall, base_cpu = time.perf_counter() - wall, time.process_time() - cpu
    ours_rate, base_rate = len(trained) / ours_cpu, len(sample) / base_cpu
    return {
        "benchmark": "photon_like_game",
        "rows": train.num_rows + validation.num_rows, "train_rows": train.num_rows,
        "re1_entities": int(len(np.unique(codes))), "generation_seconds": generation,
        "total_seconds": total, "coordinates": coordinates,
        "seconds_per_pass": [round(sum(c["seconds"] for c in coordinates if c["pass"] == p), 2) for p in (1, 2, 3)],
        "re1_throughput": {
            "ours_models_per_cpu_second": ours_rate, "ours_wall_seconds": ours_wall, "ours_cpu_seconds": ours_cpu,
            "gdmix_style_models_per_cpu_second": base_rate, "gdmix_style_sample": int(len(sample)),
            "gdmix_style_wall_seconds_for_sample": base_wall, "ratio_per_core": ours_rate / base_rate,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-entities", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(json.dumps(run(args.baseline_entities, args.seed), indent=2))


if __name__ == "__main__":
    main()
