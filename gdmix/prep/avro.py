"""Avro input for Spark stages: Spark here has no Avro data source (an external module), so
executors decode Avro files with fastavro into Arrow record batches, a batch of records at a
time (memory stays bounded by the batch, not the file)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import pyarrow as pa

BATCH_RECORDS = 100_000


def avro_batches(handle: BinaryIO, schema: pa.Schema | None = None) -> Iterator[pa.RecordBatch]:
    """The records of one open Avro file as record batches (types inferred per batch unless
    ``schema`` is given). A file without records yields one empty batch."""
    import fastavro

    batch, emitted = [], False
    for record in fastavro.reader(handle):
        batch.append(record)
        if len(batch) == BATCH_RECORDS:
            yield from _to_batches(batch, schema)
            batch, emitted = [], True
    if batch or not emitted:
        yield from _to_batches(batch, schema)


def _to_batches(records: list[dict], schema: pa.Schema | None) -> Iterator[pa.RecordBatch]:
    table = pa.Table.from_pylist(records, schema=schema)
    yield from table.to_batches() or [pa.RecordBatch.from_pylist([], schema=table.schema)]
