"""Two-process Horovod check (TensorFlow + Gloo), meant to be run under horovodrun:

    .venv/bin/horovodrun -np 2 -H localhost:2 --gloo --network-interfaces lo \
        .venv/bin/python scripts/horovod/check_hvd.py OUT_DIR

(or python -m gdmix.distributed.horovodrun_loopback instead of horovodrun, to keep the rendezvous server on
127.0.0.1 too).

Each rank checks hvd.allreduce (Sum/Average), then trains a tiny Keras 3 model for a few steps with
hvd.DistributedGradientTape on its own data shard after hvd.broadcast_variables, and writes
OUT_DIR/rank<r>.json (allreduce results, final weights, a single-process reference) for the caller
to compare across ranks. Uses horovod.tensorflow only: horovod.tensorflow.keras does not work with
Keras 3. Exits non-zero when a check fails in-process.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

t0 = time.perf_counter()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import keras  # noqa: E402
import horovod.tensorflow as hvd  # noqa: E402

STEPS, LR, ROWS = 5, 0.05, 64
TRUE_W = np.array([[1.0], [-2.0], [0.5], [3.0]], dtype=np.float32)


def shard(rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank r's data: different on every rank, so unsynchronized training would diverge."""
    rng = np.random.default_rng(100 + rank)
    x = rng.normal(size=(ROWS, 4)).astype(np.float32)
    y = x @ TRUE_W + 0.1 * rng.normal(size=(ROWS, 1)).astype(np.float32)
    return x, y


def build_model(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="tanh"), keras.layers.Dense(1)])


def tf_variables(variables) -> list[tf.Variable]:
    """The tf.Variables behind Keras 3 variables (`.value` on the TF backend). horovod.tensorflow
    0.28.1 expects tf.Variables: hvd.broadcast_variables assigns inside a tf.function, where a
    keras.Variable arrives as a tensor ("'SymbolicTensor' object has no attribute 'assign'"), and
    DistributedGradientTape.gradient keys its sources by `.ref()` ("'Variable' object has no attribute
    'ref'"). The backing tf.Variables work for both; gradients w.r.t. them apply to the Keras variables."""
    return [v.value if isinstance(v, keras.Variable) else v for v in variables]


def mse(model: keras.Model, x: np.ndarray, y: np.ndarray) -> tf.Tensor:
    return tf.reduce_mean(tf.square(model(x, training=True) - y))


def rendezvous_listen_addresses() -> list[str]:
    """Local addresses of the TCP listener(s) on horovodrun's Gloo rendezvous port."""
    import psutil  # a horovod run-time dependency

    port = int(os.environ.get("HOROVOD_GLOO_RENDEZVOUS_PORT", "-1"))
    return sorted({c.laddr.ip for c in psutil.net_connections("tcp")
                   if c.status == psutil.CONN_LISTEN and c.laddr.port == port})


def main(out_dir: str) -> int:
    t_import = time.perf_counter() - t0
    hvd.init()
    rank, size = hvd.rank(), hvd.size()

    # 1. allreduce: rank r contributes r+1, so Sum = size(size+1)/2 and Average = (size+1)/2.
    t = time.perf_counter()
    mine = tf.fill([3], float(rank + 1))
    allreduce_sum = hvd.allreduce(mine, op=hvd.Sum, name="check_sum").numpy().tolist()
    allreduce_avg = hvd.allreduce(mine, op=hvd.Average, name="check_avg").numpy().tolist()
    t_allreduce = time.perf_counter() - t

    # 2. training: a different initialization on every rank (seed = rank), made equal by the broadcast.
    model = build_model(seed=rank)
    before = [v.numpy().copy() for v in model.trainable_variables]
    hvd.broadcast_variables(tf_variables(model.variables), root_rank=0)
    init = [v.numpy().copy() for v in model.trainable_variables]
    opt = keras.optimizers.SGD(LR)
    x, y = shard(rank)
    losses = []
    t = time.perf_counter()
    for step in range(STEPS):
        with tf.GradientTape() as tape:
            loss = mse(model, x, y)
        tape = hvd.DistributedGradientTape(tape)  # averages the gradients over the ranks
        grads = tape.gradient(loss, tf_variables(model.trainable_variables))
        opt.apply_gradients(zip(grads, model.trainable_variables))
        if step == 0:
            hvd.broadcast_variables(tf_variables(opt.variables), root_rank=0)
        losses.append(float(hvd.allreduce(loss, op=hvd.Average, name=f"loss_{step}")))
    t_train = time.perf_counter() - t
    final = [v.numpy() for v in model.trainable_variables]

    # Reference, in-process: the same init trained on the mean of every rank's shard loss (equal shard
    # sizes, so this is what averaged gradients give). Any rank can compute it: it knows every shard.
    ref = build_model(seed=0)
    for v, w in zip(ref.trainable_variables, init):
        v.assign(w)
    ref_opt = keras.optimizers.SGD(LR)
    shards = [shard(r) for r in range(size)]
    for _ in range(STEPS):
        with tf.GradientTape() as tape:
            loss = tf.add_n([mse(ref, xs, ys) for xs, ys in shards]) / size
        ref_opt.apply_gradients(zip(tape.gradient(loss, ref.trainable_variables), ref.trainable_variables))
    reference = [v.numpy() for v in ref.trainable_variables]

    # Rank 0's final weights, broadcast, for an in-process comparison (the caller also compares files).
    rank0_final = [hvd.broadcast(tf.constant(w), root_rank=0, name=f"final_{i}").numpy() for i, w in enumerate(final)]
    result = {
        "rank": rank,
        "size": size,
        "local_rank": hvd.local_rank(),
        "gloo_enabled": bool(hvd.gloo_enabled()),
        "mpi_enabled": bool(hvd.mpi_enabled()),
        "env": {k: os.environ.get(k) for k in ("HOROVOD_GLOO_RENDEZVOUS_ADDR", "HOROVOD_GLOO_IFACE", "HOROVOD_HOSTNAME")},
        "rendezvous_listen": rendezvous_listen_addresses(),
        "allreduce_sum": allreduce_sum,
        "allreduce_avg": allreduce_avg,
        "init_differed_before_broadcast": bool(
            hvd.allreduce(tf.constant(float(sum(np.abs(b - i).sum() for b, i in zip(before, init)))), op=hvd.Sum)
            > 0
        ),
        "losses": losses,
        "final_weights": [w.tolist() for w in final],
        "max_diff_to_rank0": float(max(np.abs(a - b).max() for a, b in zip(final, rank0_final))),
        "max_diff_to_reference": float(max(np.abs(a - b).max() for a, b in zip(final, reference))),
        "seconds": {"import": round(t_import, 2), "allreduce": round(t_allreduce, 3), "train": round(t_train, 3)},
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)

    expected_sum = [size * (size + 1) / 2] * 3
    expected_avg = [(size + 1) / 2] * 3
    ok = (
        np.allclose(allreduce_sum, expected_sum)
        and np.allclose(allreduce_avg, expected_avg)
        and result["max_diff_to_rank0"] == 0.0
        and result["max_diff_to_reference"] < 1e-5
        and losses[-1] < losses[0]
    )
    print(f"[rank {rank}/{size}] {'OK' if ok else 'FAILED'}: sum={allreduce_sum} avg={allreduce_avg} "
          f"losses={[round(v, 4) for v in losses]} diff_rank0={result['max_diff_to_rank0']:.2e} "
          f"diff_ref={result['max_diff_to_reference']:.2e} times={result['seconds']}", flush=True)
    hvd.shutdown()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "."))
