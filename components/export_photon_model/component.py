"""A gdmix model artifact as Photon ML's Avro, laid out as GDMix wrote it (``<coordinate>/models/``),
for the systems that read those files: a pipeline's end."""

from kfp.dsl import Input, Model, Output

from gdmix_components._shared import component


@component("trainer")
def export_photon_model(model: Input[Model], avro: Output[Model], files: int = 1, data_root: str = ""):
    """``files``: how many files each random effect's entities are spread over."""
    from gdmix.models.photon_transfer import export_model
    from gdmix.stages.locations import claim_location, read_location

    summary = export_model(read_location(model), claim_location(avro, data_root), files=files)
    avro.metadata["coordinates"] = sorted(summary["coordinates"])
