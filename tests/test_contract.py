import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gdmix.errors import DataError
from gdmix.io.contract import FEATURE_BAG_TYPE, ContractColumns, read_contract_table

from conftest import bag

COLUMNS = ContractColumns(entities=("user_id",), bags=("g",))


def _table(n=4, **replace):
    columns = {
        "uid": pa.array(np.arange(n, dtype=np.int64)),
        "label": pa.array([0.0, 1.0] * (n // 2)),
        "user_id": pa.array(np.arange(n, dtype=np.int64) % 2),
        "g": bag([[("a", "", 1.0), ("b", "x", 2.0)]] * n),
    }
    columns.update(replace)
    return pa.table(columns)


def _write(tmp_path, *tables):
    root = tmp_path / "data"
    root.mkdir()
    for k, table in enumerate(tables):
        pq.write_table(table, root / f"part-{k}.parquet")
    return str(root)


def test_reads_and_normalises(tmp_path):
    struct = pa.struct([("name", pa.string()), ("term", pa.string()), ("value", pa.float32())])
    odd_bag = pa.array([[{"name": "a", "term": None, "value": 1.5}], None, [], []],
                       type=pa.large_list(struct))
    root = _write(tmp_path, _table(uid=pa.array([1, 2, 3, 4], pa.int32()), g=odd_bag,
                                   label=pa.array([True, False, True, False]),
                                   user_id=pa.array(["u", "v", "u", "w"]).dictionary_encode()),
                  _table(uid=pa.array(np.arange(10, 14)), user_id=pa.array(["a", "b", "c", "d"])))
    data = read_contract_table(root, COLUMNS)
    table = data.table
    assert table.num_rows == 8 and data.has_label
    assert table.schema.field("uid").type == pa.int64()
    assert table.column("label").to_pylist()[:4] == [1.0, 0.0, 1.0, 0.0]
    assert table.column("weight").to_pylist() == [1.0] * 8
    assert table.column("offset").to_pylist() == [0.0] * 8
    assert table.schema.field("g").type == FEATURE_BAG_TYPE
    assert table.column("g").to_pylist()[0] == [{"name": "a", "term": "", "value": 1.5}]
    assert table.column("g").to_pylist()[1] == []
    assert data.locate(5) == (data.pieces[1].path, 1)


def test_type_mismatch_between_files(tmp_path):
    root = _write(tmp_path, _table(user_id=pa.array(["a", "b", "c", "d"])), _table(uid=pa.array(np.arange(5, 9))))
    with pytest.raises(DataError, match="column 'user_id'.*differs"):
        read_contract_table(root, COLUMNS)


def test_weight_and_offset_columns(tmp_path):
    root = _write(tmp_path, _table(weight=pa.array([1, 2, 0, 3]), offset=pa.array([0.5, -1.0, 0.0, 2.0])))
    table = read_contract_table(root, COLUMNS).table
    assert table.column("weight").to_pylist() == [1.0, 2.0, 0.0, 3.0]
    assert table.column("offset").to_pylist() == [0.5, -1.0, 0.0, 2.0]
    with pytest.raises(DataError, match="column 'w'"):
        read_contract_table(root, ContractColumns(weight="w"))


@pytest.mark.parametrize(
    "replace, message",
    [
        ({"label": pa.array([0.0, 2.0, 1.0, 0.0])}, r"column 'label', row 1.*label 2.0 is not 0 or 1"),
        ({"label": pa.array([0.0, None, 1.0, 0.0])}, r"column 'label', row 1.*null"),
        ({"g": bag([[("a", "", 1.0)], [], [("b", "", float("nan"))], []])}, r"column 'g', row 2.*non-finite"),
        ({"g": bag([[("a", "", float("inf"))], [], [], []])}, r"column 'g', row 0.*non-finite value inf"),
        ({"weight": pa.array([1.0, -1.0, 1.0, 1.0])}, r"column 'weight', row 1.*negative"),
        ({"offset": pa.array([1.0, 1.0, 1.0, float("nan")])}, r"column 'offset', row 3.*not finite"),
        ({"user_id": pa.array([1, None, 2, 3])}, r"column 'user_id', row 1.*null"),
        ({"user_id": pa.array([1.0, 2.0, 2.0, 3.0])}, r"column 'user_id'.*integers or strings"),
        ({"uid": pa.array([1.0, 2.0, 3.0, 4.0])}, r"column 'uid'.*integer"),
        ({"g": pa.array([[1.0], [], [], []])}, r"column 'g'.*list<struct"),
    ],
)
def test_bad_values_name_file_column_and_row(tmp_path, replace, message):
    root = _write(tmp_path, _table(**replace))
    with pytest.raises(DataError, match=message) as info:
        read_contract_table(root, COLUMNS)
    assert "part-0.parquet" in str(info.value)


def test_missing_column(tmp_path):
    root = _write(tmp_path, _table().drop_columns(["g"]))
    with pytest.raises(DataError, match=r"part-0.parquet, column 'g': missing feature bag column"):
        read_contract_table(root, COLUMNS)
    (tmp_path / "unlabeled").mkdir()
    root2 = _write(tmp_path / "unlabeled", _table().drop_columns(["label"]))
    with pytest.raises(DataError, match="missing label column"):
        read_contract_table(root2, COLUMNS)
    unlabeled = read_contract_table(root2, ContractColumns(entities=("user_id",), bags=("g",), label_required=False))
    assert not unlabeled.has_label and "label" not in unlabeled.table.column_names


def test_duplicate_uid_across_files(tmp_path):
    root = _write(tmp_path, _table(), _table(uid=pa.array([7, 8, 2, 9])))
    with pytest.raises(DataError, match=r"part-1.parquet, column 'uid', row 2: duplicate uid 2 \(first seen in .*part-0.parquet row 2\)"):
        read_contract_table(root, COLUMNS)


def test_empty_dataset(tmp_path):
    root = _write(tmp_path, _table().slice(0, 0))
    with pytest.raises(DataError, match="empty"):
        read_contract_table(root, COLUMNS)
    (tmp_path / "nothing").mkdir()
    with pytest.raises(DataError, match="no Parquet files"):
        read_contract_table(str(tmp_path / "nothing"), COLUMNS)
    with pytest.raises(DataError, match="not found"):
        read_contract_table(str(tmp_path / "absent"), COLUMNS)


def test_markers_and_hidden_files_are_skipped(tmp_path):
    root = _write(tmp_path, _table())
    (tmp_path / "data" / "_SUCCESS").write_text("")
    pq.write_table(_table(), tmp_path / "data" / ".part-9.parquet")
    assert read_contract_table(root, COLUMNS).num_rows == 4
