"""Fused per-entity kernels (``entity_kernels.c``), compiled on first use.

A tiny entity (a few rows, a few dozen features) is a few hundred flops per Newton step;
batched numpy spends far more than that on padding, dense batch arrays and per-call overhead,
and scoring a row against its own entity's model by a binary search over every stored
coefficient costs a cache miss per non-zero. The kernels do both per entity, per row, in plain C:

* ``solve_entities``: Newton's method for each entity straight from the bag's CSR through the
  :class:`~gdmix.models.entity_layout.EntityLayout`, the same algorithm and stopping rule as
  :func:`gdmix.solvers.batched_newton.solve_batch`; the rare large system (40 or more unknowns)
  is factored by LAPACK (scipy's, see :func:`_lapack_routines`), and each entity's rows can be
  scored by its result while they are in cache (the sums of ``score_rows``, bit for bit);
* ``score_rows_int32`` / ``score_rows_int64``: each row's intercept plus the merge of its
  sorted entries with its entity's sorted coefficients;
* ``group_by_code`` and ``rank_columns_int32`` / ``rank_columns_int64``: the entity layout's
  grouping of rows by entity (a counting sort) and each entity's local feature subspace, entity
  by entity instead of through numpy temporaries of the whole chunk.

The C has no Python API: it is built once per source hash into ``$GDMIX_CACHE/ops`` with the
system C compiler and loaded with ctypes, which releases the GIL during a call, so chunks run
on every core. Without a compiler (or with ``GDMIX_NATIVE=0``) callers keep their numpy paths:
the same scores bit for bit, the same solutions to the solver's tolerance, more slowly.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from gdmix.native import _arch_flags, cache_root, compile_into

SOURCE = Path(__file__).resolve().parent / "entity_kernels.c"
#: entities per solver call (a call's results are written straight into the output arrays)
CHUNK_ENTITIES = 4096
#: rows per scoring call
CHUNK_ROWS = 1 << 18

_INT64 = np.ctypeslib.ndpointer(np.int64, flags="C_CONTIGUOUS")
_DOUBLE = np.ctypeslib.ndpointer(np.float64, flags="C_CONTIGUOUS")
_BYTES = np.ctypeslib.ndpointer(np.uint8, flags="C_CONTIGUOUS")
_SOLVE_ARGUMENTS = [ctypes.c_int64, _INT64, _INT64, _INT64, _INT64, ctypes.c_void_p, ctypes.c_int, _DOUBLE, _INT64,
                    ctypes.c_void_p, ctypes.c_int, _INT64, _INT64, _DOUBLE, _DOUBLE, _DOUBLE, ctypes.c_double, _DOUBLE, _DOUBLE,
                    _DOUBLE, ctypes.c_int64, ctypes.c_double, _DOUBLE, _DOUBLE, _INT64, _BYTES, ctypes.c_void_p]


def _score_arguments(index) -> list:
    indices = np.ctypeslib.ndpointer(index, flags="C_CONTIGUOUS")
    return [ctypes.c_int64, ctypes.c_int64, _INT64, _INT64, indices, _DOUBLE, _INT64, indices, _DOUBLE, _DOUBLE,
            _DOUBLE]


def _rank_arguments(index) -> list:
    indices = np.ctypeslib.ndpointer(index, flags="C_CONTIGUOUS")  # the bag's row pointers and column indices
    return [ctypes.c_int64, ctypes.c_int64, _INT64, _INT64, _INT64, indices,
            indices, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
            _INT64, _INT64,
            np.ctypeslib.ndpointer(np.uint32, flags="C_CONTIGUOUS")]


#: bags up to this many columns have their columns ranked by marking a table of one int per
#: column (16 MB per call at most); wider ones by sorting each entity's columns
MARK_WIDTH = 1 << 22


def _flags() -> list[str]:
    """Optimised for this CPU, but no fused multiply-add contraction: the scores must be the
    numpy path's bit for bit."""
    return ["-O3", *_arch_flags(), "-ffp-contract=off", "-shared", "-fPIC"]


def _library_path() -> Path:
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(_flags()).encode()).hexdigest()[:16]
    return cache_root() / f"entity_kernels-{key}.so"


def _build(target: Path) -> None:
    """Compile the kernels into ``target``."""
    compiler = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC)")
    compile_into(target, SOURCE, compiler, _flags(), ["-lm"], timeout=300)


@functools.cache
def library():
    """The loaded kernels, or None (with one warning) when they cannot be built or are disabled
    (``GDMIX_NATIVE=0``)."""
    if os.environ.get("GDMIX_NATIVE", "1") == "0":
        return None
    try:
        path = _library_path()
        if not path.exists():
            _build(path)
        loaded = ctypes.CDLL(str(path))
    except Exception as exc:  # any build or load problem: fall back, loudly
        warnings.warn(f"gdmix native entity kernels unavailable, using the numpy paths: {exc}",
                      RuntimeWarning, stacklevel=2)
        return None
    for function, arguments in ((loaded.solve_entities, _SOLVE_ARGUMENTS),
                                (loaded.score_rows_int32, _score_arguments(np.int32)),
                                (loaded.score_rows_int64, _score_arguments(np.int64)),
                                (loaded.group_by_code, [ctypes.c_int64, _INT64, _INT64, ctypes.c_int64, _INT64,
                                                        _INT64]),
                                (loaded.rank_columns_int32, _rank_arguments(np.int32)),
                                (loaded.rank_columns_int64, _rank_arguments(np.int64))):
        function.argtypes = arguments
    loaded.solve_entities.restype = ctypes.c_int
    loaded.score_rows_int32.restype = loaded.score_rows_int64.restype = loaded.group_by_code.restype = None
    loaded.rank_columns_int32.restype = loaded.rank_columns_int64.restype = ctypes.c_int64
    loaded.use_lapack.argtypes = [ctypes.c_void_p] * len(LAPACK_ROUTINES)
    loaded.use_lapack.restype = None
    loaded.use_lapack(*_lapack_routines())
    return loaded


#: the LAPACK routines the kernel factors its rare large systems with, in ``use_lapack``'s order
LAPACK_ROUTINES = ("dpotrf", "dpotrs", "dgetrf", "dgetrs")


def _lapack_routines() -> list[int | None]:
    """Addresses of scipy's C-callable LAPACK wrappers (``scipy.linalg.cython_lapack``: nogil,
    thread-safe, the BLAS scipy ships), or NULLs: the kernel then uses its own loops at every
    size."""
    try:
        from scipy.linalg import cython_lapack
    except ImportError:  # pragma: no cover - scipy is a dependency
        return [None] * len(LAPACK_ROUTINES)
    name_of = ctypes.pythonapi.PyCapsule_GetName
    name_of.restype, name_of.argtypes = ctypes.c_char_p, [ctypes.py_object]
    pointer_of = ctypes.pythonapi.PyCapsule_GetPointer
    pointer_of.restype, pointer_of.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    capsules = [cython_lapack.__pyx_capi__[name] for name in LAPACK_ROUTINES]
    return [pointer_of(capsule, name_of(capsule)) for capsule in capsules]


MapChunks = Callable[[Callable, Iterable], Iterator]


def solve_entities(layout, entities: np.ndarray, labels, weights, offsets, l2: float, intercept_ridge: np.ndarray,
                   start_intercepts: np.ndarray, start_pairs: np.ndarray, *, max_iter: int, tol: float,
                   intercepts: np.ndarray, pairs: np.ndarray, iterations: np.ndarray, converged: np.ndarray,
                   map_chunks: MapChunks, scores: np.ndarray | None = None) -> int:
    """Solve ``entities`` (layout numbers), writing each one's intercept, iterations and
    convergence (indexed by entity) and coefficients (by pair) into the output arrays, and, into
    ``scores`` (float64, one per dataset row) when given, the score of each of their rows by the
    result, as :func:`score_rows` computes it; ``map_chunks(function, chunks)`` runs the chunks
    (on every core). Returns the number of kernel calls."""
    if scores is not None and not (scores.dtype == np.float64 and scores.flags.c_contiguous and scores.flags.writeable):
        raise ValueError("scores must be a writeable, contiguous float64 array")
    function = library().solve_entities
    row_start, row_count, rows, indptr, data, nnz_start, nnz_col, pair_start, feature_count = layout.kernel_arrays()
    layout_arrays = (row_start, row_count, rows, indptr.ctypes.data, indptr.itemsize, data, nnz_start,
                     nnz_col.ctypes.data, nnz_col.itemsize, pair_start, feature_count)
    vectors = [np.ascontiguousarray(v, dtype=np.float64) for v in (labels, weights, offsets, intercept_ridge,
                                                                   start_intercepts, start_pairs)]
    flags = converged.view(np.uint8)
    scores_address = None if scores is None else scores.ctypes.data

    def solve(chunk: np.ndarray) -> None:
        status = function(len(chunk), chunk, *layout_arrays, *vectors[:3], float(l2), *vectors[3:], int(max_iter),
                          float(tol), intercepts, pairs, iterations, flags, scores_address)
        if status != 0:
            raise MemoryError("the native entity solver could not allocate its workspace")

    chunks = [np.ascontiguousarray(entities[i:i + CHUNK_ENTITIES], dtype=np.int64)
              for i in range(0, len(entities), CHUNK_ENTITIES)]
    for _ in map_chunks(solve, chunks):
        pass
    return len(chunks)


def score_rows(features: sp.csr_matrix, model_row: np.ndarray, coef: sp.csr_matrix, intercepts: np.ndarray,
               map_chunks: MapChunks) -> np.ndarray:
    """``intercepts[e] + features[i] . coef[e]`` per row ``i`` with ``e = model_row[i]`` (0 where
    ``e < 0``), summed in column order as :meth:`gdmix.models.random_effect.RandomEffectModel.score`
    does, so the scores are the same bit for bit."""
    features, coef = _sorted(features), _sorted(coef)
    index = np.int64 if np.int64 in (features.indices.dtype, coef.indices.dtype) else np.int32
    function = library().score_rows_int64 if index == np.int64 else library().score_rows_int32
    arrays = (np.ascontiguousarray(model_row, dtype=np.int64), features.indptr.astype(np.int64),
              np.ascontiguousarray(features.indices, dtype=index), np.ascontiguousarray(features.data, np.float64),
              coef.indptr.astype(np.int64), np.ascontiguousarray(coef.indices, dtype=index),
              np.ascontiguousarray(coef.data, np.float64), np.ascontiguousarray(intercepts, np.float64))
    out = np.empty(features.shape[0])

    def score(first: int) -> None:
        function(first, min(first + CHUNK_ROWS, len(out)), *arrays, out)

    for _ in map_chunks(score, range(0, len(out), CHUNK_ROWS)):
        pass
    return out


def _sorted(matrix: sp.csr_matrix) -> sp.csr_matrix:
    matrix = matrix.tocsr()
    return matrix if matrix.has_sorted_indices else matrix.sorted_indices()


def group_by_code(rows: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``rows`` ordered by ``codes[rows]`` (non-negative), stably: ``rows[argsort(codes[rows],
    kind="stable")]`` by a counting sort."""
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    if len(codes) and codes.min() < 0:  # the kernel counts into codes' slots: none may be negative
        raise ValueError("entity codes must be non-negative")
    num_codes = int(codes.max(initial=-1)) + 1
    out = np.empty(len(rows), dtype=np.int64)
    library().group_by_code(len(rows), rows, codes, num_codes, np.zeros(num_codes + 1, dtype=np.int64), out)
    return out


def rank_columns(indptr: np.ndarray, indices: np.ndarray, width: int, rows: np.ndarray, row_start: np.ndarray,
                 row_count: np.ndarray, first: int, last: int, nnz_start: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entities ``first..last-1`` of a layout (int64 ``rows``, ``row_start`` and ``row_count``;
    the bag's ``indptr`` and ``indices`` in their own type, int32 or int64, as scipy keeps them:
    the row pointers are not copied; ``nnz_start``: where each entity's non-zeros start): each
    one's count of distinct columns, those columns sorted, entity by entity, and each non-zero's
    rank among its entity's columns."""
    nnz = int(nnz_start[last] - nnz_start[first])
    most = int(np.diff(nnz_start[first:last + 1]).max(initial=0))
    wide = np.int64 in (indices.dtype, indptr.dtype)
    function = library().rank_columns_int64 if wide else library().rank_columns_int32
    indices = np.ascontiguousarray(indices, dtype=np.int64 if wide else np.int32)
    indptr = np.ascontiguousarray(indptr, dtype=indices.dtype)
    mark = np.full(width, -1, dtype=np.int32) if width <= MARK_WIDTH else None
    feature_count = np.empty(last - first, dtype=np.int64)
    pairs, local = np.empty(max(nnz, 1), dtype=np.int64), np.empty(max(nnz, 1), dtype=np.uint32)
    written = function(first, last, row_start, row_count, rows, indptr, indices, most, width,
                       None if mark is None else mark.ctypes.data, feature_count, pairs, local)
    if written < 0:
        raise MemoryError("the native column ranking could not allocate its workspace")
    return feature_count, pairs[:written], local[:nnz]
