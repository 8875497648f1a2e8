"""Grouping a random effect's rows by entity into size-balanced partitions (Spark).

For one random-effect coordinate, each training row gets the partition of its entity (bin
packing on the driver, :mod:`gdmix.prep.binpack`, balanced by training rows) and an
``active`` flag: rows of entities with fewer than ``min_rows`` rows are passive (scored, never
trained on), and entities with more than ``max_rows`` rows keep a seeded sample of
``max_rows`` active rows. Validation (and test) rows follow their entity (an entity never seen
in training goes to a partition by hash; it has no model and scores 0). Output:
``<dir>/{train,validation,test}/partition=<p>/`` Parquet and ``manifest.json``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from gdmix.config import RandomEffectConfig
from gdmix.prep.binpack import assign_partitions
from gdmix.prep.storage import write_parquet

SAMPLE_SALT = 104_729


def entity_counts(train, entities: list[str]) -> dict[str, pa.Table]:
    """(entity id, count) of the training rows for every entity column, sorted by entity id,
    all in one Spark aggregation (grouping sets when there are several columns)."""
    from pyspark.sql import functions as F

    entities = list(dict.fromkeys(entities))
    if not entities:
        return {}
    if len(entities) == 1:
        return {entities[0]: _sorted_counts(train.groupBy(entities[0]).count().toArrow(), entities[0])}
    # grouping_id tells a null entity id (a group of its own) from the columns not grouped
    table = train.groupingSets([[name] for name in entities], *entities).agg(
        F.count(F.lit(1)).alias("count"), F.grouping_id().alias("_set")).toArrow()
    sets = table.column("_set").to_numpy()
    counts = {}
    for position, name in enumerate(entities):
        grouped = (1 << (len(entities) - 1 - position)) ^ ((1 << len(entities)) - 1)  # all bits set but its own
        part = table.filter(pa.array(sets == grouped)).select([name, "count"])
        counts[name] = _sorted_counts(part, name)
    return counts


def _sorted_counts(table: pa.Table, entity: str) -> pa.Table:
    # sorted by entity id: the packing (which breaks ties by position) must not depend on how
    # Spark happened to order the groups
    return table.sort_by(entity)


def partition_rows(spark, train, held_out: dict, coordinate: RandomEffectConfig, partitions: int,
                   counts: pa.Table | None = None):
    """(train rows, {split: rows} of the held-out frames ``held_out`` (validation, test), manifest)
    for one random-effect coordinate. ``held_out`` may also be one frame (validation) or None;
    ``counts``: the entity's :func:`entity_counts`, when already counted."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    entity = coordinate.entity
    keep = ["uid", "label"] + [c for c in ("weight", "offset") if c in train.columns] + [entity]
    keep += [coordinate.feature_bag] if coordinate.feature_bag else []
    if counts is None:
        counts = entity_counts(train, [entity])[entity]
    sizes = counts.column("count").to_numpy().astype(np.int64)
    trained = np.where(sizes >= coordinate.min_rows, sizes, 0)
    if coordinate.max_rows is not None:
        trained = np.minimum(trained, coordinate.max_rows)
    # passive rows cost a little (scoring), so every entity has some weight in the packing
    assignment = assign_partitions(np.maximum(trained * 8 + (sizes - trained), 1), partitions)
    table = pa.table({entity: counts.column(entity), "partition": pa.array(assignment, pa.int32())})
    placed = spark.createDataFrame(table)

    rows = train.select(*keep).join(F.broadcast(placed) if len(assignment) < 2_000_000 else placed, entity)
    active = F.lit(True)
    if coordinate.min_rows > 1 or coordinate.max_rows is not None:  # needs a window over each entity
        per_entity = Window.partitionBy(entity)
        active = F.count(F.lit(1)).over(per_entity) >= F.lit(coordinate.min_rows)
        if coordinate.max_rows is not None:
            order = per_entity.orderBy(F.xxhash64("uid", F.lit(coordinate.seed), F.lit(SAMPLE_SALT)), "uid")
            active = active & (F.row_number().over(order) <= F.lit(coordinate.max_rows))
    rows = rows.withColumn("active", active)

    if held_out is None:
        held_out = {}
    elif not isinstance(held_out, dict):
        held_out = {"validation": held_out}
    placed_held_out = {
        split: frame.select(*keep).join(placed, entity, "left").withColumn(
            "partition", F.coalesce(F.col("partition"), (F.abs(F.xxhash64(entity)) % partitions).cast("int")))
        for split, frame in held_out.items() if frame is not None
    }

    manifest = {
        "coordinate": coordinate.name,
        "entity": entity,
        "feature_bag": coordinate.feature_bag,
        "partitions": partitions,
        "min_rows": coordinate.min_rows,
        "max_rows": coordinate.max_rows,
        "seed": coordinate.seed,
        "entities": int(len(sizes)),
        "rows": int(sizes.sum()),
        "partition_stats": _stats(sizes, trained, assignment, partitions),
    }
    return rows, placed_held_out, manifest


def _stats(sizes, trained, assignment, partitions) -> list[dict]:
    entities = np.bincount(assignment, minlength=partitions)
    rows = np.bincount(assignment, weights=sizes, minlength=partitions)
    active = np.bincount(assignment, weights=trained, minlength=partitions)
    return [{"partition": p, "entities": int(entities[p]), "rows": int(rows[p]), "active_rows": int(active[p])}
            for p in range(partitions)]


def write_partitioned(frame, uri: str, sort_by: str = "uid") -> list[str] | None:
    """One directory per partition (``partition=<p>``), its rows sorted by ``sort_by``
    (:func:`gdmix.prep.storage.write_parquet`: the executors write).

    Sorting by partition first is what makes the files sorted: Spark's writer needs its rows
    ordered by the partition column and would otherwise re-sort them by that column alone,
    losing the ``sort_by`` order.
    """
    from pyspark.sql import functions as F

    ordered = frame.repartition(F.col("partition")).sortWithinPartitions("partition", sort_by)
    return write_parquet(ordered, uri, "partition")
