"""Coordinates: the uniform face of fixed and random effects that coordinate descent drives.

A coordinate knows which columns of a :class:`~gdmix.dataset.Dataset` it uses, how to fit its
model given offsets (the other coordinates' scores), how to score rows, and how its model is
written as a coefficient table. Coordinate descent (:mod:`gdmix.game`) and scoring
(:mod:`gdmix.scoring`) only talk to this interface.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union

import numpy as np
import pyarrow as pa

from gdmix.config import DetextConfig, FixedEffectConfig, RandomEffectConfig
from gdmix.dataset import Dataset
from gdmix.io import fs
from gdmix.features.index_map import IndexMap
from gdmix.models.fixed_effect import FixedEffectModel, fit_fixed_effect
from gdmix.models.random_effect import PassMemo, RandomEffectModel, fit_random_effect_model
from gdmix.console import ProgressCallback

Model = Union[FixedEffectModel, RandomEffectModel, "DetextModel"]


class Coordinate(Protocol):
    config: FixedEffectConfig | RandomEffectConfig | DetextConfig
    name: str
    feature_bag: str | None
    entity: str | None
    columns: tuple[str, ...]  # data columns beyond bags and entities (texts, dense features)

    def fit(self, data: Dataset, offsets: np.ndarray, initial: Model | None,
            progress: ProgressCallback | None = None, validation=None) -> tuple[Model, dict]:
        """``validation``: (dataset, offsets) of the validation rows, for models that select
        their best checkpoint on it (DeText); the others ignore it."""

    def score(self, model: Model, data: Dataset) -> np.ndarray: ...

    def save(self, model: Model, uri: str, index_map: IndexMap) -> None: ...

    def load(self, uri: str, index_map: IndexMap) -> Model: ...

    def begin_passes(self) -> None:
        """Coordinate descent starts: from now on a model passed back to :meth:`fit` as
        ``initial`` is this coordinate's last one and is dropped by the caller once the new one
        is returned, so a coordinate may reuse its storage."""

    def end_passes(self) -> None:
        """Coordinate descent is over: drop what was kept from pass to pass (memory the
        outputs' writing may want)."""


@dataclass(frozen=True)
class ConfiguredCoordinate:
    """Name and feature bag come straight from the coordinate's config (DeText's coordinate
    names its wide bag instead)."""

    config: FixedEffectConfig | RandomEffectConfig | DetextConfig
    columns = ()

    def begin_passes(self) -> None:
        """Nothing is reused between passes."""

    def end_passes(self) -> None:
        """Nothing is kept between passes."""

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def feature_bag(self) -> str | None:
        return self.config.feature_bag


class _Tabular:
    """Linear models are stored as coefficient tables (name, term[, entity], value)."""

    def save(self, model, uri: str, index_map: IndexMap) -> None:
        fs.write_parquet(self.model_to_table(model, index_map), uri)

    def load(self, uri: str, index_map: IndexMap):
        return self.model_from_table(fs.read_parquet_dir(uri), index_map, uri)


@dataclass(frozen=True)
class FixedEffectCoordinate(_Tabular, ConfiguredCoordinate):
    config: FixedEffectConfig
    entity = None

    def fit(self, data, offsets, initial=None, progress=None, validation=None):
        max_iter = self.config.optimizer.max_iter
        on_iteration = None if progress is None else (lambda it, _value: progress(it, max_iter))
        model, report = fit_fixed_effect(
            data.bag(self.feature_bag), data.label, data.weight, offsets, self.config, initial, on_iteration
        )
        return model, report.as_dict()

    def score(self, model: FixedEffectModel, data: Dataset) -> np.ndarray:
        return model.score(data.bag(self.feature_bag))

    def model_to_table(self, model: FixedEffectModel, index_map: IndexMap) -> pa.Table:
        return model.to_table(index_map)

    def model_from_table(self, table: pa.Table, index_map: IndexMap, source: str = "model") -> FixedEffectModel:
        return FixedEffectModel.from_table(table, index_map, source)


@dataclass(frozen=True)
class RandomEffectCoordinate(_Tabular, ConfiguredCoordinate):
    config: RandomEffectConfig
    # kept across passes of coordinate descent: the entity layout, and the last model's start
    memo: PassMemo = field(default_factory=PassMemo, compare=False, repr=False)

    @property
    def entity(self) -> str:
        return self.config.entity

    def fit(self, data, offsets, initial=None, progress=None, validation=None):
        entities, features, memo = data.entities[self.entity], data.bag(self.feature_bag), self.memo
        start = memo.start_from(initial, entities.codes, features, data.label, data.weight, self.config)
        carried = None if start is None else memo.carried_rows(initial)
        if start is None and initial is not None:
            start = initial.warm_start_for(entities)
        model, report = fit_random_effect_model(entities, features, data.label, data.weight, offsets, self.config,
                                                start, progress, memo=memo)
        if carried is not None:
            model = model.carry_over_rows(initial, carried)
        elif initial is not None:
            model = model.carry_over(initial, entities.strings())
        memo.model = model
        return model, report.as_dict()

    def begin_passes(self) -> None:
        """A warm pass from the last model writes the new coefficients over that model's (see
        :attr:`PassMemo.recycle`): one generation of a large random effect held, not two."""
        self.memo.recycle = True

    def end_passes(self) -> None:
        self.memo.clear()
        self.memo.recycle = False

    def score(self, model: RandomEffectModel, data: Dataset) -> np.ndarray:
        entities, features = data.entities[self.entity], data.bag(self.feature_bag)
        scores = self.memo.training_scores(model, entities, features, data.label, data.weight)
        return model.score(entities, features) if scores is None else scores

    def save(self, model: RandomEffectModel, uri: str, index_map: IndexMap) -> None:
        model.write(uri, index_map)

    def model_to_table(self, model: RandomEffectModel, index_map: IndexMap) -> pa.Table:
        return model.to_table(index_map)

    def model_from_table(self, table: pa.Table, index_map: IndexMap, source: str = "model") -> RandomEffectModel:
        return RandomEffectModel.from_table(table, index_map, source)


def make_coordinate(config: FixedEffectConfig | RandomEffectConfig | DetextConfig) -> Coordinate:
    if isinstance(config, FixedEffectConfig):
        return FixedEffectCoordinate(config)
    if isinstance(config, DetextConfig):
        from gdmix.models.detext.coordinate import DetextCoordinate

        return DetextCoordinate(config)
    return RandomEffectCoordinate(config)
