"""A model in Photon ML's Avro (GDMix's or Photon ML's output on the object store) as a gdmix
model artifact: scorable by the ``score`` step, as a pipeline's start."""

from typing import List

from kfp.dsl import Model, Output

from gdmix_components._shared import component


@component("trainer")
def import_photon_model(source: str, config: str, model: Output[Model], overrides: List[str] = [],
                        data_root: str = ""):
    """``source``: the URI of GDMix's ``output_dir`` or of Photon ML's model folder; ``config``:
    the configuration whose coordinates (names, entities, feature bags) the models are."""
    from gdmix.models.photon_transfer import import_model
    from gdmix.stages.context import run_config
    from gdmix.stages.locations import claim_location

    summary = import_model(source, claim_location(model, data_root), run_config(config, overrides))
    model.metadata["coordinates"] = sorted(summary["coordinates"])
