"""A trained GDMix model on disk (laid out as :mod:`gdmix.layout` says), shared by training,
scoring and warm start.

Models are stored by (name, term) and entity id, never by column index, so they can be read
back against any index map: features the map does not know are dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from gdmix import __version__
from gdmix.config import DataConfig, DetextConfig, FixedEffectConfig, RandomEffectConfig
from gdmix.errors import GdmixError
from gdmix.features.index_map import IndexMap
from gdmix.io import fs
from gdmix.layout import SPEC_FILE, index_map_uri, model_uri
from gdmix.models.coordinates import Coordinate, Model, make_coordinate

FORMAT_VERSION = 1


@dataclass
class TrainedModel:
    """Everything needed to score new data: coordinates, their index maps and their models."""

    data: DataConfig
    coordinates: list[Coordinate]
    index_maps: dict[str, IndexMap]
    models: dict[str, Model]

    def index_map(self, coordinate: Coordinate) -> IndexMap:
        return bag_index_map(self.index_maps, coordinate)


def bag_index_map(index_maps: dict[str, IndexMap], coordinate: Coordinate) -> IndexMap:
    """The index map of a coordinate's bag (an empty one for intercept-only coordinates)."""
    return index_maps[coordinate.feature_bag] if coordinate.feature_bag else IndexMap.empty()


def save_model(root: str, model: TrainedModel) -> None:
    spec = {
        "format": FORMAT_VERSION,
        "gdmix_version": __version__,
        "data": model.data.model_dump(mode="json"),
        "coordinates": [c.config.model_dump(mode="json") for c in model.coordinates],
    }
    fs.write_text(fs.join(root, SPEC_FILE), json.dumps(spec, indent=2) + "\n")
    for bag, index_map in model.index_maps.items():
        index_map.save(index_map_uri(root, bag))
    for coordinate in model.coordinates:
        coordinate.save(model.models[coordinate.name], model_uri(root, coordinate.name), model.index_map(coordinate))


def read_spec(root: str) -> tuple[DataConfig, list[Coordinate]]:
    spec_path = fs.join(root, SPEC_FILE)
    if not fs.exists(spec_path):
        raise GdmixError(f"{root} is not a trained gdmix model: {SPEC_FILE} not found")
    try:
        spec = json.loads(fs.read_text(spec_path))
        if spec.get("format") != FORMAT_VERSION:
            raise GdmixError(f"{spec_path}: unsupported model format {spec.get('format')!r}")
        kinds = {"fixed_effect": FixedEffectConfig, "random_effect": RandomEffectConfig, "detext": DetextConfig}
        configs = [kinds[c["type"]](**c) for c in spec["coordinates"]]
        return DataConfig(**spec["data"]), [make_coordinate(c) for c in configs]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # pydantic errors are ValueErrors
        raise GdmixError(f"{spec_path}: not a valid gdmix model description ({exc})") from None


def load_models(root: str, coordinates: list[Coordinate], index_maps: dict[str, IndexMap]) -> dict[str, Model]:
    """Models of ``coordinates`` found under ``root``, read against the given index maps."""
    models = {}
    for coordinate in coordinates:
        uri = model_uri(root, coordinate.name)
        if fs.exists(uri):
            models[coordinate.name] = coordinate.load(uri, bag_index_map(index_maps, coordinate))
    return models


def load_model(root: str) -> TrainedModel:
    data, coordinates = read_spec(root)
    bags = sorted({c.feature_bag for c in coordinates if c.feature_bag})
    index_maps = {bag: IndexMap.load(index_map_uri(root, bag)) for bag in bags}
    models = load_models(root, coordinates, index_maps)
    missing = [c.name for c in coordinates if c.name not in models]
    if missing:
        raise GdmixError(f"{root}: model files missing for coordinate(s) {', '.join(missing)}")
    return TrainedModel(data, coordinates, index_maps, models)
