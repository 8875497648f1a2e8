"""Avro input for Spark stages: Spark here has no Avro data source (an external module), so
Avro files are streamed to Parquet with fastavro and pyarrow first, a batch of records at a
time (memory stays bounded by the batch, not the file)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from gdmix.errors import DataError
from gdmix.io import fs

BATCH_RECORDS = 100_000


def avro_to_parquet(uri: str, target_dir: str) -> str:
    """Convert every ``*.avro`` file under ``uri`` to Parquet under ``target_dir``."""
    import fastavro

    source_fs, path = fs.url_to_fs(uri)
    files = [path] if source_fs.isfile(path) else sorted(
        f for f in source_fs.find(path) if f.endswith(".avro") and not Path(f).name.startswith(("_", ".")))
    if not files:
        raise DataError("no Avro files found", path=uri)
    Path(target_dir).mkdir(parents=True, exist_ok=True)
    for k, name in enumerate(files):
        writer = None
        try:
            with source_fs.open(name, "rb") as handle:
                batch = []
                for record in fastavro.reader(handle):
                    batch.append(record)
                    if len(batch) == BATCH_RECORDS:
                        writer = _write(batch, writer, Path(target_dir) / f"part-{k:05d}.parquet")
                        batch = []
                if batch or writer is None:
                    writer = _write(batch, writer, Path(target_dir) / f"part-{k:05d}.parquet")
        except (ValueError, EOFError, pa.ArrowInvalid) as exc:
            raise DataError(f"cannot read Avro records ({exc})", path=fs.unstrip(source_fs, name)) from None
        finally:
            if writer is not None:
                writer.close()
    return target_dir


def _write(records: list[dict], writer, target: Path):
    table = pa.Table.from_pylist(records) if writer is None else pa.Table.from_pylist(records, schema=writer.schema)
    if writer is None:
        writer = pq.ParquetWriter(target, table.schema)
    writer.write_table(table)
    return writer
