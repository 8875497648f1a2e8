import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.models.fixed_effect import FixedEffectModel
from gdmix.models.random_effect import RandomEffectModel


def test_staged_directory_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    with fs.staged_directory(str(target)) as staging:
        fs.write_text(fs.join(staging, "a.txt"), "first")
    assert (target / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError):
        with fs.staged_directory(str(target)) as staging:
            fs.write_text(fs.join(staging, "a.txt"), "second")
            raise RuntimeError("boom")
    assert (target / "a.txt").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failed_commit_restores_the_previous_directory(tmp_path, monkeypatch):
    target = tmp_path / "out"
    with fs.staged_directory(str(target)) as staging:
        fs.write_text(fs.join(staging, "a.txt"), "first")
    local = type(fs.url_to_fs(str(target))[0])
    original = local.mv
    calls = []

    def flaky(self, source, destination, **kwargs):
        calls.append(source)
        if ".staging-" in source:
            raise OSError("disk full")
        return original(self, source, destination, **kwargs)

    monkeypatch.setattr(local, "mv", flaky)
    with pytest.raises(OSError):
        with fs.staged_directory(str(target)) as staging:
            fs.write_text(fs.join(staging, "a.txt"), "second")
    monkeypatch.setattr(local, "mv", original)
    assert (target / "a.txt").read_text() == "first"
    assert any(".previous-" in c for c in calls)


def test_json_is_strict_and_atomic(tmp_path):
    text = fs.to_json({"auc": float("nan"), "values": [1.0, float("inf")], "n": 3})
    assert json.loads(text) == {"auc": None, "values": [1.0, None], "n": 3}
    fs.write_text_atomic(str(tmp_path / "m.json"), text)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json"]


def test_uid_beyond_int64_is_a_data_error(tmp_path):
    table = pa.table({"uid": pa.array([1, 2**63 + 5], pa.uint64()), "label": pa.array([0.0, 1.0])})
    (tmp_path / "d").mkdir()
    pq.write_table(table, tmp_path / "d" / "part-0.parquet")
    with pytest.raises(DataError, match=r"column 'uid', row 1.*int64"):
        read_contract_table(str(tmp_path / "d"), ContractColumns())


def test_model_tables_with_repeated_coefficients_are_rejected():
    index_map = IndexMap.from_features(pa.array(["a"]), pa.array([""]))
    fixed = pa.table({"name": ["(INTERCEPT)", "a", "a"], "term": ["", "", ""], "value": [0.1, 1.0, 2.0]})
    with pytest.raises(DataError, match="appears 2 times"):
        FixedEffectModel.from_table(fixed, index_map, "models/global")
    random = pa.table({"entity": ["u", "u", "v"], "name": ["(INTERCEPT)"] * 3, "term": [""] * 3,
                       "value": [0.1, 0.2, 0.3]})
    with pytest.raises(DataError, match="appears 2 times"):
        RandomEffectModel.from_table(random, index_map)
    fine = RandomEffectModel.from_table(random.slice(1), index_map)
    assert fine.entity_ids.to_pylist() == ["u", "v"] and np.allclose(fine.intercepts, [0.2, 0.3])
