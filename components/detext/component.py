"""Launcher of a DeText fixed effect: Horovod ranks (horovodrun locally, an MPIJob in a cluster)
or TF collective workers (local processes, a TFJob), per the coordinate's ``distribution``."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from gdmix_components._shared import component


@component("detext", launcher=True)
def detext(config: str, coordinate: str, prepared: Input[Dataset], model: Output[Model],
           task_config: dsl.TaskConfig, scores: Input[Dataset] = None, previous: Input[Model] = None,
           overrides: List[str] = [], data_root: str = "", workload_image: str = ""):
    """Offsets from ``scores`` let later passes re-fit the deep model on the random effects' residuals."""
    from gdmix_components._runtime import fixed_effect_launcher

    fixed_effect_launcher(config, coordinate, prepared, model, task_config, scores, previous, overrides, data_root,
                          workload_image)
