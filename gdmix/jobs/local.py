"""Running the fixed-effect job on N local workers from inside coordinate descent.

``gdmix train --workers N`` trains fixed effects exactly as a TFJob would: the other
coordinates' scores are written as uid-keyed offsets, the current model as the warm start and
the bag's index map as the job's index map, then ``python -m gdmix fixed-effect``
(:class:`~gdmix.jobs.specs.FixedEffectJobSpec`) runs on N workers through
:func:`gdmix.distributed.launcher.launch_local`, and the committed model is read back.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

from gdmix.artifacts import TrainedModel, load_models, save_model
from gdmix.config import GdmixConfig
from gdmix.dataset import Dataset
from gdmix.distributed.launcher import launch_local
from gdmix.errors import GdmixError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.jobs.specs import FixedEffectJobSpec, gdmix_command
from gdmix.layout import JOB_FILE
from gdmix.models.coordinates import FixedEffectCoordinate
from gdmix.models.fixed_effect import FixedEffectModel


def fit_on_local_workers(
    config: GdmixConfig,
    coordinate: FixedEffectCoordinate,
    data: Dataset,
    offsets: np.ndarray,
    initial: FixedEffectModel | None,
    index_maps: dict[str, IndexMap],
    workers: int,
) -> tuple[FixedEffectModel, dict]:
    with tempfile.TemporaryDirectory(prefix="gdmix-fe-") as tmp:
        root = Path(tmp)
        job_config = config.model_dump(mode="json")
        job_config["data"]["validation"] = None  # the caller scores validation and test data itself
        job_config["data"]["test"] = None
        (root / "config.yaml").write_text(yaml.safe_dump(job_config))
        fs.write_parquet(pa.table({"uid": data.uid, "offset": offsets - data.offset}), str(root / "offsets"))
        maps = {coordinate.feature_bag: index_maps[coordinate.feature_bag]} if coordinate.feature_bag else {}
        save_model(str(root / "maps"), TrainedModel(config.data, [], maps, {}))
        warm_start = None
        if initial is not None:
            warm_start = str(root / "warm")
            save_model(warm_start, TrainedModel(config.data, [coordinate], maps, {coordinate.name: initial}))
        job = FixedEffectJobSpec(config=str(root / "config.yaml"), coordinate=coordinate.name, output=str(root / "out"),
                                 offsets=str(root / "offsets"), index_maps=str(root / "maps"), warm_start=warm_start)
        status = launch_local(gdmix_command(job.to_argv()), workers)
        if status != 0:
            raise GdmixError(f"fixed effect '{coordinate.name}' failed on its {workers} workers (status {status}); "
                             "see the worker logs above")
        model = load_models(str(root / "out"), [coordinate], maps)[coordinate.name]
        summary = json.loads(fs.read_text(str(root / "out" / JOB_FILE)))
    return model, summary["solver"] | {"workers": workers}
