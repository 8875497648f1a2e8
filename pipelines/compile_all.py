"""Regenerate the checked-in compiled YAML: every component's ``component.yaml`` and the
example pipelines under ``pipelines/compiled/`` (``make compile``; a test fails when stale).

Images are tagged for the local registry (``localhost/gdmix-<role>:<version>``); set
``GDMIX_IMAGE_REGISTRY`` / ``GDMIX_IMAGE_TAG`` when compiling for another registry.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

from kfp import compiler

ROOT = Path(__file__).resolve().parent.parent
COMPONENTS = ("prepare", "fixed_effect", "detext", "random_effect_plan", "random_effect", "update_scores", "evaluate",
              "export_model", "score", "import_photon_model", "export_photon_model")
_MOVIELENS = ROOT / "gdmix" / "examples" / "movielens-100k"
#: the cluster examples launch their jobs into namespace gdmix, as manifests/standalone sets it up
#: (multi-user Kubeflow: run with --set pipeline.namespace=<profile>)
_CLUSTER = ["pipeline.backend=kubernetes", "pipeline.namespace=gdmix"]
#: compiled example -> (config, overrides it is compiled with). Each has its own pipeline name
#: (pipelines uploaded to one KFP must not share one); the ``-kubernetes`` ones launch their
#: distributed steps as TFJob / MPIJob / SparkApplication (``pipeline.backend: kubernetes``).
EXAMPLES = {
    name: (_MOVIELENS / f"{config}.yaml", [f"pipeline.name=gdmix-{name}", *extra])
    for name, config, extra in (
        ("movielens-100k-lr", "lr", []),
        ("movielens-100k-lr-tuned", "lr-tuned", []),
        ("movielens-100k-detext", "detext", []),
        ("movielens-100k-lr-kubernetes", "lr", _CLUSTER),
        ("movielens-100k-detext-kubernetes", "detext", _CLUSTER),
    )
}


def component(stage: str):
    module = importlib.import_module(f"gdmix_components.{stage}.component")
    return getattr(module, stage)


def compile_all(root: Path = ROOT) -> list[Path]:
    from gdmix_pipelines.gdmix_pipeline import compile_pipeline

    written = []
    for stage in COMPONENTS:
        target = root / "components" / stage / "component.yaml"
        target.parent.mkdir(parents=True, exist_ok=True)
        compiler.Compiler().compile(component(stage), str(target))
        written.append(target)
    for name, (config, overrides) in EXAMPLES.items():
        written.append(compile_pipeline(config, root / "pipelines" / "compiled" / f"{name}.yaml", overrides))
    return written


if __name__ == "__main__":
    for path in compile_all(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT):
        print(path)
