"""The bookkeeping of coordinate descent: one set of rules, two stores.

Coordinate descent keeps, for every split (train, validation, test), each coordinate's current
score of every row. From those few columns follow all of its rules, and they live here only:

- a coordinate trains with the *other* coordinates' scores as its offset (:meth:`Ledger.offsets`),
  the data's own offset added by whoever reads the rows;
- after a coordinate trains, its scores replace its old ones and the metrics of the total
  score (data offset plus every coordinate's score) are recorded, per-entity AUC for a random
  effect (:meth:`Ledger.record`): the ``coordinates`` rows of ``metrics.json``;
- the outputs: per coordinate and split the cumulative score after it and its own score
  (``scores/<coordinate>/<split>/``), and ``metrics.json`` written after everything else is
  committed (:meth:`Ledger.commit`).

``gdmix train`` keeps the ledger in memory (:meth:`Ledger.from_datasets`); the pipeline passes
it from step to step as a Parquet dataset per split plus ``table.json``
(:meth:`Ledger.load` / :meth:`Ledger.save`), the "score table" whose ``score`` column the
evaluation step reads. Coordinates not trained yet contribute 0 (or, in a warm-started run,
their warm-start model's scores, set before the first step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from gdmix import __version__
from gdmix.artifacts import TrainedModel, save_model
from gdmix.config import DataConfig, GdmixConfig, RandomEffectConfig
from gdmix.dataset import Dataset, EntityIds, load_dataset
from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns
from gdmix.io.score_avro import has_avro_scores, read_gdmix_scores
from gdmix.layout import HELD_OUT, METRICS_FILE, SCORE_TABLE_FILE, SPLITS, scores_uri
from gdmix.metrics import binary_metrics, per_entity_auc_key, per_entity_auc_summary

#: the score table's column holding a coordinate's score
SCORE_PREFIX = "score_"


@dataclass
class SplitLedger:
    """One split's rows as coordinate descent needs them: what the metrics read (label, weight,
    entity ids), the data's offset, and every coordinate's current score in coordinate order."""

    uid: np.ndarray
    label: np.ndarray
    weight: np.ndarray
    offset: np.ndarray
    entities: dict[str, np.ndarray]  # entity id (or its code) of every row, for per-entity AUC
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_rows(self) -> int:
        return len(self.uid)

    def others(self, coordinate: str | None) -> np.ndarray:
        """The sum of every coordinate's score but ``coordinate``'s (all of them for None)."""
        total = np.zeros(self.num_rows)
        for name, score in self.scores.items():
            if name != coordinate:
                total = total + score
        return total

    def total(self, excluding: str | None = None) -> np.ndarray:
        """The data's offset plus the scores of every coordinate but ``excluding``."""
        return self.offset + self.others(excluding)

    def cumulative(self, order: list[str]) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Per coordinate in ``order``: its name, the total score after it, its own score."""
        out, running = [], self.offset
        for name in order:
            own = self.scores.get(name, np.zeros(self.num_rows))
            running = running + own
            out.append((name, running, own))
        return out


@dataclass
class Ledger:
    """Every split's :class:`SplitLedger` (``train`` first), where each coordinate's latest model
    is (the pipeline's steps pass models by location), and the metrics after every step."""

    splits: dict[str, SplitLedger]
    models: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    # the in-memory store

    @classmethod
    def from_datasets(cls, datasets: dict[str, Dataset]) -> "Ledger":
        """A ledger over data in memory (entity ids as their codes); no scores yet."""
        return cls({
            name: SplitLedger(data.uid, data.label, data.weight, data.offset,
                              {entity: ids.codes for entity, ids in data.entities.items()})
            for name, data in datasets.items()
        })

    # the Parquet store (the pipeline's score table)

    @classmethod
    def initial(cls, config: GdmixConfig) -> "Ledger":
        """uid, label, weight, offset and entity ids of the prepared data, sorted by uid (no scores
        yet), from the columns ``config.data`` names, as the training jobs read them. Read row group
        by row group (:func:`~gdmix.dataset.load_dataset`): only these few columns are ever held,
        never a split's whole Arrow table."""
        entities = tuple(sorted({c.entity for c in config.coordinates if isinstance(c, RandomEffectConfig)}))
        columns = ContractColumns(uid=config.data.uid, label=config.data.label, weight=config.data.weight,
                                  offset=config.data.offset, entities=entities)
        splits = {}
        for split in SPLITS:
            uri = getattr(config.data, split)
            if uri:
                data, _ = load_dataset(uri, columns)
                splits[split] = _split_by_uid(data)
        return cls(splits)

    @classmethod
    def load(cls, uri: str) -> "Ledger":
        meta = json.loads(fs.read_text(fs.join(uri, SCORE_TABLE_FILE)))
        splits = {}
        for split in meta["splits"]:
            table = fs.read_parquet_dir(fs.join(uri, split))
            scored = [name[len(SCORE_PREFIX):] for name in table.column_names if name.startswith(SCORE_PREFIX)]
            entities = meta.get("entities", [])
            splits[split] = _split_from_table(table, entities, scored)
        return cls(splits, meta["models"], meta["history"])

    def save(self, uri: str) -> None:
        """One Parquet dataset per split (uid, label, weight, offset, entity ids, ``score_<c>`` per
        coordinate trained so far, ``score``: their total) and ``table.json``, committed together."""
        with fs.staged_directory(uri) as staging:
            for split, rows in self.splits.items():
                columns = {"uid": rows.uid, "label": rows.label, "weight": rows.weight, "offset": rows.offset}
                columns |= rows.entities
                columns |= {SCORE_PREFIX + name: score for name, score in rows.scores.items()}
                columns["score"] = rows.total()
                fs.write_parquet(pa.table({name: pa.array(values) for name, values in columns.items()}),
                                 fs.join(staging, split))
            entities = list(self.splits["train"].entities)  # every split carries the same entity columns
            meta = {"splits": list(self.splits), "entities": entities, "models": self.models,
                    "history": self.history}
            fs.write_text(fs.join(staging, SCORE_TABLE_FILE), fs.to_json(meta))

    # the rules

    def offsets(self, coordinate: str, split: str = "train") -> pa.Table:
        """What a coordinate's job reads as its offsets: uid and the sum of every *other*
        coordinate's score (the job adds the data's own offset)."""
        rows = self.splits[split]
        return pa.table({"uid": rows.uid, "offset": rows.others(coordinate)})

    def set_scores(self, coordinate: str, split: str, scores: np.ndarray) -> None:
        self.splits[split].scores[coordinate] = np.asarray(scores, dtype=np.float64)

    def read_scores(self, coordinate: str, scores_root: str, model: str) -> None:
        """``coordinate``'s new scores from its job's output (``<scores_root>/<split>/``: uid,
        coordinate_score; rows sorted by uid as the score table's are) and the location of its
        model. A split's folder may instead hold GDMix's score Avro (a coordinate any GDMix-era
        job scored: its ``predictionScorePerCoordinate``, see :mod:`gdmix.io.score_avro`).
        Every row must have exactly one score: a dropped or duplicated row is an error."""
        for split, rows in self.splits.items():
            uri = fs.join(scores_root, split)
            wanted = ["uid", "coordinate_score"]
            scored = read_gdmix_scores(uri).select(wanted) if has_avro_scores(uri) else \
                fs.read_parquet_dir(uri, columns=wanted)
            scored = scored.sort_by("uid")
            found = scored.column("uid").to_numpy()
            if len(found) != rows.num_rows or not np.array_equal(found, rows.uid):
                missing = np.setdiff1d(rows.uid, found)
                raise DataError(f"{coordinate}: {len(found):,} scores for {rows.num_rows:,} {split} rows"
                                + (f"; no score for uid {int(missing[0])}" if missing.size else "; duplicate uids"),
                                path=uri, column="uid")
            self.set_scores(coordinate, split, scored.column("coordinate_score").to_numpy())
        self.models[coordinate] = model

    def record(self, step: dict, entity: str | None) -> dict:
        """Metrics of the total score after a step (``step`` names it: name, type, pass, train
        seconds, solver report), appended to the history and returned. Every held-out split gets
        a key, None where the run has no such split; a random effect adds the per-entity AUC of
        each held-out split."""
        row = dict(step)
        for split, rows in self.splits.items():
            row[split] = binary_metrics(rows.label, rows.total(), rows.weight)
        for split in HELD_OUT:
            row.setdefault(split, None)
        if entity:
            for split in HELD_OUT:
                rows = self.splits.get(split)
                if rows is not None:
                    row[per_entity_auc_key(split)] = per_entity_auc_summary(
                        rows.entities[entity], rows.label, rows.total(), rows.weight)
        self.history.append(row)
        return row

    # the outputs

    def write_scores(self, root: str, order: list[str]) -> None:
        """Per coordinate and split: uid, label, weight, the total score after the coordinate
        (``score``) and its own score (``coordinate_score``)."""
        for split, rows in self.splits.items():
            for name, cumulative, own in rows.cumulative(order):
                fs.write_parquet(pa.table({"uid": pa.array(rows.uid), "label": pa.array(rows.label),
                                           "weight": pa.array(rows.weight), "score": pa.array(cumulative),
                                           "coordinate_score": pa.array(own)}),
                                 scores_uri(root, name, split))

    def metrics(self, data: DataConfig, total_seconds: float | None = None) -> dict:
        """The ``metrics.json`` document: the data read, the metrics after every step and at the end."""
        document = {
            "gdmix_version": __version__,
            "data": {split: {"uri": getattr(data, split), "rows": rows.num_rows} for split, rows in self.splits.items()},
            "coordinates": self.history,
            "final": {split: self.history[-1][split] for split in self.splits},
        }
        if total_seconds is not None:
            document["total_seconds"] = total_seconds
        return document

    def commit(self, output: str, model: TrainedModel, total_seconds: float | None = None) -> dict:
        """Model and scores written to a staging directory that replaces ``output`` in one step;
        then ``metrics.json``, whose presence marks the output complete (on object stores too,
        where a move is not atomic). Returns the metrics document."""
        with fs.staged_directory(output) as staging:
            save_model(staging, model)
            self.write_scores(staging, [c.name for c in model.coordinates])
        document = self.metrics(model.data, total_seconds)
        fs.write_text_atomic(fs.join(output, METRICS_FILE), fs.to_json(document))
        return document


def _split_by_uid(data: Dataset) -> SplitLedger:
    """A split's rows in uid order (the score table's order), entity ids as the data holds them."""
    order = np.argsort(data.uid, kind="stable")
    return SplitLedger(data.uid[order], data.label[order], data.weight[order], data.offset[order],
                       {name: _entity_values(ids)[order] for name, ids in data.entities.items()})


def _entity_values(ids: EntityIds) -> np.ndarray:
    """Every row's entity id itself (not its code): the values the score table stores."""
    return ids.values.to_numpy(zero_copy_only=False)[ids.codes]


def _split_from_table(table: pa.Table, entities, scored) -> SplitLedger:
    def column(name):
        return table.column(name).to_numpy()

    return SplitLedger(column("uid"), column("label"), column("weight"), column("offset"),
                       {entity: column(entity) for entity in entities},
                       {name: column(SCORE_PREFIX + name) for name in scored})
