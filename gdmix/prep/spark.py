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
#: inputs up to this size count as small (see :func:`spark_session`)
SMALL_INPUT_BYTES = 16 << 20
#: the local driver JVM's options for small inputs, measured on MovieLens-100K (3 MB of input,
#: CPU seconds of the prepare task's JVM on a 2-core machine):
#:
#: * C1 only: HotSpot's C2 compiler otherwise spends more CPU than the whole job on code that
#:   runs for seconds (54 -> 32 s; on ten times the data, 29 MB, C1 and C2 are even);
#: * no bytecode verification of the classes Spark loads from its own jars (29 -> 27 s);
#:   a JVM that does not know an option ignores it rather than failing to start.
SMALL_INPUT_JAVA_OPTIONS = ("-XX:+IgnoreUnrecognizedVMOptions -XX:TieredStopAtLevel=1 "
                            "-XX:+UnlockDiagnosticVMOptions -XX:-BytecodeVerificationRemote")


def spark_session(config: SparkConfig, app: str = "gdmix", inputs: list[str] | None = None):
    """The session of a Spark stage; ``inputs``: the URIs it reads, when known.

    Local masters get settings for their short runs (``prep.spark.conf`` overrides any): no
    console progress bar, and for small inputs (the files under ``inputs`` add up to at most
    :data:`SMALL_INPUT_BYTES`; a listing, no data read) a driver JVM tuned to start fast
    (:data:`SMALL_INPUT_JAVA_OPTIONS`, as Spark's
    ``spark.driver.defaultJavaOptions``: ``spark.driver.extraJavaOptions`` adds to them).
    """
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
        builder = builder.config("spark.ui.showConsoleProgress", "false")
        if small_inputs(inputs):
            builder = builder.config("spark.driver.defaultJavaOptions", SMALL_INPUT_JAVA_OPTIONS)
        for key, value in _store_environment().items():
            builder = builder.config(f"spark.executorEnv.{key}", value)
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


def small_inputs(uris) -> bool:
    """Whether the files under ``uris`` add up to at most :data:`SMALL_INPUT_BYTES` (a listing,
    no data read; False when there are none given or any cannot be listed)."""
    size = input_bytes(uris) if uris else None
    return size is not None and size <= SMALL_INPUT_BYTES


def input_bytes(uris) -> int | None:
    """The total size in bytes of the files under ``uris`` (a listing, no data read), or None
    when any cannot be listed."""
    from gdmix.io import fs

    total = 0
    for uri in uris:
        try:
            filesystem, path = fs.url_to_fs(uri)
            total += int(filesystem.du(path, total=True))
        except Exception:  # unreachable or not there: reading it will say so
            return None
    return total


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
