"""Launcher of a logistic-regression fixed effect: N local workers, or a TFJob of N workers."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._shared import component


@component("trainer", launcher=True)
def fixed_effect(config: str, coordinate: str, prepared: Input[Dataset], model: Output[Model],
                 task_config: dsl.TaskConfig, scores: Input[Dataset] = None, previous: Input[Model] = None,
                 overrides: List[str] = [], data_root: str = "", workload_image: str = ""):
    """Offsets from ``scores`` (the score table), warm start from ``previous`` (the last pass)."""
    import dataclasses

    from gdmix.stages.coordinates import fixed_effect_task
    from gdmix.stages.locations import claim_location, read_location

    model.metadata.update(fixed_effect_task(
        config, overrides, coordinate, read_location(prepared), claim_location(model, data_root),
        read_location(scores) if scores else None, read_location(previous) if previous else None,
        workload_image, dataclasses.asdict(task_config) if task_config else None))
