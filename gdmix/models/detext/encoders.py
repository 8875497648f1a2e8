"""Text encoders: token ids [n, max_len] (0 = padding) -> one vector per text [n, d].

* ``cnn`` (DeText's default, cheap to serve): word embeddings, 1-D convolutions of several
  window sizes, max-over-time pooling of the real (non-padding) positions, tanh projection;
* ``lstm``: a bidirectional LSTM over the real positions, final states of both directions;
* ``transformer``: a small encoder trained from scratch: token + position embeddings, pre-norm
  self-attention blocks with a padding mask, masked mean pooling;
* ``pretrained``: a local SavedModel mapping the raw strings to vectors (no hub downloads);
  its variables stay frozen.

An empty text (all padding) encodes to the zero vector in every encoder.
"""

from __future__ import annotations

from gdmix.config import DetextConfig
from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through


def make_encoder(config: DetextConfig, vocab_size: int, name: str):
    """A Keras layer for one text field: ids [n, L] -> [n, num_units]."""
    builders = {"cnn": _cnn, "lstm": _lstm, "transformer": _transformer}
    return builders[config.encoder](config, vocab_size, name)


def _mask(ids):
    return tf.cast(tf.not_equal(ids, 0), tf.float32)


def _cnn(config: DetextConfig, vocab_size: int, name: str):
    keras = tf.keras

    class CnnEncoder(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=name)
            self.embed = keras.layers.Embedding(vocab_size, config.embedding_dim)
            self.convs = [keras.layers.Conv1D(config.num_filters, width, padding="same", activation="relu")
                          for width in config.filter_windows]
            self.project = keras.layers.Dense(config.num_units, activation="tanh")

        def call(self, ids):
            mask = _mask(ids)[:, :, None]
            x = self.embed(ids) * mask
            pooled = []
            for conv in self.convs:  # relu outputs are >= 0, so masked positions (0) never win the max
                pooled.append(tf.reduce_max(conv(x) * mask, axis=1))
            return self.project(tf.concat(pooled, axis=-1)) * _any(mask)

    return CnnEncoder()


def _lstm(config: DetextConfig, vocab_size: int, name: str):
    keras = tf.keras

    class LstmEncoder(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=name)
            self.embed = keras.layers.Embedding(vocab_size, config.embedding_dim)
            self.rnn = keras.layers.Bidirectional(keras.layers.LSTM(config.num_units // 2 or 1))
            self.project = keras.layers.Dense(config.num_units, activation="tanh")

        def call(self, ids):
            mask = tf.not_equal(ids, 0)
            # a row with no token at all would give cuDNN/Keras an empty sequence: give it one pad step
            safe = tf.logical_or(mask, tf.logical_and(tf.range(tf.shape(ids)[1])[None, :] == 0,
                                                      tf.logical_not(tf.reduce_any(mask, axis=1, keepdims=True))))
            encoded = self.rnn(self.embed(ids), mask=safe)
            return self.project(encoded) * _any(_mask(ids)[:, :, None])

    return LstmEncoder()


def _transformer(config: DetextConfig, vocab_size: int, name: str):
    keras = tf.keras
    width = config.num_units

    class Block(keras.layers.Layer):
        def __init__(self, index: int):
            super().__init__(name=f"{name}_block{index}")
            self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6)
            self.attention = keras.layers.MultiHeadAttention(config.num_heads, max(width // config.num_heads, 1),
                                                             dropout=config.dropout)
            self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6)
            self.ffn = keras.Sequential([keras.layers.Dense(2 * width, activation="gelu"), keras.layers.Dense(width)])

        def call(self, x, attention_mask, training=False):
            h = self.norm1(x)
            x = x + self.attention(h, h, attention_mask=attention_mask, training=training)
            return x + self.ffn(self.norm2(x))

    class TransformerEncoder(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=name)
            self.embed = keras.layers.Embedding(vocab_size, width)
            self.position = keras.layers.Embedding(config.max_len, width)
            self.blocks = [Block(i) for i in range(config.num_layers)]
            self.norm = keras.layers.LayerNormalization(epsilon=1e-6)

        def call(self, ids, training=False):
            mask = _mask(ids)
            x = self.embed(ids) + self.position(tf.range(tf.shape(ids)[1]))[None]
            pair = tf.cast(mask[:, :, None] * mask[:, None, :], tf.bool)
            # padding attends to itself only, so empty rows stay finite; they are masked out below
            pair = tf.logical_or(pair, tf.eye(tf.shape(ids)[1], dtype=tf.bool)[None])
            for block in self.blocks:
                x = block(x, pair, training=training)
            x = self.norm(x) * mask[:, :, None]
            return tf.reduce_sum(x, axis=1) / tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)

    return TransformerEncoder()


def _any(mask):
    """1 for rows with at least one real token, 0 for empty rows: empty text -> zero vector."""
    return tf.reduce_max(mask, axis=1)


def load_pretrained(path: str, name: str):
    """A frozen local SavedModel ``strings [n] -> vectors [n, d]`` wrapped as a Keras layer."""
    keras = tf.keras
    loaded = tf.saved_model.load(path)
    function = loaded.signatures.get("serving_default") if hasattr(loaded, "signatures") else None

    class PretrainedEncoder(keras.layers.Layer):
        def __init__(self):
            super().__init__(name=name, trainable=False)
            self.module = loaded

        def call(self, texts):
            if function is not None:
                outputs = function(tf.reshape(texts, [-1]))
                return tf.cast(next(iter(outputs.values())), tf.float32)
            return tf.cast(loaded(tf.reshape(texts, [-1])), tf.float32)

    return PretrainedEncoder()
