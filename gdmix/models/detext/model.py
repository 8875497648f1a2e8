"""A trained DeText model: its network, vocabulary and feature statistics; saving, loading,
warm starts and the exported SavedModel.

On disk (``models/<coordinate>/`` of a gdmix model)::

    detext.json        the coordinate config, wide feature count, dense mean and deviation
    vocabulary.txt     one token per line ([PAD], [UNK] first)
    weights.npz        the network's weights (warm starts and exact reloads)
    saved_model/       the SavedModel: signature ``serving_default`` takes the raw inputs
                       (text strings, wide ids/values, dense, offset) and returns ``logit``

The wide bag's index map is the model's ``index_maps/<bag>`` like any coordinate's.
TensorFlow cannot write to object stores here, so the files are written locally and copied.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gdmix.config import DetextConfig
from gdmix.distributed.collective import Collective, SingleProcess
from gdmix.io import fs
from gdmix.models.detext.data import DetextRows
from gdmix.models.detext.network import build_network, input_signature
from gdmix.models.detext.training import score_rows
from gdmix.tf_runtime import import_tensorflow

tf = import_tensorflow()  # this package is TensorFlow through and through

SPEC_FILE = "detext.json"
SERVING = "serving_default"


@dataclass
class DetextModel:
    config: DetextConfig
    vocabulary: list[str]
    wide_features: int
    dense_mean: np.ndarray
    dense_std: np.ndarray
    network: object

    @classmethod
    def create(cls, config: DetextConfig, vocabulary: list[str], wide_features: int, dense: np.ndarray,
               collective: Collective = SingleProcess()) -> "DetextModel":
        """An untrained model; ``dense`` are this worker's training rows (statistics over every worker's)."""
        mean, std = dense_statistics(dense, collective)
        network = build_network(config, vocabulary, wide_features, mean, std)
        return cls(config, vocabulary, wide_features, mean, std, network)

    def score(self, rows: DetextRows, offsets: np.ndarray | None = None) -> np.ndarray:
        """Logits of the network alone (offsets excluded unless given)."""
        return score_rows(self.network, rows, np.zeros(rows.num_rows) if offsets is None else offsets)

    def copy_weights_from(self, other: "DetextModel") -> None:
        """Warm start: the other model's weights, when its architecture and vocabulary match."""
        if other.vocabulary != self.vocabulary or other.wide_features != self.wide_features:
            return
        for mine, theirs in zip(self.network.weights, other.network.weights):
            if tuple(mine.shape) == tuple(theirs.shape):
                mine.assign(theirs.numpy())

    def save(self, uri: str) -> None:
        with tempfile.TemporaryDirectory(prefix="gdmix-detext-") as tmp:
            root = Path(tmp)
            spec = {"config": self.config.model_dump(mode="json"), "wide_features": self.wide_features,
                    "dense_mean": self.dense_mean.tolist(), "dense_std": self.dense_std.tolist()}
            (root / SPEC_FILE).write_text(json.dumps(spec, indent=2) + "\n")
            (root / "vocabulary.txt").write_text("\n".join(self.vocabulary) + "\n", encoding="utf-8")
            np.savez(root / "weights.npz", *[w.numpy() for w in self.network.weights])
            self.export(str(root / "saved_model"))
            target_fs, path = fs.url_to_fs(uri)
            target_fs.makedirs(path, exist_ok=True)
            target_fs.put(str(root) + "/", path.rstrip("/") + "/", recursive=True)

    def export(self, path: str) -> None:
        """The SavedModel with a serving signature over the raw inputs."""
        network = self.network
        signature = input_signature(self.config, len(self.dense_mean))

        class Serving(tf.Module):
            def __init__(self):
                super().__init__()
                # the resources the traced function captures, tracked directly: the network's
                # variables and the vocabulary's hash table (tracking the Keras model itself
                # would make TensorFlow also trace Keras's own guessed signature)
                self.weights = [w.value if hasattr(w, "value") else w for w in network.weights]
                tokenizer = getattr(network, "tokenizer", None)
                self.tables = [tokenizer.lookup.lookup_table] if tokenizer is not None else []

            @tf.function(input_signature=[signature])
            def serve(self, inputs):
                return {"logit": network(dict(sorted(inputs.items())), training=False)}

        module = Serving()
        tf.saved_model.save(module, path, signatures={SERVING: module.serve.get_concrete_function()})

    @classmethod
    def load(cls, uri: str) -> "DetextModel":
        with tempfile.TemporaryDirectory(prefix="gdmix-detext-") as tmp:
            source_fs, path = fs.url_to_fs(uri)
            for name in (SPEC_FILE, "vocabulary.txt", "weights.npz"):
                source_fs.get(f"{path.rstrip('/')}/{name}", f"{tmp}/{name}")
            spec = json.loads(Path(tmp, SPEC_FILE).read_text())
            vocabulary = Path(tmp, "vocabulary.txt").read_text(encoding="utf-8").split("\n")[:-1]
            with np.load(Path(tmp, "weights.npz")) as stored:
                weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
        config = DetextConfig(**spec["config"])
        mean, std = np.asarray(spec["dense_mean"], np.float32), np.asarray(spec["dense_std"], np.float32)
        model = cls(config, vocabulary, spec["wide_features"], mean, std,
                    build_network(config, vocabulary, spec["wide_features"], mean, std))
        model._build()
        for variable, value in zip(model.network.weights, weights, strict=True):
            variable.assign(value)
        return model

    def _build(self) -> None:
        from gdmix.models.detext.data import batch_inputs, blank_rows

        rows = blank_rows(_texts(self.config), len(self.dense_mean))
        self.network(batch_inputs(rows, np.arange(1), np.zeros(1)), training=False)


def dense_statistics(dense: np.ndarray, collective: Collective) -> tuple[np.ndarray, np.ndarray]:
    """Mean and deviation of each dense column over every worker's rows (``dense``: this worker's).

    Two all-reduced passes in float64 (sums, then squared deviations from the mean), the same
    arithmetic for one worker as for N, so shards give the statistics of the whole data. A
    column without spread (or no rows) gets deviation 1."""
    dims = dense.shape[1]
    if dims == 0:
        return np.zeros(0, np.float32), np.ones(0, np.float32)
    sums = collective.sum(np.concatenate([[len(dense)], dense.sum(axis=0, dtype=np.float64)]))
    count = max(sums[0], 1.0)
    mean = sums[1:] / count
    variance = collective.sum(((dense - mean) ** 2).sum(axis=0)) / count
    std = np.sqrt(variance)
    return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def _texts(config: DetextConfig) -> list[str]:
    from gdmix.models.detext.network import text_columns

    return text_columns(config)


def load_serving(path: str):
    """The exported serving function (``tf.saved_model.load``), for scoring without gdmix's network code."""
    return tf.saved_model.load(path).signatures[SERVING]
