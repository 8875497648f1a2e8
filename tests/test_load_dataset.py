"""load_dataset (one row group at a time, dictionary-coded bags) against the reference path:
read_contract_table, build_index_maps and to_dataset over the whole table."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.sparse as sp

from gdmix.dataset import build_index_maps, load_dataset, to_dataset
from gdmix.errors import DataError
from gdmix.io.contract import ContractColumns, read_contract_table

COLUMNS = ContractColumns(entities=("user",), bags=("global", "per_user"), extra=("note",))


def _bag(rng, rows, vocabulary, nulls=False):
    bags = []
    for row in range(rows):
        if nulls and row % 7 == 3:
            bags.append(None)
            continue
        items = []
        for _ in range(rng.integers(0, 5)):
            k = int(rng.integers(0, vocabulary))
            term = None if nulls and k % 5 == 0 else ("" if k % 5 == 1 else f"t{k % 3}")
            items.append({"name": f"f{k}", "term": term, "value": float(rng.choice([0.0, 1.0, rng.normal()]))})
        if items and row % 4 == 0:
            items.append(dict(items[0]))  # a feature repeated within the row: summed
        bags.append(items)
    return bags


def _write(path, first_uid, rows, seed, row_group_size, vocabulary=12):
    rng = np.random.default_rng(seed)
    table = pa.table({
        "uid": np.arange(first_uid, first_uid + rows, dtype=np.int32),
        "label": rng.integers(0, 2, rows).astype(np.float64),
        "weight": rng.random(rows),
        "user": pa.array([f"u{k}" for k in rng.integers(0, 9, rows)]),
        "global": pa.array(_bag(rng, rows, vocabulary, nulls=True)),
        "per_user": pa.array(_bag(rng, rows, vocabulary)),
        "note": pa.array([f"n{k}" for k in range(rows)]),
    })
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)


@pytest.fixture
def data(tmp_path):
    _write(tmp_path / "train" / "part-00000.parquet", 0, 50, 1, row_group_size=17)
    _write(tmp_path / "train" / "part-00001.parquet", 50, 31, 2, row_group_size=100)
    _write(tmp_path / "validation" / "part-00000.parquet", 1000, 40, 3, row_group_size=9, vocabulary=20)
    return tmp_path


def _same(ours, reference):
    np.testing.assert_array_equal(ours.uid, reference.uid)
    for name in ("label", "weight", "offset"):
        np.testing.assert_array_equal(getattr(ours, name), getattr(reference, name))
    for name, ids in reference.entities.items():
        np.testing.assert_array_equal(ours.entities[name].codes, ids.codes)
        assert ours.entities[name].values.equals(ids.values)
    for name, matrix in reference.bags.items():
        got = ours.bags[name]
        assert got.shape == matrix.shape and got.indices.dtype == matrix.indices.dtype
        assert got.has_canonical_format
        np.testing.assert_array_equal(got.indptr, matrix.indptr)
        np.testing.assert_array_equal(got.indices, matrix.indices)
        np.testing.assert_array_equal(got.data, matrix.data)
    for name, column in reference.columns.items():
        assert ours.columns[name].combine_chunks().equals(column.combine_chunks())


def test_same_dataset_and_index_maps_as_the_whole_table_path(data):
    train_table = read_contract_table(str(data / "train"), COLUMNS)
    maps = build_index_maps(train_table, COLUMNS.bags)
    train, our_maps = load_dataset(str(data / "train"), COLUMNS)
    assert set(our_maps) == set(maps)
    for bag, imap in maps.items():
        assert our_maps[bag].names.equals(imap.names) and our_maps[bag].terms.equals(imap.terms)
    _same(train, to_dataset(train_table, maps, COLUMNS.entities, COLUMNS.extra))
    assert train.bags["global"].nnz > 0 and train.num_rows == 81

    # held-out data goes through the training maps; its unknown features are dropped
    validation, same_maps = load_dataset(str(data / "validation"), COLUMNS, our_maps)
    assert same_maps == our_maps
    table = read_contract_table(str(data / "validation"), COLUMNS)
    _same(validation, to_dataset(table, maps, COLUMNS.entities, COLUMNS.extra))


def test_shards_are_the_rows_of_the_whole(data):
    whole, maps = load_dataset(str(data / "train"), COLUMNS)
    low, _ = load_dataset(str(data / "train"), COLUMNS, maps, shard=(0, 2))
    high, _ = load_dataset(str(data / "train"), COLUMNS, maps, shard=(1, 2))
    np.testing.assert_array_equal(np.concatenate([low.uid, high.uid]), whole.uid)
    assert (low.bags["global"] != whole.bags["global"][:low.num_rows]).nnz == 0
    assert (high.bags["global"] != whole.bags["global"][low.num_rows:]).nnz == 0


def test_errors_name_the_file_and_its_row_in_a_later_row_group(data):
    path = data / "train" / "part-00000.parquet"
    table = pq.read_table(path)
    bags = table.column("per_user").to_pylist()
    bags[40] = [{"name": None, "term": "x", "value": 1.0}]  # row 40: the third row group of 17
    table = table.set_column(table.schema.get_field_index("per_user"), "per_user", pa.array(bags))
    pq.write_table(table, path, row_group_size=17)
    with pytest.raises(DataError) as error:
        load_dataset(str(data / "train"), COLUMNS)
    assert (error.value.path, error.value.column, error.value.row) == (str(path), "per_user", 40)
    assert "null name" in str(error.value)


def test_a_repeated_uid_names_both_places(data):
    _write(data / "train" / "part-00002.parquet", 60, 5, 4, row_group_size=2)  # uids 60..64 again
    with pytest.raises(DataError, match="duplicate uid 60") as error:
        load_dataset(str(data / "train"), COLUMNS)
    assert error.value.path.endswith("part-00002.parquet") and error.value.row == 0
    assert "part-00001.parquet row 10" in str(error.value)


def test_label_only_where_every_file_has_it(data):
    path = data / "train" / "part-00001.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["label"]), path)
    columns = ContractColumns(label_required=False, entities=("user",), bags=("global",))
    dataset, _ = load_dataset(str(data / "train"), columns)
    assert dataset.label is None and dataset.num_rows == 81


def test_an_empty_dataset_is_refused(tmp_path):
    path = tmp_path / "train" / "part-00000.parquet"
    _write(path, 0, 5, 1, row_group_size=10)
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(DataError, match="dataset is empty"):
        load_dataset(str(tmp_path / "train"), COLUMNS)


def test_the_fixed_effect_shares_the_non_zeros_instead_of_copying(data):
    from gdmix.losses.logistic_tf import shared_tensor

    train, _ = load_dataset(str(data / "train"), COLUMNS)
    values = train.bags["global"].data
    assert values.ctypes.data % 64 == 0
    assert np.shares_memory(np.asarray(shared_tensor(values, np.float64)), values)
    unaligned = np.arange(9.0)[1:]
    copied = shared_tensor(unaligned, np.float64)
    assert not np.shares_memory(np.asarray(copied), unaligned)
    np.testing.assert_array_equal(np.asarray(copied), unaligned)


def test_shards_read_apart_finish_in_a_map_agreed_between_them(data):
    """What the fixed-effect job's workers do: each reads its shard with its bags still coded,
    the union of their features becomes the map, and each finishes in it."""
    from gdmix.dataset import read_dataset
    from gdmix.features.index_map import IndexMap

    whole, maps = load_dataset(str(data / "train"), COLUMNS)
    readings = [read_dataset(str(data / "train"), COLUMNS, shard=(k, 3)) for k in range(3)]
    agreed = {}
    for bag in COLUMNS.bags:
        local = [reading.index_maps()[bag] for reading in readings]
        agreed[bag] = IndexMap.from_features(pa.concat_arrays([m.names for m in local]),
                                             pa.concat_arrays([m.terms for m in local]))
        assert agreed[bag].names.equals(maps[bag].names) and agreed[bag].terms.equals(maps[bag].terms)
    assert sum(reading.total("weight") for reading in readings) == pytest.approx(whole.weight.sum())
    shards = [reading.finish(agreed) for reading in readings]
    for bag in COLUMNS.bags:
        stacked = sp.vstack([shard.bags[bag] for shard in shards], format="csr")
        assert (stacked != whole.bags[bag]).nnz == 0


def test_all_zero_parts_join_as_a_fresh_zero_array_and_others_as_they_are():
    from gdmix.dataset import _joined

    zeros = _joined([np.zeros(3), np.zeros(4)])
    assert zeros.dtype == np.float64 and zeros.shape == (7,) and not zeros.any() and zeros.flags.owndata
    mixed = _joined([np.zeros(3), np.array([0.0, 2.5])])
    assert np.array_equal(mixed, [0, 0, 0, 0, 2.5])


def test_entity_codes_stay_arrows_32_bit_indices():
    import pyarrow as pa

    from gdmix.dataset import EntityIds

    ids = EntityIds.from_array(pa.chunked_array([pa.array(["b", "a"]), pa.array(["b", "c"])]))
    assert ids.codes.dtype == np.int32 and ids.codes.tolist() == [0, 1, 0, 2]
    assert ids.strings().to_pylist() == ["b", "a", "c"]
