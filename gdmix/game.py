"""Coordinate descent over fixed and random effects (GAME / GLMix), with passes and warm start.

Each coordinate trains with offset = data offset + the current scores of all *other*
coordinates, then its scores are refreshed: in one pass FE -> RE1 -> RE2 each random effect sees
the cumulative score of the ones before it, and further passes revisit every coordinate with the
others' latest scores. Every coordinate starts from its previous model (warm start), so later
passes are cheap. (How this differs from GDMix: docs/compared-with-gdmix.md.)

An optional test split (``data.test``) is scored and reported after every coordinate exactly
like validation, and nothing ever selects on it: DeText picks its best step on validation only.

Nothing is written until training has finished: outputs go to a staging directory that
replaces ``output`` in one step, and ``metrics.json`` is written after that commit, so its
presence marks a complete output (also on object stores, where a move is not atomic).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gdmix import __version__
from gdmix.artifacts import (
    METRICS_FILE, TrainedModel, load_models, read_spec, save_model, scores_uri,
)
from gdmix.config import GdmixConfig
from gdmix.dataset import Dataset, build_index_maps, to_dataset
from gdmix.errors import ConfigError, DataError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.metrics import binary_metrics, per_entity_auc_key, per_entity_auc_summary
from gdmix.jobs.local import fit_on_local_workers
from gdmix.models.coordinates import Coordinate, FixedEffectCoordinate, Model, make_coordinate
from gdmix.console import Reporter, SilentReporter

#: the splits a run reads, in order; only ``train`` is required. Index maps come from train.
SPLITS = ("train", "validation", "test")
#: the held-out splits every coordinate's result reports (None when the run has no such split)
HELD_OUT = ("validation", "test")


@dataclass
class Split:
    """A dataset with each coordinate's current score."""

    name: str
    data: Dataset
    scores: dict[str, np.ndarray]

    def total(self, excluding: str | None = None) -> np.ndarray:
        """Data offset plus the scores of all coordinates (but ``excluding``)."""
        others = [score for name, score in self.scores.items() if name != excluding]
        return self.data.offset + sum(others, np.zeros(self.data.num_rows))


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
    splits, index_maps = _load_splits(config, coordinates, reporter)
    return coordinate_descent(config, splits, index_maps, reporter, workers, started)


def coordinate_descent(config: GdmixConfig, splits: list[Split], index_maps: dict, reporter: Reporter | None = None,
                       workers: int = 1, started: float | None = None) -> RunResult:
    """Coordinate descent over data already in memory (``splits[0]`` trains; the splits named
    ``validation`` and ``test``, if any, are held out: both are scored and reported after every
    coordinate, and only ``validation`` is handed to models that select on it), then the outputs.
    :func:`train` reads the data and calls this; benchmarks and embedding applications can call it
    with their own datasets."""
    reporter = reporter or SilentReporter()
    started = time.perf_counter() if started is None else started
    coordinates = [make_coordinate(c) for c in config.coordinates]
    models = _warm_start_models(config, coordinates, index_maps)
    for split in splits:
        split.scores = {
            c.name: c.score(models[c.name], split.data) if c.name in models else np.zeros(split.data.num_rows)
            for c in coordinates
        }

    def fit(coordinate, data, offsets, initial, progress, validation):
        if workers > 1 and isinstance(coordinate, FixedEffectCoordinate):
            return fit_on_local_workers(config, coordinate, data, offsets, initial, index_maps, workers)
        return coordinate.fit(data, offsets, initial, progress, validation=validation)

    results = [
        _train_coordinate(coordinate, pass_number, splits, models, reporter, fit)
        for pass_number in range(1, config.passes + 1)
        for coordinate in coordinates
    ]

    trained = TrainedModel(config.data, coordinates, index_maps, models)
    with fs.staged_directory(config.output) as staging:
        save_model(staging, trained)
        for split in splits:
            _write_scores(staging, split, coordinates)
    metrics = {
        "gdmix_version": __version__,
        "data": {split.name: {"uri": getattr(config.data, split.name), "rows": split.data.num_rows}
                 for split in splits},
        "coordinates": results,
        "final": {split.name: results[-1][split.name] for split in splits},
        "total_seconds": time.perf_counter() - started,
    }
    # written last, after the commit: its presence is what marks the output complete
    fs.write_text_atomic(fs.join(config.output, METRICS_FILE), fs.to_json(metrics))
    return RunResult(config.output, results, trained)


def _load_splits(config: GdmixConfig, coordinates: list[Coordinate], reporter: Reporter):
    """Validated train (and validation, test) data in memory, with index maps built from train."""
    bags = sorted({c.feature_bag for c in coordinates if c.feature_bag})
    entities = sorted({c.entity for c in coordinates if c.entity})
    extra = tuple(dict.fromkeys(name for c in coordinates for name in c.columns))
    columns = ContractColumns(
        uid=config.data.uid, label=config.data.label, weight=config.data.weight,
        offset=config.data.offset, entities=tuple(entities), bags=tuple(bags), extra=extra,
    )
    tables = {}
    for name in SPLITS:
        uri = getattr(config.data, name)
        if uri:
            reporter.info(f"reading {name} data {uri}")
            tables[name] = read_contract_table(uri, columns)
    if not np.any(tables["train"].table.column("weight").to_numpy() > 0):
        raise DataError("every training row has weight 0: nothing to train on",
                        path=config.data.train, column=config.data.weight or "weight")
    index_maps = build_index_maps(tables["train"], bags)
    splits = [Split(name, to_dataset(table, index_maps, entities, extra), {}) for name, table in tables.items()]
    reporter.info(
        ", ".join(f"{split.data.num_rows:,} {split.name} rows" for split in splits)
        + "; features: " + (", ".join(f"{b}={len(m)}" for b, m in index_maps.items()) or "none")
    )
    return splits, index_maps


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


def _train_coordinate(coordinate: Coordinate, pass_number: int, splits: list[Split],
                      models: dict[str, Model], reporter: Reporter, fit) -> dict:
    train_split = splits[0]
    held_out = {split.name: split for split in splits[1:] if split.name in HELD_OUT}
    offsets = train_split.total(excluding=coordinate.name)
    label = f"pass {pass_number} {coordinate.name}"
    tic = time.perf_counter()
    with reporter.progress(f"{label}: training") as progress:
        # only validation may steer training (DeText's best step); the test split never does
        chosen = held_out.get("validation")
        validation = (chosen.data, chosen.total(excluding=coordinate.name)) if chosen is not None else None
        model, solver_report = fit(coordinate, train_split.data, offsets, models.get(coordinate.name), progress,
                                   validation)
    seconds = time.perf_counter() - tic
    models[coordinate.name] = model
    for split in splits:
        split.scores[coordinate.name] = coordinate.score(model, split.data)
    result = {"name": coordinate.name, "type": coordinate.config.type, "pass": pass_number, "train_seconds": seconds,
              "solver": solver_report}
    for split in splits:
        result[split.name] = binary_metrics(split.data.label, split.total(), split.data.weight)
    for name in HELD_OUT:
        result.setdefault(name, None)
    if coordinate.entity is not None:
        for name, split in held_out.items():
            data = split.data
            result[per_entity_auc_key(name)] = per_entity_auc_summary(
                data.entities[coordinate.entity].codes, data.label, split.total(), data.weight
            )
    reporter.info(
        f"{label}: {seconds:.2f}s"
        + "".join(f", {name} AUC {result[name]['auc']:.4f}" for name in HELD_OUT if result.get(name))
    )
    return result


def _write_scores(root: str, split: Split, coordinates: list[Coordinate]) -> None:
    """Per coordinate: uid, label, weight, cumulative score after it, and its own score."""
    data = split.data
    cumulative = data.offset.copy()
    for coordinate in coordinates:
        own = split.scores[coordinate.name]
        cumulative = cumulative + own
        table = pa.table({
            "uid": pa.array(data.uid),
            "label": pa.array(data.label),
            "weight": pa.array(data.weight),
            "score": pa.array(cumulative),
            "coordinate_score": pa.array(own),
        })
        fs.write_parquet(table, scores_uri(root, coordinate.name, split.name))
