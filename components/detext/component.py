"""Launcher of a DeText fixed effect: Horovod ranks (horovodrun locally, an MPIJob in a cluster)
or TF collective workers (local processes, a TFJob), per the coordinate's ``distribution``."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components._shared import component


@component("detext", launcher=True)
def detext(config: str, coordinate: str, prepared: Input[Dataset], model: Output[Model],
           task_config: dsl.TaskConfig, scores: Input[Dataset] = None, previous: Input[Model] = None,
           overrides: List[str] = [], data_root: str = "", workload_image: str = ""):
    """Offsets from ``scores`` let later passes re-fit the deep model on the random effects' residuals."""
    import dataclasses

    from gdmix.stages.coordinates import fixed_effect_task
    from gdmix.stages.locations import claim_location, read_location

    model.metadata.update(fixed_effect_task(
        config, overrides, coordinate, read_location(prepared), claim_location(model, data_root),
        read_location(scores) if scores else None, read_location(previous) if previous else None,
        workload_image, dataclasses.asdict(task_config) if task_config else None))
