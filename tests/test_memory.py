"""Handing freed memory back to the system: when loops do it (gdmix.memory.FreedMemory)."""

from gdmix import memory


def test_freed_memory_is_handed_back_once_enough_has_been_freed(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1))
    freed = memory.FreedMemory(threshold=100)
    for _ in range(3):
        freed.freed(30)
    assert calls == []  # 90 bytes: not yet
    freed.freed(30)
    assert calls == [1] and freed.pending == 0
    freed.freed(250)  # one large piece: at once
    assert calls == [1, 1]


def test_reading_a_dataset_hands_its_row_groups_back(monkeypatch, tmp_path):
    import numpy as np
    import pyarrow as pa

    from gdmix.dataset import load_dataset
    from gdmix.io.contract import ContractColumns, write_dataset

    calls = []
    monkeypatch.setattr(memory, "release_free_memory", lambda: calls.append(1))
    rows = 4000
    table = pa.table({"uid": np.arange(rows), "label": (np.arange(rows) % 2).astype(float)})
    write_dataset(table, str(tmp_path / "data"), 1000)
    monkeypatch.setattr(memory, "FREED_THRESHOLD", 1)  # every row group
    data, _ = load_dataset(str(tmp_path / "data"), ContractColumns())
    assert data.num_rows == rows and len(calls) >= 4  # a trim after each of the 4 files' row groups
