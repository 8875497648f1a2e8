"""``gdmix prep`` with executors in other processes and the data in S3 (moto on 127.0.0.1).

Spark's ``local-cluster[2,1,1024]`` master runs two executors as separate JVMs, each with its
own Python workers, as a SparkApplication does on other machines. The driver and the
executors use different S3 access keys, and the S3 server logs which key made each request:
every read of an input file and every write of an output data file must come from an
executor, and the driver's temporary directory must stay free of data. The output must equal
that of the same prep with local input and output (contents, not just counts).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from gdmix.config import validate_config
from gdmix.distributed.launcher import free_ports
from gdmix.errors import DataError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.prep.run import run_prep
from gdmix.prep.offsets import join_offsets

from test_prep import _config, _raw

BUCKET = "gdmix-cluster"
MASTER = "local-cluster[2,1,1024]"
DRIVER_KEY, EXECUTOR_KEY = "driverkey", "executorkey"
HANG_GUARD = 600
DATA_SUFFIXES = (".parquet", ".avro", ".csv", ".json")


@pytest.fixture(scope="module")
def s3():
    """A moto S3 server on 127.0.0.1 that logs (access key, method, path) of every request."""
    from moto.moto_server.threaded_moto_server import ThreadedMotoServer
    from moto.server import DomainDispatcherApplication, create_backend_app
    from s3fs import S3FileSystem
    from werkzeug.serving import make_server

    requests = []
    logging.getLogger("werkzeug").setLevel(logging.ERROR)

    class LoggingServer(ThreadedMotoServer):
        def _server_entry(self) -> None:
            app = DomainDispatcherApplication(create_backend_app)

            def logged(environ, start_response):
                key = re.search(r"Credential=([^/]+)/", environ.get("HTTP_AUTHORIZATION", ""))
                requests.append((key and key.group(1), environ["REQUEST_METHOD"], environ["PATH_INFO"],
                                 "HTTP_X_AMZ_COPY_SOURCE" in environ))
                return app(environ, start_response)

            self._server = make_server(self._ip_address, self._port, logged, True)
            self._server_ready_event.set()
            self._server.serve_forever()

    port = free_ports(1)[0]
    server = LoggingServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    aws = {"AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}
    patch = pytest.MonkeyPatch()
    for key, value in {**aws, "AWS_ACCESS_KEY_ID": DRIVER_KEY}.items():
        patch.setenv(key, value)
    S3FileSystem.clear_instance_cache()  # fsspec caches file systems, endpoint included
    fs.url_to_fs(f"s3://{BUCKET}")[0].mkdir(BUCKET)
    yield {"aws": aws, "requests": requests}
    patch.undo()
    server.stop()
    S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def spark_home(tmp_path_factory):
    """A SPARK_HOME of links to the pyspark wheel: local-cluster workers put their work
    directories under SPARK_HOME/work (they ignore SPARK_WORKER_DIR), not inside the venv."""
    import pyspark

    home = tmp_path_factory.mktemp("spark-home")
    package = Path(pyspark.__file__).parent
    for entry in package.iterdir():
        (home / entry.name).symlink_to(entry)
    return str(home)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same prep with local input and output (local[2]): what the cluster runs must equal."""
    root = tmp_path_factory.mktemp("reference")
    (root / "raw").mkdir()
    pq.write_table(_raw(), root / "raw" / "part-0.parquet")
    run_prep(validate_config(_config(root, str(root / "raw"))), log=lambda m: None)
    return str(root / "prepared")


def _put(table: pa.Table, uri: str, fmt: str) -> None:
    """Write ``table`` to the store in ``fmt`` (from the test process, not from gdmix)."""
    import fastavro

    filesystem, path = fs.url_to_fs(uri)
    with filesystem.open(path, "wb") as handle:
        if fmt == "parquet":
            pq.write_table(table, handle)
        elif fmt == "csv":
            pacsv.write_csv(table, handle)
        else:
            fields = [{"name": f.name, "type": "string" if pa.types.is_string(f.type) else
                       "double" if pa.types.is_floating(f.type) else "long"} for f in table.schema]
            fastavro.writer(handle, {"type": "record", "name": "r", "fields": fields}, table.to_pylist())


def _prep_on_cluster(s3, spark_home: str, tmp_path: Path, raw: dict) -> tuple[str, Path, list]:
    """Run ``gdmix prep`` (a subprocess: the driver) on local-cluster with S3 in and out.
    Returns the output URI, the driver's TMPDIR and the S3 requests made during the run."""
    output = f"s3://{BUCKET}/{tmp_path.name}/prepared"
    config = _config(tmp_path, raw["path"], fmt=raw["format"])
    config["prep"]["output"] = output
    config["prep"].update({k: v for k, v in raw.items() if k not in ("path", "format")})
    if "validation_input" in raw:
        config["prep"].pop("split")
    executor_tmp, driver_tmp = tmp_path / "executor-tmp", tmp_path / "driver-tmp"
    executor_tmp.mkdir()
    driver_tmp.mkdir()
    executor_env = {**s3["aws"], "AWS_ACCESS_KEY_ID": EXECUTOR_KEY, "TMPDIR": str(executor_tmp)}
    config["prep"]["spark"] = {"master": MASTER, "driver_memory": "1g", "shuffle_partitions": 4,
                               "conf": {f"spark.executorEnv.{k}": v for k, v in executor_env.items()}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = dict(os.environ, **s3["aws"], AWS_ACCESS_KEY_ID=DRIVER_KEY, TMPDIR=str(driver_tmp),
               SPARK_HOME=spark_home, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    first = len(s3["requests"])
    done = subprocess.run([sys.executable, "-m", "gdmix", "prep", str(tmp_path / "config.yaml")],
                          capture_output=True, text=True, timeout=HANG_GUARD, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-5000:]
    return output, driver_tmp, s3["requests"][first:]


def _snapshot(root: str) -> dict:
    """Everything downstream readers see under a prep output, in a comparable form."""
    def table(uri):
        data = fs.read_parquet_dir(uri)
        schema = data.schema.to_string(show_field_metadata=True, show_schema_metadata=False)
        return {"schema": schema, "rows": data.sort_by("uid").to_pylist()}

    snapshot = {split: table(fs.join(root, split)) for split in ("train", "validation")}
    for bag in ("global", "per_user"):
        index_map = IndexMap.load(fs.join(root, "index_maps", bag))
        snapshot[f"index_map/{bag}"] = (index_map.names.to_pylist(), index_map.terms.to_pylist())
    base = fs.join(root, "partitions", "per_user")
    snapshot["manifest"] = json.loads(fs.read_text(fs.join(base, "manifest.json")))
    for split in ("train", "validation"):
        for p in range(5):
            uri = fs.join(base, split, f"partition={p}")
            if fs.exists(uri):
                uids = fs.read_parquet_dir(uri).column("uid").to_pylist()
                assert uids == sorted(uids), f"{uri} is not sorted by uid"
                snapshot[f"{split}/partition={p}"] = table(uri)
    return snapshot


def _assert_same(ours: dict, theirs: dict) -> None:
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if isinstance(value, dict) and "schema" in value:
            assert ours[key]["schema"] == value["schema"], f"{key}:\n{ours[key]['schema']}\n!=\n{value['schema']}"
        assert ours[key] == value, key


def _assert_executors_did_the_io(requests: list, output: str, driver_tmp: Path, raw_prefix: str) -> None:
    """Input data read and output data written only with the executors' key (the driver writes
    index maps and manifests itself); nothing of the data on the driver's disk."""
    staging = f"/{BUCKET}/{output.split('/')[-2]}/.prepared.staging-"
    reads = [r for r in requests if r[1] == "GET" and r[2].startswith(f"/{BUCKET}/{raw_prefix}/")]
    writes = [r for r in requests if r[1] in ("PUT", "POST") and r[2].startswith(staging)
              and "/part-" in r[2] and "/index_maps/" not in r[2] and not r[3]]
    assert reads and {r[0] for r in reads} == {EXECUTOR_KEY}, reads
    assert len(writes) >= 2 + 5 and {r[0] for r in writes} == {EXECUTOR_KEY}, writes  # splits + partitions
    # the driver reads no data file back either (it only lists, commits and writes small metadata)
    driver_gets = [r for r in requests if r[0] == DRIVER_KEY and r[1] == "GET" and "/part-" in r[2]]
    assert not driver_gets, driver_gets
    left = [p for p in driver_tmp.rglob("*") if p.is_file()]
    assert not [p for p in left if p.suffix in DATA_SUFFIXES or "gdmix" in str(p)], left


def test_prep_on_s3_with_remote_executors_equals_local_prep(s3, spark_home, reference, tmp_path):
    raw = _raw()
    for k, piece in enumerate((raw.slice(0, 1000), raw.slice(1000))):  # two files: a schema pass over both
        _put(piece, f"s3://{BUCKET}/{tmp_path.name}/raw/part-{k}.parquet", "parquet")
    output, driver_tmp, requests = _prep_on_cluster(
        s3, spark_home, tmp_path, {"path": f"s3://{BUCKET}/{tmp_path.name}/raw", "format": "parquet"})
    _assert_executors_did_the_io(requests, output, driver_tmp, f"{tmp_path.name}/raw")
    assert fs.exists(fs.join(output, "prep.json"))
    assert not fs.url_to_fs(output)[0].glob(f"{BUCKET}/{tmp_path.name}/.prepared.*")  # staging removed
    _assert_same(_snapshot(output), _snapshot(reference))


def test_csv_and_avro_input_on_s3_read_by_executors(s3, spark_home, reference, tmp_path):
    """Training rows as CSV (two files), validation rows as Avro: the rows of the reference's
    split, so the output must equal the reference's."""
    raw = _raw()
    validation_uids = set(fs.read_parquet_dir(fs.join(reference, "validation")).column("uid").to_pylist())
    in_validation = pa.array([uid in validation_uids for uid in raw.column("id").to_pylist()])
    train, validation = raw.filter(pc.invert(in_validation)), raw.filter(in_validation)
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    _put(train.slice(0, 1200), f"{prefix}/raw/part-0.csv", "csv")
    _put(train.slice(1200), f"{prefix}/raw/part-1.csv", "csv")
    _put(validation, f"{prefix}/raw-validation/part-0.avro", "avro")
    output, driver_tmp, requests = _prep_on_cluster(s3, spark_home, tmp_path, {
        "path": f"{prefix}/raw", "format": "csv",
        "validation_input": {"path": f"{prefix}/raw-validation", "format": "avro"}})
    _assert_executors_did_the_io(requests, output, driver_tmp, f"{tmp_path.name}/raw-validation")
    _assert_executors_did_the_io(requests, output, driver_tmp, f"{tmp_path.name}/raw")
    _assert_same(_snapshot(output), _snapshot(reference))


def test_a_bad_file_read_by_an_executor_is_named_in_the_error(s3, tmp_path):
    """An executor's DataError reaches the user as that DataError (local[2]: Python workers
    are other processes here too), naming the file."""
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    _put(_raw().slice(0, 100), f"{prefix}/raw/part-0.avro", "avro")
    fs.write_bytes(f"{prefix}/raw/part-1.avro", b"Obj\x01 not really avro")
    config = _config(tmp_path, f"{prefix}/raw", fmt="avro")
    config["prep"]["output"] = f"{prefix}/prepared"
    with pytest.raises(DataError, match=f"file {prefix}/raw/part-1.avro: cannot read avro rows"):
        run_prep(validate_config(config), log=lambda m: None)
    assert not fs.exists(f"{prefix}/prepared")


def test_offsets_join_reads_and_writes_s3_partitions_through_executors(s3, reference, tmp_path):
    """``gdmix offsets`` on partitions in S3: the partition number comes from the
    ``partition=<p>`` folders, and every row of every partition gets its offset."""
    prefix = f"s3://{BUCKET}/{tmp_path.name}"
    s3fs = fs.url_to_fs(prefix)[0]
    s3fs.put(str(Path(reference) / "partitions"), f"{prefix[5:]}/prepared/partitions", recursive=True)
    train = fs.read_parquet_dir(fs.join(reference, "train"))
    uids = train.column("uid").to_numpy()
    _put(pa.table({"uid": uids[1:], "coordinate_score": [0.25] * (len(uids) - 1)}), f"{prefix}/scores/p.parquet",
         "parquet")
    config = _config(tmp_path, "unused")
    config["prep"].update(output=f"{prefix}/prepared", missing_offsets="zero")
    summary = join_offsets(validate_config(config), "per_user", [f"{prefix}/scores"], f"{prefix}/offsets",
                           log=lambda m: None)
    assert summary["missing"]["train"] == 1
    for p in range(5):
        rows = fs.read_parquet_dir(f"{prefix}/offsets/train/partition={p}")
        expected = fs.read_parquet_dir(fs.join(reference, "partitions", "per_user", "train", f"partition={p}"))
        assert rows.column("uid").to_pylist() == sorted(expected.column("uid").to_pylist())
        offsets = dict(zip(rows.column("uid").to_pylist(), rows.column("offset").to_pylist()))
        assert all(value == (0.0 if uid == uids[0] else 0.25) for uid, value in offsets.items())
