"""``gdmix prep``: the Spark data-preparation stage.

Raw rows (Parquet, CSV, JSON lines or Avro) become, under ``prep.output``:

* ``train/``, ``validation/`` and (when asked) ``test/``: the data contract (uid, label, weight,
  offset, entity ids, one name-term-value column per feature bag of ``prep.bags``), with features
  seen in fewer than ``min_feature_count`` training rows removed; validation comes from
  ``validation_input`` or a seeded split of the input by uid hash, test from ``test_input`` or the
  same split (``split.test_fraction``); uids must be unique across the three;
* ``index_maps/<bag>/``: the index map of every bag, from the training rows;
* ``partitions/<coordinate>/`` for every random effect: its rows grouped by entity into
  size-balanced partitions (see :mod:`gdmix.prep.partition`) with ``manifest.json``;
* ``prep.json``, written last: what was done, row counts, timings.

Everything is written into a hidden staging sibling of ``prep.output`` that replaces it at the
end (:func:`gdmix.io.fs.staged_directory`); on object stores the executors read and write the
data themselves (:mod:`gdmix.prep.storage`), the driver writes only index maps and manifests.
"""

from __future__ import annotations

import json
import time

from gdmix.config import DetextConfig, GdmixConfig, RandomEffectConfig, RawInputConfig
from gdmix.errors import ConfigError
from gdmix.io import fs
from gdmix.layout import HELD_OUT, PARTITION_MANIFEST, PREP_SUMMARY_FILE, SPLITS, index_map_uri, partitions_uri
from gdmix.models.coordinates import make_coordinate
from gdmix.prep.features import (
    build_index_map, check_contract, contract_frame, drop_rare_features, feature_counts, split_held_out,
    check_held_out,
)
from gdmix.prep.partition import partition_rows, write_partitioned
from gdmix.prep.spark import executor_errors, spark_session
from gdmix.prep.storage import read_input, read_parquet, write_parquet



def run_prep(config: GdmixConfig, log=print) -> dict:
    prep = config.prep
    if prep is None:
        raise ConfigError("the configuration has no 'prep' section")
    started = time.perf_counter()
    random_effects = [c for c in config.coordinates if isinstance(c, RandomEffectConfig)]
    # entity ids, and the columns models read as they are (DeText's texts, dense features, list ids)
    carried = {c.entity for c in random_effects} | set(prep.columns)
    carried |= {name for c in config.coordinates if isinstance(c, DetextConfig) for name in make_coordinate(c).columns}
    entities = sorted(carried)
    spark = spark_session(prep.spark, "gdmix-prep")
    try:
        with executor_errors(), fs.staged_directory(prep.output) as out:
            frames = {"train": _read(spark, prep.input, prep, entities)}
            for split in HELD_OUT:
                source = getattr(prep, f"{split}_input")
                if source is not None:
                    frames[split] = _read(spark, source, prep, entities)
                    check_contract(frames[split], source.path)
            check_contract(frames["train"], prep.input.path)
            if prep.split is not None:
                drawn = split_held_out(frames["train"], prep.split.validation_fraction, prep.split.test_fraction,
                                       prep.split.seed, validation=prep.validation_input is None,
                                       test=prep.test_input is None)
                frames = drawn | {split: frame for split, frame in frames.items() if split not in drawn}
            frames = {split: frames[split] for split in SPLITS if split in frames}
            if prep.test_input is not None:
                check_held_out(frames, "test", prep.test_input.path)

            summary = {"bags": {}, "partitions": {}}
            for bag in prep.bags:
                index_map = build_index_map(feature_counts(frames["train"], bag), prep.min_feature_count)
                index_map.save(index_map_uri(out, bag))
                summary["bags"][bag] = {"features": len(index_map)}
                if prep.min_feature_count > 1:
                    frames = {split: drop_rare_features(frame, bag, index_map, spark) for split, frame in frames.items()}
            for split, frame in frames.items():
                target = fs.join(out, split)
                files = write_parquet(frame, target)
                frames[split] = read_parquet(spark, target, files)  # later steps read, not recompute
                summary[f"{split}_rows"] = frames[split].count()
                log(f"prep: {summary[f'{split}_rows']:,} {split} rows")

            for coordinate in random_effects:
                partitions = coordinate.partitions or prep.partitions
                rows, held_out_rows, manifest = partition_rows(
                    spark, frames["train"], {split: frames[split] for split in HELD_OUT if split in frames},
                    coordinate, partitions)
                target = partitions_uri(out, coordinate.name)
                write_partitioned(rows, fs.join(target, "train"))
                for split, split_rows in held_out_rows.items():
                    write_partitioned(split_rows, fs.join(target, split))
                fs.write_text(fs.join(target, PARTITION_MANIFEST), json.dumps(manifest, indent=2) + "\n")
                loads = [p["active_rows"] for p in manifest["partition_stats"]]
                summary["partitions"][coordinate.name] = {
                    "partitions": partitions, "entities": manifest["entities"],
                    "largest_over_mean_active_rows": max(loads) / max(sum(loads) / len(loads), 1e-9),
                }
                log(f"prep: {coordinate.name}: {manifest['entities']:,} entities in {partitions} partitions")
            summary["seconds"] = time.perf_counter() - started
    finally:
        spark.stop()
    fs.write_text_atomic(fs.join(prep.output, PREP_SUMMARY_FILE), fs.to_json(summary))
    return summary


def _read(spark, source: RawInputConfig, prep, entities: list[str]):
    """The raw rows as a DataFrame of contract columns."""
    raw = read_input(spark, source.path, source.format, source.csv_delimiter)
    return contract_frame(raw, prep, entities, source.path)
