"""The training loop: synchronous data-parallel steps with gradients summed by a collective.

Each step every worker computes the loss sum and its gradient on its share of the global batch
(:class:`~gdmix.models.detext.data.Batches`: the rows of the batch that lie in the worker's shard,
:class:`~gdmix.models.detext.data.TrainingShard`, gathered inside the step's ``tf.function`` from
the shard's tensors, :class:`~gdmix.models.detext.data.ShardTensors`; a worker with no rows in a
batch contributes zeros); one all-reduce adds the gradients, loss sums and
weight sums of all workers; every worker divides by the global batch's weight, clips by global
norm and applies the same update, so the weights stay identical without further synchronisation.
The collective is TF's (``TF_CONFIG``) or Horovod's (``horovodrun``), or the identity for one process.

Every ``eval_every`` steps the workers score the validation rows (each its shard, the logits
all-reduced; or each all of them when they are in memory) and compute the same metric; the
weights with the best value of ``metric`` (in its direction) are kept, and the model ends with them.

The loop always runs ``steps`` steps (there is no early stopping); the report says whether
training had levelled off by then (``stop_reason``, ``converged``, see :func:`stop_reason`).
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from gdmix.config import DetextConfig
from gdmix.distributed.collective import Collective, SingleProcess
from gdmix.errors import ConfigError
from gdmix.metrics import binary_metrics
from gdmix.models.detext.data import (Batches, DetextRows, HeldOutShard, ShardTensors, TrainingShard, batch_inputs,
                                      blank_rows)
from gdmix.models.detext.losses import LOSSES
from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through

SCORE_BATCH = 4096
# the training loss has levelled off when the mean loss of the last fifth of the steps is within
# this fraction of the mean of the fifth before it
LOSS_PLATEAU_RTOL = 0.01


@dataclass
class TrainingReport:
    steps: int
    seconds: float
    examples_per_second: float
    train_loss: list[tuple[int, float]] = field(default_factory=list)
    evaluations: list[dict] = field(default_factory=list)
    best_step: int | None = None
    best_metric: float | None = None
    stop_reason: str = "step_budget"

    @property
    def converged(self) -> bool:
        return self.stop_reason != "step_budget"

    def as_dict(self) -> dict:
        return {"steps": self.steps, "seconds": self.seconds, "examples_per_second": self.examples_per_second,
                "train_loss": self.train_loss, "evaluations": self.evaluations, "best_step": self.best_step,
                "best_metric": self.best_metric, "iterations": self.steps, "converged": self.converged,
                "stop_reason": self.stop_reason}


def stop_reason(report: TrainingReport, step_losses: list[float]) -> str:
    """Why the run can be called finished when its ``steps`` ran out.

    ``validation_plateau``: the validation metric's best value came before the last evaluation
    (the last ``eval_every`` steps did not improve it; the model keeps the best weights).
    ``loss_plateau`` (without validation rows): the mean training loss of the last fifth of the
    steps is within ``LOSS_PLATEAU_RTOL`` of the fifth before it. Otherwise ``step_budget``:
    the run was still improving when its steps ran out (more steps may help).
    """
    if report.evaluations:
        if len(report.evaluations) >= 2 and report.best_step is not None \
                and report.best_step < report.evaluations[-1]["step"]:
            return "validation_plateau"
        return "step_budget"
    window = len(step_losses) // 5
    if window >= 2:
        last, before = np.mean(step_losses[-window:]), np.mean(step_losses[-2 * window:-window])
        if before - last <= LOSS_PLATEAU_RTOL * abs(before):
            return "loss_plateau"
    return "step_budget"


def horovod_installed() -> bool:
    return importlib.util.find_spec("horovod") is not None


def warn_if_collective_fallback(config: DetextConfig, collective: Collective) -> None:
    """``distribution: auto`` trains on Horovod when it is installed; say so when it is not and
    this multi-worker run fell back to TF collective workers."""
    if config.distribution != "auto" or collective.size <= 1 or type(collective).__name__ == "HorovodCollective":
        return
    if horovod_installed():
        return
    message = (f"DeText coordinate '{config.name}' (distribution: auto): Horovod is not installed, so its "
               f"{collective.size} workers use TF collective all-reduce instead; `make horovod` builds and "
               "installs Horovod for this TensorFlow (or set distribution: collective to silence this)")
    warnings.warn(message, RuntimeWarning, stacklevel=2)


def metric_direction(config: DetextConfig) -> str:
    if config.metric_direction != "auto":
        return config.metric_direction
    return "min" if config.metric in ("logloss", "loss") else "max"


def evaluate_metric(name: str, logits: np.ndarray, rows: DetextRows) -> float:
    """``auc``, ``logloss``, ``aupr``, or ``ndcg@k`` / ``mrr@k`` / ``precision@k`` (needs list ids)."""
    if name in ("auc", "logloss", "aupr"):
        return float(binary_metrics(rows.labels, logits, rows.weights)[name])
    kind, _, k = name.partition("@")
    if kind in ("ndcg", "mrr", "precision") and k.isdigit():
        from gdmix import metrics

        if rows.groups is None:
            raise ConfigError(f"metric '{name}' ranks rows within lists: set 'group'")
        function = {"ndcg": metrics.ndcg_at_k, "mrr": metrics.mrr_at_k, "precision": metrics.precision_at_k}[kind]
        return float(function(rows.groups, rows.labels, logits, int(k)))
    raise ConfigError(f"unknown metric '{name}' (auc, logloss, aupr, ndcg@k, mrr@k, precision@k)")


def score_rows(network, rows: DetextRows, offsets: np.ndarray) -> np.ndarray:
    """Logits of every row (offsets included), in batches."""
    forward = getattr(network, "_gdmix_forward", None)
    if forward is None:  # one traced inference function per network
        forward = tf.function(lambda inputs: network(inputs, training=False), reduce_retracing=True)
        network._gdmix_forward = forward
    out = np.empty(rows.num_rows, np.float64)
    for start in range(0, rows.num_rows, SCORE_BATCH):
        positions = np.arange(start, min(start + SCORE_BATCH, rows.num_rows))
        out[positions] = forward(batch_inputs(rows, positions, offsets)).numpy()
    return out


class SynchronousStep:
    """One synchronous data-parallel step: this worker's gradient, loss and weight sums on its
    share of the global batch, gathered inside the traced function from the shard's tensors
    (:class:`ShardTensors`: Python hands over only the positions); one all-reduce of the sums;
    every worker divides by the global weight, clips and applies the same update."""

    def __init__(self, network, config: DetextConfig, shard: ShardTensors, collective: Collective):
        variables = network.trainable_variables
        loss_fn, optimizer = LOSSES[config.loss], _optimizer(tf, config)
        self.sizes = [int(np.prod(v.shape)) for v in variables]
        self.collective = collective

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64)])  # one trace for every share size
        def local_gradient(positions):
            inputs, labels, weights, groups = shard.gather(positions)
            with tf.GradientTape() as tape:
                logits = network(inputs, training=True)
                loss_sum, weight_sum = loss_fn(logits, labels, weights, groups)
            gradients = tape.gradient(loss_sum, variables)
            flat = [tf.reshape(tf.convert_to_tensor(g) if g is not None else tf.zeros_like(v), [-1])
                    for g, v in zip(gradients, variables)]
            return tf.concat(flat, 0), loss_sum, weight_sum

        @tf.function(reduce_retracing=True)
        def apply(flat):
            summed = [tf.reshape(p, v.shape) for p, v in zip(tf.split(flat, self.sizes), variables)]
            if config.max_gradient_norm:
                summed, _ = tf.clip_by_global_norm(summed, config.max_gradient_norm)
            optimizer.apply_gradients(zip(summed, variables))

        self._local_gradient, self._apply = local_gradient, apply

    def __call__(self, positions: np.ndarray) -> float:
        """Train on this worker's share ``positions`` (int64) of a global batch; returns the
        global batch's loss (its loss sum over its weight sum, the same on every worker)."""
        total = self.collective.sum(self._local_sums(positions))
        scale = 1.0 / max(total[-1], 1e-12)
        self._apply(tf.constant((total[:-2] * scale).astype(np.float32)))
        return float(total[-2] * scale)

    def _local_sums(self, positions: np.ndarray) -> np.ndarray:
        """This worker's gradient, loss and weight sums (zeros when the batch has none of its rows)."""
        if len(positions) == 0:
            return np.zeros(sum(self.sizes) + 2)
        flat, loss_sum, weight_sum = self._local_gradient(positions)
        return np.concatenate([flat.numpy().astype(np.float64), [float(loss_sum), float(weight_sum)]])


def train_network(network, config: DetextConfig, train: DetextRows | TrainingShard, train_offsets: np.ndarray,
                  validation: DetextRows | HeldOutShard | None = None, validation_offsets: np.ndarray | None = None,
                  collective: Collective = SingleProcess(), log=print, progress=None) -> TrainingReport:
    """Train ``network`` for ``config.steps`` steps on ``train``: this worker's
    :class:`TrainingShard` (``train_offsets`` are its rows' offsets), or every training row in
    memory (:class:`DetextRows`; each worker then keeps only its shard of them). ``validation``:
    every validation row (each worker scores all), or this worker's :class:`HeldOutShard`."""
    if isinstance(train, DetextRows):
        train, train_offsets = TrainingShard.in_memory(train, train_offsets, collective.rank, collective.size)
    batches = Batches(train.index, config.batch_size, config.seed, by_group=config.loss != "pointwise")
    _build(network, train.rows, train_offsets)
    _broadcast(network, collective)
    warn_if_collective_fallback(config, collective)
    direction = metric_direction(config)
    report = TrainingReport(0, 0.0, 0.0)
    best_weights, examples, started = None, 0, time.perf_counter()
    step_losses: list[float] = []
    train_step = SynchronousStep(network, config, ShardTensors(train, train_offsets), collective)
    for step, (positions, global_rows) in enumerate(train.shares(batches, config.steps), start=1):
        loss = train_step(positions)
        examples += global_rows
        step_losses.append(loss)
        if step % max(config.steps // 50, 1) == 0 or step == config.steps:
            report.train_loss.append((step, loss))
        if progress is not None:
            progress(step, config.steps)
        if validation is not None and (step % config.eval_every == 0 or step == config.steps):
            value = _evaluate(network, config, validation, validation_offsets, collective)
            report.evaluations.append({"step": step, config.metric: value, "train_loss": loss})
            if _better(value, report.best_metric, direction):
                report.best_step, report.best_metric = step, value
                best_weights = [w.numpy() for w in network.weights]
            log(f"detext step {step}: train loss {loss:.5f}, validation {config.metric} {value:.5f}")
    if best_weights is not None:
        for variable, value in zip(network.weights, best_weights):
            variable.assign(value)
    report.steps = config.steps
    report.stop_reason = stop_reason(report, step_losses)
    report.seconds = time.perf_counter() - started
    report.examples_per_second = examples / max(report.seconds, 1e-9)
    return report


def _build(network, rows: DetextRows, offsets: np.ndarray) -> None:
    """Create the network's weights from two of this worker's rows (a blank row when it has none)."""
    if rows.num_rows == 0:
        rows, offsets = blank_rows(list(rows.texts), rows.dense.shape[1]), np.zeros(1)
    network(batch_inputs(rows, np.arange(min(2, rows.num_rows)), offsets))


def _evaluate(network, config, validation, offsets, collective) -> float:
    """The validation metric, the same on every worker so all agree on the best step: every worker
    scores all rows (:class:`DetextRows`), or its shard, all-reduced into every row's logit
    (:class:`HeldOutShard`: adding zeros is exact, so the metric is the single worker's)."""
    if isinstance(validation, DetextRows):
        return evaluate_metric(config.metric, score_rows(network, validation, offsets), validation)
    logits = collective.sum(validation.place(score_rows(network, validation.rows, offsets)))
    return evaluate_metric(config.metric, logits, validation.everything)


def _better(value: float, best: float | None, direction: str) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return best is None
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return True
    return value > best if direction == "max" else value < best


def _optimizer(tf, config: DetextConfig):
    keras = tf.keras
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(config.learning_rate, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(config.learning_rate)
    return keras.optimizers.SGD(config.learning_rate)


def _broadcast(network, collective: Collective) -> None:
    """Every worker starts from the chief's initial weights (seeded anyway; this makes it certain)."""
    if collective.size == 1:
        return
    for variable in network.weights:
        value = variable.numpy().astype(np.float64)
        mine = value if collective.rank == 0 else np.zeros_like(value)
        variable.assign(collective.sum(mine).astype(variable.numpy().dtype))
