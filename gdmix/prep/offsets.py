"""``gdmix offsets``: the other coordinates' scores, joined by uid to a random effect's partitions.

A partitioned random-effect trainer needs, for every row of its partition, the offset from all
other coordinates. This Spark step sums the ``coordinate_score`` of the given score datasets
per uid (a folder of GDMix's score Avro counts with its ``predictionScorePerCoordinate``, or its
``predictionScore`` where it has no such field, as DeText's inference writes it) and writes it
next to each partition (``<output>/{train,validation,test}/partition=<p>/``: uid, offset). Every row is kept: a uid without a score is an error (``missing_offsets:
error``, the default) or gets 0 with a warning counting such rows (``zero``) - never a silent
inner-join drop.
"""

from __future__ import annotations

from gdmix.config import GdmixConfig, RandomEffectConfig
from gdmix.errors import ConfigError, DataError
from gdmix.io import fs
from gdmix.io.score_avro import PER_COORDINATE, SCORE, UID, has_avro_scores
from gdmix.layout import SPLITS, partitions_uri
from gdmix.prep.partition import write_partitioned
from gdmix.prep.spark import executor_errors, spark_session
from gdmix.prep.storage import read_input, read_parquet


def join_offsets(config: GdmixConfig, coordinate: str, scores: list[str], output: str, log=print) -> dict:
    prep = config.prep
    if prep is None:
        raise ConfigError("the configuration has no 'prep' section (where the partitions are)")
    spec = next((c for c in config.coordinates if c.name == coordinate), None)
    if not isinstance(spec, RandomEffectConfig):
        raise ConfigError(f"'{coordinate}' is not a random-effect coordinate of this configuration")
    spark = spark_session(prep.spark, "gdmix-offsets", inputs=[*scores, partitions_uri(prep.output, coordinate)])
    summary = {"coordinate": coordinate, "missing": {}}
    try:
        from pyspark.sql import functions as F

        with executor_errors(), fs.staged_directory(output) as out:
            frames = [_scores(spark, uri) for uri in scores]
            total = frames[0]
            for frame in frames[1:]:
                total = total.unionByName(frame)
            total = total.groupBy("uid").agg(F.sum("coordinate_score").alias("offset"))
            for split in SPLITS:
                source = partitions_uri(prep.output, coordinate, split)
                if not fs.exists(source):
                    continue
                rows = read_parquet(spark, source, partition_key="partition").select("uid", "partition")
                joined = rows.join(total, "uid", "left")
                missing = joined.filter(F.col("offset").isNull())
                count = missing.count()
                summary["missing"][split] = count
                if count and prep.missing_offsets == "error":
                    example = missing.select("uid").limit(1).collect()[0]["uid"]
                    raise DataError(f"{count} {split} rows of '{coordinate}' have no score in the given score "
                                    f"datasets (first: uid {example}); set prep.missing_offsets: zero to use 0",
                                    column="uid")
                if count:
                    log(f"offsets: warning: {count} {split} rows have no score; their offset is 0")
                write_partitioned(joined.fillna(0.0, subset=["offset"]), fs.join(out, split))
    finally:
        spark.stop()
    return summary


def _scores(spark, uri: str):
    """(uid, coordinate_score) of one score dataset: our Parquet, or GDMix's score Avro (read by
    the executors, as every Avro input)."""
    from pyspark.sql import functions as F

    if not has_avro_scores(uri):
        return read_parquet(spark, uri).select("uid", "coordinate_score")
    frame = read_input(spark, uri, "avro")
    own = PER_COORDINATE if PER_COORDINATE in frame.columns else SCORE
    return frame.select(F.col(UID).cast("long").alias("uid"), F.col(own).cast("double").alias("coordinate_score"))
