"""File-system access through fsspec, so every path may be local or an object-store URI.

Outputs are never written in place: :func:`staged_directory` hands out a temporary sibling
directory and only moves it to the final location when the block finishes without error, so
a failed run leaves no half-written output that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import math
import posixpath
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from gdmix.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def url_to_fs(uri: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The file system serving ``uri`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(str(uri))
    return fs, path


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI (a local path or ``scheme://...``) with forward slashes."""
    uri = str(uri)
    return posixpath.join(uri.rstrip("/") if uri not in ("/",) else uri, *parts)


def exists(uri: str) -> bool:
    fs, path = url_to_fs(uri)
    return fs.exists(path)


def unstrip(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Turn a path inside ``fs`` back into a URI another ``url_to_fs`` call accepts."""
    return path if isinstance(fs, LocalFileSystem) else fs.unstrip_protocol(path)


def list_parquet_files(uri: str) -> list[str]:
    """The Parquet files of a dataset: ``uri`` itself, or every Parquet file below it, sorted.

    Files and directories whose name starts with ``_`` or ``.`` (markers, staging areas) are
    skipped, as Spark and Hive do.
    """
    return list_data_files(uri, PARQUET_SUFFIXES)


def list_data_files(uri: str, suffixes: tuple[str, ...] | None = None) -> list[str]:
    """The files of a dataset (``uri`` itself, or every file below it ending in one of
    ``suffixes``, all when None), sorted, skipping names that start with ``_`` or ``.``."""
    fs, path = url_to_fs(uri)
    if not fs.exists(path):
        raise DataError("dataset not found", path=str(uri))
    if fs.isfile(path):
        return [unstrip(fs, path)]
    found = []
    for file_path in fs.find(path):
        relative = posixpath.relpath(file_path, path)
        if any(part.startswith(("_", ".")) for part in relative.split("/")):
            continue
        if suffixes is None or file_path.endswith(suffixes):
            found.append(unstrip(fs, file_path))
    return sorted(found)


def read_parquet(uri: str, columns: list[str] | None = None) -> pa.Table:
    fs, path = url_to_fs(uri)
    return pq.read_table(path, columns=columns, filesystem=fs)


def parquet_schema(uri: str) -> pa.Schema:
    """The schema of a dataset's first Parquet file (footer only, no data read)."""
    files = list_parquet_files(uri)
    if not files:
        raise DataError("no Parquet files found", path=str(uri))
    fs, path = url_to_fs(files[0])
    return pq.read_schema(path, filesystem=fs)


def read_parquet_dir(uri: str, columns: list[str] | None = None) -> pa.Table:
    """All Parquet files of a directory concatenated in file-name order."""
    files = list_parquet_files(uri)
    if not files:
        raise DataError("no Parquet files found", path=str(uri))
    return pa.concat_tables([read_parquet(f, columns) for f in files])


def write_parquet(table: pa.Table, uri: str, name: str = "part-00000.parquet") -> str:
    """Write ``table`` as file ``name`` inside directory ``uri`` (created if needed)."""
    return write_parquet_tables([table], uri, name)


def write_parquet_tables(tables: Iterable[pa.Table], uri: str, name: str = "part-00000.parquet") -> str:
    """Write tables of one schema one after another as file ``name`` inside directory ``uri``,
    each built only when the previous one is written (a large table in bounded memory).

    Dictionary-typed columns (each table may have its own dictionaries) are written as the
    columns of their values: without Arrow's schema in the file (which would make readers
    decode them as dictionaries), the schema's metadata kept as the file's key-value metadata,
    so the file reads back as if plain columns had been written. They get no min/max
    statistics: Arrow computes those value by value through the dictionary, which cost more
    than the rest of the write for a coefficient table's names and terms."""
    fs, path = url_to_fs(uri)
    fs.makedirs(path, exist_ok=True)
    target = posixpath.join(path, name)
    writer = None
    try:
        for table in tables:
            if writer is None:
                plain = [field.name for field in table.schema if not pa.types.is_dictionary(field.type)]
                dictionaries = len(plain) < len(table.schema)
                writer = pq.ParquetWriter(target, table.schema, filesystem=fs, store_schema=not dictionaries,
                                          write_statistics=plain if dictionaries else True)
                if dictionaries and table.schema.metadata:
                    writer.add_key_value_metadata(table.schema.metadata)
            writer.write_table(table)
    finally:
        if writer is not None:
            writer.close()
    if writer is None:
        raise ValueError(f"no table to write as {target}")
    return unstrip(fs, target)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode())


def to_json(value: Any) -> str:
    """Strict JSON (NaN and infinities become null, e.g. the AUC of a one-class set)."""

    def clean(item: Any) -> Any:
        if isinstance(item, float) and not math.isfinite(item):
            return None
        if isinstance(item, dict):
            return {key: clean(val) for key, val in item.items()}
        if isinstance(item, (list, tuple)):
            return [clean(val) for val in item]
        return item

    return json.dumps(clean(value), indent=2, allow_nan=False, default=str) + "\n"


def write_text_atomic(uri: str, text: str) -> None:
    write_bytes_atomic(uri, text.encode())


def write_bytes_atomic(uri: str, data: bytes) -> None:
    """Write a whole file under a hidden temporary name, then rename it into place."""
    fs, path = url_to_fs(uri)
    parent, name = posixpath.split(path)
    temporary = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    write_bytes(unstrip(fs, temporary), data)
    fs.mv(temporary, path)


def write_bytes(uri: str, data: bytes) -> None:
    fs, path = url_to_fs(uri)
    parent = posixpath.dirname(path)
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as handle:
        handle.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = url_to_fs(uri)
    with fs.open(path, "rb") as handle:
        return handle.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def remove(uri: str) -> None:
    fs, path = url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def staged_directory(uri: str) -> Iterator[str]:
    """Yield a temporary directory that replaces ``uri`` only if the block succeeds.

    The staging directory is a hidden sibling (``.name.staging-<id>``), so it lives on the same
    file system (a rename, not a copy, on local disks) and readers listing the parent skip it.
    On success an existing ``uri`` is first moved aside, then replaced, then deleted; if the
    replacement fails, the previous directory is moved back. On object stores a "move" is a
    copy per object, so callers mark completeness with a file written after the commit
    (``metrics.json`` for a training run).
    """
    fs, path = url_to_fs(uri)
    path = path.rstrip("/")
    parent, name = posixpath.split(path)
    token = uuid.uuid4().hex[:12]
    staging = posixpath.join(parent, f".{name}.staging-{token}")
    fs.makedirs(staging, exist_ok=True)
    try:
        yield unstrip(fs, staging)
    except BaseException:
        with contextlib.suppress(Exception):
            fs.rm(staging, recursive=True)
        raise
    commit_directory(unstrip(fs, staging), uri)


def commit_directory(staging: str, uri: str) -> None:
    """Replace directory ``uri`` by ``staging`` (same file system): the old one is moved aside,
    the new one moved in, the old one deleted; if moving in fails, the old one is moved back."""
    fs, path = url_to_fs(uri)
    _, staged = url_to_fs(staging)
    path = path.rstrip("/")
    parent, name = posixpath.split(path)
    previous = None
    if fs.exists(path):
        previous = posixpath.join(parent, f".{name}.previous-{uuid.uuid4().hex[:12]}")
        _move_tree(fs, path, previous)
    try:
        _move_tree(fs, staged, path)
    except BaseException:
        if previous is not None:
            with contextlib.suppress(Exception):
                if fs.exists(path):
                    fs.rm(path, recursive=True)
            _move_tree(fs, previous, path)
        raise
    if previous is not None:
        fs.rm(previous, recursive=True)


def _move_tree(fs: fsspec.AbstractFileSystem, source: str, target: str) -> None:
    """A rename on local disks; a copy of every file, then a delete, on object stores (which
    have no directories to rename)."""
    if isinstance(fs, LocalFileSystem):
        fs.mv(source, target, recursive=True)
        return
    files = [f for f in fs.find(source) if not f.endswith("/")]
    fs.copy(files, [target + f[len(source.rstrip("/")):] for f in files])
    fs.rm(source, recursive=True)
