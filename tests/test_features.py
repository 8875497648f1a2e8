import numpy as np
import pyarrow as pa

from gdmix.features.bags import bag_to_csr
from gdmix.features.index_map import IndexMap

from conftest import bag


def test_index_map_is_sorted_and_looks_up_exactly():
    names = pa.array(["b", "a", "a", "b", "a|x", "a"])
    terms = pa.array(["", "z", "", "", "", "z"])
    imap = IndexMap.from_features(names, terms)
    assert list(zip(imap.names.to_pylist(), imap.terms.to_pylist())) == [("a", ""), ("a", "z"), ("a|x", ""), ("b", "")]
    looked = imap.lookup(pa.array(["b", "a", "a", "zz", "a|x", "a"]), pa.array(["", "z", "q", "", "", "x|"]))
    assert looked.tolist() == [3, 1, -1, -1, 2, -1]


def test_index_map_save_load_roundtrip(tmp_path):
    imap = IndexMap.from_features(pa.array(["n1", "n2", "n1"]), pa.array(["t", "", "u"]))
    imap.save(str(tmp_path / "m"))
    loaded = IndexMap.load(str(tmp_path / "m"))
    assert loaded.names.equals(imap.names) and loaded.terms.equals(imap.terms)
    assert loaded.lookup(pa.array(["n1"]), pa.array(["u"])).tolist() == [1]


def test_empty_index_map_lookup():
    assert IndexMap.empty().lookup(pa.array(["a"]), pa.array([""])).tolist() == [-1]


def test_bag_to_csr_sums_repeats_and_drops_unknown():
    column = bag([[("a", "", 1.0), ("b", "", 2.0), ("a", "", 0.5)], [], [("c", "", 3.0), ("b", "", -1.0)]])
    imap = IndexMap.from_features(pa.array(["a", "b"]), pa.array(["", ""]))
    matrix = bag_to_csr(column, imap, 3)
    np.testing.assert_array_equal(matrix.toarray(), [[1.5, 2.0], [0, 0], [0, -1.0]])
    assert matrix.dtype == np.float64
