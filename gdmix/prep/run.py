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
from functools import partial

from gdmix.config import DetextConfig, GdmixConfig, RandomEffectConfig, RawInputConfig
from gdmix.errors import ConfigError
from gdmix.io import fs
from gdmix.layout import HELD_OUT, PARTITION_MANIFEST, PREP_SUMMARY_FILE, SPLITS, index_map_uri, partitions_uri
from gdmix.prep.features import (
    build_index_maps, check_contracts, check_held_out, contract_frame, drop_rare_features, split_held_out,
)
from gdmix.prep.partition import entity_counts, partition_rows, write_partitioned
from gdmix.prep.spark import executor_errors, small_inputs, spark_session
from gdmix.prep.storage import read_input, read_parquet, write_parquet
from gdmix.solvers.parallel import ordered_map

#: Independent Spark actions run side by side, this many at a time, when the inputs are small
#: (:func:`~gdmix.prep.spark.small_inputs`): their stages are mostly one task each (one file, one
#: row group), which leaves the other cores of a local master idle. A larger input's stages have
#: a task for every core already, and actions side by side only keep more data alive in the
#: driver's heap (30M rows in `bench.scale`: peak 10.2 GiB against 8.3 GiB one at a time, and no
#: faster), so they run one at a time.
SMALL_INPUT_CONCURRENT_ACTIONS = 2


def run_prep(config: GdmixConfig, log=print) -> dict:
    prep = config.prep
    if prep is None:
        raise ConfigError("the configuration has no 'prep' section")
    started = time.perf_counter()
    random_effects = [c for c in config.coordinates if isinstance(c, RandomEffectConfig)]
    # entity ids, and the columns models read as they are (DeText's texts, dense features, list ids)
    carried = {c.entity for c in random_effects} | set(prep.columns)
    detext = [c for c in config.coordinates if isinstance(c, DetextConfig)]
    if detext:  # (the models' modules load scipy and more: only when needed)
        from gdmix.models.coordinates import make_coordinate

        carried |= {name for c in detext for name in make_coordinate(c).columns}
    entities = sorted(carried)
    raw = [source.path for source in (prep.input, prep.validation_input, prep.test_input) if source is not None]
    spark = spark_session(prep.spark, "gdmix-prep", inputs=raw)
    side_by_side = SMALL_INPUT_CONCURRENT_ACTIONS if small_inputs(raw) else 1
    try:
        with executor_errors(), fs.staged_directory(prep.output) as out:
            sources = [("train", _read(spark, prep.input, prep, entities), prep.input.path)]
            for split in HELD_OUT:
                source = getattr(prep, f"{split}_input")
                if source is not None:
                    sources.insert(len(sources) - 1, (split, _read(spark, source, prep, entities), source.path))
            drawn = None
            if prep.split is not None:
                drawn = (prep.split.validation_fraction, prep.split.test_fraction, prep.split.seed,
                         prep.validation_input is None, prep.test_input is None)
            # one query checks every source (held-out ones first) and counts every split's rows
            row_counts = check_contracts(sources, drawn)
            frames = {name: frame for name, frame, _ in sources}
            if drawn is not None:
                parts = split_held_out(frames["train"], *drawn)
                frames = parts | {split: frame for split, frame in frames.items() if split not in parts}
            frames = {split: frames[split] for split in SPLITS if split in frames}
            if prep.test_input is not None:
                check_held_out(frames, "test", prep.test_input.path)

            summary = {"bags": {}, "partitions": {}}

            def index_maps():
                built = build_index_maps(frames["train"], list(prep.bags), prep.min_feature_count)
                for bag, index_map in built.items():
                    index_map.save(index_map_uri(out, bag))
                return built

            def written(split, frame):
                target = fs.join(out, split)
                files = write_parquet(frame, target)
                # later steps read, not recompute (the schema is known: no footer to infer it from)
                return read_parquet(spark, target, files, schema=frame.schema)

            if prep.min_feature_count > 1:  # the index maps decide what is written
                maps = index_maps()
                for bag, index_map in maps.items():
                    frames = {split: drop_rare_features(frame, bag, index_map, spark) for split, frame in frames.items()}
                done = _together(side_by_side, *(partial(written, split, frame) for split, frame in frames.items()))
            else:
                maps, *done = _together(side_by_side, index_maps,
                                        *(partial(written, split, frame) for split, frame in frames.items()))
            for bag, index_map in maps.items():
                summary["bags"][bag] = {"features": len(index_map)}
            frames = dict(zip(frames, done))
            for split in frames:
                summary[f"{split}_rows"] = row_counts.get(split, 0)
                log(f"prep: {summary[f'{split}_rows']:,} {split} rows")

            counts = entity_counts(frames["train"], [c.entity for c in random_effects])
            writes, manifests = [], []
            for coordinate in random_effects:
                partitions = coordinate.partitions or prep.partitions
                rows, held_out_rows, manifest = partition_rows(
                    spark, frames["train"], {split: frames[split] for split in HELD_OUT if split in frames},
                    coordinate, partitions, counts[coordinate.entity])
                target = partitions_uri(out, coordinate.name)
                writes.append(partial(write_partitioned, rows, fs.join(target, "train")))
                writes += [partial(write_partitioned, split_rows, fs.join(target, split))
                           for split, split_rows in held_out_rows.items()]
                manifests.append((coordinate, partitions, target, manifest))
            _together(side_by_side, *writes)
            for coordinate, partitions, target, manifest in manifests:
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


def _together(at_a_time: int, *actions) -> list:
    """The results of ``actions`` (Spark actions: writes, collects), in order, run ``at_a_time``
    at a time; the first failure (in the order given) is raised."""
    return list(ordered_map(lambda action: action(), actions, workers=at_a_time))


def _read(spark, source: RawInputConfig, prep, entities: list[str]):
    """The raw rows as a DataFrame of contract columns."""
    raw = read_input(spark, source.path, source.format, source.csv_delimiter)
    return contract_frame(raw, prep, entities, source.path)
