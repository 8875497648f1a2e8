"""Shared fixtures: small contract datasets written by the tests themselves."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

# the repository root: tests use the cluster-rehearsal harness (rehearsal/), which is not installed
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# py4j logs at INFO from __del__ at interpreter exit, after pytest closed the streams
logging.getLogger("py4j").setLevel(logging.WARNING)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

from gdmix.example_data.synthetic import generate_synthetic, write_synthetic  # noqa: E402
from gdmix.io.contract import FEATURE_BAG_TYPE  # noqa: E402


def bag(rows: list[list[tuple[str, str, float]]]) -> pa.Array:
    """A feature-bag column from Python lists of (name, term, value)."""
    return pa.array(
        [[{"name": n, "term": t, "value": v} for n, t, v in row] for row in rows], type=FEATURE_BAG_TYPE
    )


def dense_bag(matrix: np.ndarray, name: str = "f") -> pa.Array:
    """A bag holding the non-zeros of a dense matrix as features (name, "<column>")."""
    return bag([[(name, str(j), float(v)) for j, v in enumerate(row) if v != 0] for row in matrix])


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> str:
    """A small synthetic GLMix dataset with two random effects (shared by many tests)."""
    out = tmp_path_factory.mktemp("synthetic")
    data = generate_synthetic(
        6000, {"user_id": 150, "item_id": 40}, global_features=12, global_nnz=4,
        re_features=4, re_nnz=2, skew=0.8, seed=3,
    )
    write_synthetic(str(out), data)
    return str(out)


def write_titled_synthetic(root: Path, rows: int, words, splits=("train", "validation")) -> None:
    """Synthetic data (60 users, 30 items) with a ``title`` per item built from ``words``: DeText's
    document text, so the item's identity is learnable from text alone."""
    import pyarrow.parquet as pq

    write_synthetic(str(root), generate_synthetic(rows, {"user_id": 60, "item_id": 30}, global_features=8,
                                                  global_nnz=3, re_features=3, re_nnz=2, seed=11))
    for split in splits:
        for path in (root / split).glob("*.parquet"):
            table = pq.read_table(path)
            items = table.column("item_id").to_numpy()
            titles = [f"{words[i % 8]} {words[(i // 8) % 8]} film {i}" for i in items]
            pq.write_table(table.append_column("title", pa.array(titles)), path)


def synthetic_config(data_dir: str, output: str, **overrides) -> dict:
    raw = {
        "data": {"train": f"{data_dir}/train", "validation": f"{data_dir}/validation"},
        "output": output,
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
            {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user_id"},
            {"name": "per_item", "type": "random_effect", "entity": "item_id", "feature_bag": "per_item_id"},
        ],
    }
    raw.update(overrides)
    return raw
