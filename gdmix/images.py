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
import re

from gdmix import __version__

ROLES = ("spark", "trainer", "detext", "launcher")

# docker's reference grammar, loosely: host[:port] then lower-case path components; a tag
_REGISTRY = re.compile(r"[A-Za-z0-9.-]+(?::[0-9]+)?(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def image(role: str) -> str:
    """``<registry>/gdmix-<role>:<tag>``, e.g. ``localhost/gdmix-trainer:0.1.0``.

    The one place that names the images: ``make images`` tags them with it, ``make push`` pushes
    them under it and the compiled pipelines pull them by it (``make ... REGISTRY=... TAG=...``
    sets ``GDMIX_IMAGE_REGISTRY`` / ``GDMIX_IMAGE_TAG`` for all three). Empty values count as unset.
    """
    if role not in ROLES:
        raise ValueError(f"unknown image role '{role}' (one of: {', '.join(ROLES)})")
    registry = (os.environ.get("GDMIX_IMAGE_REGISTRY") or "localhost").strip().rstrip("/")
    tag = (os.environ.get("GDMIX_IMAGE_TAG") or __version__).strip()
    if not _REGISTRY.fullmatch(registry):
        raise ValueError(f"GDMIX_IMAGE_REGISTRY={registry!r} is not a registry[/namespace] (e.g. ghcr.io/acme)")
    if not _TAG.fullmatch(tag):
        raise ValueError(f"GDMIX_IMAGE_TAG={tag!r} is not a valid image tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    return f"{registry}/gdmix-{role}:{tag}"
