"""Cluster rehearsal: gdmix's Kubernetes path against a fake API server and fake operators that
run the rendered jobs as Docker containers (see rehearsal/README.md).

Public API: :class:`FakeCluster` (rehearsal.cluster), :class:`S3Container` (rehearsal.objectstore).
Imports are lazy so ``import rehearsal`` works without Docker.
"""

from __future__ import annotations

__all__ = ["FakeCluster", "S3Container", "RehearsalUnavailable"]


def __getattr__(name: str):
    if name == "FakeCluster":
        from rehearsal.cluster import FakeCluster

        return FakeCluster
    if name == "S3Container":
        from rehearsal.objectstore import S3Container

        return S3Container
    if name == "RehearsalUnavailable":
        from rehearsal.dockerenv import RehearsalUnavailable

        return RehearsalUnavailable
    raise AttributeError(name)
