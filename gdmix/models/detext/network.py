"""The DeText network: inputs (a dict of tensors) -> one logit per row.

Inputs: ``text:<column>`` (tf.string [n]) for every text column, ``wide_ids`` / ``wide_values``
([n, k]: a row's sparse wide features as feature index + 1, 0 = padding), ``dense``
([n, d]) and ``offset`` ([n]). Query and user texts are interacted with every document text
(cosine, hadamard, difference, or both vectors concatenated); without them the document
vectors are used as they are. Wide sparse features enter twice: an embedding bag into the MLP
and a linear term added to the logit (the logistic regression DeText extends). Dense features
are standardised with the training rows' mean and deviation and rescaled by a learned
``tanh(w*x + b)``. The offset is added to the logit last.
"""

from __future__ import annotations

import numpy as np

from gdmix.config import DetextConfig
from gdmix.models.detext.encoders import load_pretrained, make_encoder
from gdmix.models.detext.text import make_tokenizer_layer
from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through


def text_columns(config: DetextConfig) -> list[str]:
    """Every text column the model reads, in a fixed order."""
    columns = ([config.query_text] if config.query_text else []) + list(config.user_text) + list(config.doc_text)
    return list(dict.fromkeys(columns))


def build_network(config: DetextConfig, vocabulary: list[str], wide_features: int, dense_mean: np.ndarray,
                  dense_std: np.ndarray):
    """A Keras model; call it with the input dict (``training=True`` while training)."""
    keras = tf.keras
    tf.random.set_seed(config.seed)
    keras.utils.set_random_seed(config.seed)

    class DetextNetwork(keras.Model):
        def __init__(self):
            super().__init__(name="detext")
            if config.encoder == "pretrained":
                self.tokenizer = None
                self.encoder = load_pretrained(config.pretrained_path, "pretrained_encoder")
            else:
                self.tokenizer = make_tokenizer_layer(vocabulary, config.max_text_bytes, config.max_len)
                self.encoder = make_encoder(config, len(vocabulary), f"{config.encoder}_encoder")
            self.dropout = keras.layers.Dropout(config.dropout, seed=config.seed)
            self.wide_embedding = keras.layers.Embedding(wide_features + 1, config.wide_embedding_dim) \
                if wide_features else None
            self.wide_linear = keras.layers.Embedding(wide_features + 1, 1, embeddings_initializer="zeros") \
                if wide_features else None
            dims = len(dense_mean)
            self.dense_mean = tf.constant(np.asarray(dense_mean, np.float32).reshape(1, dims))
            self.dense_std = tf.constant(np.asarray(dense_std, np.float32).reshape(1, dims))
            if dims:
                self.dense_scale = self.add_weight(shape=(1, dims), initializer="ones", name="dense_scale")
                self.dense_shift = self.add_weight(shape=(1, dims), initializer="zeros", name="dense_shift")
            self.hidden = [keras.layers.Dense(units, activation="tanh") for units in config.hidden]
            self.output_layer = keras.layers.Dense(1)

        def encode(self, texts, training=False):
            if self.tokenizer is None:
                return self.encoder(texts)
            return self.encoder(self.tokenizer(texts), training=training) if config.encoder == "transformer" \
                else self.encoder(self.tokenizer(texts))

        def call(self, inputs, training=False):
            docs = [self.encode(inputs[f"text:{c}"], training) for c in config.doc_text]
            users = [self.encode(inputs[f"text:{c}"], training)
                     for c in ([config.query_text] if config.query_text else []) + list(config.user_text)]
            parts = _interactions(tf, config.interactions, users, docs) if users else list(docs)
            linear = tf.zeros_like(inputs["offset"])
            if self.wide_embedding is not None:
                ids, values = inputs["wide_ids"], inputs["wide_values"]
                parts.append(tf.reduce_sum(self.wide_embedding(ids) * values[:, :, None], axis=1))
                linear = tf.reduce_sum(self.wide_linear(ids)[:, :, 0] * values, axis=1)
            if self.dense_mean.shape[1]:
                standard = (inputs["dense"] - self.dense_mean) / self.dense_std
                parts.append(tf.tanh(self.dense_scale * standard + self.dense_shift))
            h = self.dropout(tf.concat(parts, axis=-1), training=training)
            for layer in self.hidden:
                h = layer(h)
            return self.output_layer(h)[:, 0] + linear + inputs["offset"]

    return DetextNetwork()


def _interactions(tf, kinds: list[str], users: list, docs: list) -> list:
    parts = []
    for user in users:
        for doc in docs:
            if "cosine" in kinds:
                parts.append(tf.reduce_sum(tf.math.l2_normalize(user, -1) * tf.math.l2_normalize(doc, -1),
                                           axis=-1, keepdims=True))
            if "hadamard" in kinds:
                parts.append(user * doc)
            if "diff" in kinds:
                parts.append(user - doc)
    if "concat" in kinds:
        parts.extend(users + docs)
    return parts


def input_signature(config: DetextConfig, dense_dims: int) -> dict:
    """The serving signature's tensor specs (batch dimension free)."""
    spec = {f"text:{c}": tf.TensorSpec([None], tf.string, name=f"text_{c}") for c in text_columns(config)}
    spec["wide_ids"] = tf.TensorSpec([None, None], tf.int32, name="wide_ids")
    spec["wide_values"] = tf.TensorSpec([None, None], tf.float32, name="wide_values")
    spec["dense"] = tf.TensorSpec([None, dense_dims], tf.float32, name="dense")
    spec["offset"] = tf.TensorSpec([None], tf.float32, name="offset")
    return spec
