"""Where every output lives: the file and folder names that runs, pipeline steps, ``gdmix score``
and users' downstream jobs agree on. A name changes here or nowhere.

A trained model (``gdmix train``, the pipeline's ``export_model``)::

    <output>/model.json                       what the coordinates are (their full configs)
    <output>/index_maps/<bag>/*.parquet       index, name, term
    <output>/models/<coordinate>/*.parquet    coefficients (see gdmix.models.linear)
    <output>/scores/<coordinate>/<split>/     uid, label, weight, score (cumulative), coordinate_score
    <output>/metrics.json                     written last: its presence marks a complete run

Prepared data (``gdmix prep``)::

    <prep>/<split>/                           the contract's columns, features as bags
    <prep>/index_maps/<bag>/
    <prep>/partitions/<coordinate>/manifest.json and <split>/partition=<p>/
    <prep>/prep.json                          the summary, written last

A coordinate's job output (one step of the pipeline)::

    <job>/job.json                            a fixed effect's (or DeText's) completion record
    <job>/plan.json                           a random effect's plan (partition groups, offsets)
    <job>/done/<coordinate>.json              a random effect's completion record
    <job>/done/<coordinate>/partition=<p>.json   one finished partition (a retry skips it)
    <job>/learned_l2/<coordinate>.json        a random effect's ``l2: auto`` result (before any partition)

The score table between pipeline steps: ``<table>/<split>/`` and ``<table>/table.json``.
"""

from __future__ import annotations

from gdmix.io import fs

#: the splits a run reads, in order; only ``train`` is required. Index maps come from train.
SPLITS = ("train", "validation", "test")
#: the held-out splits every coordinate's result reports (None when the run has no such split)
HELD_OUT = ("validation", "test")

SPEC_FILE = "model.json"
METRICS_FILE = "metrics.json"
#: a fixed-effect or DeText job's completion record, written by its chief after the commit
JOB_FILE = "job.json"
#: a random effect's plan in the pipeline: its partition groups and whether offsets were written
PLAN_FILE = "plan.json"
#: the score table's own record: its splits, each coordinate's latest model, the metrics history
SCORE_TABLE_FILE = "table.json"
PREP_SUMMARY_FILE = "prep.json"
PARTITION_MANIFEST = "manifest.json"


def index_map_uri(root: str, bag: str) -> str:
    return fs.join(root, "index_maps", bag)


def model_uri(root: str, coordinate: str) -> str:
    return fs.join(root, "models", coordinate)


def coordinate_scores_uri(root: str, coordinate: str) -> str:
    """A coordinate's scores of every split (``<split>/`` below it)."""
    return fs.join(root, "scores", coordinate)


def scores_uri(root: str, coordinate: str, split: str) -> str:
    return fs.join(coordinate_scores_uri(root, coordinate), split)


def partition_name(partition: int) -> str:
    """A partition's folder (Hive style, so Parquet readers see ``partition`` as a column)."""
    return f"partition={partition}"


def partitions_uri(prep_root: str, coordinate: str, split: str | None = None) -> str:
    """A random effect's partitioned rows (``split`` None: the coordinate's folder, with its manifest)."""
    root = fs.join(prep_root, "partitions", coordinate)
    return fs.join(root, split) if split else root


def coordinate_done_uri(output: str, coordinate: str) -> str:
    return fs.join(output, "done", f"{coordinate}.json")


def learned_l2_uri(output: str, coordinate: str) -> str:
    return fs.join(output, "learned_l2", f"{coordinate}.json")


def partition_done_uri(output: str, coordinate: str, partition: int) -> str:
    return fs.join(output, "done", coordinate, f"{partition_name(partition)}.json")
