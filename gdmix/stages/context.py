"""The configuration a stage runs with: the user's YAML, its runtime overrides, and the
prepared data in place of the raw input.

Every stage receives the same YAML text and override list (the pipeline's runtime parameters)
and rebuilds the same :class:`~gdmix.config.GdmixConfig`. After ``prepare``, the data section
points at the prepared contract datasets and ``prep.output`` at the prepared artifact, so the
library's jobs (``gdmix fixed-effect``, ``gdmix train-random-effect``) run unchanged on it.

A config without a ``prep`` section describes data already in the contract (as the MovieLens
example); the pipeline still prepares it, with a prep section derived here that copies the
contract columns and bags as they are, so index maps and entity partitions come from the same
Spark job either way.
"""

from __future__ import annotations

from gdmix.config import GdmixConfig, load_config_text, validate_config
from gdmix.errors import ConfigError
from gdmix.io import fs


def run_config(config_text: str, overrides: list[str] | None = None) -> GdmixConfig:
    """The user's configuration with the run's overrides, a prep section guaranteed."""
    config = load_config_text(config_text, list(overrides or ()), source="pipeline config")
    if config.prep is None:
        raw = config.model_dump(mode="json")
        raw["prep"] = derived_prep(config)
        config = validate_config(raw, source="pipeline config")
    return config


def shape_of(config: GdmixConfig) -> dict:
    """What a compiled pipeline's structure was built from."""
    return {
        "passes": config.passes,
        "coordinates": [[c.name, c.type, getattr(c, "entity", None), getattr(c, "partitions", None)]
                        for c in config.coordinates],
        "pipeline.partition_groups": config.pipeline.partition_groups,
        "pipeline.parallelism": config.pipeline.parallelism,
        "pipeline.backend": config.pipeline.backend,  # it chooses the launchers' images
        "prep.partitions": config.prep.partitions if config.prep else None,
    }


def check_shape(compiled: dict, run: GdmixConfig) -> None:
    """A run's configuration must keep the compiled pipeline's shape (it may change anything else)."""
    current = shape_of(run)
    changed = [key for key in compiled if compiled[key] != current.get(key)]
    if changed:
        raise ConfigError(f"this run changes {', '.join(changed)}, which the compiled pipeline was built from; "
                          "compile the pipeline again for this configuration")


def derived_prep(config: GdmixConfig) -> dict:
    """A prep section for data already in the contract: the same columns, every bag as is."""
    data = config.data
    bags = sorted({c.feature_bag for c in config.coordinates if c.feature_bag})
    prep = {
        "input": {"path": data.train, "format": "parquet"},
        "output": fs.join(config.output, "prepared"),
        "uid": data.uid,
        "label": {"column": data.label},
        "weight": data.weight,
        "offset": data.offset,
        "bags": {bag: {"bags": [bag]} for bag in bags},
    }
    if data.validation:
        prep["validation_input"] = {"path": data.validation, "format": "parquet"}
    if data.test:
        prep["test_input"] = {"path": data.test, "format": "parquet"}
    return prep


def with_optional_columns(config: GdmixConfig) -> GdmixConfig:
    """Fill in the weight and offset columns that the contract takes by default when present
    (the derived prep must name them explicitly); reads only the Parquet schema."""
    data = config.data
    if config.prep is None or config.prep.input.path != data.train or (data.weight and data.offset):
        return config
    names = set(fs.parquet_schema(data.train).names)
    raw = config.model_dump(mode="json")
    for key in ("weight", "offset"):
        if raw["prep"][key] is None and key in names:
            raw["prep"][key] = key
    return validate_config(raw, source="pipeline config")


def prepared_config(config: GdmixConfig, prepared: str) -> GdmixConfig:
    """The configuration of every stage after ``prepare``: data and prep output are the prepared artifact."""
    raw = config.model_dump(mode="json")
    held_out = {split: fs.join(prepared, split) for split in ("validation", "test")}
    raw["data"] = {"train": fs.join(prepared, "train")} | {
        split: uri if fs.exists(uri) else None for split, uri in held_out.items()}
    raw["prep"]["output"] = prepared
    return validate_config(raw, source="pipeline config")


def stage_config(config_text: str, overrides: list[str] | None, prepared: str) -> GdmixConfig:
    """What every stage after ``prepare`` runs with."""
    return prepared_config(run_config(config_text, overrides), prepared)


def data_overrides(config_text: str, train_data: str, validation_data: str, test_data: str = "") -> list[str]:
    """The pipeline's data URI parameters as overrides of the raw input (``prep.input`` when the
    config prepares raw data, else ``data``)."""
    has_prep = load_config_text(config_text, source="pipeline config").prep is not None
    overrides = []
    if train_data:
        overrides.append(f"prep.input.path={train_data}" if has_prep else f"data.train={train_data}")
    if validation_data:
        overrides.append(f"prep.validation_input.path={validation_data}" if has_prep
                         else f"data.validation={validation_data}")
    if test_data:
        overrides.append(f"prep.test_input.path={test_data}" if has_prep else f"data.test={test_data}")
    return overrides
