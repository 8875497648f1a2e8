"""Avro files in other systems' formats: their published schemas, validated writes, reads.

The schemas under ``avro_schemas/`` are Photon ML's own ``.avsc`` files, copied byte for byte
(provenance and Git blob hashes: ``tests/upstream/README.md``), never re-typed: what we write is
checked against exactly what Photon ML and GDMix read. A schema file that names another record
(``BayesianLinearModelAvro`` names ``NameTermValueAvro``) is resolved from its sibling file, as
Photon's build does (fastavro's ``load_schema``).

Every record is validated against the schema while it is written, so a file that does not
conform is never produced; reads go through fastavro over fsspec, so any URI works.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path

import fastavro
import fastavro.schema
from fastavro.read import SchemaResolutionError
from fastavro.repository.base import AbstractSchemaRepository
from fastavro.validation import ValidationError

from gdmix.errors import DataError
from gdmix.io import fs

SCHEMA_DIR = Path(__file__).resolve().parent / "avro_schemas"
AVRO_SUFFIX = ".avro"


class _SiblingFiles(AbstractSchemaRepository):
    """Named types by their short name's file, as Photon's ``src/main/avro/`` keeps them
    (``com.linkedin.photon.avro.generated.NameTermValueAvro`` -> ``NameTermValueAvro.avsc``)."""

    def load(self, name: str) -> dict:
        return json.loads((SCHEMA_DIR / f"{name.rsplit('.', 1)[-1]}.avsc").read_text())


@lru_cache(maxsize=None)
def vendored_schema(name: str) -> dict:
    """The parsed upstream schema ``avro_schemas/<name>.avsc``, the named types it uses inlined
    (the file's header then carries the whole schema, as any reader needs)."""
    return fastavro.schema.load_schema(name, repo=_SiblingFiles())


def write_records(uri: str, schema: dict, records: Iterable[dict]) -> int:
    """Write ``records`` as one Avro container file at ``uri`` (the caller stages the folder),
    validating each against ``schema``; returns how many were written."""
    written = 0

    def counted() -> Iterator[dict]:
        nonlocal written
        for record in records:
            written += 1
            yield record

    handle_fs, path = fs.url_to_fs(uri)
    parent = path.rsplit("/", 1)[0]
    if parent and parent != path:
        handle_fs.makedirs(parent, exist_ok=True)
    try:
        with handle_fs.open(path, "wb") as handle:
            fastavro.writer(handle, schema, counted(), validator=True)
    except ValidationError as exc:
        raise DataError(f"record {written - 1} does not match Avro schema {schema.get('name')}: {exc}",
                        path=uri, row=written - 1) from None
    return written


def list_avro_files(uri: str) -> list[str]:
    """The ``.avro`` files of ``uri`` (itself, or every one below it), sorted."""
    return fs.list_data_files(uri, (AVRO_SUFFIX,))


def read_records(path: str, reader_schema: dict | None = None) -> Iterator[dict]:
    """The records of one Avro file (read with ``reader_schema`` when given: Avro's schema
    resolution, so a file written with a compatible schema reads as that one, and any other
    file is an error naming it)."""
    handle_fs, inner = fs.url_to_fs(path)
    with handle_fs.open(inner, "rb") as handle:
        try:
            yield from fastavro.reader(handle, reader_schema=reader_schema)
        except SchemaResolutionError as exc:
            raise DataError(f"its Avro schema does not resolve to {reader_schema.get('name')} ({exc})",
                            path=path) from None
        except (ValueError, EOFError) as exc:  # fastavro's "cannot read header", a truncated block
            raise DataError(f"not a readable Avro file ({exc})", path=path) from None


def writer_schema(path: str) -> dict:
    """The schema an Avro file was written with (its header)."""
    handle_fs, inner = fs.url_to_fs(path)
    with handle_fs.open(inner, "rb") as handle:
        try:
            return fastavro.reader(handle).writer_schema
        except (ValueError, EOFError) as exc:
            raise DataError(f"not a readable Avro file ({exc})", path=path) from None
