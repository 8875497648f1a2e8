"""Text normalisation and tokenisation inside the TensorFlow graph, and the vocabulary.

The same layer runs in training and in the exported SavedModel, so serving can never drift
from training. Any byte string is accepted: invalid UTF-8 is replaced (U+FFFD), over-long
fields are cut to ``max_bytes`` before any work, text is case-folded (Unicode-aware), every run
of characters that are not letters or digits becomes a token boundary, and tokens beyond
``max_len`` are dropped. Empty fields give an all-padding row, which the encoders mask.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through

PAD, UNK = "[PAD]", "[UNK]"
SPECIAL = (PAD, UNK)  # ids 0 and 1
SEPARATORS = r"[^\p{L}\p{N}]+"
MAX_WORD_CHARS = 64  # a "word" longer than this (a hash, a URL) is cut


def normalize(texts):
    """``tf.string`` tensor -> cleaned, case-folded, single-space-separated words."""
    return tf.strings.strip(tf.strings.regex_replace(tf.strings.lower(texts, encoding="utf-8"), SEPARATORS, " "))


def clean_bytes(texts, max_bytes: int):
    """Cut to ``max_bytes`` and make valid UTF-8 (a cut inside a character is replaced too)."""
    cut = tf.strings.substr(texts, 0, max_bytes, unit="BYTE")
    return tf.strings.unicode_transcode(cut, input_encoding="UTF-8", output_encoding="UTF-8", errors="replace",
                                        replacement_char=0xFFFD, replace_control_characters=True)


def tokens(texts, max_bytes: int, max_len: int):
    """Words of each text as a ``RaggedTensor`` (at most ``max_len`` per row)."""
    words = tf.strings.split(normalize(clean_bytes(texts, max_bytes)))[:, :max_len]
    return tf.ragged.map_flat_values(tf.strings.substr, words, 0, MAX_WORD_CHARS, unit="UTF8_CHAR")


def build_vocabulary(columns: list[np.ndarray], max_bytes: int, max_len: int, size: int, min_count: int) -> list[str]:
    """The ``size`` most frequent words (at least ``min_count`` occurrences) of the training
    texts, ties broken alphabetically so every worker builds the same list; ``[PAD]`` and
    ``[UNK]`` first."""
    return vocabulary_from_counts(count_tokens(columns, max_bytes, max_len), size, min_count)


def count_tokens(columns: list[np.ndarray], max_bytes: int, max_len: int) -> Counter:
    """How often each word (UTF-8 bytes) occurs in the texts: counts of shards add up to the
    counts of all rows, so workers can build one vocabulary from their own rows."""
    counts: Counter = Counter()
    for column in columns:
        for start in range(0, len(column), 65536):
            chunk = tf.constant(_as_bytes(column[start:start + 65536]), dtype=tf.string)
            counts.update(tokens(chunk, max_bytes, max_len).flat_values.numpy().tolist())
    return counts


def vocabulary_from_counts(counts: Counter, size: int, min_count: int) -> list[str]:
    """:func:`build_vocabulary`'s choice of words from word counts."""
    ranked = sorted(((count, word) for word, count in counts.items() if count >= min_count),
                    key=lambda item: (-item[0], item[1]))
    words = [word.decode("utf-8") for _, word in ranked[: max(size - len(SPECIAL), 0)]]
    return [*SPECIAL, *words]


def _as_bytes(values: np.ndarray) -> list[bytes]:
    """Python strings, bytes or None -> bytes (None is an empty field)."""
    out = []
    for value in values:
        if value is None:
            out.append(b"")
        elif isinstance(value, bytes):
            out.append(value)
        else:
            out.append(str(value).encode("utf-8", errors="replace"))
    return out


def text_array(values) -> np.ndarray:
    """A column of texts as a numpy array of bytes, ready for ``tf.constant``."""
    return np.array(_as_bytes(list(values)), dtype=object)


def make_tokenizer_layer(vocabulary: list[str], max_bytes: int, max_len: int):
    """A Keras layer: ``tf.string`` [n] -> token ids int32 [n, max_len] (0 = padding, 1 = unknown)."""
    keras = tf.keras

    class TextTokenizer(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(trainable=False, **kwargs)
            self.lookup = keras.layers.StringLookup(vocabulary=list(vocabulary[len(SPECIAL):]), num_oov_indices=1,
                                                    mask_token=None, output_mode="int")

        def call(self, texts):
            words = tokens(tf.reshape(texts, [-1]), max_bytes, max_len)
            # StringLookup: 0 = out of vocabulary, 1.. = words; shift so 0 is padding, 1 unknown
            ids = tf.ragged.map_flat_values(lambda w: tf.cast(self.lookup(w), tf.int32) + 1, words)
            return ids.to_tensor(default_value=0, shape=[None, max_len])

    return TextTokenizer()
