"""Launcher of a logistic-regression fixed effect: N local workers, or a TFJob of N workers."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from gdmix_components._shared import component


@component("trainer", launcher=True)
def fixed_effect(config: str, coordinate: str, prepared: Input[Dataset], model: Output[Model],
                 task_config: dsl.TaskConfig, scores: Input[Dataset] = None, previous: Input[Model] = None,
                 overrides: List[str] = [], data_root: str = "", workload_image: str = ""):
    """Offsets from ``scores`` (the score table), warm start from ``previous`` (the last pass)."""
    from gdmix_components._runtime import fixed_effect_launcher

    fixed_effect_launcher(config, coordinate, prepared, model, task_config, scores, previous, overrides, data_root,
                          workload_image)
