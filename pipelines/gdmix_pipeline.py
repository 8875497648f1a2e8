"""A GDMix configuration -> a KFP v2 pipeline.

The configuration fixes the pipeline's shape: its coordinates in order, the number of passes,
and per random effect the partition groups trained in parallel (``pipeline.partition_groups``,
at most ``pipeline.parallelism`` at a time). Everything else is a runtime parameter: the whole
configuration text (so hyper-parameters can change per run), ``overrides`` (``dotted.key=value``
items, as ``gdmix train --set``), the data URIs, and ``data_root``, an object-store prefix for
the stages' data when the artifact store should hold only small artifacts. A run whose
overrides change the shape fails fast and says so.

    prepare -> per pass, per coordinate: [fixed_effect | detext | random_effect_plan -> ParallelFor(random_effect)]
            -> update_scores -> evaluate (validation; and test, with a test split)
            -> export_model -> score (validation, test) -> evaluate

A held-out test split (``data.test``, ``prep.test_input`` or ``prep.split.test_fraction``) goes
through every step beside validation: it is scored, kept in the score table, evaluated after
every coordinate and at the end, and never selects anything.
"""

import json
from pathlib import Path
from typing import List

import yaml
from kfp import compiler, dsl, kubernetes

from components._shared import for_backend
from components.detext.component import detext
from components.evaluate.component import evaluate
from components.export_model.component import export_model
from components.fixed_effect.component import fixed_effect
from components.prepare.component import prepare
from components.random_effect.component import random_effect
from components.random_effect_plan.component import random_effect_plan
from components.score.component import score
from components.update_scores.component import update_scores
from gdmix.config import (
    DetextConfig, FixedEffectConfig, GdmixConfig, RandomEffectConfig, apply_override, load_config_text,
)
from gdmix.images import image
from gdmix.stages.context import run_config, shape_of
from gdmix.stages.training import partition_groups
from gdmix.stages.locations import SECRET_NAME_ENV  # names the Secret in every step (see _secured)

# what the object-store Secret's keys become in every step's environment
SECRET_KEYS = {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY",
               "AWS_ENDPOINT_URL": "AWS_ENDPOINT_URL"}
RANDOM_EFFECT_RETRIES = 2  # a retried trainer skips the partitions it already committed


def pipeline_name(config: GdmixConfig) -> str:
    """``pipeline.name``, else ``gdmix-`` and the coordinates' names."""
    if config.pipeline.name:
        return config.pipeline.name
    names = "-".join(c.name for c in config.coordinates)
    return f"gdmix-{names}"[:100].replace("_", "-").lower()


def build_pipeline(config_text: str, overrides: list[str] | None = None):
    """The pipeline function (a ``@dsl.pipeline``) for this configuration.

    ``overrides`` change what the pipeline is compiled for (e.g. ``pipeline.backend=kubernetes``):
    they are written into the default configuration text, so every run keeps that shape and a
    run's own ``overrides`` parameter stays free.
    """
    config_text = with_overrides(config_text, overrides)
    compiled = run_config(config_text)
    shape = _Shape(compiled)
    prepare_step, fixed_effect_step, detext_step = (for_backend(c, shape.backend) for c in (prepare, fixed_effect, detext))
    # one line: KFP writes parameter defaults into the compiled file's header comment verbatim,
    # and a multi-line default would break that file (JSON is YAML, so stages read it as is)
    default_config = json.dumps(yaml.safe_load(config_text), separators=(",", ":"))

    @dsl.pipeline(name=pipeline_name(compiled), description="GDMix: fixed and random effects by coordinate descent")
    def gdmix_pipeline(config: str = default_config, overrides: List[str] = [], train_data: str = "",
                       validation_data: str = "", data_root: str = "", test_data: str = "") -> dsl.Model:
        common = {"config": config, "overrides": overrides}
        prep = _secured(shape, prepare_step(train_data=train_data, validation_data=validation_data, test_data=test_data,
                                            data_root=data_root,
                                       workload_image=image("spark"), shape=json.dumps(shape_of(compiled)),
                                       **common), shape.launcher_role("spark")).set_display_name("prepare data")
        prepared = prep.outputs["prepared"]
        table, latest = None, {}
        for pass_number in range(1, shape.passes + 1):
            for coordinate in shape.coordinates:
                label = f"pass {pass_number} {coordinate.name}"
                optional = {"scores": table} if table is not None else {}
                if isinstance(coordinate, (FixedEffectConfig, DetextConfig)):
                    previous = {"previous": latest[coordinate.name]} if coordinate.name in latest else {}
                    deep = isinstance(coordinate, DetextConfig)
                    role = "detext" if deep else "trainer"
                    task = _secured(shape, (detext_step if deep else fixed_effect_step)(
                        coordinate=coordinate.name, prepared=prepared, data_root=data_root,
                        workload_image=image(role), **optional, **previous, **common), shape.launcher_role(role))
                    task.set_display_name(f"{label}: {'DeText' if deep else 'fixed effect'}")
                    model, collected = task.outputs["model"], {}
                else:
                    plan = _secured(shape, random_effect_plan(coordinate=coordinate.name, prepared=prepared,
                                                              data_root=data_root, **optional, **common))
                    plan.set_display_name(f"{label}: offsets")
                    model = plan.outputs["model"]
                    previous = {"previous": latest[coordinate.name]} if coordinate.name in latest else {}
                    with dsl.ParallelFor(shape.groups[coordinate.name], parallelism=shape.parallelism) as group:
                        trainer = _secured(shape, random_effect(coordinate=coordinate.name, partitions=group,
                                                                prepared=prepared, model=model, **previous,
                                                                **common))
                        trainer.set_display_name(f"{label}: partitions").set_retry(RANDOM_EFFECT_RETRIES)
                    collected = {"partition_summaries": dsl.Collected(trainer.output)}
                update = _secured(shape, update_scores(coordinate=coordinate.name, pass_number=pass_number,
                                                       prepared=prepared, model=model, data_root=data_root,
                                                       **optional, **collected, **common))
                update.set_display_name(f"{label}: scores")
                table, latest[coordinate.name] = update.outputs["table"], model
                _secured(shape, evaluate(scores=table, title=f"GDMix after {label}", entities=shape.entities)
                         ).set_display_name(f"{label}: evaluation")
                if shape.has_test:
                    _secured(shape, evaluate(scores=table, split="test", title=f"GDMix after {label}, test data",
                                             entities=shape.entities)).set_display_name(f"{label}: test evaluation")
        exported = _secured(shape, export_model(prepared=prepared, scores=table, data_root=data_root, **common))
        exported.set_display_name("export model")
        if shape.has_validation:
            scored = _secured(shape, score(model=exported.outputs["model"], data=prepared, split="validation",
                                           data_root=data_root)).set_display_name("score validation data")
            _secured(shape, evaluate(scores=scored.outputs["scores"], title="GDMix model on validation data",
                                     entities=shape.entities)).set_display_name("final evaluation")
        if shape.has_test:
            scored = _secured(shape, score(model=exported.outputs["model"], data=prepared, split="test",
                                           data_root=data_root)).set_display_name("score test data")
            _secured(shape, evaluate(scores=scored.outputs["scores"], split="test", title="GDMix model on test data",
                                     entities=shape.entities)).set_display_name("final test evaluation")
        return exported.outputs["model"]

    return gdmix_pipeline


class _Shape:
    """What the compiled structure depends on."""

    def __init__(self, config: GdmixConfig):
        self.passes = config.passes
        self.backend = config.pipeline.backend
        self.coordinates = list(config.coordinates)
        self.parallelism = config.pipeline.parallelism
        self.secret = config.pipeline.object_store_secret
        self.entities = sorted({c.entity for c in config.coordinates if isinstance(c, RandomEffectConfig)})
        self.has_validation = bool(config.prep.validation_input or config.prep.split)
        self.has_test = bool(config.prep.test_input or (config.prep.split and config.prep.split.test_fraction > 0))
        self.groups = {c.name: partition_groups(c.partitions or config.prep.partitions, config.pipeline.partition_groups)
                       for c in config.coordinates if isinstance(c, RandomEffectConfig)}


    def launcher_role(self, workload: str) -> str:
        """A launcher step's image: in a cluster it only creates jobs (the light launcher image);
        with local backends it runs the work itself."""
        return "launcher" if self.backend == "kubernetes" else workload


def _secured(shape: _Shape, task, role: str = "trainer"):
    """The task's image (``GDMIX_IMAGE_REGISTRY`` / ``_TAG`` as they are now, not when the
    component modules were imported) and the object-store credentials from the Kubernetes
    Secret (by reference, never inlined).

    The Secret is required (``optional=False``): without it the kubelet refuses to start the
    step and names the Secret, instead of a step that starts and fails later on an anonymous
    object-store request. The Secret's name also travels as ``GDMIX_OBJECT_STORE_SECRET`` so
    a step whose credentials are empty can say which Secret to fix.
    """
    task.container_spec.image = image(role)
    if shape.secret:
        kubernetes.use_secret_as_env(task, shape.secret, SECRET_KEYS, optional=False)
        task.set_env_variable(SECRET_NAME_ENV, shape.secret)
    return task


def with_overrides(config_text: str, overrides: list[str] | None) -> str:
    """The configuration text with ``dotted.key=value`` overrides written into it (YAML)."""
    if not overrides:
        return config_text
    raw = yaml.safe_load(config_text)
    for assignment in overrides:
        apply_override(raw, assignment)
    return yaml.safe_dump(raw, sort_keys=False)


def compile_pipeline(config_path, output, overrides: list[str] | None = None) -> Path:
    """Compile the pipeline of a configuration file to ``output`` (YAML), with ``overrides``
    (``dotted.key=value``) applied to what it is compiled for."""
    text = Path(config_path).read_text()
    load_config_text(text, list(overrides or ()), source=str(config_path))  # validate before building
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(text, overrides), str(output))
    return output


def structure(compiled) -> dict:
    """The compiled YAML's documents (the pipeline spec, then the Kubernetes platform spec)."""
    documents = list(yaml.safe_load_all(Path(compiled).read_text()))
    return {"pipeline": documents[0], "platform": documents[1] if len(documents) > 1 else None,
            "summary": json.dumps(sorted(documents[0].get("deploymentSpec", {}).get("executors", {})))}
