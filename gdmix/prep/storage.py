"""Datasets of the Spark stages on any file system, read and written by the executors.

Executors on other machines cannot see the driver's disk, and Spark here has no object-store
connector (the pip wheel has no hadoop-aws). So for a URI Spark cannot open itself (see
:func:`spark_uri`) the driver only lists files and commits, and the executors do all data IO
with fsspec and pyarrow:

* reading: one task per file; a first pass returns every file's schema (Parquet footers; CSV,
  JSON and Avro types inferred), unified on the driver, then ``mapInArrow`` streams each
  file's rows as record batches of that schema;
* writing: ``mapInArrow`` tasks write their rows as Parquet files straight into the target
  directory (callers stage it, :func:`gdmix.io.fs.staged_directory`) and return the names;
  the driver keeps the files of the successful task attempts and deletes any others.

Local paths stay on Spark's own readers and writers (the fast path of ``local[*]``).
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.prep.avro import avro_batches

BATCH_ROWS = 65_536
WRITTEN = "file string, rows long"
S3A_CLASS = "org.apache.hadoop.fs.s3a.S3AFileSystem"


def spark_uri(spark, uri: str) -> str | None:
    """The path Spark's own readers and writers should use for ``uri``, or None when the
    executors must do the IO themselves (fsspec + pyarrow).

    Local paths are Spark's fast path (with a cluster master they must be on a volume every
    executor mounts, as for any Spark job). ``s3://`` becomes ``s3a://`` when Hadoop's S3A
    connector is on the JVM classpath (an image with hadoop-aws, configured through
    ``spark.hadoop.fs.s3a.*``); no other object store has a connector here.
    """
    filesystem, path = fs.url_to_fs(uri)
    if isinstance(filesystem, LocalFileSystem):
        return path
    protocols = filesystem.protocol if isinstance(filesystem.protocol, (tuple, list)) else [filesystem.protocol]
    if {"s3", "s3a"} & set(protocols) and _jvm_has_class(spark, S3A_CLASS):
        return f"s3a://{path}"
    return None


def _jvm_has_class(spark, name: str) -> bool:
    jvm = spark.sparkContext._jvm
    try:  # the context class loader also sees jars added with --jars / spark.jars
        jvm.java.lang.Class.forName(name, False, jvm.java.lang.Thread.currentThread().getContextClassLoader())
        return True
    except Exception:  # a Py4JJavaError wrapping ClassNotFoundException
        return False


@dataclass(frozen=True)
class FileFormat:
    """How an executor decodes one file into record batches (picklable: it travels to tasks).

    ``partition_key``: a hive-style folder ``<key>=<int>`` in each file's path becomes an int
    column, as Spark's partition discovery does for ``partition=<p>`` folders.
    """

    name: str = "parquet"  # parquet, csv, json or avro
    delimiter: str = ","
    partition_key: str | None = None

    def schema(self, uri: str) -> pa.Schema:
        """The file's schema: a Parquet footer; CSV, JSON and Avro types inferred from the
        whole file (as Spark's ``inferSchema`` does), so a later block cannot contradict them."""
        import pyarrow.csv as pacsv
        import pyarrow.json as pajson

        filesystem, path = fs.url_to_fs(uri)
        with _decoding(uri, self.name), filesystem.open(path, "rb") as handle:
            if self.name == "parquet":
                return pq.read_schema(handle)
            if self.name == "csv":
                return pacsv.read_csv(handle, parse_options=self._csv_parse(),
                                      convert_options=pacsv.ConvertOptions(strings_can_be_null=True)).schema
            if self.name == "json":
                return pajson.read_json(handle).schema
            return pa.unify_schemas([batch.schema for batch in avro_batches(handle)], promote_options="permissive")

    def batches(self, uri: str, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        """The file's rows as batches of ``schema`` (the unified schema of all input files:
        columns this file lacks are null)."""
        filesystem, path = fs.url_to_fs(uri)
        with _decoding(uri, self.name), filesystem.open(path, "rb") as handle:
            for batch in self._decode(handle, schema):
                yield self._with_partition(uri, _conform(batch, schema, uri))

    def _decode(self, handle, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        import pyarrow.csv as pacsv
        import pyarrow.json as pajson

        data_schema = schema if self.partition_key is None else schema.remove(schema.get_field_index(self.partition_key))
        if self.name == "parquet":
            return pq.ParquetFile(handle).iter_batches(batch_size=BATCH_ROWS)
        if self.name == "csv":
            return pacsv.open_csv(handle, parse_options=self._csv_parse(), convert_options=pacsv.ConvertOptions(
                strings_can_be_null=True, column_types=data_schema))
        if self.name == "json":
            return pajson.open_json(handle, parse_options=pajson.ParseOptions(
                explicit_schema=data_schema, unexpected_field_behavior="ignore"))
        return avro_batches(handle, data_schema)

    def _csv_parse(self):
        import pyarrow.csv as pacsv

        return pacsv.ParseOptions(delimiter=self.delimiter)

    def _with_partition(self, uri: str, batch: pa.RecordBatch) -> pa.RecordBatch:
        if self.partition_key is None:
            return batch
        match = re.search(rf"/{re.escape(self.partition_key)}=(-?\d+)/", uri)
        if match is None:
            raise DataError(f"no '{self.partition_key}=<number>' folder in the path", path=uri)
        index = batch.schema.get_field_index(self.partition_key)
        return batch.set_column(index, self.partition_key, pa.array([int(match.group(1))] * batch.num_rows, pa.int32()))


@contextlib.contextmanager
def _decoding(uri: str, file_format: str):
    """Decoding failures become DataErrors naming the file (pyarrow's CSV messages also name
    the column and row)."""
    try:
        yield
    except DataError:
        raise
    except (ValueError, EOFError, pa.ArrowTypeError) as exc:  # ArrowInvalid is a ValueError
        raise DataError(f"cannot read {file_format} rows ({exc})", path=uri) from None


def _conform(batch: pa.RecordBatch, schema: pa.Schema, uri: str) -> pa.RecordBatch:
    """``batch`` with the columns and types of ``schema``, missing columns null."""
    columns = []
    for field in schema:
        if field.name not in batch.schema.names:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        try:
            columns.append(batch.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
            raise DataError(f"cannot convert {batch.column(field.name).type} to {field.type} ({exc})",
                            path=uri, column=field.name) from None
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def read_input(spark, uri: str, file_format: str = "parquet", delimiter: str = ","):
    """A DataFrame of the files under ``uri`` (Avro always through the executors: Spark here
    has no Avro data source)."""
    path = spark_uri(spark, uri) if file_format != "avro" else None
    if path is None:
        files = fs.list_data_files(uri, (".avro",) if file_format == "avro" else None)
        return read_files(spark, files, FileFormat(file_format, delimiter), uri)
    if file_format == "csv":
        return spark.read.option("header", True).option("inferSchema", True).option("sep", delimiter).csv(path)
    if file_format == "json":
        return spark.read.json(path)
    return spark.read.parquet(path)


def read_parquet(spark, uri: str, files: list[str] | None = None, partition_key: str | None = None,
                 schema=None):
    """A Parquet dataset (``files``: its files when known, e.g. just written; ``partition_key``:
    its ``<key>=<p>`` folders, which Spark's own reader discovers by itself; ``schema``: the
    Spark schema of a dataset just written from a DataFrame of that schema, which Spark's own
    reader then takes instead of running a job to read it from a footer; it reads every
    column as nullable either way)."""
    path = spark_uri(spark, uri)
    if path is not None:
        if schema is not None and partition_key is None:
            return spark.read.schema(schema).parquet(path)
        return read_input(spark, uri)
    files = files if files is not None else fs.list_data_files(uri)
    return read_files(spark, files, FileFormat(partition_key=partition_key), uri)


def read_files(spark, files: list[str], file_format: FileFormat, source: str):
    """Executors read ``files`` (one task each) into one DataFrame."""
    from pyspark.sql.pandas.types import from_arrow_schema

    if not files:
        raise DataError(f"no {file_format.name} files found", path=source)
    schemas = spark.sparkContext.parallelize(files, len(files)).map(file_format.schema).collect()
    try:
        schema = pa.unify_schemas(schemas, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise DataError(f"the files' schemas do not agree ({exc})", path=source) from None
    if file_format.partition_key is not None:
        schema = schema.append(pa.field(file_format.partition_key, pa.int32()))
    # every column nullable, as Spark's own file readers make them (a required column of one
    # file must not make later steps' output schemas differ from Spark's)
    schema = pa.schema([field.with_nullable(True) for field in schema])

    def read(ids: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in ids:
            for k in batch.column(0).to_pylist():
                yield from file_format.batches(files[k], schema)

    return spark.range(len(files), numPartitions=len(files)).mapInArrow(read, from_arrow_schema(schema))


def write_parquet(frame, uri: str, partition_column: str | None = None) -> list[str] | None:
    """Write ``frame`` as Parquet under directory ``uri``; with ``partition_column``, one
    folder ``<column>=<value>`` per value and the column left out of the files (Spark's
    ``partitionBy``). Returns the files when executors wrote them, None when Spark did."""
    spark = frame.sparkSession
    path = spark_uri(spark, uri)
    if path is not None:
        (frame.write.partitionBy(partition_column) if partition_column else frame.write).parquet(path)
        return None
    token = uuid.uuid4().hex[:8]
    written = frame.mapInArrow(_write_task(uri, partition_column, token), WRITTEN).toArrow()
    files = written.column("file").to_pylist()
    _remove_unlisted(uri, files)
    if not files and partition_column is None:  # an empty dataset still has a schema
        from pyspark.sql.pandas.types import to_arrow_schema

        files = [fs.write_parquet(to_arrow_schema(frame.schema).empty_table(), uri, f"part-00000-{token}.parquet")]
    return files


def _write_task(uri: str, partition_column: str | None, token: str):
    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pyspark import TaskContext

        context = TaskContext.get()
        name = f"part-{context.partitionId():05d}-{token}-{context.attemptNumber()}.parquet"
        with _PartFiles(uri, name) as parts:
            for batch in batches:
                for folder, piece in _split(batch, partition_column):
                    parts.write(folder, piece)
        yield pa.RecordBatch.from_pydict({"file": list(parts.rows), "rows": list(parts.rows.values())},
                                         schema=pa.schema([("file", pa.string()), ("rows", pa.int64())]))

    return write


def _split(batch: pa.RecordBatch, column: str | None) -> Iterator[tuple[str, pa.RecordBatch]]:
    """(folder, rows without ``column``) per value of ``column``; row order is kept."""
    if column is None:
        yield "", batch
        return
    values = batch.column(column)
    rest = batch.drop_columns([column])
    for value in pc.unique(values).to_pylist():
        yield f"{column}={value}", rest.filter(pc.equal(values, value))


class _PartFiles:
    """The open Parquet files of one task, one per folder: ``rows`` maps file URI -> rows."""

    def __init__(self, uri: str, name: str) -> None:
        self.filesystem, self.root = fs.url_to_fs(uri)
        self.name = name
        self.open: dict[str, tuple] = {}
        self.rows: dict[str, int] = {}

    def write(self, folder: str, batch: pa.RecordBatch) -> None:
        if folder not in self.open:
            directory = "/".join(p for p in (self.root.rstrip("/"), folder) if p)
            self.filesystem.makedirs(directory, exist_ok=True)
            path = f"{directory}/{self.name}"
            handle = self.filesystem.open(path, "wb")
            self.open[folder] = (path, handle, pq.ParquetWriter(handle, batch.schema))
            self.rows[fs.unstrip(self.filesystem, path)] = 0
        path, _, writer = self.open[folder]
        writer.write_batch(batch)
        self.rows[fs.unstrip(self.filesystem, path)] += batch.num_rows

    def __enter__(self) -> "_PartFiles":
        return self

    def __exit__(self, *exc) -> None:
        for _, handle, writer in self.open.values():
            writer.close()
            handle.close()


def _remove_unlisted(uri: str, keep: list[str]) -> None:
    """Delete files under ``uri`` that no successful task attempt reported (left by failed or
    retried attempts)."""
    filesystem, path = fs.url_to_fs(uri)
    if not filesystem.exists(path):
        return
    kept = {fs.url_to_fs(f)[1] for f in keep}
    stray = [f for f in filesystem.find(path) if f not in kept]
    if stray:
        filesystem.rm(stray)
