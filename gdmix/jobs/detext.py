"""``gdmix detext``: the DeText fixed effect as a job on one or N workers.

The same entrypoint runs as a single process, as N local workers (``--workers N``: TF
collective workers with ``TF_CONFIG`` on 127.0.0.1, or ``horovodrun -np N``), as the pods of a
TFJob, or as the ranks of an MPIJob's ``horovodrun``.

Each worker reads only its shard of the training rows: a contiguous range of rows (the fixed
effect's balanced shard, :func:`gdmix.io.contract.shard_bounds`, moved to list boundaries for
ranking losses: :func:`gdmix.models.detext.data.shard_range`), of which only the overlapping
Parquet row groups are read, one at a time (:func:`gdmix.dataset.read_dataset`: the wide bag stays
coded until the workers agree on its index map, then becomes the CSR; the text columns are
carried as they are). The global batch schedule needs only the row count (and, for ranking
losses, the list-id column, read alone); every worker builds the same model from all shards (word
counts gathered, dense statistics and the wide bag's features combined through the collective
and the job's working directory) and trains on its share of every global batch
(:mod:`gdmix.models.detext.training`); memory per worker grows with its shard, not the corpus.
The validation and test rows (``data.test``, which training never sees) are sharded too (plain
balanced shards: no list needs to stay whole there); for the validation metric each worker
scores its shard and the logits are all-reduced, with every row's label, weight and list id
(:class:`gdmix.models.detext.data.HeldOutShard`). Each worker scores its shards; the chief writes the model,
commits the output in one step and writes ``job.json`` last (:class:`gdmix.jobs.commit.StagedOutput`,
shared with the fixed-effect job).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gdmix.artifacts import TrainedModel, load_models
from gdmix.config import DetextConfig, GdmixConfig
from gdmix.dataset import DatasetReading, read_dataset
from gdmix.distributed.cluster import worker_info
from gdmix.distributed.collective import agree, connect
from gdmix.distributed.exchange import Exchange
from gdmix.distributed.horovod import HorovodCollective, launched_by_horovod
from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, FilePiece, plan_pieces, shard_bounds
from gdmix.io.uid_join import read_offsets
from gdmix.jobs.commit import StagedOutput
from gdmix.layout import index_map_uri
from gdmix.models.detext.coordinate import DetextCoordinate, detext_rows, new_model
from gdmix.models.detext.data import HeldOutShard, RowIndex, TrainingShard, shard_range
from gdmix.models.detext.training import train_network


def run_detext_job(config: GdmixConfig, coordinate: str, output: str, *, offsets: str | None = None,
                   validation_offsets: str | None = None, index_maps: str | None = None,
                   warm_start: str | None = None, timeout_seconds: float = 600.0, log=print) -> dict:
    collective = HorovodCollective() if launched_by_horovod() else connect(worker_info(), timeout_seconds)
    rank, size = collective.rank, collective.size
    spec = config.coordinate(coordinate, DetextConfig)
    handle = DetextCoordinate(spec)
    who = f"worker {rank}/{size}"
    staged = StagedOutput(output.rstrip("/") + ".staging", output)
    exchange = Exchange(fs.join(staged.workdir, "exchange"), collective)

    index, (low, high) = agree(collective, lambda: training_shard(config.data.train, spec, rank, size))
    held_out = agree(collective, lambda: validation_shard(config.data.validation, spec, rank, size))
    ranges = {"train": (low, high)} | ({"validation": held_out[1]} if held_out else {})
    readings = agree(collective, lambda: _read_splits(config, spec, handle.columns, ranges, rank, size))
    maps = agree(collective, lambda: _wide_index_map(spec, readings["train"], index_maps, exchange))
    data = agree(collective, lambda: {split: reading.finish(maps) for split, reading in readings.items()})
    readings.clear()  # finished: their row groups' parts are released
    # the other coordinates' scores: on the training rows to fit, on the validation rows to
    # pick the best step on the same total score that coordinate descent evaluates
    # (the test rows' scores are this coordinate's own: their total is assembled downstream)
    given = {"train": offsets, "validation": validation_offsets}
    base = agree(collective, lambda: {split: d.offset + (read_offsets(given[split], d.uid) if given.get(split) else 0.0)
                                      for split, d in data.items()})
    rows = {split: detext_rows(spec, d, split) for split, d in data.items()}
    wide = len(maps[spec.wide_bag]) if spec.wide_bag else 0
    model = agree(collective, lambda: new_model(spec, rows["train"], wide, exchange))
    if warm_start:
        prior = agree(collective, lambda: load_models(warm_start, [handle], maps).get(spec.name))
        if prior is not None:
            model._build()
            model.copy_weights_from(prior)
    log(f"{who}: rows {low:,}-{high:,} of {index.num_rows:,} training rows, vocabulary {len(model.vocabulary):,}")
    validation = HeldOutShard.gather(rows["validation"], held_out[1][0], held_out[0], collective) if held_out else None
    report = train_network(model.network, spec, TrainingShard(rows["train"], low, index), base["train"],
                           validation, base.get("validation"), collective, log=log if rank == 0 else (lambda m: None))

    for split, dataset in data.items():  # each worker scores its shards
        staged.write_scores(spec.name, split, rank, dataset, base[split], model.score(rows[split]))
    counts = collective.sum(np.array([d.num_rows for d in data.values()], np.float64))
    summary = {"coordinate": spec.name, "workers": size, "backend": "horovod" if launched_by_horovod() else "tf",
               "rows": {split: int(count) for split, count in zip(data, counts)}, "solver": report.as_dict(),
               "train_seconds": report.seconds}
    staged.commit(collective, rank == 0, TrainedModel(config.data, [handle], maps, {spec.name: model}), summary)
    log(f"{who}: done in {report.seconds:.1f}s ({report.examples_per_second:,.0f} examples/s)")
    return summary | {"chief": rank == 0}


def training_shard(uri: str, spec: DetextConfig, rank: int, size: int) -> tuple[RowIndex, tuple[int, int]]:
    """The global :class:`RowIndex` of the training rows (list ids for ranking losses only) and this
    worker's rows ``[low, high)`` of it, whole lists (:func:`shard_range`)."""
    index, pieces = global_rows(uri, spec.group if spec.group and spec.loss != "pointwise" else None)
    return index, shard_range(index, rank, size, uri, spec.group, locate=lambda row: _locate(pieces, row))


def validation_shard(uri: str | None, spec: DetextConfig, rank: int,
                     size: int) -> tuple[RowIndex, tuple[int, int]] | None:
    """The validation rows' :class:`RowIndex` (list ids whenever ``group`` is set: ranking metrics)
    and this worker's balanced shard of them; lists may be split, the metric sees all rows."""
    if not uri:
        return None
    index, _ = global_rows(uri, spec.group)
    return index, shard_bounds(index.num_rows, rank, size)


def global_rows(uri: str, group: str | None) -> tuple[RowIndex, list[FilePiece]]:
    """What every worker knows of all rows: the count (Parquet footers only) and, with ``group``,
    the list-id column (read alone); and the files as whole-file pieces (to name a row's file)."""
    files = fs.list_parquet_files(uri)
    if not files:
        raise DataError("dataset is empty: no Parquet files found", path=str(uri))
    pieces = plan_pieces(files)
    return RowIndex.of(sum(p.stop for p in pieces), _list_ids(files, group) if group else None), pieces


def _list_ids(files: list[str], column: str) -> np.ndarray:
    """One column of every training file (the list ids), without the rows' other columns."""
    parts = []
    for path in files:
        try:
            parts.append(fs.read_parquet(path, [column]).column(column))
        except (KeyError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read the list-id column ({exc})", path=path, column=column) from None
    values = pa.chunked_array([c for part in parts for c in part.chunks]) if parts else pa.chunked_array([], pa.int64())
    if values.null_count:
        raise DataError("null list id", path=files[0], column=column)
    return values.to_numpy()


def _locate(pieces, row: int) -> tuple[str, int]:
    """A global row number as (file, row within that file)."""
    starts = np.cumsum([0] + [p.stop for p in pieces])
    k = int(np.searchsorted(starts, row, side="right") - 1)
    return pieces[k].path, int(row - starts[k])


def _read_splits(config: GdmixConfig, spec: DetextConfig, extra: tuple[str, ...],
                 ranges: dict[str, tuple[int, int]], rank: int, size: int) -> dict[str, DatasetReading]:
    """This worker's rows of each split, read row group by row group: ``ranges`` of the training
    and validation rows, and its balanced shard of the test rows (only the Parquet row groups
    they overlap are read); the wide bag stays coded until :func:`_wide_index_map` is agreed."""
    columns = ContractColumns(uid=config.data.uid, label=config.data.label, weight=config.data.weight,
                              offset=config.data.offset, bags=(spec.wide_bag,) if spec.wide_bag else (), extra=extra)
    readings = {split: read_dataset(getattr(config.data, split), columns, rows=rows) for split, rows in ranges.items()}
    if config.data.test:
        readings["test"] = read_dataset(config.data.test, columns, shard=(rank, size))
    return readings


def _wide_index_map(spec: DetextConfig, train: DatasetReading, given: str | None,
                    exchange: Exchange) -> dict[str, IndexMap]:
    """The wide bag's index map: the given one, or the distinct features of every worker's shard."""
    if not spec.wide_bag:
        return {}
    if given:
        return {spec.wide_bag: IndexMap.load(index_map_uri(given, spec.wide_bag))}
    local = train.index_maps()[spec.wide_bag]
    parts = pa.concat_tables(exchange.all_gather_table("wide-features", local.to_table()))
    return {spec.wide_bag: IndexMap.from_features(parts.column("name").combine_chunks(),
                                                  parts.column("term").combine_chunks())}
