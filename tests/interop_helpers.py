"""Shared by the interop tests: small linear models of ours, data to score them on, and the
upstream artefacts (Photon ML's schema files, GDMix 0.3.0's own functions) read from where
they are vendored."""

from __future__ import annotations

import ast
import collections
import json
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp

from gdmix.artifacts import TrainedModel, save_model
from gdmix.config import DataConfig, FixedEffectConfig, RandomEffectConfig
from gdmix.features.index_map import IndexMap
from gdmix.models.coordinates import make_coordinate
from gdmix.models.fixed_effect import FixedEffectModel, FixedEffectVariances
from gdmix.models.random_effect import CoefficientVariances, RandomEffectModel

from conftest import bag

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = ROOT / "gdmix" / "io" / "avro_schemas"
GDMIX_030 = ROOT / "tests" / "upstream" / "gdmix-0.3.0"

#: features with the awkward names real bags have: commas, an empty term, non-ASCII
GLOBAL_FEATURES = [("age", ""), ("genre", "drama"), ("genre", "sci,fi"), ("title", "amélie"), ("year", "1999")]
USER_FEATURES = [("genre", "comedy"), ("genre", "drama"), ("hour", "23")]
ENTITY_IDS = {"int64": [17, -3, 2 ** 40, 0, 5], "string": ["alice", "bob", "ü-ñ", "with,comma", "0"]}


def upstream_schema() -> dict:
    """Photon's BayesianLinearModelAvro from its two vendored files alone, independent of gdmix's
    loader: ``NameTermValueAvro`` defined where first used (``means``), as Avro's compiler
    resolves it, so a file written with it carries the whole schema."""
    record = json.loads((SCHEMAS / "NameTermValueAvro.avsc").read_text())
    schema = json.loads((SCHEMAS / "BayesianLinearModelAvro.avsc").read_text())
    means = next(f for f in schema["fields"] if f["name"] == "means")
    assert means["type"]["items"] == record["name"]
    means["type"]["items"] = record
    return fastavro.parse_schema(schema)


def gdmix_functions(*names: str, filename: str = "io_utils.py", **namespace) -> dict:
    """Functions of GDMix 0.3.0's vendored source, defined together in one namespace (the
    module itself imports TensorFlow; ``namespace`` stands in for what they use of it)."""
    tree = ast.parse((GDMIX_030 / filename).read_text())
    found = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name in names]
    assert sorted(node.name for node in found) == sorted(names), f"not all of {names} are in {filename}"
    scope = {"np": np, "collections": collections, **namespace}
    exec(compile(ast.Module(body=found, type_ignores=[]), str(GDMIX_030 / filename), "exec"), scope)
    return {name: scope[name] for name in names}


def gdmix_constant(name: str, filename: str):
    """A module-level constant of GDMix 0.3.0's vendored source."""
    tree = ast.parse((GDMIX_030 / filename).read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{name} is not in {filename}")


def index_map(features) -> IndexMap:
    return IndexMap.from_features(pa.array([n for n, _ in features]), pa.array([t for _, t in features]))


def coordinates(bag_of_user: str | None = "per_user_id"):
    return [make_coordinate(FixedEffectConfig(name="global", type="fixed_effect", feature_bag="global")),
            make_coordinate(RandomEffectConfig(name="per_user", type="random_effect", entity="user_id",
                                               feature_bag=bag_of_user))]


def build_model(entity_kind: str, variances: bool, seed: int = 0) -> TrainedModel:
    """A fixed effect (some coefficients exactly zero) and a random effect over ``entity_kind``
    ids (entities with and without coefficients), optionally with variances (a NaN one too:
    an entity carried over from a model without them)."""
    rng = np.random.default_rng(seed)
    maps = {"global": index_map(GLOBAL_FEATURES), "per_user_id": index_map(USER_FEATURES)}
    coef = rng.normal(size=len(GLOBAL_FEATURES)) * np.array([1, 0, 1, 1, 0])
    fe_var = FixedEffectVariances(float(rng.random()), rng.random(len(coef))) if variances else None
    fixed = FixedEffectModel(float(rng.normal()), coef, fe_var)
    ids = ENTITY_IDS[entity_kind]
    dense = rng.normal(size=(len(ids), len(USER_FEATURES))) * (rng.random((len(ids), len(USER_FEATURES))) < 0.6)
    dense[1] = 0.0  # an entity with its intercept only
    re_coef = sp.csr_matrix(dense)
    re_var = None
    if variances:
        var_intercepts = rng.random(len(ids))
        var_intercepts[2] = np.nan
        re_var = CoefficientVariances(var_intercepts, sp.csr_matrix(np.where(dense != 0, rng.random(dense.shape), 0)))
    random = RandomEffectModel(pa.array([str(i) for i in ids]), rng.normal(size=len(ids)), re_coef, variances=re_var)
    return TrainedModel(DataConfig(train="unused"), coordinates(), maps, {"global": fixed, "per_user": random})


def save(model: TrainedModel, root: Path) -> str:
    save_model(str(root), model)
    return str(root)


def write_scoring_data(root: Path, entity_kind: str, rows: int = 300, seed: int = 1) -> str:
    """Contract data over the model's features and entities (plus unknown ones of each)."""
    rng = np.random.default_rng(seed)
    ids = ENTITY_IDS[entity_kind] + ([999] if entity_kind == "int64" else ["nobody"])
    users = [ids[i] for i in rng.integers(0, len(ids), rows)]
    global_pool = GLOBAL_FEATURES + [("unknown", "x")]

    def draw(pool):
        chosen = rng.random(len(pool)) < 0.5
        return [(n, t, float(rng.normal())) for (n, t), keep in zip(pool, chosen) if keep]

    table = pa.table({
        "uid": pa.array(np.arange(rows, dtype=np.int64)),
        "label": pa.array(rng.integers(0, 2, rows).astype(np.float64)),
        "user_id": pa.array(users, pa.int64() if entity_kind == "int64" else pa.string()),
        "global": bag([draw(global_pool) for _ in range(rows)]),
        "per_user_id": bag([draw(USER_FEATURES) for _ in range(rows)]),
    })
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "part-00000.parquet")
    return str(root)
