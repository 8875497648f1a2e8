"""Start a random-effect coordinate: its offsets laid out like its entity partitions and, under
``l2: auto``, the ``l2`` learned over all its partitions (from the previous pass's)."""

from typing import List

from kfp.dsl import Dataset, Input, Model, Output

from gdmix_components._shared import component


@component("trainer")
def random_effect_plan(config: str, coordinate: str, prepared: Input[Dataset], model: Output[Model],
                       scores: Input[Dataset] = None, previous: Input[Model] = None, overrides: List[str] = [],
                       data_root: str = "") -> List[str]:
    """Returns the partition groups (``a:b``) the trainers take."""
    from gdmix.stages.context import stage_config
    from gdmix.stages.training import LEARNED_L2_KEYS, learned_l2_of, plan_random_effect
    from gdmix.stages.locations import claim_location, read_location

    settings = stage_config(config, overrides, read_location(prepared))
    model.metadata["coordinate"] = coordinate
    groups = plan_random_effect(settings, coordinate, claim_location(model, data_root),
                                read_location(scores) if scores else None,
                                read_location(previous) if previous else None)
    learned = learned_l2_of(read_location(model))
    if learned is not None:
        model.metadata.update({key: learned[key] for key in LEARNED_L2_KEYS if key in learned})
    return groups
