"""Spark preparation, offsets and partitioned random-effect training (real local Spark)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from gdmix.config import validate_config
from gdmix.dataset import to_dataset
from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.contract import ContractColumns, read_contract_table
from gdmix.models.random_effect import fit_random_effect
from gdmix.prep.run import run_prep
from gdmix.io.score_avro import write_gdmix_scores
from gdmix.prep.offsets import join_offsets

ROWS = 3000
HANG_GUARD = 300


def _raw(seed=0) -> pa.Table:
    rng = np.random.default_rng(seed)
    user = np.minimum(rng.zipf(1.4, ROWS), 400)  # power-law entity sizes
    item = rng.integers(0, 40, ROWS)
    age = rng.integers(18, 70, ROWS).astype(float)
    age[::17] = 0.0  # zeros are left out of bags
    truth = rng.normal(size=401)[user] + 0.3 * (item % 3)
    rating = np.clip(np.round(3 + truth + rng.normal(size=ROWS)), 1, 5).astype(np.int64)
    return pa.table({"id": np.arange(ROWS, dtype=np.int64) * 11 + 5, "rating": rating, "age": age,
                     "gender": rng.choice(["M", "F"], ROWS), "user_id": user.astype(np.int64),
                     "item_id": item.astype(np.int64)})


def _config(root: Path, raw_path: str, fmt: str = "parquet", shuffle: int = 4, **prep) -> dict:
    return {
        "data": {"train": str(root / "prepared" / "train"), "validation": str(root / "prepared" / "validation")},
        "output": str(root / "model"),
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
            {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user",
             "max_rows": 60, "min_rows": 2, "partitions": 5},
        ],
        "prep": {
            "input": {"path": raw_path, "format": fmt},
            "output": str(root / "prepared"),
            "uid": "id",
            "label": {"column": "rating", "threshold": 3},
            "bags": {"global": {"numeric": ["age"], "categorical": ["gender"]},
                     "per_user": {"categorical": ["gender", "item_id"]}},
            "min_feature_count": 2,
            "split": {"validation_fraction": 0.2, "seed": 3},
            "spark": {"master": "local[2]", "driver_memory": "2g", "shuffle_partitions": shuffle},
            **prep,
        },
    }


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prep")
    (root / "raw").mkdir()
    raw = _raw()
    pq.write_table(raw, root / "raw" / "part-0.parquet")
    raw_config = _config(root, str(root / "raw"))
    # Spark's event log: how many queries and jobs prep ran (test_prep_runs_few_spark_queries)
    raw_config["prep"]["spark"]["conf"] = {"spark.eventLog.enabled": "true", "spark.eventLog.dir": str(root / "events"),
                                           "spark.eventLog.compress": "false"}
    (root / "events").mkdir()
    config = validate_config(raw_config)
    summary = run_prep(config, log=lambda m: None)
    return root, raw, config, summary


def _read(path) -> pa.Table:
    return fs.read_parquet_dir(str(path))


def _expected_bags(row: dict) -> dict:
    """The reference transform of one raw row (what the docs of PrepConfig and BagSpec say)."""
    glob = ([("age", "", row["age"])] if row["age"] != 0 else []) + [("gender", row["gender"], 1.0)]
    per_user = [("gender", row["gender"], 1.0), ("item_id", str(row["item_id"]), 1.0)]
    return {"global": glob, "per_user": per_user}


def test_contract_output_equals_the_in_memory_reference(prepared):
    root, raw, config, summary = prepared
    train, validation = _read(root / "prepared" / "train"), _read(root / "prepared" / "validation")
    assert train.num_rows + validation.num_rows == ROWS and summary["train_rows"] == train.num_rows
    assert 0.15 < validation.num_rows / ROWS < 0.25
    assert not set(train.column("uid").to_pylist()) & set(validation.column("uid").to_pylist())
    by_uid = {r["id"]: r for r in raw.to_pylist()}
    train_uids = set(train.column("uid").to_pylist())
    # index maps: features in at least min_feature_count = 2 training rows
    for bag in ("global", "per_user"):
        counts = {}
        for uid in train_uids:
            for name, term, _ in _expected_bags(by_uid[uid])[bag]:
                counts[(name, term)] = counts.get((name, term), 0) + 1
        kept = sorted(k for k, c in counts.items() if c >= 2)
        index_map = IndexMap.load(str(root / "prepared" / "index_maps" / bag))
        assert list(zip(index_map.names.to_pylist(), index_map.terms.to_pylist())) == kept
        assert summary["bags"][bag]["features"] == len(kept)
        for table in (train, validation):
            for row in table.select(["uid", "label", bag]).to_pylist():
                source = by_uid[row["uid"]]
                assert row["label"] == float(source["rating"] > 3)
                expected = [f for f in _expected_bags(source)[bag] if (f[0], f[1]) in set(kept)]
                assert sorted((f["name"], f["term"], f["value"]) for f in row[bag]) == sorted(expected)
    read_contract_table(str(root / "prepared" / "train"), ContractColumns(entities=("user_id",),
                                                                         bags=("global", "per_user")))


def test_partitions_are_balanced_complete_and_flag_the_sample(prepared):
    root, raw, config, summary = prepared
    base = root / "prepared" / "partitions" / "per_user"
    manifest = json.loads((base / "manifest.json").read_text())
    train = _read(root / "prepared" / "train")
    rows = []
    for p in range(5):
        part = _read(base / "train" / f"partition={p}").to_pandas()
        part["partition"] = p
        rows.append(part)
        stats = manifest["partition_stats"][p]
        assert stats["rows"] == len(part) and stats["active_rows"] == int(part["active"].sum())
    import pandas as pd

    rows = pd.concat(rows)
    assert sorted(rows["uid"]) == sorted(train.column("uid").to_pylist())  # no row lost or doubled
    assert rows.groupby("user_id")["partition"].nunique().max() == 1  # an entity lives in one partition
    counts = rows.groupby("user_id").size()
    active = rows.groupby("user_id")["active"].sum()
    expected = np.where(counts >= 2, np.minimum(counts, 60), 0)
    assert np.array_equal(active.loc[counts.index].to_numpy(), expected)
    assert counts.max() > 60  # the sample cap was exercised
    loads = rows.groupby("partition")["active"].sum()
    assert loads.max() <= 1.2 * loads.mean()
    validation = _read(root / "prepared" / "validation")
    validation_rows = sum(_read(base / "validation" / f"partition={p}").num_rows for p in range(5)
                          if (base / "validation" / f"partition={p}").exists())
    assert validation_rows == validation.num_rows


def test_prep_does_not_depend_on_spark_partitioning_or_input_format(prepared, tmp_path, monkeypatch):
    """The same outputs from Avro, other shuffle partitions and, the input taken for a large one,
    Spark actions one at a time (the first run, a small input, runs them two at a time)."""
    root, raw, _, _ = prepared
    import fastavro

    from gdmix.prep import run, spark

    assert spark.small_inputs([str(root / "raw")]) and not spark.small_inputs([])
    monkeypatch.setattr(spark, "SMALL_INPUT_BYTES", 0)
    at_a_time, ordered_map = [], run.ordered_map
    monkeypatch.setattr(run, "ordered_map", lambda *a, workers, **k: at_a_time.append(workers) or ordered_map(
        *a, workers=workers, **k))

    (tmp_path / "raw").mkdir()
    schema = {"type": "record", "name": "r", "fields": [
        {"name": "id", "type": "long"}, {"name": "rating", "type": "long"}, {"name": "age", "type": "double"},
        {"name": "gender", "type": "string"}, {"name": "user_id", "type": "long"}, {"name": "item_id", "type": "long"}]}
    with open(tmp_path / "raw" / "part-0.avro", "wb") as handle:
        fastavro.writer(handle, schema, raw.to_pylist())
    config = validate_config(_config(tmp_path, str(tmp_path / "raw"), fmt="avro", shuffle=7))
    run_prep(config, log=lambda m: None)
    assert at_a_time and set(at_a_time) == {1}
    for split in ("train", "validation"):
        ours = _read(tmp_path / "prepared" / split).sort_by("uid")
        theirs = _read(root / "prepared" / split).sort_by("uid")
        assert ours.column("uid").equals(theirs.column("uid"))
        assert ours.column("per_user").to_pylist() == theirs.column("per_user").to_pylist()
    for p in range(5):
        ours = _read(tmp_path / "prepared" / "partitions" / "per_user" / "train" / f"partition={p}").sort_by("uid")
        theirs = _read(root / "prepared" / "partitions" / "per_user" / "train" / f"partition={p}").sort_by("uid")
        assert ours.select(["uid", "active"]).equals(theirs.select(["uid", "active"]))


def _train_random_effect(config_path: Path, output: Path, *extra, env=None):
    command = [sys.executable, "-m", "gdmix", "train-random-effect", str(config_path), "--coordinate", "per_user",
               "--output", str(output), *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=HANG_GUARD,
                          env=dict(os.environ, **(env or {})))


def _models(output: Path) -> dict:
    table = _read(output / "models" / "per_user")
    return {(r["entity"], r["name"], r["term"]): r["value"] for r in table.to_pylist()}


def _active_rows(root: Path, config):
    """Every active training row of per_user, all partitions at once (the in-memory reference)."""
    base = root / "prepared" / "partitions" / "per_user" / "train"
    index_map = IndexMap.load(str(root / "prepared" / "index_maps" / "per_user"))
    table = read_contract_table(str(base), ContractColumns(entities=("user_id",), bags=("per_user",), extra=("active",)))
    data = to_dataset(table, {"per_user": index_map}, ["user_id"])
    active = np.flatnonzero(table.table.column("active").to_numpy(zero_copy_only=False))
    users = data.entities["user_id"]
    return (users, active, (users.codes[active], data.bags["per_user"][active], data.label[active],
                            data.weight[active], data.offset[active]))


def test_partitioned_training_matches_in_memory_and_survives_interruption(prepared, tmp_path):
    root, _, config, _ = prepared
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    whole = _train_random_effect(path, tmp_path / "whole", "--workers", "2")
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert json.loads((tmp_path / "whole" / "done" / "per_user.json").read_text())["partitions"] == 5

    # the in-memory reference: all active rows at once (entities are independent problems)
    spec = config.coordinates[1]
    users, _, rows = _active_rows(root, config)
    codes, intercepts, coef, _ = fit_random_effect(*rows, spec.model_copy(update={"min_rows": 1, "max_rows": None}))
    ids = users.strings().take(codes).to_pylist()
    reference = {(e, "(INTERCEPT)", ""): b for e, b in zip(ids, intercepts)}
    models = _models(tmp_path / "whole")
    assert {k for k in models if k[1] == "(INTERCEPT)"} == set(reference)
    for key, value in reference.items():
        assert abs(models[key] - value) < 1e-9
    scored = sum(_read(tmp_path / "whole" / "scores" / "per_user" / "train" / f"partition={p}").num_rows
                 for p in range(5))
    assert scored == len(users.codes)  # every row scored, active or passive

    # killed after its second partition, then rerun: the same models, finished partitions skipped
    died = _train_random_effect(path, tmp_path / "again", env={"GDMIX_FAULT_AFTER_PARTITIONS": "2"})
    assert died.returncode == 42
    assert len(list((tmp_path / "again" / "done" / "per_user").glob("partition=*.json"))) == 2
    resumed = _train_random_effect(path, tmp_path / "again")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["skipped"] == [0, 1]
    assert _models(tmp_path / "again") == models


def _learned_on_two_workers(prepared, tmp_path, l2) -> tuple[dict, Path, dict, str]:
    """``train-random-effect --workers 2`` of per_user with ``l2``; checks that the recorded
    search equals gdmix train's on the same rows (every ridge, evidence, solves) and that the
    partitions trained at it. Returns the record, the config file, the raw config and the log."""
    root, _, config, _ = prepared
    raw = config.model_dump(mode="json")
    raw["coordinates"][1]["l2"] = l2
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    two = _train_random_effect(path, tmp_path / "two", "--workers", "2")
    assert two.returncode == 0, two.stderr[-3000:]
    record = json.loads((tmp_path / "two" / "learned_l2" / "per_user.json").read_text())
    assert record["l2_search_workers"] == 2

    spec = validate_config(raw).coordinates[1]
    users, _, rows = _active_rows(root, config)
    codes, intercepts, _, report = fit_random_effect(*rows, spec.model_copy(update={"min_rows": 1, "max_rows": None}))
    for key in ("l2", "intercept_l2"):
        assert (key in record) == (getattr(report, key) is not None)
        if key in record:
            assert record[key] == pytest.approx(getattr(report, key), rel=1e-9)
    assert record["log_evidence"] == pytest.approx(report.log_evidence, rel=1e-10)
    assert record["l2_evaluations"] == report.l2_evaluations
    models = _models(tmp_path / "two")
    for entity, intercept in zip(users.strings().take(codes).to_pylist(), intercepts):
        assert abs(models[(entity, "(INTERCEPT)", "")] - intercept) < 1e-6
    return record, path, raw, two.stdout + two.stderr


def test_partitioned_l2_auto_searches_over_all_partitions_like_gdmix_train(prepared, tmp_path):
    """l2: auto partition by partition: two workers reduce their partitions' evidence into one
    search, which finds gdmix train's l2 on the same rows; every partition trains at it, and a
    rerun after a kill trains at the recorded l2 without searching again."""
    root, _, config, _ = prepared
    record, path, raw, _ = _learned_on_two_workers(prepared, tmp_path, "auto")
    summary = json.loads((tmp_path / "two" / "done" / "per_user.json").read_text())
    assert summary["l2"] == record["l2"] and summary["l2_evaluations"] >= 3
    learned = pq.read_schema(next((tmp_path / "two" / "models" / "per_user" / "partition=0").glob("*.parquet")))
    assert float(learned.metadata[b"gdmix.l2"]) == record["l2"]  # a warm start's search starts there

    # one process, every partition read again at every evaluation (nothing cached): the same search
    from gdmix.jobs import learned_l2 as search

    source = search.PartitionSource(validate_config(raw).coordinates[1], str(root / "prepared"), IndexMap.load(
        str(root / "prepared" / "index_maps" / "per_user")), None, None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(search, "SEARCH_CACHE_BYTES", 0)
        uncached = search.learned_l2(source, str(tmp_path / "uncached"), 5, log=lambda message: None)
    assert uncached["l2"] == pytest.approx(record["l2"], rel=1e-12)
    assert uncached["l2_evaluations"] == record["l2_evaluations"]
    # a warm start's search starts from its l2: the record of a partitioned output or a model's metadata
    assert search.previous_ridges(str(tmp_path / "two"), "per_user") == (record["l2"], None)
    (tmp_path / "two" / "learned_l2" / "per_user.json").unlink()
    assert search.previous_ridges(str(tmp_path / "two"), "per_user") == (record["l2"], None)
    assert search.previous_ridges(str(tmp_path / "nothing"), "per_user") == (None, None)

    died = _train_random_effect(path, tmp_path / "again", env={"GDMIX_FAULT_AFTER_PARTITIONS": "2"})
    assert died.returncode == 42
    (tmp_path / "again" / "learned_l2" / "per_user.json").write_text(json.dumps(record | {"l2": 3.0}))
    resumed = _train_random_effect(path, tmp_path / "again")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "learned l2" not in resumed.stderr + resumed.stdout  # the recorded l2, no second search
    assert json.loads((tmp_path / "again" / "done" / "per_user.json").read_text())["l2"] == 3.0


def test_partitioned_per_group_l2_auto_learns_both_ridges_like_gdmix_train(prepared, tmp_path):
    """l2: {auto: true, per_group: true} partition by partition: the workers' search finds gdmix
    train's (l2, intercept_l2) on the same rows, every partition trains at both, and both travel
    with the models for a warm start's search."""
    record, _, _, log = _learned_on_two_workers(prepared, tmp_path, {"auto": True, "per_group": True})
    assert record["intercept_prior_variance"] == pytest.approx(1.0 / record["intercept_l2"])
    assert "intercept l2" in log
    learned = pq.read_schema(next((tmp_path / "two" / "models" / "per_user" / "partition=0").glob("*.parquet")))
    assert float(learned.metadata[b"gdmix.intercept_l2"]) == record["intercept_l2"]

    from gdmix.jobs import learned_l2 as search

    assert search.previous_ridges(str(tmp_path / "two"), "per_user") == (record["l2"], record["intercept_l2"])
    (tmp_path / "two" / "learned_l2" / "per_user.json").unlink()
    assert search.previous_ridges(str(tmp_path / "two"), "per_user") == (record["l2"], record["intercept_l2"])


def test_offsets_join_never_drops_a_row(prepared, tmp_path):
    root, _, config, _ = prepared
    train = _read(root / "prepared" / "train")
    uids = train.column("uid").to_numpy()
    (tmp_path / "scores").mkdir()
    pq.write_table(pa.table({"uid": uids[1:], "coordinate_score": np.full(len(uids) - 1, 0.25)}),
                   tmp_path / "scores" / "part-0.parquet")
    with pytest.raises(DataError, match=f"1 train rows of 'per_user' have no score.*uid {uids[0]}"):
        join_offsets(config, "per_user", [str(tmp_path / "scores")], str(tmp_path / "offsets"), log=lambda m: None)
    lenient = config.model_copy(update={"prep": config.prep.model_copy(update={"missing_offsets": "zero"})})
    messages = []
    summary = join_offsets(lenient, "per_user", [str(tmp_path / "scores")], str(tmp_path / "offsets"),
                           log=messages.append)
    assert summary["missing"]["train"] == 1 and any("1 train rows have no score" in m for m in messages)
    offsets = fs.read_parquet_dir(str(tmp_path / "offsets" / "train"))
    assert offsets.num_rows == train.num_rows
    values = dict(zip(offsets.column("uid").to_pylist(), offsets.column("offset").to_pylist()))
    assert values[int(uids[0])] == 0.0 and values[int(uids[1])] == 0.25

    # a coordinate GDMix scored (its score Avro) counts with its own score, beside our Parquet
    (tmp_path / "gdmix").mkdir()
    write_gdmix_scores(str(tmp_path / "gdmix"), uids, np.full(len(uids), 9.0), np.full(len(uids), 0.5), None,
                       np.ones(len(uids)))
    join_offsets(lenient, "per_user", [str(tmp_path / "scores"), str(tmp_path / "gdmix")],
                 str(tmp_path / "both"), log=messages.append)
    both = fs.read_parquet_dir(str(tmp_path / "both" / "train"))
    values = dict(zip(both.column("uid").to_pylist(), both.column("offset").to_pylist()))
    assert both.num_rows == train.num_rows and values[int(uids[0])] == 0.5 and values[int(uids[1])] == 0.75


def test_prep_runs_few_spark_queries(prepared):
    """One query checks the input and counts the splits' rows, one counts every bag's features,
    one every random effect's entities; then the writes (train, validation, and per random
    effect its train and validation partitions, two at a time). No count() or collect() round
    trips, and the written splits are read back without a job to infer their schema."""
    root = prepared[0]
    # the fixture's application: the first (later sessions of this process inherit the event log)
    logs = [[json.loads(line) for line in log.read_text().splitlines()] for log in (root / "events").rglob("events_*")]
    events = min(logs, key=lambda log: next(e["Timestamp"] for e in log if e["Event"] == "SparkListenerApplicationStart"))
    queries = [e for e in events if e["Event"].endswith("SparkListenerSQLExecutionStart")]
    assert len(queries) == 7, [q["description"] for q in queries]  # 12 before (issue 13)
    # beside the queries' own jobs (AQE runs each shuffle stage as a job), one job reads the raw
    # input's schema from its footer; none reads back a written split's
    other_jobs = [e for e in events if e["Event"] == "SparkListenerJobStart"
                  and "spark.sql.execution.id" not in e.get("Properties", {})]
    assert len(other_jobs) == 1


def test_bad_input_stops_prep_with_the_first_bad_row_named(tmp_path):
    raw = _raw().slice(0, 300)
    (tmp_path / "raw").mkdir()
    pq.write_table(raw, tmp_path / "raw" / "part-0.parquet")
    config = _config(tmp_path, str(tmp_path / "raw"))
    config["prep"]["label"] = {"column": "rating"}  # ratings 1 to 5 as labels
    with pytest.raises(DataError, match=r"label [2-5]\.0 of uid \d+ is not 0 or 1"):
        run_prep(validate_config(config), log=lambda m: None)
    assert not (tmp_path / "prepared").exists()

    ids = raw.column("id").to_numpy().copy()
    ids[200] = ids[17]
    pq.write_table(raw.set_column(0, "id", pa.array(ids)), tmp_path / "raw" / "part-0.parquet")
    with pytest.raises(DataError, match=rf"duplicate uid {ids[17]} \(2 rows\); uids must be unique"):
        run_prep(validate_config(_config(tmp_path, str(tmp_path / "raw"))), log=lambda m: None)
    assert not (tmp_path / "prepared").exists()


def test_entity_counts_of_several_columns_in_one_query(tmp_path):
    from gdmix.config import SparkConfig
    from gdmix.prep.partition import entity_counts
    from gdmix.prep.spark import SMALL_INPUT_JAVA_OPTIONS, spark_session

    (tmp_path / "small.parquet").write_bytes(b"0" * 1000)
    spark = spark_session(SparkConfig(master="local[2]", driver_memory="1g", shuffle_partitions=3),
                          inputs=[str(tmp_path / "small.parquet")])
    try:
        # a small input's local JVM starts with the fast-start options (when this session starts it)
        assert spark.sparkContext.getConf().get("spark.driver.defaultJavaOptions") == SMALL_INPUT_JAVA_OPTIONS
        frame = spark.createDataFrame(pa.table({"a": pa.array([1, 1, None, 2, 2, 2], pa.int64()),
                                                "b": ["x", None, None, "y", "x", "x"]}))
        counts = entity_counts(frame, ["a", "b", "a"])
        assert counts["a"].to_pylist() == [{"a": 1, "count": 2}, {"a": 2, "count": 3}, {"a": None, "count": 1}]
        assert counts["b"].to_pylist() == [{"b": "x", "count": 3}, {"b": "y", "count": 1}, {"b": None, "count": 2}]
        for name in ("a", "b"):  # as one query per column (a null id is a group of its own)
            assert counts[name].to_pylist() == entity_counts(frame, [name])[name].to_pylist()
    finally:
        spark.stop()
