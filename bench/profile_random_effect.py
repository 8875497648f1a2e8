"""Where a tiny-entity random effect's time goes (issue 13): a profile of the cold pass.

The coordinate is ``bench.photon``'s large random effect (Photon ML's published shape: 673,373
entities, 2.3 rows each, 16 non-zeros per row out of 200 features), with unpenalised per-entity
intercepts as in GDMix. ``fit_random_effect`` trains every entity from zero (the first, cold
pass) in this process:

* throughput: entities per wall-clock second, median [range] of ``--repeats``, on one thread and
  at the machine's threads divided by its cores (what the issue's goal of 100,000 models/s/core
  counts: idle cores count against us). It includes grouping the rows into entities (the
  layout) and the solves; data generation, scoring and writing are excluded (``bench.photon``
  times the whole job);
* a cProfile of one more run on one thread (batches one at a time, so the profile sees all the
  work): the top entries by own time, and by cumulative time among
  gdmix's own functions, so a change can be judged by where the time moved.

    python -m bench.profile_random_effect [--scale 1.0] [--repeats 3] [--top 15]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import tempfile
from unittest import mock

import pyarrow as pa

from bench import measure
from bench.photon import _game_config, make_data, scaled_shape


def _entries(profile: cProfile.Profile, key: str, top: int, only_ours: bool = False) -> list[dict]:
    """The ``top`` functions by ``key`` (``tottime`` or ``cumulative``) with their calls and seconds."""
    stats = pstats.Stats(profile, stream=io.StringIO())
    rows = []
    for (filename, line, name), (calls, _, own, cumulative, _) in stats.stats.items():
        where = filename.split("/gdmix/")[-1] if "/gdmix/" in filename else os.path.basename(filename)
        if only_ours and "/gdmix/" not in filename:
            continue
        rows.append({"function": f"{where}:{line}({name})", "calls": calls, "own_seconds": round(own, 3),
                     "cumulative_seconds": round(cumulative, 3)})
    field = "own_seconds" if key == "tottime" else "cumulative_seconds"
    return sorted(rows, key=lambda row: -row[field])[:top]


def one_core():
    """Batches solved one at a time (:mod:`gdmix.solvers.parallel` sees a single core)."""
    from gdmix.solvers import parallel

    return mock.patch.object(parallel, "available_cores", lambda: 1)


def _index_map(width: int):
    from gdmix.features.index_map import IndexMap

    names = pa.array([f"f{i:04d}" for i in range(width)])
    return IndexMap(names, pa.array([""] * width))


def run(scale: float = 1.0, repeats: int = 3, top: int = 15, seed: int = 0) -> dict:
    from gdmix.models.coordinates import RandomEffectCoordinate
    from gdmix.models.random_effect import fit_random_effect
    from gdmix.native import entity_kernels as native

    train, _ = make_data(seed, scaled_shape(scale))
    codes = train.entities["re1_id"].codes
    x, y, w, o = train.bags["re1"], train.label, train.weight, train.offset
    spec = _game_config({"train": "-", "validation": "-"}, "-").coordinates[1]
    spec = spec.model_copy(update={"regularize_intercept": False})  # GDMix's per-entity intercepts
    index_map = _index_map(x.shape[1])

    def fit():
        return fit_random_effect(codes, x, y, w, o, spec)

    with one_core():
        (trained, _, _, report), timing = measure.repeat(fit, repeats, threads=1)
    _, machine = measure.repeat(fit, repeats)
    with one_core(), measure.limit_threads(1):  # cProfile sees one thread: all the work on it
        profile = cProfile.Profile()
        profile.enable()
        fit()
        profile.disable()
    passes = _cold_and_warm_passes(RandomEffectCoordinate, spec, train, index_map, repeats)
    rate = measure.rate(len(trained), timing["wall_seconds"])
    cores = os.cpu_count() or 1
    return {
        "benchmark": "profile_random_effect",
        "scale": scale, "rows": int(train.num_rows), "entities_trained": int(len(trained)),
        "what_is_timed": "fit_random_effect, cold (from zero), on one thread (batches one at a time, one BLAS thread) "
                         "and at the machine's threads (batches on every core): the entity layout and the "
                         "solves; data generation, scoring and writing excluded",
        "native_kernel": native.library() is not None,
        "regularize_intercept": False, "l2": spec.l2,
        "timing_1_thread": timing, "timing_machine_threads": machine, "cores": cores,
        "models_per_second_1_thread": rate,
        # the measure: entities per wall-clock second over the machine's cores (idle ones count)
        "models_per_second_per_core": _per_core(len(trained), machine, cores),
        "newton_iterations_mean": report.iterations_mean, "batches": report.batches,
        "passes": passes,
        "profile_top_own_time": _entries(profile, "tottime", top),
        "profile_top_cumulative_gdmix": _entries(profile, "cumulative", top, only_ours=True),
    }


def _per_core(models: int, timing: dict, cores: int) -> dict:
    return {key: value / cores for key, value in measure.rate(models, timing["wall_seconds"]).items()
            if isinstance(value, float)}


def _cold_and_warm_passes(coordinate_type, spec, train, index_map, repeats: int) -> dict:
    """A whole pass of the coordinate as coordinate descent runs it, at the machine's threads:
    the fit (grouping rows, solving), scoring every training row and writing the coefficients
    as Parquet; the fit alone is timed too (in coordinate descent a pass is the fit: the solve
    scores the training rows, and the table is written once, after the last pass). Cold: a new
    coordinate, from zero. Warm: the same coordinate's next pass from the cold model, its layout
    kept, after the offsets moved by a quarter of the cold model's own scores (as when another
    coordinate takes over part of its signal). Settled: one more pass at the warm pass's offsets,
    from its model: every entity already meets the stopping rule, so no Newton step is taken and
    what remains is what any pass pays per entity (reading its rows, checking its gradient,
    writing its answer and scores): the floor under a warm pass."""
    runs = {name: [] for name in ("cold", "warm", "settled")}
    fits = {name: [] for name in runs}
    iterations = {}
    models = 0
    with tempfile.TemporaryDirectory(prefix="gdmix-profile-") as tmp:
        for attempt in range(repeats):
            coordinate = coordinate_type(spec)
            coordinate.begin_passes()  # as coordinate descent: a pass may solve in the last model's arrays

            def one_pass(offsets, initial, name):
                (model, report), fit_timing = measure.timed(lambda: coordinate.fit(train, offsets, initial))
                scores = coordinate.score(model, train)
                coordinate.save(model, f"{tmp}/{name}-{attempt}", index_map)
                fits[name].append(fit_timing)
                iterations[name] = report["iterations_mean"]
                return model, report, scores

            (model, cold, scores), timing = measure.timed(lambda: one_pass(train.offset, None, "cold"))
            runs["cold"].append(timing)
            moved = train.offset + 0.25 * scores
            (model, _, _), timing = measure.timed(lambda: one_pass(moved, model, "warm"))
            runs["warm"].append(timing)
            _, timing = measure.timed(lambda: one_pass(moved, model, "settled"))
            runs["settled"].append(timing)
            models = cold["entities_trained"]

    def combined(timings):
        return {key: measure.summary([run_[key] for run_ in timings]) for key in ("wall_seconds", "cpu_seconds")}

    def over_cold(timings, cold_timings, key):
        return measure.summary([t[key] / c[key] for t, c in zip(timings, cold_timings)])

    cores = os.cpu_count() or 1
    return {
        "what_is_timed": "RandomEffectCoordinate.fit + score of every training row + writing the coefficient table "
                         "(Parquet, local disk), at the machine's threads; the fit alone beside it ('fit'); warm: "
                         "the same coordinate's next pass from the cold model after offsets += 0.25 x the cold "
                         "model's scores; settled: one more pass at the warm offsets from the warm model (no Newton "
                         "step needed: the per-entity floor of any pass)",
        **{name: combined(timings) for name, timings in runs.items()},
        "fit": {name: combined(timings) for name, timings in fits.items()},
        "cold_models_per_second_per_core": _per_core(models, combined(runs["cold"]), cores),
        "warm_over_cold_wall": over_cold(runs["warm"], runs["cold"], "wall_seconds"),
        "settled_over_cold_wall": over_cold(runs["settled"], runs["cold"], "wall_seconds"),
        "fit_over_cold_fit": {name: {key: over_cold(fits[name], fits["cold"], key)
                                     for key in ("wall_seconds", "cpu_seconds")} for name in ("warm", "settled")},
        "newton_iterations_mean": iterations,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(json.dumps(run(args.scale, args.repeats, args.top), indent=2))


if __name__ == "__main__":
    main()
