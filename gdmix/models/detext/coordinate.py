"""DeText as a coordinate of coordinate descent (``type: detext`` in the config)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from gdmix.config import DetextConfig
from gdmix.dataset import Dataset
from gdmix.distributed.collective import SingleProcess
from gdmix.distributed.exchange import Exchange
from gdmix.features.index_map import IndexMap
from gdmix.models.coordinates import ConfiguredCoordinate
from gdmix.models.detext.data import DetextRows, rows_from_columns
from gdmix.models.detext.model import DetextModel
from gdmix.models.detext.network import text_columns
from gdmix.models.detext.text import count_tokens, vocabulary_from_counts
from gdmix.models.detext.training import train_network


def detext_rows(config: DetextConfig, data: Dataset, source: str = "data") -> DetextRows:
    wide = data.bag(config.wide_bag) if config.wide_bag else None
    return rows_from_columns(config, data.columns, wide, data.label, data.weight, source)


def new_model(config: DetextConfig, rows: DetextRows, wide_features: int,
              exchange: Exchange | None = None) -> DetextModel:
    """An untrained model whose vocabulary and dense statistics come from the training rows:
    ``rows`` alone, or with ``exchange`` every worker's shard (word counts gathered, dense sums
    all-reduced), so every worker builds the model one worker would build from all rows."""
    vocabulary = [] if config.encoder == "pretrained" else vocabulary_from_counts(
        _gathered(count_tokens([rows.texts[c] for c in text_columns(config)], config.max_text_bytes, config.max_len),
                  exchange), config.vocab_size, config.min_token_count)
    return DetextModel.create(config, vocabulary, wide_features, rows.dense,
                              exchange.collective if exchange else SingleProcess())


def _gathered(counts: Counter, exchange: Exchange | None) -> Counter:
    """Word counts summed over every worker (through the job's shared storage)."""
    if exchange is None or exchange.collective.size == 1:
        return counts
    mine = pa.table({"word": pa.array(list(counts), pa.binary()), "count": pa.array(list(counts.values()), pa.int64())})
    total: Counter = Counter()
    for part in exchange.all_gather_table("token-counts", mine):
        total.update(dict(zip(part.column("word").to_pylist(), part.column("count").to_pylist())))
    return total


@dataclass(frozen=True)
class DetextCoordinate(ConfiguredCoordinate):
    config: DetextConfig
    entity = None

    @property
    def feature_bag(self) -> str | None:
        return self.config.wide_bag

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(text_columns(self.config) + list(self.config.dense)
                                   + ([self.config.group] if self.config.group else [])))

    def fit(self, data: Dataset, offsets: np.ndarray, initial: DetextModel | None = None, progress=None,
            validation=None, collective=None):
        rows = detext_rows(self.config, data)
        model = new_model(self.config, rows, data.bag(self.config.wide_bag).shape[1] if self.config.wide_bag else 0)
        if initial is not None:
            model._build()
            model.copy_weights_from(initial)
        held_out = held_out_offsets = None
        if validation is not None:
            held_out, held_out_offsets = detext_rows(self.config, validation[0], "validation"), validation[1]
        report = train_network(model.network, self.config, rows, offsets, held_out, held_out_offsets,
                               collective or SingleProcess(), log=lambda message: None, progress=progress)
        return model, report.as_dict()

    def score(self, model: DetextModel, data: Dataset) -> np.ndarray:
        return model.score(detext_rows(self.config, data))

    def save(self, model: DetextModel, uri: str, index_map: IndexMap) -> None:
        model.save(uri)

    def load(self, uri: str, index_map: IndexMap) -> DetextModel:
        return DetextModel.load(uri)
