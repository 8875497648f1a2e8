"""Importing TensorFlow the way gdmix wants it: quiet, deterministic CPU kernels.

TensorFlow is imported lazily (only the fixed effect needs it) so commands such as
``gdmix datasets`` start instantly. oneDNN's reordered float reductions are switched off by
default: reproducible sums matter more here than its small speed-up on CPU.
"""

from __future__ import annotations

import os


def import_tensorflow():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    import tensorflow as tf

    return tf
