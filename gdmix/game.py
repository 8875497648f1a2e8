"""Coordinate descent over fixed and random effects (GAME / GLMix), with passes and warm start.

Each coordinate trains with offset = data offset + the current scores of all *other*
coordinates, then its scores are refreshed: in one pass FE -> RE1 -> RE2 each random effect sees
the cumulative score of the ones before it, and further passes revisit every coordinate with the
others' latest scores. Every coordinate starts from its previous model (warm start), so later
passes are cheap. (How this differs from GDMix: docs/compared-with-gdmix.md.)

An optional test split (``data.test``) is scored and reported after every coordinate exactly
like validation, and nothing ever selects on it: DeText picks its best step on validation only.

The scores, metrics and outputs are kept by :class:`gdmix.ledger.Ledger`, the same rules the
pipeline's steps follow. Nothing is written until training has finished (see
:meth:`gdmix.ledger.Ledger.commit`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from gdmix.artifacts import TrainedModel, load_models, read_spec
from gdmix.config import GdmixConfig
from gdmix.console import Reporter, SilentReporter
from gdmix.dataset import Dataset, load_dataset
from gdmix.errors import ConfigError, DataError
from gdmix.io.contract import ContractColumns
from gdmix.jobs.local import fit_on_local_workers
from gdmix.layout import HELD_OUT, SPLITS
from gdmix.ledger import Ledger
from gdmix.memory import release_free_memory
from gdmix.models.coordinates import Coordinate, FixedEffectCoordinate, Model, make_coordinate


@dataclass
class RunResult:
    output: str
    coordinates: list[dict]
    model: TrainedModel


def train(config: GdmixConfig, reporter: Reporter | None = None, workers: int = 1) -> RunResult:
    """Read the data, run coordinate descent, and commit models, scores and metrics.

    With ``workers > 1`` fixed effects train as the distributed fixed-effect job on that many
    local worker processes (see :mod:`gdmix.jobs.local`).
    """
    reporter = reporter or SilentReporter()
    started = time.perf_counter()
    coordinates = [make_coordinate(c) for c in config.coordinates]
    datasets, index_maps = _load_splits(config, coordinates, reporter)
    return coordinate_descent(config, datasets, index_maps, reporter, workers, started)


def coordinate_descent(config: GdmixConfig, datasets: dict[str, Dataset], index_maps: dict,
                       reporter: Reporter | None = None, workers: int = 1, started: float | None = None) -> RunResult:
    """Coordinate descent over data already in memory (the first of ``datasets`` trains; those
    named ``validation`` and ``test``, if any, are held out: both are scored and reported after
    every coordinate, and only ``validation`` is handed to models that select on it), then the
    outputs. :func:`train` reads the data and calls this; benchmarks and embedding applications
    can call it with their own datasets."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter() if started is None else started
    coordinates = [make_coordinate(c) for c in config.coordinates]
    models = _warm_start_models(config, coordinates, index_maps)
    ledger = Ledger.from_datasets(datasets)
    for split, data in datasets.items():
        for c in coordinates:
            ledger.set_scores(c.name, split, c.score(models[c.name], data) if c.name in models
                              else np.zeros(data.num_rows))

    def fit(coordinate, data, offsets, initial, progress, validation):
        if workers > 1 and isinstance(coordinate, FixedEffectCoordinate):
            return fit_on_local_workers(config, coordinate, data, offsets, initial, index_maps, workers)
        return coordinate.fit(data, offsets, initial, progress, validation=validation)

    for coordinate in coordinates:
        coordinate.begin_passes()  # each old model is dropped once its successor is trained
    for pass_number in range(1, config.passes + 1):
        for coordinate in coordinates:
            _train_coordinate(coordinate, pass_number, datasets, ledger, models, reporter, fit)
    for coordinate in coordinates:
        coordinate.end_passes()  # the layouts kept between passes: not needed to write the outputs
    release_free_memory()

    trained = TrainedModel(config.data, coordinates, index_maps, models)
    ledger.commit(config.output, trained, total_seconds=time.perf_counter() - started)
    return RunResult(config.output, ledger.history, trained)


def _load_splits(config: GdmixConfig, coordinates: list[Coordinate], reporter: Reporter):
    """Validated train (and validation, test) data in memory, with index maps built from train."""
    bags = sorted({c.feature_bag for c in coordinates if c.feature_bag})
    entities = sorted({c.entity for c in coordinates if c.entity})
    extra = tuple(dict.fromkeys(name for c in coordinates for name in c.columns))
    columns = ContractColumns(
        uid=config.data.uid, label=config.data.label, weight=config.data.weight,
        offset=config.data.offset, entities=tuple(entities), bags=tuple(bags), extra=extra,
    )
    datasets, index_maps = {}, None
    for name in SPLITS:
        uri = getattr(config.data, name)
        if uri:
            reporter.info(f"reading {name} data {uri}")
            datasets[name], index_maps = load_dataset(uri, columns, index_maps)
            release_free_memory()  # reading's buffers, before the next split (or training) needs the memory
        if name == "train" and not np.any(datasets["train"].weight > 0):
            raise DataError("every training row has weight 0: nothing to train on",
                            path=config.data.train, column=config.data.weight or "weight")
    reporter.info(
        ", ".join(f"{data.num_rows:,} {name} rows" for name, data in datasets.items())
        + "; features: " + (", ".join(f"{b}={len(m)}" for b, m in index_maps.items()) or "none")
    )
    return datasets, index_maps


def _warm_start_models(config: GdmixConfig, coordinates: list[Coordinate], index_maps) -> dict[str, Model]:
    if not config.warm_start:
        return {}
    _, prior_coordinates = read_spec(config.warm_start)
    prior = {c.name: c for c in prior_coordinates}
    for coordinate in coordinates:
        before = prior.get(coordinate.name)
        if before is None:
            continue
        for aspect in ("type", "entity", "feature_bag"):
            old, new = getattr(before.config, aspect, None), getattr(coordinate.config, aspect, None)
            if old != new:
                raise ConfigError(f"warm_start: coordinate '{coordinate.name}' has {aspect} {new!r} "
                                  f"but {old!r} in {config.warm_start}")
    return load_models(config.warm_start, coordinates, index_maps)


def _train_coordinate(coordinate: Coordinate, pass_number: int, datasets: dict[str, Dataset], ledger: Ledger,
                      models: dict[str, Model], reporter: Reporter, fit) -> dict:
    train_split, *held_out = datasets
    label = f"pass {pass_number} {coordinate.name}"
    tic = time.perf_counter()
    with reporter.progress(f"{label}: training") as progress:
        # only validation may steer training (DeText's best step); the test split never does
        validation = None
        if "validation" in held_out:
            validation = (datasets["validation"], ledger.splits["validation"].total(excluding=coordinate.name))
        model, solver_report = fit(coordinate, datasets[train_split], ledger.splits[train_split].total(coordinate.name),
                                   models.get(coordinate.name), progress, validation)
    seconds = time.perf_counter() - tic
    models[coordinate.name] = model
    release_free_memory()  # the step's temporaries, before the next step allocates its own
    for split, data in datasets.items():
        ledger.set_scores(coordinate.name, split, coordinate.score(model, data))
    result = ledger.record({"name": coordinate.name, "type": coordinate.config.type, "pass": pass_number,
                            "train_seconds": seconds, "solver": solver_report}, coordinate.entity)
    reporter.info(
        f"{label}: {seconds:.2f}s"
        + "".join(f", {name} AUC {result[name]['auc']:.4f}" for name in HELD_OUT if result.get(name))
    )
    return result
