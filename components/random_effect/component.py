"""A random-effect partition trainer: partitions ``a:b`` of a planned coordinate, one at a time."""

from typing import List

from kfp.dsl import Dataset, Input, Model

from gdmix_components._shared import component


@component("trainer")
def random_effect(config: str, coordinate: str, partitions: str, prepared: Input[Dataset], model: Input[Model],
                  previous: Input[Model] = None, overrides: List[str] = []) -> str:
    """Commits each partition into the plan's output; a retry skips finished partitions.
    Returns this group's summary (JSON)."""
    import json

    from gdmix.stages.context import stage_config
    from gdmix.stages.training import train_partition_group
    from gdmix.stages.locations import read_location

    settings = stage_config(config, overrides, read_location(prepared))
    summary = train_partition_group(settings, coordinate, read_location(model), partitions,
                                    read_location(previous) if previous else None)
    return json.dumps(summary)
