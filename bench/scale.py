"""Random effects out of core: prep and partitioned training of up to 10M entities / 30M rows.

For each size, synthetic raw rows (uid, label, entity id, five numeric features; about three
rows per entity, labels from a true per-entity model) are written as Parquet, prepared with
``gdmix prep`` (Spark, local) into partitions of about ``rows_per_partition`` rows, and trained
with ``gdmix train-random-effect`` (one process, one partition at a time). Each command runs
as a separate process tree whose peak resident memory (all processes, the Spark JVM
included) is sampled from /proc. Time per row of the random-effect step should stay flat as
the data grows (linear scaling).

    python -m bench.scale [--sizes 3000000:1000000 10000000:3333333 30000000:10000000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

FEATURES = 5
CHUNK = 2_000_000


def generate_raw(out: Path, rows: int, entities: int, seed: int = 0) -> None:
    """Rows in random order, entity sizes 1 + Poisson(rows / entities - 1)."""
    rng = np.random.default_rng(seed)
    counts = 1 + rng.poisson(max(rows / entities - 1, 0), entities)
    counts[-1] += rows - counts.sum() if counts.sum() < rows else 0
    owner = rng.permutation(np.repeat(np.arange(entities, dtype=np.int64), counts))[:rows]
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


def _tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants (from /proc)."""
    total, stack = 0, [pid]
    while stack:
        current = stack.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS"))) * 1024
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
            stack += [int(child) for child in children]
        except (OSError, StopIteration):
            continue
    return total


def measure(command: list[str]) -> dict:
    """Run a command; wall seconds and peak resident memory of its process tree."""
    tic = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while process.poll() is None:
            peak[0] = max(peak[0], _tree_rss(process.pid))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = process.communicate()
    sampler.join()
    if process.returncode != 0:
        raise RuntimeError(f"{command[3]} failed:\n{stderr[-3000:]}")
    return {"seconds": time.perf_counter() - tic, "peak_memory_bytes": peak[0], "stdout": stdout}


def run(sizes=((3_000_000, 1_000_000), (10_000_000, 3_333_333), (30_000_000, 10_000_000)),
        rows_per_partition: int = 500_000) -> dict:
    results = []
    for rows, entities in sizes:
        with tempfile.TemporaryDirectory(prefix="gdmix-scale-") as tmp:
            root = Path(tmp)
            tic = time.perf_counter()
            generate_raw(root / "raw", rows, entities)
            generation = time.perf_counter() - tic
            partitions = max(1, rows // rows_per_partition)
            (root / "config.yaml").write_text(yaml.safe_dump(_config(root, partitions)))
            gdmix = [sys.executable, "-m", "gdmix"]
            prep = measure([*gdmix, "prep", str(root / "config.yaml")])
            train = measure([*gdmix, "train-random-effect", str(root / "config.yaml"), "--coordinate", "per_user",
                             "--output", str(root / "model")])
            summary = json.loads((root / "model" / "done" / "per_user.json").read_text())
            results.append({
                "rows": rows, "entities": entities, "partitions": partitions, "generation_seconds": generation,
                "prep_seconds": prep["seconds"], "prep_peak_memory_gib": prep["peak_memory_bytes"] / 2**30,
                "train_seconds": train["seconds"], "train_peak_memory_gib": train["peak_memory_bytes"] / 2**30,
                "entities_trained": summary["entities_trained"], "unconverged": summary["unconverged_entities"],
                "train_microseconds_per_row": 1e6 * train["seconds"] / rows,
                "largest_partition_seconds": summary["largest_partition_seconds"],
            })
            print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    return {"benchmark": "random_effect_scale", "cpu_count": os.cpu_count(), "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["3000000:1000000", "10000000:3333333", "30000000:10000000"],
                        help="ROWS:ENTITIES pairs")
    parser.add_argument("--rows-per-partition", type=int, default=500_000)
    args = parser.parse_args()
    sizes = [tuple(int(v) for v in item.split(":")) for item in args.sizes]
    print(json.dumps(run(sizes, args.rows_per_partition), indent=2))


if __name__ == "__main__":
    main()
