"""A SparkSession configured the way gdmix's Spark stages need it.

Local mode binds only to 127.0.0.1 and gets an explicit driver memory (in local mode the
driver does all the work, and Spark's default heap is 1 GB). Spark here has no S3 connector,
so stages read and write local directories and :func:`local_input` / :func:`publish` move data
to and from object stores with fsspec.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from fsspec.implementations.local import LocalFileSystem

from gdmix.config import SparkConfig
from gdmix.io import fs


def spark_session(config: SparkConfig, app: str = "gdmix"):
    from pyspark.sql import SparkSession

    local = config.master is not None and config.master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    builder = SparkSession.builder.appName(app)
    if config.master is not None:
        builder = builder.master(config.master)
    builder = (
        builder
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.parquet.compression.codec", "snappy")
    )
    if local:
        builder = builder.config("spark.driver.host", "127.0.0.1").config("spark.driver.bindAddress", "127.0.0.1")
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def is_local(uri: str) -> bool:
    return isinstance(fs.url_to_fs(uri)[0], LocalFileSystem)


def local_input(uri: str, scratch: Path) -> str:
    """A local path with the contents of ``uri``: the path itself when local, else a download
    into ``scratch`` (which must outlive the Spark job reading it)."""
    if is_local(uri):
        return fs.url_to_fs(uri)[1]
    source_fs, path = fs.url_to_fs(uri)
    scratch.mkdir(parents=True, exist_ok=True)
    source_fs.get(path, str(scratch / "data"), recursive=True)
    return str(scratch / "data")


def publish(local_dir: str, uri: str) -> None:
    """Replace ``uri`` by the local directory ``local_dir`` (moved, or uploaded then removed)."""
    if is_local(uri):
        fs.commit_directory(local_dir, uri)
        return
    target_fs, path = fs.url_to_fs(uri)
    parent, name = path.rstrip("/").rsplit("/", 1)
    staging = f"{parent}/.{name}.upload"
    if target_fs.exists(staging):
        target_fs.rm(staging, recursive=True)
    target_fs.put(local_dir, staging, recursive=True)
    fs.commit_directory(fs.unstrip(target_fs, staging), uri)
    shutil.rmtree(local_dir, ignore_errors=True)
