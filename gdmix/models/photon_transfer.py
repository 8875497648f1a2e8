"""``gdmix export-model`` / ``gdmix import-model --format photon-avro``: a whole model directory
to and from Photon ML's Avro model files, laid out as GDMix wrote them.

Export (``<out>/`` is what GDMix's ``output_dir`` held)::

    <out>/<coordinate>/models/part-00000.avro      a fixed effect: one record, modelId "global model"
    <out>/<coordinate>/models/part-<p:05d>.avro    a random effect: one record per entity
    <out>/model.json                               our model description (GDMix and Photon ignore it)

Import reads that layout, or Photon ML's own (``fixed-effect/<coordinate>/coefficients/`` and
``random-effect/<coordinate>/coefficients/``, e.g. its ``best/`` folder), for every linear
coordinate of a configuration (``--config``; an export of ours carries its own ``model.json``)
and writes a model directory of ours: index maps built from the features the models name,
coefficients as Parquet. It then scores (``gdmix score``), warm-starts (``warm_start:``) and
feeds the pipeline like any model we trained. Outputs are staged and committed whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from gdmix.artifacts import TrainedModel, bag_index_map, load_models, read_spec, save_model
from gdmix.config import DataConfig, DetextConfig, FixedEffectConfig, GdmixConfig
from gdmix.errors import DataError, GdmixError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.io.avro_files import list_avro_files, read_records, vendored_schema, write_records
from gdmix.layout import SPEC_FILE, index_map_uri
from gdmix.models.coordinates import Coordinate, make_coordinate
from gdmix.models.fixed_effect import FixedEffectModel
from gdmix.models.linear import is_intercept
from gdmix.models.photon_avro import FIXED_EFFECT_MODEL_ID, RecordTable, table_to_records
from gdmix.models.random_effect import RandomEffectModel

FORMATS = ("photon-avro",)
MODEL_SCHEMA = "BayesianLinearModelAvro"


def gdmix_models_uri(root: str, coordinate: str) -> str:
    """Where GDMix kept a coordinate's model files (``<output_dir>/<coordinate>/models``)."""
    return fs.join(root, coordinate, "models")


def photon_models_uri(root: str, coordinate: Coordinate) -> str:
    """Where Photon ML keeps a coordinate's model files (below ``best/`` or ``models/<i>/``)."""
    kind = "fixed-effect" if isinstance(coordinate.config, FixedEffectConfig) else "random-effect"
    return fs.join(root, kind, coordinate.name, "coefficients")


def _check_format(form: str) -> None:
    if form not in FORMATS:
        raise GdmixError(f"unknown model format {form!r} (supported: {', '.join(FORMATS)})")


def _is_linear(coordinate: Coordinate) -> bool:
    return not isinstance(coordinate.config, DetextConfig)


def export_model(model_dir: str, out: str, form: str = "photon-avro", files: int = 1, log=print) -> dict:
    """Write every linear coordinate of the model at ``model_dir`` as Photon Avro under ``out``;
    a random effect's entities go to ``files`` files (consecutive ranges). DeText coordinates
    have no Photon form and are listed as skipped."""
    _check_format(form)
    if files < 1:
        raise GdmixError(f"--files must be at least 1, got {files}")
    _, coordinates = read_spec(model_dir)
    linear = [c for c in coordinates if _is_linear(c)]
    skipped = {c.name: "a DeText network is not a linear model" for c in coordinates if not _is_linear(c)}
    for name, why in skipped.items():
        log(f"export-model: skipping coordinate '{name}': {why}")
    maps = {bag: IndexMap.load(index_map_uri(model_dir, bag)) for bag in sorted({c.feature_bag for c in linear
                                                                                 if c.feature_bag})}
    models = load_models(model_dir, linear, maps)
    missing = [c.name for c in linear if c.name not in models]
    if missing:
        raise GdmixError(f"{model_dir}: model files missing for coordinate(s) {', '.join(missing)}")
    schema = vendored_schema(MODEL_SCHEMA)
    written = {}
    with fs.staged_directory(out) as staging:
        for coordinate in linear:
            model, index_map = models[coordinate.name], bag_index_map(maps, coordinate)
            target = gdmix_models_uri(staging, coordinate.name)
            if isinstance(model, FixedEffectModel):
                count = write_records(fs.join(target, "part-00000.avro"), schema,
                                      table_to_records(model.to_table(index_map), [FIXED_EFFECT_MODEL_ID]))
            else:
                count = sum(write_records(fs.join(target, f"part-{number:05d}.avro"), schema,
                                          table_to_records(part.to_table(index_map)))
                            for number, part in enumerate(model.split(files)))
            written[coordinate.name] = {"models": count, "variances": model.variances is not None}
        fs.write_text(fs.join(staging, SPEC_FILE), fs.read_text(fs.join(model_dir, SPEC_FILE)))
    return {"format": form, "output": out, "coordinates": written, "skipped": skipped}


@dataclass
class _Found:
    """One coordinate's records, read and checked, before index maps exist to lay them out."""

    coordinate: Coordinate
    source: str
    table: pa.Table
    records: int
    variances: bool


def import_model(path: str, out: str, config: GdmixConfig | None = None, form: str = "photon-avro",
                 log=print) -> dict:
    """Read the Photon Avro models under ``path`` of every linear coordinate of ``config`` (by
    default the ``model.json`` an export of ours left there) and commit them to ``out`` as a
    model directory of ours. Coordinates whose files are not there are skipped (a warm start
    may seed some coordinates only); finding none is an error."""
    _check_format(form)
    data, coordinates = _description(path, config)
    linear = [c for c in coordinates if _is_linear(c)]
    skipped = {c.name: "a DeText network is not a linear model" for c in coordinates if not _is_linear(c)}
    found = []
    for coordinate in linear:
        source = _source_of(path, coordinate)
        if source is None:
            skipped[coordinate.name] = "no model files found"
            continue
        found.append(_read_coordinate(coordinate, source))
    for name, why in skipped.items():
        log(f"import-model: skipping coordinate '{name}': {why}")
    if not found:
        looked = ", ".join(f"{gdmix_models_uri(path, c.name)} or {photon_models_uri(path, c)}" for c in linear)
        raise GdmixError(f"{path}: no Avro model files for any coordinate (looked in: {looked or 'nothing'})")
    maps = _index_maps(found)
    models = {}
    for item in found:
        index_map = bag_index_map(maps, item.coordinate)
        if isinstance(item.coordinate.config, FixedEffectConfig):
            models[item.coordinate.name] = FixedEffectModel.from_table(item.table.drop_columns(["entity"]), index_map,
                                                                       item.source)
        else:
            models[item.coordinate.name] = RandomEffectModel.from_table(item.table, index_map, item.source)
    with fs.staged_directory(out) as staging:
        save_model(staging, TrainedModel(data, [item.coordinate for item in found], maps, models))
    return {"format": form, "output": out, "skipped": skipped,
            "coordinates": {item.coordinate.name: {"source": item.source, "models": item.records,
                                                   "variances": item.variances} for item in found}}


def _description(path: str, config: GdmixConfig | None) -> tuple[DataConfig, list[Coordinate]]:
    """The data columns and coordinates the imported model is described by."""
    if config is not None:
        return config.data, [make_coordinate(c) for c in config.coordinates]
    if fs.exists(fs.join(path, SPEC_FILE)):
        return read_spec(path)
    raise GdmixError(f"{path} holds no {SPEC_FILE} (it was not exported by gdmix): give --config, the "
                     "configuration whose coordinates (names, entities, feature bags) the models belong to")


def _source_of(path: str, coordinate: Coordinate) -> str | None:
    """The first of GDMix's and Photon's folders for ``coordinate`` that holds Avro files."""
    for candidate in (gdmix_models_uri(path, coordinate.name), photon_models_uri(path, coordinate)):
        if fs.exists(candidate) and list_avro_files(candidate):
            return candidate
    return None


def _read_coordinate(coordinate: Coordinate, source: str) -> _Found:
    """Every record of a coordinate's Avro files, read through the upstream schema (a file
    whose schema cannot be resolved to it is an error naming the file)."""
    schema = vendored_schema(MODEL_SCHEMA)
    gathered = RecordTable()
    for file in list_avro_files(source):
        for index, record in enumerate(read_records(file, reader_schema=schema)):
            gathered.add(record, file, index)
    table = gathered.to_table()
    if isinstance(coordinate.config, FixedEffectConfig) and gathered.records != 1:
        raise DataError(f"fixed effect '{coordinate.name}' needs exactly one model record, found {gathered.records}",
                        path=source)
    if coordinate.feature_bag is None:
        features = table.filter(pa.array(~is_intercept(table)))
        if features.num_rows:
            raise DataError(f"coordinate '{coordinate.name}' has no feature_bag (intercept only) but its model has "
                            f"feature ({features.column('name')[0].as_py()!r}, {features.column('term')[0].as_py()!r})",
                            path=source, column="means")
    return _Found(coordinate, source, table, gathered.records, gathered.has_variances)


def _index_maps(found: list[_Found]) -> dict[str, IndexMap]:
    """Per bag, the index map of every feature the imported models of that bag name."""
    by_bag: dict[str, list[pa.Table]] = {}
    for item in found:
        if item.coordinate.feature_bag:
            features = item.table.filter(pa.array(~is_intercept(item.table))).select(["name", "term"])
            by_bag.setdefault(item.coordinate.feature_bag, []).append(features)
    maps = {}
    for bag, tables in sorted(by_bag.items()):
        features = pa.concat_tables(tables)
        maps[bag] = IndexMap.from_features(features.column("name").combine_chunks(),
                                           features.column("term").combine_chunks())
    return maps
