"""``gdmix detext``: the DeText fixed effect as a job on one or N workers.

The same entrypoint runs as a single process, as N local workers (``--workers N``: TF
collective workers with ``TF_CONFIG`` on 127.0.0.1, or ``horovodrun -np N``), as the pods of a
TFJob, or as the ranks of an MPIJob's ``horovodrun``. Every worker reads the training and
validation rows (DeText's inputs: texts, the wide bag, dense columns), builds the same
vocabulary and feature statistics, and takes its share of every global batch
(:mod:`gdmix.models.detext.training`); the best step is chosen on validation only. Then each
worker scores its slice of the rows (and of the test rows, ``data.test``, which training never
sees); the chief writes the model, commits the output in one step and writes ``job.json`` last
(:class:`gdmix.jobs.commit.StagedOutput`, shared with the fixed-effect job).
"""

from __future__ import annotations

import numpy as np

from gdmix.artifacts import TrainedModel, load_models
from gdmix.config import DetextConfig, GdmixConfig
from gdmix.dataset import build_index_maps, to_dataset
from gdmix.distributed.cluster import worker_info
from gdmix.distributed.collective import agree, connect
from gdmix.distributed.horovod import HorovodCollective, launched_by_horovod
from gdmix.features.index_map import IndexMap
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.io.uid_join import read_offsets
from gdmix.jobs.commit import StagedOutput
from gdmix.layout import index_map_uri
from gdmix.models.detext.coordinate import DetextCoordinate, detext_rows, new_model
from gdmix.models.detext.training import train_network


def run_detext_job(config: GdmixConfig, coordinate: str, output: str, *, offsets: str | None = None,
                   validation_offsets: str | None = None, index_maps: str | None = None, warm_start: str | None = None, timeout_seconds: float = 600.0,
                   log=print) -> dict:
    collective = HorovodCollective() if launched_by_horovod() else connect(worker_info(), timeout_seconds)
    rank, size = collective.rank, collective.size
    spec = config.coordinate(coordinate, DetextConfig)
    handle = DetextCoordinate(spec)
    who = f"worker {rank}/{size}"

    def read():
        columns = ContractColumns(uid=config.data.uid, label=config.data.label, weight=config.data.weight,
                                  offset=config.data.offset, bags=(spec.wide_bag,) if spec.wide_bag else (),
                                  extra=handle.columns)
        uris = {"train": config.data.train, "validation": config.data.validation, "test": config.data.test}
        tables = {split: read_contract_table(uri, columns) for split, uri in uris.items() if uri}
        maps = {}
        if spec.wide_bag:
            maps[spec.wide_bag] = (IndexMap.load(index_map_uri(index_maps, spec.wide_bag)) if index_maps
                                   else build_index_maps(tables["train"], [spec.wide_bag])[spec.wide_bag])
        data = {split: to_dataset(table, maps, [], handle.columns) for split, table in tables.items()}
        # the other coordinates' scores: on the training rows to fit, on the validation rows to
        # pick the best step on the same total score that coordinate descent evaluates
        # (the test rows' scores are this coordinate's own: their total is assembled downstream)
        given = {"train": offsets, "validation": validation_offsets}
        base = {split: d.offset + (read_offsets(given[split], d.uid) if given.get(split) else 0.0)
                for split, d in data.items()}
        return data, maps, base

    data, maps, base = agree(collective, read)
    train = data["train"]
    rows = {split: detext_rows(spec, d, split) for split, d in data.items()}
    model = agree(collective, lambda: new_model(spec, rows["train"], len(maps[spec.wide_bag]) if spec.wide_bag else 0))
    if warm_start:
        prior = agree(collective, lambda: load_models(warm_start, [handle], maps).get(spec.name))
        if prior is not None:
            model._build()
            model.copy_weights_from(prior)
    log(f"{who}: {train.num_rows:,} training rows, vocabulary {len(model.vocabulary):,}")
    report = train_network(model.network, spec, rows["train"], base["train"], rows.get("validation"),
                           base.get("validation"), collective, log=log if rank == 0 else (lambda m: None))

    staged = StagedOutput(output.rstrip("/") + ".staging", output)
    for split, dataset in data.items():  # each worker scores its slice of the rows
        mine = np.array_split(np.arange(dataset.num_rows), size)[rank]
        staged.write_scores(spec.name, split, rank, dataset, base[split], model.score(rows[split].take(mine)), mine)
    summary = {"coordinate": spec.name, "workers": size, "backend": "horovod" if launched_by_horovod() else "tf",
               "rows": {split: int(d.num_rows) for split, d in data.items()}, "solver": report.as_dict(),
               "train_seconds": report.seconds}
    staged.commit(collective, rank == 0, TrainedModel(config.data, [handle], maps, {spec.name: model}), summary)
    log(f"{who}: done in {report.seconds:.1f}s ({report.examples_per_second:,.0f} examples/s)")
    return summary | {"chief": rank == 0}
