"""The container images of the pipeline's stages, by role.

One image per kind of work, so a stage pulls only what it runs: ``spark`` (JDK + pyspark, data
prep and offsets), ``trainer`` (TensorFlow: fixed effects, random effects, scoring,
evaluation), ``detext`` (TensorFlow + Horovod + OpenMPI) and ``launcher`` (kfp, the Kubernetes
client: creates and watches TFJob / MPIJob / SparkApplication resources). Every image holds
this package at the same version, so a component's function runs unchanged in any of them.

``GDMIX_IMAGE_REGISTRY`` (default ``localhost``, what ``make images`` tags) and
``GDMIX_IMAGE_TAG`` (default the package version) choose where the cluster pulls them from;
they are read when a pipeline is compiled.
"""

from __future__ import annotations

import os

from gdmix import __version__

ROLES = ("spark", "trainer", "detext", "launcher")


def image(role: str) -> str:
    """``<registry>/gdmix-<role>:<tag>``, e.g. ``localhost/gdmix-trainer:0.1.0``."""
    if role not in ROLES:
        raise ValueError(f"unknown image role '{role}' (one of: {', '.join(ROLES)})")
    registry = os.environ.get("GDMIX_IMAGE_REGISTRY", "localhost").rstrip("/")
    tag = os.environ.get("GDMIX_IMAGE_TAG", __version__)
    return f"{registry}/gdmix-{role}:{tag}"
