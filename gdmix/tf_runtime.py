"""Importing TensorFlow the way gdmix wants it: quiet, deterministic, with a thread budget.

TensorFlow is imported lazily (only the fixed effect needs it) so commands such as
``gdmix datasets`` start instantly. oneDNN's reordered float reductions are switched off by
default: reproducible sums matter more here than its small speed-up on CPU.
``GDMIX_INTRA_OP_THREADS=n`` caps TensorFlow's thread pools (the local launcher sets it so that
N workers on one machine share its cores instead of oversubscribing them). The cap can only be
set before TensorFlow's runtime starts: if something else started it first, the cap is not
applied, and that is said loudly (a ``RuntimeWarning``) rather than ignored, because per-core
figures rely on it. :func:`thread_settings` reports what TensorFlow actually uses.

TensorFlow's own ``__init__`` ends by importing Keras eagerly (``keras.src.optimizers``, in a
``try``), which pulls in all of Keras 3 and, through its scikit-learn wrapper, scikit-learn:
about 1.8 of the 5 seconds ``import tensorflow`` takes here, paid by every fixed-effect worker
of every pass, which never touches Keras. gdmix skips that one eager import; Keras still loads,
whole, the first time anything uses ``tf.keras`` or imports ``keras`` (DeText does), which is
also when its optimisers register themselves.
"""

from __future__ import annotations

import os
import sys
import warnings

THREADS_VARIABLE = "GDMIX_INTRA_OP_THREADS"
#: what TensorFlow's ``__init__`` imports eagerly "so that any function/method that needs to happen
#: at load time will trigger" (Keras' registrations), catching ImportError
KERAS_EAGER_IMPORT = "keras.src.optimizers"
_configured = False
_cap_error: str | None = None  # why the requested cap could not be applied, if it could not


def requested_threads() -> int | None:
    """The thread cap asked for with ``GDMIX_INTRA_OP_THREADS`` (None: no cap)."""
    value = os.environ.get(THREADS_VARIABLE, "").strip()
    if not value:
        return None
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"{THREADS_VARIABLE}={value!r} is not an integer") from None
    return threads if threads > 0 else None


def import_tensorflow():
    global _configured, _cap_error
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    tf = _import_without_eager_keras()

    if not _configured:
        _configured = True
        threads = requested_threads()
        if threads is not None:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError as exc:  # the runtime already started: its pools stay as they are
                threading = tf.config.threading
                if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) \
                        != (threads, threads):
                    _cap_error = str(exc)
                    warnings.warn(
                        f"{THREADS_VARIABLE}={threads} is NOT applied: TensorFlow's runtime was started before "
                        f"gdmix could cap its thread pools ({exc}); TensorFlow uses "
                        f"{threading.get_intra_op_parallelism_threads()} intra-op and "
                        f"{threading.get_inter_op_parallelism_threads()} inter-op threads (0 = one per core), "
                        "so per-core timings of this process are not per core",
                        RuntimeWarning, stacklevel=2)
    return tf


def _import_without_eager_keras():
    """``import tensorflow``, but with Keras left to load when first used (see the module's
    docstring): a ``None`` entry in ``sys.modules`` makes TensorFlow's eager import of
    :data:`KERAS_EAGER_IMPORT` raise the ImportError it already catches; the entry is removed
    right after, so a later import of Keras runs normally."""
    if "tensorflow" in sys.modules or KERAS_EAGER_IMPORT in sys.modules:
        import tensorflow as tf  # already imported, or Keras already loaded: nothing to skip
        return tf
    sys.modules[KERAS_EAGER_IMPORT] = None
    try:
        import tensorflow as tf
    finally:
        if KERAS_EAGER_IMPORT in sys.modules and sys.modules[KERAS_EAGER_IMPORT] is None:
            del sys.modules[KERAS_EAGER_IMPORT]
    return tf


def thread_settings() -> dict:
    """The thread pools TensorFlow uses in this process (its getters; 0 means TensorFlow's
    default, one thread per core), the cap requested with ``GDMIX_INTRA_OP_THREADS`` and
    whether it is in force: for benchmarks to record next to their timings."""
    tf = import_tensorflow()
    requested = requested_threads()
    intra = tf.config.threading.get_intra_op_parallelism_threads()
    inter = tf.config.threading.get_inter_op_parallelism_threads()
    return {
        "intra_op": intra,
        "inter_op": inter,
        "requested": requested,
        "cap_applied": requested is None or (intra == requested and inter == requested),
        "cap_error": _cap_error,
        "cpu_count": os.cpu_count(),
        "note": "0 = TensorFlow's default (one thread per core)",
    }
