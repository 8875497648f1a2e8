"""Random effects out of core: prep and partitioned training of up to 10M entities / 30M rows.

For each size, synthetic raw rows (uid, label, entity id, five numeric features; every entity
gets 1 + a multinomial share of the remaining rows, so exactly ROWS rows and at least one per
entity, about three on average; labels from a true per-entity model) are written as Parquet,
prepared with ``gdmix prep`` (Spark ``local[2]``, no split: every row is a training row) into
partitions of about ``rows_per_partition`` rows, and trained with ``gdmix train-random-effect``
(one process, one partition at a time). Each command runs as a separate process tree, timed from
process start (Python, Spark JVM and TensorFlow-free start-up included): wall seconds, CPU
seconds of the whole tree (RUSAGE_CHILDREN) and peak resident memory of the tree (the Spark JVM
included, sampled from /proc every 0.2 s). Prep and training are reported apart and summed
(end-to-end = prep + train; peak = the larger of the two). Time per row of the random-effect
step should stay flat as the data grows (linear scaling). Every entity must have rows
(``entities_without_rows: 0``) and be trained (``entities_not_trained: 0``).

    python -m bench.scale [--sizes 3000000:1000000 10000000:3333333 30000000:10000000]
        [--rows-per-partition 500000] [--repeats 1]

Each size runs once by default (``--repeats`` for more; the commands are minutes long). Full
size (the three default sizes) on the 2-core VM: about 11 minutes (generation ~1 min, prep
~6.5 min, training ~3 min).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from bench import measure
from gdmix.jobs.specs import PrepJobSpec, RandomEffectJobSpec, gdmix_command

FEATURES = 5
CHUNK = 2_000_000


def entity_counts(rows: int, entities: int, rng: np.random.Generator) -> np.ndarray:
    """Rows per entity: 1 each, plus the other ``rows - entities`` rows spread uniformly at random
    (a multinomial, close to 1 + Poisson(rows / entities - 1)); sums to ``rows`` exactly."""
    if rows < entities:
        raise ValueError(f"{rows} rows cannot give each of {entities} entities a row")
    extra = np.bincount(rng.integers(0, entities, rows - entities), minlength=entities)
    return 1 + extra


def generate_raw(out: Path, rows: int, entities: int, seed: int = 0) -> dict:
    """Rows in random order, every entity with at least one row; a summary of the entity sizes."""
    rng = np.random.default_rng(seed)
    counts = entity_counts(rows, entities, rng)
    owner = rng.permutation(np.repeat(np.arange(entities, dtype=np.int64), counts))
    written = np.bincount(owner, minlength=entities)
    bias = rng.normal(scale=0.8, size=entities)
    slope = rng.normal(scale=0.5, size=(entities, FEATURES)).astype(np.float32)
    out.mkdir(parents=True)
    for k, start in enumerate(range(0, rows, CHUNK)):
        ids = owner[start:start + CHUNK]
        x = rng.normal(size=(len(ids), FEATURES))
        logit = bias[ids] + np.einsum("ij,ij->i", x, slope[ids])
        columns = {"uid": np.arange(start, start + len(ids), dtype=np.int64),
                   "label": (rng.random(len(ids)) < 1 / (1 + np.exp(-logit))).astype(np.int8),
                   "user_id": ids}
        columns.update({f"f{j}": x[:, j] for j in range(FEATURES)})
        pq.write_table(pa.table(columns), out / f"part-{k:05d}.parquet")
    return {"rows_written": int(len(owner)), "entities_without_rows": int(np.count_nonzero(written == 0)),
            "rows_per_entity": {"min": int(written.min()), "mean": float(written.mean()), "max": int(written.max())}}


def _config(root: Path, partitions: int) -> dict:
    return {
        "data": {"train": str(root / "prepared" / "train")},
        "output": str(root / "model"),
        "coordinates": [{"name": "per_user", "type": "random_effect", "entity": "user_id",
                         "feature_bag": "per_user", "partitions": partitions}],
        "prep": {"input": {"path": str(root / "raw")}, "output": str(root / "prepared"), "uid": "uid",
                 "label": {"column": "label"},
                 "bags": {"per_user": {"numeric": [f"f{j}" for j in range(FEATURES)]}},
                 "spark": {"master": "local[2]", "driver_memory": "10g", "shuffle_partitions": 64}},
    }


def run(sizes=((3_000_000, 1_000_000), (10_000_000, 3_333_333), (30_000_000, 10_000_000)),
        rows_per_partition: int = 500_000, repeats: int = 1) -> dict:
    results = []
    for rows, entities in sizes:
        with tempfile.TemporaryDirectory(prefix="gdmix-scale-") as tmp:
            root = Path(tmp)
            generated, generation = measure.timed(lambda: generate_raw(root / "raw", rows, entities))
            partitions = max(1, rows // rows_per_partition)
            (root / "config.yaml").write_text(yaml.safe_dump(_config(root, partitions)))
            config = str(root / "config.yaml")
            job = RandomEffectJobSpec(config=config, coordinate="per_user", output=str(root / "model"))
            env = measure.machine_threads_env()
            preps, trains, summary = [], [], None
            for k in range(max(1, repeats)):
                for stale in ("prepared", "model"):
                    if (root / stale).exists():
                        shutil.rmtree(root / stale)
                preps.append(measure.run_process(gdmix_command(PrepJobSpec(config=config).to_argv()), env=env))
                trains.append(measure.run_process(gdmix_command(job.to_argv()), env=env))
                summary = json.loads((root / "model" / "done" / "per_user.json").read_text())

            def stats(runs, key, scale=1.0):
                return measure.summary([r[key] / scale for r in runs])

            total = [p["wall_seconds"] + t["wall_seconds"] for p, t in zip(preps, trains)]
            results.append({
                "rows": rows, "entities": entities, "partitions": partitions, "repeats": len(preps),
                "generation": generation, **generated,
                "prep": {"wall_seconds": stats(preps, "wall_seconds"), "cpu_seconds": stats(preps, "cpu_seconds"),
                         "peak_memory_gib": stats(preps, "peak_memory_bytes", 2**30)},
                "train": {"wall_seconds": stats(trains, "wall_seconds"), "cpu_seconds": stats(trains, "cpu_seconds"),
                          "peak_memory_gib": stats(trains, "peak_memory_bytes", 2**30)},
                "prep_plus_train": {
                    "wall_seconds": measure.summary(total),
                    "cpu_seconds": measure.summary([p["cpu_seconds"] + t["cpu_seconds"] for p, t in zip(preps, trains)]),
                    "peak_memory_gib": measure.summary([max(p["peak_memory_bytes"], t["peak_memory_bytes"]) / 2**30
                                                        for p, t in zip(preps, trains)])},
                "entities_trained": summary["entities_trained"], "unconverged": summary["unconverged_entities"],
                "entities_not_trained": entities - summary["entities_trained"],
                "train_microseconds_per_row": measure.summary([1e6 * t["wall_seconds"] / rows for t in trains]),
                "largest_partition_seconds": summary["largest_partition_seconds"],
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {"benchmark": "random_effect_scale",
            "what_is_timed": {
                "generation": "writing the raw Parquet (not part of any figure)",
                "prep": "`gdmix prep CONFIG` as a fresh process tree: Python and Spark JVM start-up, reading raw "
                        "Parquet, labels, bags, entity partitioning, writing prepared data",
                "train": "`gdmix train-random-effect` as a fresh process: start-up, reading each partition, "
                         "training every entity, writing the model",
                "peak_memory": "resident set of the whole process tree, sampled every 0.2 s",
                "cpu_seconds": "user + system of the whole process tree (RUSAGE_CHILDREN)"},
            "threads": {"prep": "Spark local[2] (2 task threads) plus the JVM's own",
                        "train": measure.thread_settings(measure.machine_threads_env())},
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["3000000:1000000", "10000000:3333333", "30000000:10000000"],
                        help="ROWS:ENTITIES pairs")
    parser.add_argument("--rows-per-partition", type=int, default=500_000)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in item.split(":")) for item in args.sizes]
    print(json.dumps(run(sizes, args.rows_per_partition, args.repeats), indent=2))


if __name__ == "__main__":
    main()
