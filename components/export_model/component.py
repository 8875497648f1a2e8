"""The trained model in ``gdmix train``'s layout (scorable with ``gdmix score``), with metrics.json."""

from typing import List

from kfp.dsl import Dataset, Input, Model, Output

from gdmix_components._shared import component


@component("trainer")
def export_model(config: str, prepared: Input[Dataset], scores: Input[Dataset], model: Output[Model],
                 overrides: List[str] = [], data_root: str = ""):
    from gdmix.stages.context import stage_config
    from gdmix.stages.locations import claim_location, read_location
    from gdmix.stages.progress import export_model as run

    settings = stage_config(config, overrides, read_location(prepared))
    metrics = run(settings, read_location(scores), claim_location(model, data_root))
    model.metadata["final"] = metrics["final"]
