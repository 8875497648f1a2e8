"""Models to and from Photon ML's Avro (``gdmix export-model`` / ``import-model --format
photon-avro``): bit-identical round trips, files that Photon's own schema validates and reads,
GDMix 0.3.0's files (written by GDMix's own export function) imported and warm-started from."""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import logging
import os
import re
import time
import types
from pathlib import Path

import fastavro
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from fastavro.validation import validate_many

from gdmix import cli
from gdmix.artifacts import load_model
from gdmix.errors import DataError, GdmixError
from gdmix.io import fs
from gdmix.models.photon_avro import FIXED_EFFECT_MODEL_ID, LINEAR_REGRESSION_CLASS, LOGISTIC_REGRESSION_CLASS
from gdmix.models.photon_transfer import export_model, import_model
from gdmix.scoring import score_dataset

from conftest import bag
from interop_helpers import (
    ENTITY_IDS, GDMIX_030, ROOT, SCHEMAS, build_model, gdmix_constant, gdmix_functions, save, upstream_schema,
    write_scoring_data,
)

QUIET = dict(log=lambda _line: None)


def _tables(model_dir: str) -> dict[str, pa.Table]:
    trained = load_model(model_dir)
    return {c.name: c.model_to_table(trained.models[c.name], trained.index_map(c)) for c in trained.coordinates}


def _assert_identical(left: pa.Table, right: pa.Table) -> None:
    """Same columns and same values, bit for bit (NaN variances included)."""
    assert left.column_names == right.column_names
    for name in left.column_names:
        a, b = left.column(name).to_numpy(zero_copy_only=False), right.column(name).to_numpy(zero_copy_only=False)
        if a.dtype.kind == "f":
            assert np.array_equal(a.view(np.int64), b.view(np.int64)), name  # bitwise, NaN == NaN
        else:
            assert a.tolist() == b.tolist(), name


@pytest.mark.parametrize("variances", [False, True], ids=["means", "variances"])
@pytest.mark.parametrize("entity_kind", sorted(ENTITY_IDS))
def test_export_then_import_is_bit_identical(tmp_path, entity_kind, variances):
    original = save(build_model(entity_kind, variances), tmp_path / "model")
    summary = export_model(original, str(tmp_path / "avro"), files=2, **QUIET)
    assert summary["coordinates"]["per_user"] == {"models": len(ENTITY_IDS[entity_kind]), "variances": variances}
    assert sorted(p.name for p in (tmp_path / "avro" / "per_user" / "models").iterdir()) == [
        "part-00000.avro", "part-00001.avro"]
    import_model(str(tmp_path / "avro"), str(tmp_path / "imported"), **QUIET)

    before, after = _tables(original), _tables(str(tmp_path / "imported"))
    for name in ("global", "per_user"):
        _assert_identical(before[name], after[name])
    if variances:
        assert np.isnan(after["per_user"].column("variance").to_numpy()).any()  # an unknown one stays unknown

    data = write_scoring_data(tmp_path / "data", entity_kind)
    score_dataset(original, data, str(tmp_path / "scores-original"))
    score_dataset(str(tmp_path / "imported"), data, str(tmp_path / "scores-imported"))
    _assert_identical(fs.read_parquet_dir(str(tmp_path / "scores-original")),
                      fs.read_parquet_dir(str(tmp_path / "scores-imported")))


def test_round_trip_changes_a_changed_model(tmp_path):
    """The comparison above can fail: a model that differs in one coefficient by one ulp is caught."""
    model = build_model("string", False)
    changed = build_model("string", False)
    changed.models["global"].coef[0] = np.nextafter(changed.models["global"].coef[0], np.inf)
    with pytest.raises(AssertionError):
        _assert_identical(_tables(save(model, tmp_path / "a"))["global"], _tables(save(changed, tmp_path / "b"))["global"])


@pytest.mark.parametrize("variances", [False, True], ids=["means", "variances"])
def test_files_validate_against_photons_schema_and_read_with_it_alone(tmp_path, variances):
    export_model(save(build_model("int64", variances), tmp_path / "model"), str(tmp_path / "avro"), **QUIET)
    schema = upstream_schema()
    files = sorted((tmp_path / "avro").rglob("*.avro"))
    assert [p.relative_to(tmp_path / "avro").as_posix() for p in files] == [
        "global/models/part-00000.avro", "per_user/models/part-00000.avro"]
    for path in files:
        with open(path, "rb") as handle:
            header = fastavro.reader(handle)
            assert fastavro.schema.to_parsing_canonical_form(header.writer_schema) == \
                fastavro.schema.to_parsing_canonical_form(schema)
            written = list(header)
        with open(path, "rb") as handle:
            read = list(fastavro.reader(handle, reader_schema=schema))
        assert json.dumps(read) == json.dumps(written)  # NaN variances compare as equal text
        assert validate_many(read, schema)
        for record in read:
            assert record["modelClass"] == LOGISTIC_REGRESSION_CLASS
            assert record["means"][0] == {"name": "(INTERCEPT)", "term": "", "value": record["means"][0]["value"]}
            if variances:
                assert [(e["name"], e["term"]) for e in record["variances"]] == \
                    [(e["name"], e["term"]) for e in record["means"]]
            else:
                assert record["variances"] is None
    with open(files[0], "rb") as handle:
        (fixed,) = list(fastavro.reader(handle))
    assert fixed["modelId"] == FIXED_EFFECT_MODEL_ID
    with open(files[1], "rb") as handle:
        assert [r["modelId"] for r in fastavro.reader(handle)] == [str(i) for i in ENTITY_IDS["int64"]]


def test_gdmix_wrote_photons_schema():
    """GDMix's schema string and Photon's files are the same schema (so one reader serves both)."""
    gdmix = fastavro.parse_schema(json.loads(gdmix_constant("BAYESIAN_LINEAR_MODEL_SCHEMA", "schemas.py")))
    assert fastavro.schema.to_parsing_canonical_form(gdmix) == fastavro.schema.to_parsing_canonical_form(
        upstream_schema())


def _git_blob(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def test_vendored_files_are_the_upstream_files_the_readme_names():
    text = (ROOT / "tests" / "upstream" / "README.md").read_text()
    section = text.split("## Photon ML and GDMix", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| (https://github\.com/\S+) \| [^|]+ \| `([0-9a-f]{40})` \| `([^`]+)` \| "
                      r"`([0-9a-f]{40})` \|$", section, flags=re.M)
    assert {row[0] for row in rows} == {
        *(f"gdmix/io/avro_schemas/{p.name}" for p in SCHEMAS.iterdir()),
        *(f"tests/upstream/gdmix-0.3.0/{p.name}" for p in GDMIX_030.iterdir() if p.is_file())}
    for file, _repository, _commit, _path, blob in rows:
        assert _git_blob((ROOT / file).read_bytes()) == blob, file


# --- GDMix 0.3.0's own files -------------------------------------------------------------------

class _GFile(io.TextIOWrapper):
    """``tf.io.gfile.GFile`` for local files (GDMix sets an attribute on it, so not plain ``open``)."""

    def __init__(self, path, mode="r"):
        super().__init__(open(path, "rb"), encoding="utf-8")


def gdmix_export():
    """GDMix 0.3.0's ``export_linear_model_to_avro``, run from its vendored source."""
    tf = types.SimpleNamespace(io=types.SimpleNamespace(gfile=types.SimpleNamespace(GFile=_GFile)))
    names = ("export_linear_model_to_avro", "gen_one_avro_model", "read_feature_list", "batched_write_avro",
             "_chunked_iterator", "try_write_avro_blocks", "create_error_message")
    scope = dict(json=json, fastavro=fastavro, csv=csv, itertools=itertools, os=os, time=time, tf=tf, Iterator=object,
                 logger=logging.getLogger("gdmix-0.3.0"), INTERCEPT=gdmix_constant("INTERCEPT", "io_utils.py"),
                 BAYESIAN_LINEAR_MODEL_SCHEMA=gdmix_constant("BAYESIAN_LINEAR_MODEL_SCHEMA", "schemas.py"))
    return gdmix_functions(*names, **scope)["export_linear_model_to_avro"]


GLOBAL = [("g", "0"), ("g", "1"), ("g", "2"), ("g", "3")]
USER = [("u", "a"), ("u", "b")]


def write_gdmix_output(root: Path, variances: bool = False) -> Path:
    """A GDMix 0.3.0 ``output_dir``: a fixed effect with a coefficient below the sparsity threshold
    (1e-4, dropped) and a random effect over long ids, entity 3 carried over from an earlier
    run (GDMix keeps prior entities absent from the new data)."""
    export = gdmix_export()
    for name, features in (("global", GLOBAL), ("user", USER)):
        with open(root / f"{name}.csv", "w", newline="") as handle:
            csv.writer(handle).writerows(features)
    out = root / "gdmix-output"
    for coordinate in ("global", "per_user"):
        (out / coordinate / "models").mkdir(parents=True)
    means = np.array([0.7, -0.4, 5e-5, -1e-4])
    bias = 0.25
    if variances:
        means, bias = (means, np.array([0.01, 0.02, 0.03, 0.04])), (bias, 0.005)
    export(["global model"], [np.arange(4)], [means], [bias], str(root / "global.csv"),
           str(out / "global" / "models" / "part-00000.avro"))
    ids = [np.int64(1), np.int64(2), np.int64(3)]
    indices = [np.array([0, 1]), np.array([1]), np.array([0])]
    values = [np.array([0.3, -2e-5]), np.array([0.9]), np.array([-1.1])]
    biases = [0.1, -0.2, 0.5]
    if variances:
        values = [(v, np.full(len(v), 0.5)) for v in values]
        biases = [(b, 0.25) for b in biases]
    export(ids[:2], indices[:2], values[:2], biases[:2], str(root / "user.csv"),
           str(out / "per_user" / "models" / "part-00000.avro"))
    export(ids[2:], indices[2:], values[2:], biases[2:], str(root / "user.csv"),
           str(out / "per_user" / "models" / "part-00001.avro"))
    return out


def write_config(root: Path, **overrides) -> Path:
    rng = np.random.default_rng(0)
    rows = 200
    table = pa.table({
        "uid": pa.array(np.arange(rows, dtype=np.int64)),
        "label": pa.array(rng.integers(0, 2, rows).astype(np.float64)),
        "user_id": pa.array(rng.integers(1, 3, rows)),  # entities 1 and 2 only: 3 is carried over
        "global": bag([[(n, t, float(rng.normal())) for n, t in GLOBAL] for _ in range(rows)]),
        "per_user_id": bag([[(n, t, float(rng.normal())) for n, t in USER] for _ in range(rows)]),
    })
    (root / "train").mkdir()
    pq.write_table(table, root / "train" / "part-00000.parquet")
    raw = {"data": {"train": str(root / "train")}, "output": str(root / "model"), "coordinates": [
        {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
        {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user_id"}]}
    raw.update(overrides)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _as_rows(table: pa.Table) -> list[tuple]:
    return sorted(zip(*(table.column(c).to_pylist() for c in table.column_names)))


def test_gdmix_0_3_0_models_import_as_gdmix_wrote_them_and_warm_start_training(tmp_path, capsys):
    gdmix_output = write_gdmix_output(tmp_path)
    config = write_config(tmp_path)
    assert cli.main(["import-model", str(gdmix_output), str(tmp_path / "imported"), "--format", "photon-avro",
                     "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)["coordinates"]["per_user"]["models"] == 3
    imported = _tables(str(tmp_path / "imported"))
    # the sparsity threshold dropped g/2 and g/3 (|w| <= 1e-4) and entity 1's u/b; the intercept came first
    assert _as_rows(imported["global"]) == [("(INTERCEPT)", "", 0.25), ("g", "0", 0.7), ("g", "1", -0.4)]
    assert _as_rows(imported["per_user"]) == [
        ("1", "(INTERCEPT)", "", 0.1), ("1", "u", "a", 0.3), ("2", "(INTERCEPT)", "", -0.2), ("2", "u", "b", 0.9),
        ("3", "(INTERCEPT)", "", 0.5), ("3", "u", "a", -1.1)]

    # no solver iterations: what training returns is its starting point, so it must be GDMix's model
    assert cli.main(["train", str(config), "--set", f"warm_start={tmp_path / 'imported'}",
                     "--set", "coordinates.global.optimizer.max_iter=0",
                     "--set", "coordinates.per_user.solver.max_iter=0"]) == 0
    trained = _tables(str(tmp_path / "model"))
    fixed = dict(((n, t), v) for n, t, v in _as_rows(trained["global"]))
    np.testing.assert_allclose([fixed[("(INTERCEPT)", "")], fixed[("g", "0")], fixed[("g", "1")]], [0.25, 0.7, -0.4],
                               rtol=1e-12)
    assert set(fixed) == {("(INTERCEPT)", ""), ("g", "0"), ("g", "1")}
    assert _as_rows(trained["per_user"]) == _as_rows(imported["per_user"])  # entity 3 carried over

    # and trained to convergence from there, it moves (the warm start did not freeze anything)
    assert cli.main(["train", str(config), "--set", f"warm_start={tmp_path / 'imported'}"]) == 0
    moved = dict(((n, t), v) for n, t, v in _as_rows(_tables(str(tmp_path / "model"))["global"]))
    assert moved[("g", "0")] != pytest.approx(0.7, rel=1e-6)


def test_gdmix_0_3_0_variances_are_imported(tmp_path):
    gdmix_output = write_gdmix_output(tmp_path, variances=True)
    config = write_config(tmp_path)
    from gdmix.config import load_config

    import_model(str(gdmix_output), str(tmp_path / "imported"), load_config(config), **QUIET)
    tables = _tables(str(tmp_path / "imported"))
    assert _as_rows(tables["global"]) == [("(INTERCEPT)", "", 0.25, 0.005), ("g", "0", 0.7, 0.01),
                                          ("g", "1", -0.4, 0.02)]
    assert {row[0]: row[4] for row in _as_rows(tables["per_user"]) if row[1] == "(INTERCEPT)"} == {
        "1": 0.25, "2": 0.25, "3": 0.25}
    # a model with variances scores a posterior draw
    data = write_scoring_data(tmp_path / "data", "int64")
    summary = score_dataset(str(tmp_path / "imported"), data, str(tmp_path / "sampled"), posterior="sample")
    assert summary["sampled"]["coordinates"] == ["global", "per_user"]


def test_photon_layout_is_read(tmp_path):
    """Photon ML's own folders (``fixed-effect/<c>/coefficients``, ``random-effect/<c>/coefficients``)."""
    export_model(save(build_model("string", False), tmp_path / "model"), str(tmp_path / "avro"), **QUIET)
    photon = tmp_path / "photon" / "best"
    for kind, coordinate in (("fixed-effect", "global"), ("random-effect", "per_user")):
        (photon / kind / coordinate).mkdir(parents=True)
        (tmp_path / "avro" / coordinate / "models").rename(photon / kind / coordinate / "coefficients")
    (tmp_path / "avro" / "model.json").rename(photon / "model.json")
    import_model(str(photon), str(tmp_path / "imported"), **QUIET)
    before, after = _tables(str(tmp_path / "model")), _tables(str(tmp_path / "imported"))
    for name in before:
        _assert_identical(before[name], after[name])


def _record(model_id: str, means, variances=None, model_class=LOGISTIC_REGRESSION_CLASS) -> dict:
    entries = [{"name": n, "term": t, "value": v} for n, t, v in means]
    return {"modelId": model_id, "modelClass": model_class, "means": entries, "lossFunction": "",
            "variances": None if variances is None else [{"name": n, "term": t, "value": v} for n, t, v in variances]}


INTERCEPT = ("(INTERCEPT)", "", 0.5)


@pytest.mark.parametrize("coordinate, records, message", [
    ("global", [_record("global model", [INTERCEPT]), _record("other", [INTERCEPT])],
     "needs exactly one model record, found 2"),
    ("per_user", [_record("7", [INTERCEPT]), _record("7", [INTERCEPT])], "model '7' appears twice"),
    ("per_user", [_record("7", [INTERCEPT], model_class=LINEAR_REGRESSION_CLASS)], "LinearRegressionModel"),
    ("per_user", [_record("7", [INTERCEPT], variances=[("u", "x", 1.0)])], "variance for ('u', 'x') but no mean"),
    ("per_user", [_record("7", [INTERCEPT, ("u", "a", 1.0), ("u", "a", 2.0)])], "appears 2 times"),
])
def test_bad_model_files_fail_naming_the_file_and_leave_no_output(tmp_path, coordinate, records, message):
    folder = tmp_path / "avro" / coordinate / "models"
    folder.mkdir(parents=True)
    with open(folder / "part-00000.avro", "wb") as handle:
        fastavro.writer(handle, upstream_schema(), records)
    config = write_config(tmp_path)
    from gdmix.config import load_config

    with pytest.raises(DataError, match=re.escape(message)) as caught:
        import_model(str(tmp_path / "avro"), str(tmp_path / "imported"), load_config(config), **QUIET)
    assert str(folder) in str(caught.value)
    assert not (tmp_path / "imported").exists()


def test_a_file_of_another_schema_or_no_avro_at_all_is_named(tmp_path):
    folder = tmp_path / "avro" / "per_user" / "models"
    folder.mkdir(parents=True)
    with open(folder / "part-00000.avro", "wb") as handle:
        fastavro.writer(handle, {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]},
                        [{"x": 1}])
    config = write_config(tmp_path)
    assert cli.main(["import-model", str(tmp_path / "avro"), str(tmp_path / "imported"), "--format", "photon-avro",
                     "--config", str(config)]) == 1
    (folder / "part-00000.avro").write_bytes(b"not avro")
    with pytest.raises(DataError, match="not a readable Avro file"):
        from gdmix.config import load_config

        import_model(str(tmp_path / "avro"), str(tmp_path / "imported"), load_config(config), **QUIET)
    assert not (tmp_path / "imported").exists()


def test_import_without_a_description_or_any_files_says_what_is_missing(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GdmixError, match="give --config"):
        import_model(str(tmp_path / "empty"), str(tmp_path / "imported"), **QUIET)
    config = write_config(tmp_path)
    assert cli.main(["import-model", str(tmp_path / "empty"), str(tmp_path / "imported"), "--format", "photon-avro",
                     "--config", str(config)]) == 1
    assert "no Avro model files for any coordinate" in capsys.readouterr().err
    assert not (tmp_path / "imported").exists()


def test_export_model_command_and_intercept_only_coordinates(tmp_path, capsys):
    """An intercept-only random effect (no feature bag) exports its intercepts and imports back;
    a feature in its file would be an error, not silently dropped."""
    model = build_model("string", False)
    from gdmix.models.coordinates import make_coordinate
    from gdmix.config import RandomEffectConfig
    from gdmix.models.random_effect import RandomEffectModel
    import scipy.sparse as sp

    bare = model.models["per_user"]
    model.coordinates[1] = make_coordinate(RandomEffectConfig(name="per_user", type="random_effect", entity="user_id"))
    model.models["per_user"] = RandomEffectModel(bare.entity_ids, bare.intercepts, sp.csr_matrix((bare.num_entities, 0)))
    del model.index_maps["per_user_id"]
    original = save(model, tmp_path / "model")
    assert cli.main(["export-model", original, str(tmp_path / "avro"), "--format", "photon-avro"]) == 0
    assert json.loads(capsys.readouterr().out)["coordinates"]["per_user"]["models"] == len(ENTITY_IDS["string"])
    assert cli.main(["import-model", str(tmp_path / "avro"), str(tmp_path / "imported"), "--format", "photon-avro"]) == 0
    _assert_identical(_tables(original)["per_user"], _tables(str(tmp_path / "imported"))["per_user"])

    path = tmp_path / "avro" / "per_user" / "models" / "part-00000.avro"
    with open(path, "wb") as handle:
        fastavro.writer(handle, upstream_schema(), [_record("x", [INTERCEPT, ("u", "a", 1.0)])])
    with pytest.raises(DataError, match="has no feature_bag"):
        import_model(str(tmp_path / "avro"), str(tmp_path / "again"), **QUIET)
    assert cli.main(["export-model", original, str(tmp_path / "more"), "--format", "photon-avro", "--files", "0"]) == 1
