"""Training losses, as (weighted loss sum, weight sum) over a batch's rows.

Returning sums lets workers add their shares of a global batch and divide once, so N workers
take exactly the step one worker would take on the whole batch.

* ``pointwise``: sigmoid cross-entropy per row, weighted by the row weight: calibrated log-odds,
  the only loss whose scores random effects can use as offsets;
* ``pairwise``: logistic loss on every pair of rows of a list with different labels (the
  higher-labelled row should score higher), averaged per list, lists weighted by their first
  row's weight;
* ``listwise``: softmax cross-entropy of each list's scores against its labels normalised to a
  distribution; lists without a positive label are skipped.
"""

from __future__ import annotations

from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through


def pointwise(logits, labels, weights, groups=None):
    losses = tf.nn.softplus(logits) - labels * logits  # = sigmoid cross-entropy, stable for any logit
    return tf.reduce_sum(weights * losses), tf.reduce_sum(weights)


def pairwise(logits, labels, weights, groups):
    same = tf.equal(groups[:, None], groups[None, :])
    better = tf.logical_and(same, labels[:, None] > labels[None, :])
    pair_loss = tf.nn.softplus(-(logits[:, None] - logits[None, :]))
    better = tf.cast(better, logits.dtype)
    group_ids, index = tf.unique(groups)
    count = tf.shape(group_ids)[0]
    pairs = tf.math.unsorted_segment_sum(tf.reduce_sum(better, axis=1), index, count)
    total = tf.math.unsorted_segment_sum(tf.reduce_sum(better * pair_loss, axis=1), index, count)
    weight = tf.math.unsorted_segment_max(weights, index, count)
    has_pairs = tf.cast(pairs > 0, logits.dtype)
    return tf.reduce_sum(has_pairs * weight * total / tf.maximum(pairs, 1.0)), tf.reduce_sum(has_pairs * weight)


def listwise(logits, labels, weights, groups):
    _, index = tf.unique(groups)
    count = tf.reduce_max(index) + 1
    top = tf.math.unsorted_segment_max(logits, index, count)
    shifted = logits - tf.gather(top, index)
    log_norm = tf.math.log(tf.math.unsorted_segment_sum(tf.exp(shifted), index, count))
    log_softmax = shifted - tf.gather(log_norm, index)
    positive = tf.math.unsorted_segment_sum(labels, index, count)
    cross = -tf.math.unsorted_segment_sum(labels * log_softmax, index, count)
    weight = tf.math.unsorted_segment_max(weights, index, count)
    has_positive = tf.cast(positive > 0, logits.dtype)
    return (tf.reduce_sum(has_positive * weight * cross / tf.maximum(positive, 1e-12)),
            tf.reduce_sum(has_positive * weight))


LOSSES = {"pointwise": pointwise, "pairwise": pairwise, "listwise": listwise}
