"""The score table that carries coordinate descent from one pipeline step to the next.

For each split (``train``, ``validation``, ``test``) one Parquet dataset: uid, label, weight, the data's
own offset, the entity id columns, ``score_<coordinate>`` for every coordinate trained so far
and ``score`` (offset plus every coordinate's score). A coordinate's offsets are the sum of the
*other* coordinates' columns, exactly what ``gdmix train`` computes in memory; a coordinate not
trained yet contributes 0. ``table.json`` beside it records each coordinate's latest model
location and the metrics after every step.

The table holds 8 bytes per row per column in memory while a step updates it; the random
effects' own data stays partitioned.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from gdmix.config import GdmixConfig, RandomEffectConfig
from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.metrics import binary_metrics, per_entity_auc_key, per_entity_auc_summary

SPLITS = ("train", "validation", "test")
HELD_OUT = ("validation", "test")
META_FILE = "table.json"


@dataclass
class ScoreTable:
    splits: dict[str, pa.Table]
    models: dict[str, str] = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    @classmethod
    def initial(cls, config: GdmixConfig) -> "ScoreTable":
        """uid, label, weight, offset and entity ids of the prepared data (no scores yet)."""
        entities = tuple(sorted({c.entity for c in config.coordinates if isinstance(c, RandomEffectConfig)}))
        splits = {}
        for split in SPLITS:
            uri = getattr(config.data, split)
            if not uri:
                continue
            table = read_contract_table(uri, ContractColumns(entities=entities)).table
            keep = ["uid", "label", "weight", "offset", *entities]
            table = table.select(keep).sort_by("uid")
            splits[split] = table.append_column("score", table.column("offset"))
        return cls(splits)

    @classmethod
    def load(cls, uri: str) -> "ScoreTable":
        meta = json.loads(fs.read_text(fs.join(uri, META_FILE)))
        splits = {split: fs.read_parquet_dir(fs.join(uri, split)) for split in meta["splits"]}
        return cls(splits, meta["models"], meta["history"])

    def save(self, uri: str) -> None:
        with fs.staged_directory(uri) as staging:
            for split, table in self.splits.items():
                fs.write_parquet(table, fs.join(staging, split))
            meta = {"splits": list(self.splits), "models": self.models, "history": self.history}
            fs.write_text(fs.join(staging, META_FILE), fs.to_json(meta))

    def offsets(self, coordinate: str, split: str = "train") -> pa.Table:
        """uid and the sum of every other coordinate's score (the data's offset excluded)."""
        table = self.splits[split]
        others = [name for name in table.column_names if name.startswith("score_") and name != f"score_{coordinate}"]
        total = np.zeros(table.num_rows)
        for name in others:
            total += table.column(name).to_numpy()
        return pa.table({"uid": table.column("uid"), "offset": total})

    def update(self, coordinate: str, scores_root: str, model_uri: str) -> None:
        """Replace ``coordinate``'s column by its new scores (``<scores_root>/<split>/``: uid,
        coordinate_score); every row must have one."""
        for split, table in self.splits.items():
            uri = fs.join(scores_root, split)
            scored = fs.read_parquet_dir(uri, columns=["uid", "coordinate_score"]).sort_by("uid")
            uids = table.column("uid").to_numpy()
            found = scored.column("uid").to_numpy()
            if len(found) != len(uids) or not np.array_equal(found, uids):
                missing = np.setdiff1d(uids, found)
                raise DataError(f"{coordinate}: {len(found):,} scores for {len(uids):,} {split} rows"
                                + (f"; no score for uid {int(missing[0])}" if missing.size else "; duplicate uids"),
                                path=uri, column="uid")
            column = f"score_{coordinate}"
            own = scored.column("coordinate_score")
            if column in table.column_names:
                table = table.set_column(table.column_names.index(column), column, own)
            else:
                table = table.append_column(column, own)
            total = table.column("offset").to_numpy().copy()
            for name in table.column_names:
                if name.startswith("score_"):
                    total += table.column(name).to_numpy()
            self.splits[split] = table.set_column(table.column_names.index("score"), "score", pa.array(total))
        self.models[coordinate] = model_uri

    def record(self, step: dict, entity: str | None) -> dict:
        """Metrics of the total score after a step, appended to the history and returned: the
        keys of ``gdmix train``'s results (``validation`` and ``test`` None without such a split)."""
        row = dict(step)
        for split, table in self.splits.items():
            label, score = table.column("label").to_numpy(), table.column("score").to_numpy()
            weight = table.column("weight").to_numpy()
            row[split] = binary_metrics(label, score, weight)
        for split in HELD_OUT:
            row.setdefault(split, None)
        if entity:
            for split in HELD_OUT:
                if split in self.splits:
                    table = self.splits[split]
                    row[per_entity_auc_key(split)] = per_entity_auc_summary(
                        table.column(entity).to_numpy(), table.column("label").to_numpy(),
                        table.column("score").to_numpy(), table.column("weight").to_numpy())
        self.history.append(row)
        return row
