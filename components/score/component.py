"""Batch scoring: a trained gdmix model applied to contract data (uid-keyed logits per coordinate)."""

from kfp.dsl import Dataset, Input, Model, Output

from gdmix_components._shared import component


@component("trainer")
def score(model: Input[Model], data: Input[Dataset], scores: Output[Dataset], split: str = "",
          data_root: str = ""):
    """``split`` picks ``<data>/<split>/`` (e.g. the prepared artifact's ``validation``); empty: ``data`` itself."""
    from gdmix.io import fs
    from gdmix.scoring import score_dataset
    from gdmix.stages.locations import claim_location, read_location

    source = fs.join(read_location(data), split) if split else read_location(data)
    summary = score_dataset(read_location(model), source, claim_location(scores, data_root))
    scores.metadata.update({"rows": summary["rows"], **summary.get("metrics", {})})
