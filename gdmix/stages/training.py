"""Training one coordinate of one coordinate-descent pass, from the score table's offsets.

A fixed effect runs ``gdmix fixed-effect`` or ``gdmix detext`` (:mod:`gdmix.jobs.specs`) on
``pipeline.fixed_effect_workers`` workers (local processes, a TFJob or an MPIJob). A random
effect first writes its offsets next to its partitions (:func:`plan_random_effect`), then
partition groups train in parallel tasks (:func:`train_partition_group`, idempotent: finished
partitions are skipped on a retry), each writing into the same coordinate output.
"""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pyarrow as pa

from gdmix.config import DetextConfig, FixedEffectConfig, GdmixConfig, RandomEffectConfig
from gdmix.errors import DataError
from gdmix.io import fs
from gdmix.io.uid_join import lookup
from gdmix.jobs.learned_l2 import PartitionSource, learned_l2
from gdmix.jobs.partition_data import coordinate_index_map
from gdmix.jobs.random_effect import train_partitions
from gdmix.jobs.specs import DetextJobSpec, FixedEffectJobSpec
from gdmix.layout import (
    JOB_FILE, PARTITION_MANIFEST, PLAN_FILE, SPLITS, coordinate_done_uri, learned_l2_uri, partition_name, partitions_uri,
)
from gdmix.stages.backends import Launch, run_workers, write_job_config
from gdmix.ledger import Ledger


def partition_groups(partitions: int, groups: int) -> list[str]:
    """``a:b`` ranges splitting ``partitions`` into at most ``groups`` near-equal groups."""
    bounds = np.linspace(0, partitions, min(groups, partitions) + 1).round().astype(int)
    return [f"{a}:{b}" for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def train_fixed_effect(config: GdmixConfig, name: str, output: str, scores: str | None, previous: str | None,
                       launch: Launch, log=print) -> dict:
    """A fixed effect (logistic regression or DeText) on the prepared data, offsets from the
    score table, warm start from ``previous``."""
    spec = config.coordinate(name, FixedEffectConfig, DetextConfig)
    deep = isinstance(spec, DetextConfig)
    job_dir = output.rstrip("/") + ".job"
    job = {"config": write_job_config(config, job_dir), "coordinate": name, "output": output,
           "index_maps": config.prep.output, "warm_start": previous or None}
    if scores:
        table = Ledger.load(scores)
        offsets = fs.join(job_dir, "offsets")
        fs.write_parquet(table.offsets(name), offsets)
        job["offsets"] = offsets
        if deep and "validation" in table.splits:
            fs.write_parquet(table.offsets(name, "validation"), fs.join(job_dir, "validation-offsets"))
            job["validation_offsets"] = fs.join(job_dir, "validation-offsets")
    command = DetextJobSpec(**job) if deep else FixedEffectJobSpec(**job)
    try:
        run_workers(command.to_argv(), config.pipeline.fixed_effect_workers, launch, f"{name}-{command.command}", log,
                    horovod=deep and uses_horovod(spec, launch))
    finally:
        fs.remove(job_dir)
    return json.loads(fs.read_text(fs.join(output, JOB_FILE)))


def fixed_effect_step(config_text: str, overrides: list[str], name: str, prepared, model, scores, previous,
                      data_root: str, image: str, task_config) -> None:
    """A fixed-effect (or DeText) pipeline step on its artifacts (anything with ``uri`` and
    ``metadata``); ``task_config`` is KFP's TaskConfig passthrough (a dataclass), or None."""
    import dataclasses

    from gdmix.stages.context import stage_config
    from gdmix.stages.locations import claim_location, read_location

    config = stage_config(config_text, overrides, read_location(prepared))
    passthrough = dataclasses.asdict(task_config) if dataclasses.is_dataclass(task_config) else task_config
    summary = train_fixed_effect(config, name, claim_location(model, data_root),
                                 read_location(scores) if scores else None,
                                 read_location(previous) if previous else None,
                                 Launch.from_config(config, image, passthrough))
    model.metadata.update({"coordinate": name, "workers": summary["workers"],
                           "backend": summary.get("backend", "tf"), "iterations": summary["solver"].get("iterations")})


def uses_horovod(spec: DetextConfig, launch: Launch) -> bool:
    """``distribution: auto`` means Horovod in a cluster (an MPIJob) and locally when it is
    installed, else TF collective workers."""
    if spec.distribution != "auto":
        return spec.distribution == "horovod"
    return launch.backend == "kubernetes" or importlib.util.find_spec("horovod") is not None


def plan_random_effect(config: GdmixConfig, name: str, output: str, scores: str | None, previous: str | None = None,
                       log=print) -> list[str]:
    """Start the coordinate's output: its offsets beside every partition and, under ``l2: auto``,
    the ``l2`` every partition group will train at (searched here over all partitions, see
    :mod:`gdmix.jobs.learned_l2`, starting from the previous pass's); returns the partition groups."""
    spec = config.coordinate(name, RandomEffectConfig)
    root = partitions_uri(config.prep.output, name)
    manifest = json.loads(fs.read_text(fs.join(root, PARTITION_MANIFEST)))
    fs.remove(output)
    if scores:
        table = Ledger.load(scores)
        for split in SPLITS:
            if split in table.splits:
                _partition_offsets(table.offsets(name, split), fs.join(root, split),
                                   fs.join(output, "offsets", split), manifest["partitions"])
    groups = partition_groups(manifest["partitions"], config.pipeline.partition_groups)
    plan = {"coordinate": spec.name, "partitions": manifest["partitions"], "groups": groups, "offsets": bool(scores)}
    if spec.l2_auto is not None:
        source = PartitionSource(spec, config.prep.output, coordinate_index_map(config.prep.output, spec),
                                 fs.join(output, "offsets") if scores else None, previous)
        plan["l2"] = learned_l2(source, output, manifest["partitions"], log=log)["l2"]
    fs.write_text_atomic(fs.join(output, PLAN_FILE), fs.to_json(plan))
    return groups


#: what ``l2: auto`` learned, as the pipeline shows it (model metadata, KFP Metrics as ``learned_<key>``)
LEARNED_L2_KEYS = ("l2", "prior_variance", "intercept_l2", "intercept_prior_variance")


def learned_l2_of(output: str) -> dict | None:
    """A planned random effect's ``l2: auto`` result (None for a fixed ``l2``)."""
    plan = json.loads(fs.read_text(fs.join(output, PLAN_FILE)))
    return json.loads(fs.read_text(learned_l2_uri(output, plan["coordinate"]))) if "l2" in plan else None


def _partition_offsets(offsets: pa.Table, rows_root: str, out_root: str, partitions: int) -> None:
    """Offsets laid out like the partitions (``partition=<p>/``: uid, offset); a row without
    one is an error, never dropped."""
    uids, values = offsets.column("uid").to_numpy(), offsets.column("offset").to_numpy()
    for partition in range(partitions):
        source = fs.join(rows_root, partition_name(partition))
        if not fs.exists(source) or not fs.list_parquet_files(source):
            continue
        wanted = fs.read_parquet_dir(source, columns=["uid"]).column("uid").to_numpy()
        fs.write_parquet(pa.table({"uid": wanted, "offset": lookup(uids, values, wanted, source, "score")}),
                         fs.join(out_root, partition_name(partition)))


def train_partition_group(config: GdmixConfig, name: str, output: str, partitions: str, previous: str | None,
                          log=print) -> dict:
    """Train partitions ``a:b`` of a planned random effect into ``output`` (skipping finished ones)."""
    plan = json.loads(fs.read_text(fs.join(output, PLAN_FILE)))
    offsets = fs.join(output, "offsets") if plan["offsets"] else None
    return train_partitions(config, name, partitions, output, offsets=offsets, warm_start=previous, log=log)


def check_complete(config: GdmixConfig, name: str, output: str) -> dict:
    """The coordinate's completion record: ``job.json`` (fixed effect) or ``done/<name>.json``."""
    spec = config.coordinate(name)
    marker = coordinate_done_uri(output, name) if isinstance(spec, RandomEffectConfig) else fs.join(output, JOB_FILE)
    if not fs.exists(marker):
        raise DataError(f"coordinate '{name}' did not finish: {marker} is missing", path=output)
    return json.loads(fs.read_text(marker))
