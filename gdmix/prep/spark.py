"""A SparkSession configured the way gdmix's Spark stages need it.

Local masters (``local[*]``, ``local-cluster[...]``) bind only to 127.0.0.1, get an explicit
driver memory (in local mode the driver does all the work, and Spark's default heap is 1 GB)
and run Python workers with this interpreter. Data never passes through the driver's disk:
:mod:`gdmix.prep.storage` has the executors read and write every dataset.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys

from gdmix.config import SparkConfig
from gdmix.errors import DataError, GdmixError

STORE_ENV_PREFIXES = ("AWS_", "FSSPEC_")


def spark_session(config: SparkConfig, app: str = "gdmix"):
    from pyspark.sql import SparkSession

    local = config.master is not None and config.master.startswith("local")
    if local:
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        # Python workers run this interpreter (the default "python3" may be another one,
        # and local-cluster executors start in their own working directory)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
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
        for key, value in _store_environment().items():
            builder = builder.config(f"spark.executorEnv.{key}", value)
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def _store_environment() -> dict[str, str]:
    """The driver's object-store settings (``AWS_*``, ``FSSPEC_*``), for local executors.

    Executors read and write object stores themselves. On a cluster they get credentials
    from their own pod; locally they are this machine's processes, but their environment is
    the JVM's, fixed when the first session of this process started (an earlier session's
    JVM is reused), so the current values are passed explicitly. ``prep.spark.conf`` may
    still override them.
    """
    return {key: value for key, value in os.environ.items() if key.startswith(STORE_ENV_PREFIXES)}


@contextlib.contextmanager
def executor_errors():
    """Re-raise a DataError raised on an executor (a bad file or value) as that DataError.

    It reaches the driver as a Spark exception carrying the worker's traceback; the CLI must
    print the message naming file, column and row, not a JVM stack trace.
    """
    try:
        yield
    except GdmixError:
        raise
    except Exception as exc:
        match = re.search(r"gdmix\.errors\.DataError: (.+)", str(exc))
        if match is None:
            raise
        raise DataError(match.group(1).strip()) from None
