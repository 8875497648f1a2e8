"""Data preparation (Spark): raw or contract data -> contract datasets, index maps, entity partitions."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Output

from gdmix_components._shared import component


@component("spark", launcher=True)
def prepare(config: str, prepared: Output[Dataset], task_config: dsl.TaskConfig, overrides: List[str] = [],
            train_data: str = "", validation_data: str = "", data_root: str = "", workload_image: str = "",
            shape: str = "", test_data: str = ""):
    """Spark ``local[*]`` in this task, or a SparkApplication (``pipeline.backend: kubernetes``)."""
    import dataclasses
    import json

    from gdmix.stages.context import data_overrides
    from gdmix.stages.locations import claim_location
    from gdmix.stages.prepare import prepare as run

    settings = list(overrides) + data_overrides(config, train_data, validation_data, test_data)
    summary = run(config, settings, claim_location(prepared, data_root), image=workload_image,
                  task_config=dataclasses.asdict(task_config) if task_config else None,
                  shape=json.loads(shape) if shape else None)
    prepared.metadata.update({"train_rows": summary.get("train_rows"), "validation_rows": summary.get("validation_rows")})
    if summary.get("test_rows") is not None:
        prepared.metadata["test_rows"] = summary["test_rows"]
