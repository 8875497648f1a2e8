"""Spark transforms from raw columns to the data contract: label, uid, feature bags, index maps."""

from __future__ import annotations

import pyarrow as pa

from gdmix.config import BagSpec, PrepConfig
from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap

UID_SEED = 7_919  # salt of the hash that assigns rows to the validation split


def contract_frame(raw, config: PrepConfig, entities: list[str], source: str):
    """Select and build the contract columns (uid, label, weight, offset, entities, bags)."""
    from pyspark.sql import functions as F

    missing = sorted(_referenced_columns(config, entities) - set(raw.columns))
    if missing:
        raise DataError(f"missing column(s) {', '.join(missing)} (input has: {', '.join(sorted(raw.columns))})",
                        path=source)
    uid = F.col(config.uid).cast("long") if config.uid else F.monotonically_increasing_id()
    label = F.col(config.label.column).cast("double")
    if config.label.threshold is not None:
        label = (label > F.lit(config.label.threshold)).cast("double")
    columns = [uid.alias("uid"), label.alias("label")]
    if config.weight:
        columns.append(F.col(config.weight).cast("double").alias("weight"))
    if config.offset:
        columns.append(F.col(config.offset).cast("double").alias("offset"))
    columns += [F.col(name) for name in entities]
    columns += [_bag(spec).alias(name) for name, spec in config.bags.items()]
    return raw.select(*columns)


def _referenced_columns(config: PrepConfig, entities: list[str]) -> set[str]:
    names = {config.label.column, *entities}
    names |= {c for c in (config.uid, config.weight, config.offset) if c}
    for spec in config.bags.values():
        names |= set(spec.numeric) | set(spec.categorical) | set(spec.bags)
    return names


def _bag(spec: BagSpec):
    """A name-term-value array: numeric (name, "", value), categorical (name, value, 1.0) and
    existing bags concatenated; nulls and zeros are left out."""
    from pyspark.sql import functions as F

    def feature(name, term, value):
        return F.struct(name.alias("name"), term.alias("term"), value.alias("value"))

    made = [feature(F.lit(c), F.lit(""), F.col(c).cast("double")) for c in spec.numeric]
    made += [feature(F.lit(c), F.col(c).cast("string"), F.lit(1.0)) for c in spec.categorical]
    parts = []
    if made:
        parts.append(F.filter(F.array(*made), lambda f: f["value"].isNotNull() & (f["value"] != 0)
                              & f["term"].isNotNull()))
    for column in spec.bags:
        existing = F.transform(F.coalesce(F.col(column), F.array()), lambda f: feature(
            f["name"], F.coalesce(f["term"], F.lit("")), f["value"].cast("double")))
        parts.append(F.filter(existing, lambda f: f["value"].isNotNull() & (f["value"] != 0)))
    if not parts:
        empty = F.array().cast("array<struct<name:string,term:string,value:double>>")
        return empty
    return parts[0] if len(parts) == 1 else F.concat(*parts)


def check_contract(frame, source: str) -> None:
    """Labels are 0/1, uids and entity ids are present and uids unique: fail on the first bad row."""
    from pyspark.sql import functions as F

    bad = frame.filter(~F.col("label").isin(0.0, 1.0) | F.col("label").isNull()).select("uid", "label").limit(1).collect()
    if bad:
        raise DataError(f"label {bad[0]['label']} of uid {bad[0]['uid']} is not 0 or 1", path=source, column="label")
    null_uid = frame.filter(F.col("uid").isNull()).limit(1).count()
    if null_uid:
        raise DataError("null uid", path=source, column="uid")
    repeated = frame.groupBy("uid").count().filter(F.col("count") > 1).limit(1).collect()
    if repeated:
        raise DataError(f"duplicate uid {repeated[0]['uid']} ({repeated[0]['count']} rows); uids must be unique",
                        path=source, column="uid")


def check_contracts(sources: list[tuple[str, object, str]], split=None) -> dict[str, int]:
    """:func:`check_contract` of every source in one Spark query, and the rows of every split.

    ``sources``: (name, frame, path) in the order their errors are reported; ``split``: the
    :class:`~gdmix.config.SplitConfig` arguments that :func:`split_held_out` draws from the
    ``train`` source (``(validation_fraction, test_fraction, seed, validation, test)``), or None.
    One aggregation counts, per source and split, rows, distinct uids, null uids and bad labels;
    the row counts of each split follow (no later step drops a row). Only when it finds a
    problem do the per-source checks run again, to name the first bad row as
    :func:`check_contract` does.
    """
    from functools import reduce

    from pyspark.sql import functions as F

    parts = []
    for position, (name, frame, _) in enumerate(sources):
        split_name = F.lit(name)
        if name == "train" and split is not None:
            split_name = _split_name(*split)
        bad = ~F.col("label").isin(0.0, 1.0) | F.col("label").isNull()
        parts.append(frame.select(F.lit(position).alias("_source"), split_name.alias("_split"), "uid",
                                  bad.alias("_bad")))
    stats = reduce(lambda a, b: a.unionAll(b), parts).groupBy("_source", "_split").agg(
        F.count(F.lit(1)).alias("rows"), F.count_distinct("uid").alias("uids"),
        F.count_if(F.col("uid").isNull()).alias("null_uids"), F.count_if("_bad").alias("bad_labels"),
    ).collect()
    rows: dict[str, int] = {}
    problem = set()
    per_source: dict[int, list[int]] = {}
    for row in stats:
        rows[row["_split"]] = rows.get(row["_split"], 0) + row["rows"]
        totals = per_source.setdefault(row["_source"], [0, 0, 0, 0])
        for k, key in enumerate(("rows", "uids", "null_uids", "bad_labels")):
            totals[k] += row[key]
    for position, (n, uids, null_uids, bad_labels) in per_source.items():
        # duplicates share their uid's hash band, so distinct uids add up across splits
        if bad_labels or null_uids or uids != n - null_uids:
            problem.add(position)
    for position, (name, frame, path) in enumerate(sources):
        if position in problem:
            check_contract(frame, path)  # raises, naming the first bad row
            raise DataError("bad labels, null or duplicate uids", path=path)
    return rows


def _split_name(validation_fraction: float, test_fraction: float, seed: int, validation: bool = True,
                test: bool = True):
    """The split each row of the ``train`` source goes to (as :func:`split_held_out` draws it)."""
    from pyspark.sql import functions as F

    bucket, held = _held_out_conditions(validation_fraction, test_fraction, seed, validation, test)
    name = F.lit("train")
    for split, condition in reversed(list(held.items())):
        name = F.when(condition(bucket), F.lit(split)).otherwise(name)
    return name


def check_held_out(frames: dict, split: str, source: str) -> None:
    """A held-out split given as its own input shares no uid with the other splits (a test row
    that is also a training row would leak into the reported test metrics)."""
    uids = frames[split].select("uid")
    for other, frame in frames.items():
        if other == split:
            continue
        shared = uids.join(frame.select("uid"), "uid").limit(1).collect()
        if shared:
            raise DataError(f"uid {shared[0]['uid']} is in the {split} data and in the {other} data; "
                            f"the {split} rows must be held out", path=source, column="uid")


def split_validation(frame, fraction: float, seed: int):
    """A seeded split by a hash of the uid: the same rows whatever the input's partitioning."""
    parts = split_held_out(frame, fraction, 0.0, seed)
    return parts["train"], parts["validation"]


def split_held_out(frame, validation_fraction: float, test_fraction: float, seed: int,
                   validation: bool = True, test: bool = True) -> dict:
    """A seeded three-way split by a hash of the uid (the same rows whatever the input's
    partitioning): ``validation`` takes the hash band ``[0, validation_fraction)``, ``test`` the
    band ``[validation_fraction, validation_fraction + test_fraction)``, both fractions of the whole
    input; train keeps the rest. A split not asked for (``validation=False``, ``test=False`` or
    ``test_fraction == 0``) is not drawn and its band stays in train. Returns the frames by split
    name, ``train`` first."""
    from pyspark.sql import functions as F

    bucket, held = _held_out_conditions(validation_fraction, test_fraction, seed, validation, test)
    if not held:
        return {"train": frame}
    marked = frame.withColumn("_bucket", bucket)
    held = {name: condition(F.col("_bucket")) for name, condition in held.items()}
    in_any = None
    for condition in held.values():
        in_any = condition if in_any is None else (in_any | condition)
    parts = {"train": marked.filter(~in_any).drop("_bucket")}
    for name, condition in held.items():
        parts[name] = marked.filter(condition).drop("_bucket")
    return parts


def _held_out_conditions(validation_fraction: float, test_fraction: float, seed: int, validation: bool,
                         test: bool):
    """The uid hash bucket (a column) and, per held-out split drawn, the condition on it."""
    from pyspark.sql import functions as F

    low = int(round(validation_fraction * 1_000_000))
    high = int(round((validation_fraction + test_fraction) * 1_000_000))
    bucket = F.abs(F.xxhash64(F.col("uid"), F.lit(seed), F.lit(UID_SEED))) % 1_000_000
    held = {}
    if validation:
        held["validation"] = lambda b: b < low
    if test and high > low:
        held["test"] = lambda b: (b >= low) & (b < high)
    return bucket, held


def feature_counts(frame, bag: str):
    """(name, term, rows) over the training rows: in how many rows each feature occurs."""
    from pyspark.sql import functions as F

    # distinct within each row first: no shuffle of (uid, feature) pairs is needed
    keys = F.array_distinct(F.transform(bag, lambda f: F.struct(f["name"].alias("name"), f["term"].alias("term"))))
    return frame.select(F.explode(keys).alias("f")).select("f.name", "f.term").groupBy("name", "term").count()


def build_index_map(counts, min_count: int) -> IndexMap:
    from pyspark.sql import functions as F

    kept = counts.filter(F.col("count") >= min_count).select("name", "term").toArrow()
    return _index_map(kept)


def build_index_maps(frame, bags: list[str], min_count: int) -> dict[str, IndexMap]:
    """The index map of every bag in ``bags`` (features in at least ``min_count`` rows of
    ``frame``), all counted by one Spark aggregation: :func:`feature_counts` of each bag, keyed
    by the bag's position."""
    from pyspark.sql import functions as F

    if not bags:
        return {}

    def tagged(position: int):  # (name, term) -> (position, name, term)
        return lambda f: F.struct(F.lit(position).alias("bag"), f["name"].alias("name"), f["term"].alias("term"))

    # distinct within each row first (as feature_counts): no shuffle of (uid, feature) pairs; a
    # null bag has no features (and must not make concat's result null for the other bags)
    none = F.array().cast("array<struct<bag:int,name:string,term:string>>")
    keyed = [F.coalesce(F.transform(F.array_distinct(F.transform(
        bag, lambda f: F.struct(f["name"].alias("name"), f["term"].alias("term")))), tagged(position)), none)
        for position, bag in enumerate(bags)]
    features = keyed[0] if len(keyed) == 1 else F.concat(*keyed)
    counts = frame.select(F.explode(features).alias("f")).select("f.bag", "f.name", "f.term") \
        .groupBy("bag", "name", "term").count()
    kept = counts.filter(F.col("count") >= min_count).select("bag", "name", "term").toArrow()
    position = kept.column("bag").to_numpy()
    return {bag: _index_map(kept.filter(pa.array(position == k)).select(["name", "term"]))
            for k, bag in enumerate(bags)}


def _index_map(kept: pa.Table) -> IndexMap:
    if kept.num_rows == 0:
        return IndexMap.empty()
    return IndexMap.from_features(kept.column("name").combine_chunks().cast(pa.string()),
                                  kept.column("term").combine_chunks().cast(pa.string()))


def drop_rare_features(frame, bag: str, index_map: IndexMap, spark):
    """Keep only features of the index map in ``bag`` (a broadcast join on (name, term))."""
    from pyspark.sql import functions as F

    kept = spark.createDataFrame(pa.table({"name": index_map.names, "term": index_map.terms}))
    exploded = frame.select("uid", F.posexplode(bag).alias("position", "f"))
    joined = exploded.join(F.broadcast(kept), (F.col("f.name") == kept["name"]) & (F.col("f.term") == kept["term"]))
    rebuilt = joined.groupBy("uid").agg(F.sort_array(F.collect_list(F.struct("position", "f"))).alias("items"))
    rebuilt = rebuilt.select("uid", F.transform("items", lambda item: item["f"]).alias(bag))
    return frame.drop(bag).join(rebuilt, "uid", "left").withColumn(
        bag, F.coalesce(F.col(bag), F.array().cast("array<struct<name:string,term:string,value:double>>")))
