"""Where a kfp.local pipeline's seconds go, step by step: process start-up and imports against work.

What is timed (issue 13):

* the MovieLens-100K demo pipeline, ``gdmix pipeline run examples/movielens-100k/lr.yaml --local``
  on a prebuilt seed-42 split (what ``make demo`` runs after building the data), as a fresh
  process tree. Every Python process of the run carries a probe (``bench/step_probe``, a
  ``sitecustomize`` on PYTHONPATH for this benchmark only) that records, per process: its start
  (from /proc), when its KFP component body started and ended, the wall seconds of its imports
  (outermost imports, so nested ones count once) and which of tensorflow / pyspark / torch it
  loaded. Per pipeline task: wall seconds of its process, of which *start-up + imports* (process
  start up to the component body, plus the imports made inside the body: Python, kfp's executor,
  gdmix, TensorFlow, pyspark), *work* (the rest of the body) and *exit* (after the body, up to the
  process's atexit). The fixed effect's TF workers are listed apart (start-up + imports vs work).
  *Outside tasks*: the run's wall seconds not covered by any task process (kfp.local's
  bookkeeping, ``gdmix``'s own start-up, compiling the pipeline, copying the exported model);
* the small job's pipeline / in-process ratio: a 2-coordinate (global + per_user), 2-pass
  configuration on 1,500 rows of ``gdmix.example_data.synthetic`` (2 fixed-effect workers, 2
  partition groups), ``gdmix pipeline run --local`` against ``gdmix train``, both fresh processes
  without the probe, and their final validation AUCs (which must agree); then the same pipeline
  once more per repeat with the probe, for its per-task table;
* optionally (``--demo``) ``gdmix demo --workdir FRESH`` itself, the data built from the RecBole
  wheel already cached (the download is never timed).

Wall seconds come with CPU seconds of the process tree (``bench.measure.run_process``); repeats are
summarised by median and range.

    python -m bench.pipeline_steps [--repeats 3] [--demo] [--demo-repeats 1] [--source WHEEL] [--table]
                                   [--before TREE]

``--before TREE`` times an older version too, alternating with this one repeat by repeat (the
machine is shared: both see the same load); TREE holds ``gdmix``, ``gdmix_components`` and
``gdmix_pipelines`` (e.g. links into ``git archive`` of the older commit), first on PYTHONPATH.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import yaml

from bench import measure

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "movielens-100k" / "lr.yaml"
PROBE = Path(__file__).resolve().parent / "step_probe"
SMALL_ROWS = 1500
#: kfp.local's folder of one run: the pipeline's name and a timestamp
RUN_FOLDER = re.compile(r".+-\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}-\d+$")


# running a command with the probe


def _env(tree: str | None = None) -> dict:
    """A subprocess's environment: machine threads, this repository importable; with ``tree``, a
    folder holding ``gdmix``, ``gdmix_components`` and ``gdmix_pipelines`` (e.g. links into an
    exported older commit) that is imported instead, so that two versions are timed alternately
    under the same load."""
    env = measure.repo_env(measure.machine_threads_env())
    if tree:
        env["PYTHONPATH"] = str(tree) + os.pathsep + env["PYTHONPATH"]
    return env


def _probed_run(command: list[str], probe_dir: Path, cwd: Path, tree: str | None) -> tuple[dict, list[dict]]:
    """Run ``command`` with every Python process probed (the probe first on PYTHONPATH); its
    timing and the probe records."""
    probe_dir.mkdir(parents=True)
    env = _env(tree)
    env["PYTHONPATH"] = str(PROBE) + os.pathsep + env["PYTHONPATH"]
    env["GDMIX_STEP_PROBE_DIR"] = str(probe_dir)
    timing = measure.run_process(command, env=env, cwd=str(cwd))
    records = sorted((json.loads(path.read_text()) for path in probe_dir.glob("*.json")), key=lambda r: r["started"])
    return timing, records


# reading the probe records


def _task_label(record: dict) -> str | None:
    """A task's place in the run, from its executor output path below the run's folder
    (``first-pass/random-effect-plan``; ParallelFor iterations folded into ``for-loop``); None for
    a process that is not a KFP task."""
    output = record.get("output_file")
    if not output:
        return None
    parts = Path(output).parent.parts
    runs = [k for k, part in enumerate(parts) if RUN_FOLDER.match(part)]
    parts = parts[runs[-1] + 1:] if runs else parts[-1:]
    return "/".join("for-loop" if part.startswith("for-loop-") else part for part in parts)


def _split(record: dict) -> dict:
    """Wall seconds of one process split into start-up + imports, work and exit."""
    wall = record["ended"] - record["started"]
    if record.get("body"):
        body_start, body_end = record["body"]
        startup = body_start - record["started"] + record["import_seconds_in_body"]
        work = body_end - body_start - record["import_seconds_in_body"]
        exit_ = record["ended"] - body_end
    else:  # a worker or the parent: everything after its imports is work
        startup = record["probe"] - record["started"] + record["import_seconds"]
        work, exit_ = wall - startup, 0.0
    return {"wall_seconds": wall, "startup_imports_seconds": startup, "work_seconds": work, "exit_seconds": exit_,
            "import_seconds": record["import_seconds"], "cpu_seconds": record["cpu_seconds"], "heavy": record["heavy"]}


def _union_seconds(intervals: list[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals``."""
    total, end = 0.0, None
    for start, stop in sorted(intervals):
        if end is None or start > end:
            total, end = total + stop - start, stop
        elif stop > end:
            total, end = total + stop - end, stop
    return total


def _role(record: dict) -> str:
    """What a process without a KFP body is: a fixed-effect TF worker, the ``gdmix`` parent, other."""
    argv = record.get("argv") or [""]
    if record.get("tf_worker"):
        return "fixed-effect TF worker"
    if argv[0].endswith(("gdmix/__main__.py", "bin/gdmix")):
        return "gdmix pipeline run (kfp.local parent)"
    return f"other: {Path(argv[0]).name}"


def steps_of_run(records: list[dict], run_wall: float) -> dict:
    """Per task (and per other process) the split of its seconds; the run's seconds outside every task."""
    tasks, others = {}, {}
    for record in records:
        label = _task_label(record)
        (tasks if label is not None else others).setdefault(label or _role(record), []).append(_split(record))
    covered = _union_seconds([(r["started"], r["ended"]) for r in records if _task_label(r) is not None])
    return {"tasks": tasks, "other_processes": others, "outside_tasks_seconds": run_wall - covered,
            "task_process_seconds_covered": covered}


def _summarise_steps(runs: list[dict]) -> dict:
    """Median and range over repeats of every task's split (a label's several processes, such as a
    random effect's partition groups, are summed within a run)."""
    keys = ("wall_seconds", "startup_imports_seconds", "work_seconds", "exit_seconds", "cpu_seconds")
    table = {}
    for group in ("tasks", "other_processes"):
        labels = list(dict.fromkeys(label for run in runs for label in run[group]))  # in the order they ran
        for label in labels:
            per_run = [run[group].get(label, []) for run in runs]
            table[label] = {key: measure.summary([sum(row[key] for row in rows) for rows in per_run]) for key in keys}
            table[label]["processes"] = max(len(rows) for rows in per_run)
            table[label]["heavy_modules"] = sorted({m for rows in per_run for row in rows for m in row["heavy"]})
    return table


# the jobs


def _final_auc(output: Path) -> float:
    return json.loads((output / "metrics.json").read_text())["final"]["validation"]["auc"]


def _sets(*assignments: str) -> list[str]:
    return [a for s in assignments for a in ("--set", s)]


def movielens_steps(root: Path, data: Path, repeats: int, tree: str | None = None) -> dict:
    """The demo pipeline on prebuilt data, probed, ``repeats`` times."""
    runs, timings, aucs = [], [], []
    for k in range(max(1, repeats)):
        output = root / f"ml-pipeline-{k}"
        command = measure.python_module(
            "gdmix", "pipeline", "run", str(EXAMPLE), "--local", "--workdir", str(root / f"ml-root-{k}"),
            *_sets(f"data.train={data / 'train'}", f"data.validation={data / 'validation'}", f"output={output}"))
        timing, records = _probed_run(command, root / f"ml-probe-{k}", root, tree)
        runs.append(steps_of_run(records, timing["wall_seconds"]))
        timings.append(timing)
        aucs.append(_final_auc(output))
    return {**_probed_record("gdmix pipeline run examples/movielens-100k/lr.yaml --local (prebuilt seed-42 split)",
                             timings, runs), "final_validation_auc": aucs}


def _probed_record(command: str, timings: list[dict], runs: list[dict]) -> dict:
    """Probed repeats of one pipeline as a record: wall and CPU, the seconds outside every task
    and the per-task table."""
    return {"command": command,
            "wall_seconds": measure.summary([t["wall_seconds"] for t in timings]),
            "cpu_seconds": measure.summary([t["cpu_seconds"] for t in timings]),
            "outside_tasks_seconds": measure.summary([r["outside_tasks_seconds"] for r in runs]),
            "steps": _summarise_steps(runs)}


def small_config(data: Path, output: Path) -> dict:
    """The small job: global + per_user, 2 passes, 2 fixed-effect workers, 2 partition groups."""
    return {
        "data": {"train": str(data / "train"), "validation": str(data / "validation")},
        "output": str(output), "passes": 2,
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
            {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user_id",
             "partitions": 4},
        ],
        "pipeline": {"partition_groups": 2, "parallelism": 2, "fixed_effect_workers": 2},
    }


def _small_data(root: Path) -> Path:
    """The small job's data (1,500 synthetic rows), written once per benchmark run."""
    from gdmix.example_data.synthetic import generate_synthetic, write_synthetic

    data = root / "small-data"
    if not data.exists():
        write_synthetic(str(data), generate_synthetic(SMALL_ROWS, {"user_id": 30, "item_id": 10}, global_features=12,
                                                      global_nnz=4, re_features=4, re_nnz=2, seed=3))
    return data


def small_job_ratio(root: Path, repeats: int, tree: str | None = None) -> dict:
    """Pipeline (kfp.local) against ``gdmix train`` on the small 2-pass job, both fresh processes
    (unprobed: the ratio is of the plain commands)."""
    data = _small_data(root)
    env = _env(tree)
    sides = {}
    for side in ("pipeline", "gdmix_train"):
        timings, aucs = [], []
        for k in range(max(1, repeats)):
            output = root / f"small-{side}-{k}"
            config = root / f"small-{side}-{k}.yaml"
            config.write_text(yaml.safe_dump(small_config(data, output)))
            command = (measure.python_module("gdmix", "pipeline", "run", str(config), "--local", "--workdir",
                                             str(root / f"small-root-{k}")) if side == "pipeline"
                       else measure.python_module("gdmix", "train", str(config)))
            timings.append(measure.run_process(command, env=env, cwd=str(root)))
            aucs.append(_final_auc(output))
        sides[side] = {"command": " ".join(command[1:]).replace(str(root), "TMP"),
                       "wall_seconds": measure.summary([t["wall_seconds"] for t in timings]),
                       "cpu_seconds": measure.summary([t["cpu_seconds"] for t in timings]),
                       "final_validation_auc": aucs}
    pipeline, in_process = (sides[side]["wall_seconds"] for side in ("pipeline", "gdmix_train"))
    aucs = sides["pipeline"]["final_validation_auc"] + sides["gdmix_train"]["final_validation_auc"]
    return {"rows": SMALL_ROWS, "config": small_config(Path("DATA"), Path("OUT")), **sides,
            "ratio_of_medians": pipeline["median"] / in_process["median"],
            "ratio_per_repeat": measure.summary([p / t for p, t in zip(pipeline["runs"], in_process["runs"])]),
            "auc_spread": max(aucs) - min(aucs)}


def small_job_steps(root: Path, repeats: int, tree: str | None = None) -> dict:
    """The small job's pipeline once more per repeat, probed: where its seconds go, task by task."""
    data = _small_data(root)
    runs, timings = [], []
    for k in range(max(1, repeats)):
        output = root / f"small-probed-{k}"
        config = root / f"small-probed-{k}.yaml"
        config.write_text(yaml.safe_dump(small_config(data, output)))
        command = measure.python_module("gdmix", "pipeline", "run", str(config), "--local", "--workdir",
                                        str(root / f"small-probed-root-{k}"))
        timing, records = _probed_run(command, root / f"small-probe-{k}", root, tree)
        runs.append(steps_of_run(records, timing["wall_seconds"]))
        timings.append(timing)
    return _probed_record("gdmix pipeline run SMALL.yaml --local (probed)", timings, runs)


def demo_seconds(root: Path, repeats: int, tree: str | None = None) -> dict:
    """``gdmix demo --workdir FRESH`` (make demo after make setup; the RecBole wheel already cached)."""
    env = _env(tree)
    timings, aucs = [], []
    for k in range(max(1, repeats)):
        workdir = root / f"demo-{k}"
        timings.append(measure.run_process(measure.python_module("gdmix", "demo", "--workdir", str(workdir)),
                                           env=env, cwd=str(root)))
        aucs.append(_final_auc(workdir / "model"))
        shutil.rmtree(workdir, ignore_errors=True)
    return {"command": "gdmix demo --workdir FRESH",
            "wall_seconds": measure.summary([t["wall_seconds"] for t in timings]),
            "cpu_seconds": measure.summary([t["cpu_seconds"] for t in timings]), "final_validation_auc": aucs}


def run(repeats: int = 3, source: str | None = None, demo: bool = False, demo_repeats: int = 1,
        small: bool = True, tree: str | None = None) -> dict:
    """Every measurement of the module docstring (of ``tree``'s gdmix, see :func:`_env`); the
    benchmark's JSON record."""
    from gdmix.example_data.movielens import build_movielens_100k, fetch_recbole_wheel

    source = source or fetch_recbole_wheel()  # cached once, outside every clock
    with tempfile.TemporaryDirectory(prefix="gdmix-pipeline-steps-") as tmp:
        root = Path(tmp)
        build_movielens_100k(str(root / "ml"), source=source, seed=42)
        result = {"benchmark": "pipeline_steps", "machine": measure.machine(), "tree": tree or str(ROOT),
                  "threads": measure.thread_settings(measure.machine_threads_env()),
                  "what_is_timed": __doc__.split("What is timed (issue 13):")[1].split("Wall seconds")[0].strip(),
                  "movielens_pipeline": movielens_steps(root, root / "ml", repeats, tree)}
        if small:
            result["small_two_pass"] = small_job_ratio(root, repeats, tree)
            result["small_two_pass_steps"] = small_job_steps(root, repeats, tree)
        if demo:
            result["demo"] = demo_seconds(root, demo_repeats, tree)
    return result


def compare(trees: dict[str, str | None], repeats: int, **options) -> dict:
    """:func:`run` of every tree (label -> tree, None: this repository), one repeat of each in
    turn, ``repeats`` times: on a shared machine the versions see the same load."""
    runs = {label: [] for label in trees}
    for _ in range(max(1, repeats)):
        for label, tree in trees.items():
            runs[label].append(run(1, tree=tree, **options))
    return {label: _merged(values) for label, values in runs.items()}


def _merged(records: list):
    """Records of single repeats as one: summaries over all their runs, lists joined, the small
    job's ratio recomputed from the merged medians."""
    first = records[0]
    if isinstance(first, dict) and "runs" in first and "median" in first:
        return measure.summary([value for record in records for value in record["runs"]])
    if isinstance(first, dict):
        merged = {key: _merged([r[key] for r in records if key in r]) for key in dict.fromkeys(
            key for record in records for key in record)}
        if "ratio_of_medians" in merged:
            merged["ratio_of_medians"] = merged["pipeline"]["wall_seconds"]["median"] / \
                merged["gdmix_train"]["wall_seconds"]["median"]
            merged["auc_spread"] = max(r["auc_spread"] for r in records)
        return merged
    if isinstance(first, list):
        return [item for record in records for item in record]
    return first


def table(result: dict, job: str = "movielens_pipeline") -> str:
    """The per-step table of ``job`` (``movielens_pipeline`` or ``small_two_pass_steps``) as
    Markdown (medians, ranges in brackets)."""
    def cell(stat):
        return f"{stat['median']:.2f} [{stat['min']:.2f}-{stat['max']:.2f}]"

    lines = ["| task | processes | wall s | start-up + imports s | work s | exit s | CPU s | loads |",
             "|---|---|---|---|---|---|---|---|"]
    for label, row in result[job]["steps"].items():
        lines.append(f"| {label} | {row['processes']} | {cell(row['wall_seconds'])} | "
                     f"{cell(row['startup_imports_seconds'])} | {cell(row['work_seconds'])} | "
                     f"{cell(row['exit_seconds'])} | {cell(row['cpu_seconds'])} | "
                     f"{', '.join(sorted(set(row['heavy_modules'])))} |")
    pipeline = result[job]
    lines.append(f"| **whole run** | | {cell(pipeline['wall_seconds'])} | | | | {cell(pipeline['cpu_seconds'])} | |")
    lines.append(f"| outside every task (kfp.local, gdmix start-up, compile) | | "
                 f"{cell(pipeline['outside_tasks_seconds'])} | | | | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--demo", action="store_true", help="also time gdmix demo --workdir FRESH")
    parser.add_argument("--demo-repeats", type=int, default=1)
    parser.add_argument("--no-small", action="store_true", help="skip the small 2-pass job's ratio")
    parser.add_argument("--source", help="the RecBole wheel (default: the cached one)")
    parser.add_argument("--table", action="store_true", help="print the per-step Markdown table after the JSON")
    parser.add_argument("--before", metavar="TREE",
                        help="also time TREE's gdmix (gdmix, gdmix_components, gdmix_pipelines), one repeat of "
                             "each version in turn; the record is then {'before': ..., 'after': ...}")
    args = parser.parse_args()
    options = {"source": args.source, "demo": args.demo, "demo_repeats": args.demo_repeats, "small": not args.no_small}
    if args.before:
        result = compare({"before": args.before, "after": None}, args.repeats, **options)
    else:
        result = {"after": run(args.repeats, **options)}
    print(json.dumps(result if args.before else result["after"], indent=2))
    if args.table:
        for label, record in result.items():
            for job in ("movielens_pipeline", "small_two_pass_steps"):
                if job in record:
                    print(f"\n{label}, {job}:\n{table(record, job)}")


if __name__ == "__main__":
    main()
