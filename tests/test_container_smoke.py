"""Container smoke test: a real gdmix component runs in its image through kfp.local's DockerRunner.

Step 1, a lightweight component defined here, writes a synthetic score table (label, score as a
logit, weight) as Parquet into an ``Output[Dataset]``; step 2 is the pipeline's own ``evaluate``
component (``components/evaluate/component.py``, image ``gdmix.images.image("trainer")``). The
AUC it logs must equal scikit-learn's ``roc_auc_score`` on the Parquet step 1 wrote.

Needs a Docker daemon (``DOCKER_HOST``) holding the trainer image::

    eval "$(docker/start-dockerd.sh)"
    IMAGES=trainer make images

Without them the test is skipped, unless ``GDMIX_CONTAINER_TESTS=1`` (CI sets it): then it fails.
"""

import glob
import os

import numpy as np
import pytest

REQUIRED = os.environ.get("GDMIX_CONTAINER_TESTS") == "1"
ROWS = 3000
SEED = 7


def _unavailable(reason: str):
    if REQUIRED:
        pytest.fail(f"GDMIX_CONTAINER_TESTS=1 but {reason}", pytrace=False)
    pytest.skip(f"{reason} (set GDMIX_CONTAINER_TESTS=1 to make this a failure)")


def _trainer_image() -> str:
    """The trainer image's tag, once a Docker daemon answers and holds it; else skip (or fail)."""
    from gdmix.images import image

    tag = image("trainer")
    try:
        import docker
    except ImportError:
        _unavailable("the 'docker' Python package (kfp.local's DockerRunner needs it) is not installed")
    hint = 'start one with: eval "$(docker/start-dockerd.sh)"'
    try:
        client = docker.from_env(timeout=20)
        client.ping()
    except Exception as exc:  # no socket, permission, wrong DOCKER_HOST ...
        _unavailable(f"no Docker daemon answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', 'unset')}: "
                     f"{type(exc).__name__}: {exc}); {hint}")
    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        _unavailable(f"image {tag} is not built; build it with: IMAGES=trainer make images")
    finally:
        client.close()
    return tag


def test_evaluate_component_runs_in_the_trainer_image(tmp_path):
    trainer_image = _trainer_image()

    from kfp import dsl, local
    from kfp.local import config as local_config
    from kfp.dsl import Dataset, Output
    from sklearn.metrics import log_loss, roc_auc_score

    from gdmix_components.evaluate.component import evaluate

    assert evaluate.component_spec.implementation.container.image == trainer_image

    @dsl.component(base_image=trainer_image, install_kfp_package=False)
    def synthetic_scores(rows: int, seed: int, scores: Output[Dataset]):
        """Two Parquet files of label / score (logit) / weight."""
        import os

        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        rng = np.random.default_rng(seed)
        label = rng.integers(0, 2, size=rows)
        score = rng.normal(size=rows) + 0.8 * (2 * label - 1)  # informative, no ties
        weight = rng.uniform(0.5, 2.0, size=rows)
        os.makedirs(scores.path, exist_ok=True)
        half = rows // 2
        for part, rows_of in enumerate((slice(0, half), slice(half, rows))):
            table = pa.table({"label": label[rows_of], "score": score[rows_of], "weight": weight[rows_of]})
            pq.write_table(table, os.path.join(scores.path, f"part-{part:05d}.parquet"))

    @dsl.pipeline(name="gdmix-container-smoke")
    def smoke():
        data = synthetic_scores(rows=ROWS, seed=SEED)
        evaluate(scores=data.outputs["scores"])

    root = tmp_path / "pipeline-root"
    root.mkdir()
    root.chmod(0o777)  # the images run as uid 1000; the bind-mounted root is written from inside
    previous = local_config.LocalExecutionConfig.instance
    try:
        local.init(runner=local.DockerRunner(), pipeline_root=str(root), raise_on_error=True)
        smoke()
    finally:  # other tests run kfp.local with their own runner
        local_config.LocalExecutionConfig.instance = previous

    # what step 1 wrote (the same bind-mounted folder the container used), read here
    import pyarrow.parquet as pq

    parts = sorted(glob.glob(str(root / "**" / "synthetic-scores" / "scores" / "*.parquet"), recursive=True))
    assert len(parts) == 2, parts
    table = pq.read_table(parts[0]).to_pydict()
    for path in parts[1:]:
        for key, values in pq.read_table(path).to_pydict().items():
            table[key] += values
    label, score, weight = (np.asarray(table[k]) for k in ("label", "score", "weight"))
    assert len(label) == ROWS

    metrics_files = glob.glob(str(root / "**" / "evaluate" / "executor_output.json"), recursive=True)
    metrics = _metrics_of(metrics_files)
    expected_auc = roc_auc_score(label, score, sample_weight=weight)
    assert metrics["auc"] == pytest.approx(expected_auc, rel=1e-9, abs=1e-12)
    expected_logloss = log_loss(label, 1.0 / (1.0 + np.exp(-score)), sample_weight=weight)
    assert metrics["logloss"] == pytest.approx(expected_logloss, rel=1e-9)
    assert 0.7 < expected_auc < 0.95  # the data is informative, not degenerate


def _metrics_of(executor_outputs: list[str]) -> dict:
    """The metrics the evaluate task logged (its Output[Metrics] artifact's metadata)."""
    import json

    assert len(executor_outputs) == 1, executor_outputs
    with open(executor_outputs[0]) as handle:
        output = json.load(handle)
    artifacts = output["artifacts"]["metrics"]["artifacts"]
    return artifacts[0]["metadata"]
