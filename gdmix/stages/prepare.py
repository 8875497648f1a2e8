"""Stage 1: data preparation (Spark) into the prepared artifact."""

from __future__ import annotations

import json

from gdmix.config import validate_config
from gdmix.io import fs
from gdmix.layout import PREP_SUMMARY_FILE
from gdmix.stages.backends import Launch, run_spark_prep, write_job_config
from gdmix.stages.context import check_shape, run_config, with_optional_columns


def prepare(config_text: str, overrides: list[str], output: str, image: str = "", task_config: dict | None = None,
            shape: dict | None = None, log=print) -> dict:
    """Contract datasets, index maps and entity partitions under ``output``; returns prep's summary.

    ``shape``: the structure the running pipeline was compiled for; a run that changes it
    stops here, before any work.
    """
    config = with_optional_columns(run_config(config_text, overrides))
    if shape:
        check_shape(shape, config)
    raw = config.model_dump(mode="json")
    raw["prep"]["output"] = output
    config = validate_config(raw, source="pipeline config")
    launch = Launch.from_config(config, image, task_config)
    job_dir = output.rstrip("/") + ".job"
    config_uri = write_job_config(config, job_dir) if launch.backend != "local" else ""
    try:
        run_spark_prep(config, config_uri, launch, "prep", log)
    finally:
        fs.remove(job_dir)
    return json.loads(fs.read_text(fs.join(output, PREP_SUMMARY_FILE)))
