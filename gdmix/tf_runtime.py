"""Importing TensorFlow the way gdmix wants it: quiet, deterministic, with a thread budget.

TensorFlow is imported lazily (only the fixed effect needs it) so commands such as
``gdmix datasets`` start instantly. oneDNN's reordered float reductions are switched off by
default: reproducible sums matter more here than its small speed-up on CPU.
``GDMIX_INTRA_OP_THREADS=n`` caps TensorFlow's thread pools (the local launcher sets it so that
N workers on one machine share its cores instead of oversubscribing them).
"""

from __future__ import annotations

import os

THREADS_VARIABLE = "GDMIX_INTRA_OP_THREADS"
_configured = False


def import_tensorflow():
    global _configured
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    if not _configured:
        _configured = True
        threads = int(os.environ.get(THREADS_VARIABLE, "0") or 0)
        if threads > 0:
            try:
                tf.config.threading.set_intra_op_parallelism_threads(threads)
                tf.config.threading.set_inter_op_parallelism_threads(threads)
            except RuntimeError:  # the runtime already started: keep its pools
                pass
    return tf
