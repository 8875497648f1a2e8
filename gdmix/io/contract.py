"""The input data contract: what a GDMix dataset is, and the reader that enforces it.

A dataset is a directory (or URI) of Parquet files with:

* ``uid``: integer, unique per row;
* a label column (default ``label``), 0/1;
* optional ``weight`` (default 1.0, must be finite and >= 0) and ``offset`` (default 0.0);
* entity id columns (integer or string, no nulls);
* feature bags: ``list<struct<name: string, term: string, value: double>>``.

:func:`read_contract_table` reads only the columns a run needs, checks every rule, and names
the file, column and (0-based, within that file) row of the first violation. Its output has
normalised types (uid int64; label, weight, offset float64; bags exactly :data:`FEATURE_BAG_TYPE`)
so that nothing downstream needs to re-check.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gdmix.errors import DataError
from gdmix.io import fs

FEATURE_STRUCT = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("term", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)
FEATURE_BAG_TYPE = pa.list_(pa.field("item", FEATURE_STRUCT))
DEFAULT_WEIGHT_COLUMN = "weight"
DEFAULT_OFFSET_COLUMN = "offset"


@dataclass(frozen=True)
class ContractColumns:
    """Which columns to read and under which names.

    ``weight``/``offset`` of ``None`` mean "the column named weight/offset if the data has it,
    otherwise the default value"; a name given explicitly must exist. A ``label`` of ``None``
    (scoring) reads the label column only if present.
    """

    uid: str = "uid"
    label: str = "label"
    label_required: bool = True
    weight: str | None = None
    offset: str | None = None
    entities: tuple[str, ...] = ()
    bags: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()  # other columns to carry along unchecked (e.g. a partition's flags)


@dataclass(frozen=True)
class FilePiece:
    """Rows ``[start, stop)`` of one Parquet file, numbered within that file."""

    path: str
    start: int
    stop: int


@dataclass
class ContractTable:
    """A validated dataset: normalised columns ``uid, label?, weight, offset, entities..., bags...``.

    ``pieces[k]`` starts at row ``piece_starts[k]`` of ``table``; :meth:`locate` turns a row of
    the table back into (file, row within file) for error messages.
    """

    table: pa.Table
    pieces: list[FilePiece]
    piece_starts: np.ndarray
    has_label: bool

    @property
    def num_rows(self) -> int:
        return self.table.num_rows

    def locate(self, row: int) -> tuple[str, int]:
        return locate_row(self.pieces, self.piece_starts, row)


def locate_row(pieces: list[FilePiece], piece_starts: np.ndarray, row: int) -> tuple[str, int]:
    """(file, row within that file) of row ``row`` of pieces read one after another, piece
    ``k`` starting at row ``piece_starts[k]``."""
    k = int(np.searchsorted(piece_starts, row, side="right") - 1)
    piece = pieces[k]
    return piece.path, int(row - piece_starts[k] + piece.start)


def read_contract_table(uri: str, columns: ContractColumns, shard: tuple[int, int] | None = None,
                        rows: tuple[int, int] | None = None) -> ContractTable:
    """Read and validate the dataset at ``uri``, or only shard ``(index, count)`` of its rows,
    or only its rows ``[low, high)`` (``rows``, numbered across the files in name order).

    A shard is a contiguous range of the dataset's rows (files in name order), balanced to
    within one row however the rows fall into files and row groups (:func:`shard_bounds`); an
    empty shard is valid (the caller decides whether the whole dataset is empty), and uids are
    checked for uniqueness within what was read.
    """
    files = fs.list_parquet_files(uri)
    if not files:
        raise DataError("dataset is empty: no Parquet files found", path=str(uri))
    pieces = plan_pieces(files, shard, rows)
    tables = [_read_piece(piece, columns) for piece in pieces] or [_read_piece(FilePiece(files[0], 0, 0), columns)]
    has_label = all(t.schema.get_field_index("label") >= 0 for t in tables)
    if not has_label:
        tables = [t.drop_columns(["label"]) if "label" in t.column_names else t for t in tables]
    _check_consistent_types(tables, [p.path for p in pieces] or files[:1])
    table = pa.concat_tables(tables)
    sizes = np.array([t.num_rows for t in tables], dtype=np.int64)
    result = ContractTable(table, pieces or [FilePiece(files[0], 0, 0)], np.cumsum(sizes) - sizes, has_label)
    if table.num_rows == 0 and shard is None and rows is None:
        raise DataError("dataset is empty (0 rows)", path=str(uri))
    _check_unique_uids(result, columns.uid)
    return result


def iter_coded_pieces(uri: str, columns: ContractColumns, shard: tuple[int, int] | None = None,
                      rows: tuple[int, int] | None = None) -> Iterator[tuple[FilePiece, pa.Table]]:
    """The dataset :func:`read_contract_table` reads, validated by the same rules, as one table
    per row group (or the part of it inside the shard), with every feature bag's names and terms
    *dictionary-coded* as Parquet stores them (``list<struct<name: dictionary, term:
    dictionary (nulls mean the empty term), value: float64>>``).

    Why: a caller that turns bags into sparse matrices then looks up each distinct feature once
    instead of each occurrence, never materialises the strings, and holds one row group at a
    time instead of the whole table (:func:`gdmix.dataset.load_dataset`). Row groups, because
    Arrow cannot read dictionary-coded nested columns of several row groups at once. Every
    file yields at least one table (maybe empty), so its schema is always checked.
    """
    files = fs.list_parquet_files(uri)
    if not files:
        raise DataError("dataset is empty: no Parquet files found", path=str(uri))
    pieces = plan_pieces(files, shard, rows) or [FilePiece(files[0], 0, 0)]
    for piece in pieces:
        for part in _row_group_parts(piece):
            yield part, _read_piece(part, columns, coded=True)


def _row_group_parts(piece: FilePiece) -> list[FilePiece]:
    """``piece`` cut at its file's row-group boundaries (an empty piece stays one part)."""
    fs_, inner = fs.url_to_fs(piece.path)
    metadata = pq.read_metadata(inner, filesystem=fs_)
    parts, row = [], 0
    for group in range(metadata.num_row_groups):
        size = metadata.row_group(group).num_rows
        start, stop = max(piece.start, row), min(piece.stop, row + size)
        if start < stop:
            parts.append(FilePiece(piece.path, start, stop))
        row += size
    return parts or [piece]


def shard_bounds(total: int, index: int, count: int) -> tuple[int, int]:
    """Rows ``[k N / W, (k + 1) N / W)``: shard ``index`` of ``count`` over ``total`` rows."""
    return total * index // count, total * (index + 1) // count


def plan_pieces(files: list[str], shard: tuple[int, int] | None = None,
                rows: tuple[int, int] | None = None) -> list[FilePiece]:
    """The file pieces of a dataset (whole files), of shard ``(k, W)`` (:func:`shard_bounds`),
    or of the rows ``[low, high)`` given as ``rows``."""
    sizes = [_num_rows(path) for path in files]
    if shard is None and rows is None:
        return [FilePiece(path, 0, size) for path, size in zip(files, sizes)]
    low, high = rows if rows is not None else shard_bounds(sum(sizes), *shard)
    pieces, first = [], 0
    for path, size in zip(files, sizes):
        start, stop = max(low - first, 0), min(high - first, size)
        if start < stop:
            pieces.append(FilePiece(path, start, stop))
        first += size
    return pieces


def _num_rows(path: str) -> int:
    fs_, inner = fs.url_to_fs(path)
    try:
        return pq.read_metadata(inner, filesystem=fs_).num_rows
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path=path) from None


def _read_rows(piece: FilePiece, columns: list[str], coded_bags: tuple[str, ...] = ()) -> pa.Table:
    """Only the row groups a piece overlaps are read, then sliced to the piece exactly; the
    names and terms of ``coded_bags`` are read as dictionaries (the piece must then lie in one
    row group)."""
    fs_, inner = fs.url_to_fs(piece.path)
    with fs_.open(inner, "rb") as handle:
        parquet = pq.ParquetFile(handle, read_dictionary=_name_term_paths(handle, coded_bags))
        metadata = parquet.metadata
        groups, first_row, row = [], None, 0
        for group in range(metadata.num_row_groups):
            size = metadata.row_group(group).num_rows
            if row < piece.stop and row + size > piece.start:
                groups.append(group)
                first_row = row if first_row is None else first_row
            row += size
        if not groups:
            return parquet.schema_arrow.empty_table().select(columns)
        table = parquet.read_row_groups(groups, columns=columns)
    return table.slice(piece.start - first_row, piece.stop - piece.start)


def _name_term_paths(handle, bags: tuple[str, ...]) -> list[str] | None:
    """The Parquet column paths of the bags' name and term fields (``bag.list.element.name``
    or however the writer spelled the list levels)."""
    if not bags:
        return None
    schema = pq.ParquetFile(handle).schema
    handle.seek(0)
    paths = (schema.column(i).path for i in range(len(schema)))
    return [path for path in paths if path.split(".")[0] in bags and path.split(".")[-1] in ("name", "term")
            and path.count(".") == 3]


def _read_piece(piece: FilePiece, columns: ContractColumns, coded: bool = False) -> pa.Table:
    try:
        return _validated_piece(piece, columns, coded)
    except DataError as error:
        raise error.shifted(piece.start) from None


def _validated_piece(piece: FilePiece, columns: ContractColumns, coded: bool = False) -> pa.Table:
    path = piece.path
    fs_, inner = fs.url_to_fs(path)
    try:
        schema = pq.read_schema(inner, filesystem=fs_)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"not a readable Parquet file ({exc})", path=path) from None
    available = set(schema.names)

    def require(name: str, role: str) -> None:
        if name not in available:
            raise DataError(
                f"missing {role} column (file has: {', '.join(sorted(available)) or 'no columns'})",
                path=path,
                column=name,
            )

    require(columns.uid, "uid")
    if columns.label_required:
        require(columns.label, "label")
    weight_col = columns.weight or DEFAULT_WEIGHT_COLUMN
    offset_col = columns.offset or DEFAULT_OFFSET_COLUMN
    if columns.weight:
        require(columns.weight, "weight")
    if columns.offset:
        require(columns.offset, "offset")
    for name in columns.entities:
        require(name, "entity id")
    for name in columns.bags:
        require(name, "feature bag")
    for name in columns.extra:
        require(name, "requested")

    wanted = [columns.uid]
    has_label = columns.label in available
    if has_label:
        wanted.append(columns.label)
    has_weight = weight_col in available
    has_offset = offset_col in available
    wanted += [weight_col] if has_weight else []
    wanted += [offset_col] if has_offset else []
    wanted += list(columns.entities) + list(columns.bags) + list(columns.extra)
    wanted = list(dict.fromkeys(wanted))
    raw = _read_rows(piece, wanted, columns.bags if coded else ())
    n = raw.num_rows

    out: dict[str, pa.Array] = {}
    out["uid"] = _integer_column(raw.column(columns.uid), path, columns.uid)
    if has_label:
        out["label"] = _label_column(raw.column(columns.label), path, columns.label)
    out["weight"] = (
        _weight_column(raw.column(weight_col), path, weight_col)
        if has_weight
        else pa.array(np.ones(n))
    )
    out["offset"] = (
        _finite_column(raw.column(offset_col), path, offset_col)
        if has_offset
        else pa.array(np.zeros(n))
    )
    for name in columns.entities:
        out[name] = _entity_column(raw.column(name), path, name)
    for name in columns.bags:
        out[name] = _bag_column(raw.column(name), path, name, coded)
    for name in columns.extra:
        out.setdefault(name, raw.column(name).combine_chunks())
    return pa.table(out)


def _first_true(mask: pa.Array | np.ndarray) -> int | None:
    values = mask.to_numpy(zero_copy_only=False) if isinstance(mask, pa.Array) else mask
    hits = np.flatnonzero(values)
    return int(hits[0]) if hits.size else None


def _check_no_nulls(column: pa.Array, path: str, name: str) -> None:
    if column.null_count:
        row = _first_true(pc.is_null(column))
        raise DataError("null value", path=path, column=name, row=row)


def _numeric(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    array = column.combine_chunks()
    if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)
            or pa.types.is_boolean(array.type) or pa.types.is_decimal(array.type)):
        raise DataError(f"expected a numeric column, found type {array.type}", path=path, column=name)
    _check_no_nulls(array, path, name)
    return pc.cast(array, pa.float64())


def _finite_column(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    array = _numeric(column, path, name)
    bad = _first_true(pc.invert(pc.is_finite(array)))
    if bad is not None:
        raise DataError(f"value {array[bad].as_py()} is not finite", path=path, column=name, row=bad)
    return array


def _weight_column(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    array = _finite_column(column, path, name)
    bad = _first_true(pc.less(array, 0.0))
    if bad is not None:
        raise DataError(f"negative weight {array[bad].as_py()}", path=path, column=name, row=bad)
    return array


def _label_column(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    array = _numeric(column, path, name)
    bad = _first_true(pc.invert(pc.is_in(array, value_set=pa.array([0.0, 1.0]))))
    if bad is not None:
        raise DataError(
            f"label {array[bad].as_py()} is not 0 or 1 (logistic regression needs binary labels)",
            path=path, column=name, row=bad,
        )
    return array


def _integer_column(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    array = column.combine_chunks()
    if not pa.types.is_integer(array.type):
        raise DataError(f"expected an integer column, found type {array.type}", path=path, column=name)
    _check_no_nulls(array, path, name)
    return _cast_int64(array, path, name)


def _cast_int64(array: pa.Array, path: str, name: str) -> pa.Array:
    try:
        return pc.cast(array, pa.int64())
    except pa.ArrowInvalid:
        # only unsigned 64-bit values can be out of range
        bad = _first_true(array.to_numpy(zero_copy_only=False) > np.uint64(np.iinfo(np.int64).max))
        raise DataError("value does not fit in int64", path=path, column=name, row=bad) from None


def _entity_column(column: pa.ChunkedArray, path: str, name: str) -> pa.Array:
    array = column.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    if pa.types.is_integer(array.type):
        target = pa.int64()
    elif pa.types.is_string(array.type) or pa.types.is_large_string(array.type):
        target = pa.string()
    else:
        raise DataError(
            f"entity ids must be integers or strings, found type {array.type}", path=path, column=name
        )
    _check_no_nulls(array, path, name)
    return _cast_int64(array, path, name) if target == pa.int64() else pc.cast(array, target)


def _bag_column(column: pa.ChunkedArray, path: str, name: str, coded: bool = False) -> pa.Array:
    """Check a name-term-value bag and normalise it to :data:`FEATURE_BAG_TYPE`, or with
    ``coded`` to the dictionary-coded form :func:`iter_coded_pieces` describes.

    A null bag is an empty bag and a null term is the empty term; a null name or a null or
    non-finite value is an error naming the row.
    """
    array = column.combine_chunks()
    list_type = array.type
    if not (pa.types.is_list(list_type) or pa.types.is_large_list(list_type)) or not pa.types.is_struct(
        list_type.value_type
    ):
        raise DataError(
            f"a feature bag must be list<struct<name, term, value>>, found type {list_type}",
            path=path, column=name,
        )
    struct_type = list_type.value_type
    field_names = [struct_type.field(i).name for i in range(struct_type.num_fields)]
    missing = [f for f in ("name", "term", "value") if f not in field_names]
    if missing:
        raise DataError(
            f"feature bag struct lacks field(s) {', '.join(missing)} (has {', '.join(field_names)})",
            path=path, column=name,
        )
    if array.null_count:
        array = pc.if_else(pc.is_null(array), pa.scalar([], type=list_type), array)
    items = pc.list_flatten(array)
    parents = pc.list_parent_indices(array).to_numpy()

    def bad_item(mask: pa.Array, message: str) -> None:
        hit = _first_true(mask)
        if hit is not None:
            raise DataError(message.format(hit=hit), path=path, column=name, row=int(parents[hit]))

    bad_item(pc.is_null(items), "null feature entry")
    names = items.field("name")
    terms = items.field("term")
    values = items.field("value")
    for part, label in ((names, "name"), (terms, "term")):
        text_type = part.type.value_type if pa.types.is_dictionary(part.type) else part.type
        if not (pa.types.is_string(text_type) or pa.types.is_large_string(text_type)):
            raise DataError(f"feature {label} must be a string, found {part.type}", path=path, column=name)
    if not (pa.types.is_integer(values.type) or pa.types.is_floating(values.type)):
        raise DataError(f"feature value must be numeric, found {values.type}", path=path, column=name)
    bad_item(pc.is_null(names), "feature with a null name")
    bad_item(pc.is_null(values), "feature with a null value")
    values = pc.cast(values, pa.float64())
    hit = _first_true(pc.invert(pc.is_finite(values)))
    if hit is not None:
        raise DataError(
            f"feature ({names[hit].as_py()}, {terms[hit].as_py()}) has non-finite value "
            f"{values[hit].as_py()}",
            path=path, column=name, row=int(parents[hit]),
        )
    offsets = pc.cast(array.offsets, pa.int32()) if pa.types.is_large_list(list_type) else array.offsets
    first = offsets[0].as_py()
    if first:
        offsets = pc.subtract(offsets, first)
    if coded:
        names, terms = _coded_text(names), _coded_text(terms)
        struct = pa.StructArray.from_arrays([names, terms, values], names=["name", "term", "value"])
        return pa.ListArray.from_arrays(offsets, struct)
    terms = pc.fill_null(pc.cast(terms, pa.string()), "")
    struct = pa.StructArray.from_arrays(
        [pc.cast(names, pa.string()), terms, values], fields=list(FEATURE_STRUCT)
    )
    return pa.ListArray.from_arrays(offsets, struct, type=FEATURE_BAG_TYPE)


def _coded_text(part: pa.Array) -> pa.DictionaryArray:
    """A name or term field as a dictionary of strings (nulls kept: they are empty terms)."""
    if not pa.types.is_dictionary(part.type):
        part = pc.dictionary_encode(part)
    if part.type.value_type != pa.string():
        part = pa.DictionaryArray.from_arrays(part.indices, pc.cast(part.dictionary, pa.string()))
    return part


def _check_consistent_types(tables: list[pa.Table], files: list[str]) -> None:
    for table, path in zip(tables[1:], files[1:]):
        check_same_types(tables[0].schema, files[0], table.schema, path)


def check_same_types(reference: pa.Schema, reference_path: str, schema: pa.Schema, path: str) -> None:
    """Every column of ``schema`` (file ``path``) has its type in ``reference`` where both have it."""
    for field_ in schema:
        if reference.get_field_index(field_.name) < 0:
            continue
        expected = reference.field(field_.name).type
        if field_.type != expected:
            raise DataError(
                f"type {field_.type} differs from {expected} in {reference_path}", path=path, column=field_.name
            )


def _check_unique_uids(data: ContractTable, uid_name: str) -> None:
    check_unique_uids(data.table.column("uid").to_numpy(), data.locate, uid_name)


def check_unique_uids(uid: np.ndarray, locate, uid_name: str) -> None:
    """Raise naming both places of the first repeated uid; ``locate(row)`` gives (file, row)."""
    order = np.argsort(uid, kind="stable")
    sorted_uid = uid[order]
    repeats = np.flatnonzero(sorted_uid[1:] == sorted_uid[:-1])
    if repeats.size:
        first, second = order[repeats[0]], order[repeats[0] + 1]
        path_a, row_a = locate(int(first))
        path_b, row_b = locate(int(second))
        raise DataError(
            f"duplicate uid {int(sorted_uid[repeats[0]])} (first seen in {path_a} row {row_a}); "
            "uids must be unique",
            path=path_b, column=uid_name, row=row_b,
        )


def write_dataset(table: pa.Table, uri: str, rows_per_file: int | None = None) -> list[str]:
    """Write a table as ``part-NNNNN.parquet`` files under ``uri`` (staged, then committed)."""
    step = rows_per_file or max(table.num_rows, 1)
    names = [f"part-{k:05d}.parquet" for k in range(max(1, -(-table.num_rows // step)))]
    with fs.staged_directory(uri) as staging:
        for k, name in enumerate(names):
            fs.write_parquet(table.slice(k * step, step), staging, name)
    return [fs.join(uri, name) for name in names]
