"""The component pair ``import_photon_model`` / ``export_photon_model`` in a pipeline run by
kfp.local: a pipeline that starts from Avro models (imported, then scored by the ``score``
step) and ends with them (exported) gives the scores and the files of the model itself.

(No ``from __future__ import annotations``: KFP reads the pipeline's annotations as types.)"""

import json

import fastavro
import numpy as np
import yaml
from kfp import dsl, local
from kfp.dsl import Dataset

from gdmix.io import fs
from gdmix.models.photon_transfer import export_model
from gdmix.scoring import score_dataset
from gdmix_components.export_photon_model.component import export_photon_model
from gdmix_components.import_photon_model.component import import_photon_model
from gdmix_components.score.component import score

from interop_helpers import build_model, save, write_scoring_data


@dsl.pipeline
def avro_round_trip(source: str, config: str, data_uri: str) -> dsl.Model:
    imported = import_photon_model(source=source, config=config)
    rows = dsl.importer(artifact_uri=data_uri, artifact_class=Dataset, reimport=False)
    score(model=imported.outputs["model"], data=rows.output)
    return export_photon_model(model=imported.outputs["model"]).outputs["avro"]


def _records(root) -> str:
    found = {}
    for path in sorted(root.rglob("*.avro")):
        with open(path, "rb") as handle:
            found[path.relative_to(root).as_posix()] = list(fastavro.reader(handle))
    return json.dumps(found)


def test_a_pipeline_starts_from_and_ends_with_avro_models(tmp_path):
    original = save(build_model("int64", True), tmp_path / "model")
    export_model(original, str(tmp_path / "avro"), log=lambda _line: None)
    data = write_scoring_data(tmp_path / "data", "int64")
    config = yaml.safe_dump({"data": {"train": data}, "output": str(tmp_path / "unused"), "coordinates": [
        {"name": "global", "type": "fixed_effect", "feature_bag": "global"},
        {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "per_user_id"}]})
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"),
               raise_on_error=True)
    task = avro_round_trip(source=str(tmp_path / "avro"), config=config, data_uri=data)

    exported = tmp_path / "exported"
    fs.commit_directory(task.output.metadata["location"], str(exported))
    (tmp_path / "avro" / "model.json").unlink()
    assert _records(exported) == _records(tmp_path / "avro")

    (step_scores,) = [p for p in (tmp_path / "root").rglob("scores") if p.parent.name == "score"]
    score_dataset(original, data, str(tmp_path / "expected"))
    expected = fs.read_parquet_dir(str(tmp_path / "expected"))
    got = fs.read_parquet_dir(str(step_scores))
    assert got.column_names == expected.column_names
    for name in expected.column_names:
        assert np.array_equal(got.column(name).to_numpy(), expected.column(name).to_numpy()), name
