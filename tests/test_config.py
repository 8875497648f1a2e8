from pathlib import Path

import pytest
import yaml

from gdmix.config import (
    FixedEffectConfig, RandomEffectConfig, apply_override, load_config, validate_config,
)
from gdmix.errors import ConfigError


def _raw():
    return {
        "data": {"train": "t", "validation": "v"},
        "output": "o",
        "coordinates": [
            {"name": "global", "type": "fixed_effect", "feature_bag": "g"},
            {"name": "per_user", "type": "random_effect", "entity": "user_id", "feature_bag": "u"},
        ],
    }


def test_defaults_follow_the_issue():
    config = validate_config(_raw())
    fixed, random = config.coordinates
    assert isinstance(fixed, FixedEffectConfig) and isinstance(random, RandomEffectConfig)
    assert fixed.regularize_intercept is False and random.regularize_intercept is True
    assert fixed.l2 == 1.0 and random.l2 == 1.0
    assert random.min_rows == 1 and random.max_rows is None
    assert config.passes == 1
    assert config.data.label == "label" and config.data.weight is None


def test_unknown_key_is_an_error_with_its_path():
    raw = _raw()
    raw["coordinates"][1]["optimiser"] = {"max_iter": 3}
    with pytest.raises(ConfigError, match=r"coordinates\[1\]\.optimiser: unknown key"):
        validate_config(raw)
    raw = _raw()
    raw["coordinates"][0]["optimizer"] = {"max_iters": 3}
    with pytest.raises(ConfigError, match=r"coordinates\[0\]\.optimizer\.max_iters: unknown key"):
        validate_config(raw)
    raw = _raw()
    raw["dat"] = {}
    with pytest.raises(ConfigError, match=r"dat: unknown key"):
        validate_config(raw)


def test_bad_values_and_types():
    raw = _raw()
    raw["coordinates"][0]["type"] = "deep"
    with pytest.raises(ConfigError, match=r"coordinates\[0\]: unknown coordinate type"):
        validate_config(raw)
    raw = _raw()
    raw["coordinates"][1]["l2"] = 0
    with pytest.raises(ConfigError, match=r"coordinates\[1\]\.l2"):
        validate_config(raw)
    raw = _raw()
    raw["coordinates"][1].update(min_rows=5, max_rows=2)
    with pytest.raises(ConfigError, match="max_rows"):
        validate_config(raw)
    raw = _raw()
    raw["coordinates"][1]["name"] = "global"
    with pytest.raises(ConfigError, match="unique"):
        validate_config(raw)
    raw = _raw()
    del raw["output"]
    with pytest.raises(ConfigError, match="output: required key is missing"):
        validate_config(raw)
    raw = _raw()
    raw["coordinates"] = []
    with pytest.raises(ConfigError, match="coordinates"):
        validate_config(raw)


def test_overrides_by_index_name_and_new_key():
    raw = _raw()
    apply_override(raw, "coordinates.per_user.l2=10")
    apply_override(raw, "coordinates.0.optimizer.max_iter=7")
    apply_override(raw, "passes=3")
    apply_override(raw, "data.weight=w")
    apply_override(raw, "data.validation=null")
    config = validate_config(raw)
    assert config.coordinates[1].l2 == 10
    assert config.coordinates[0].optimizer.max_iter == 7
    assert config.passes == 3 and config.data.weight == "w" and config.data.validation is None


@pytest.mark.parametrize("bad", ["passes", "coordinates.nobody.l2=1", "coordinates.9.l2=1", "=3"])
def test_bad_overrides(bad):
    with pytest.raises(ConfigError):
        apply_override(_raw(), bad)


def test_load_config_reads_yaml_and_applies_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_raw()))
    config = load_config(path, ["coordinates.global.l2=0.5"])
    assert config.coordinates[0].l2 == 0.5
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_examples_are_valid():
    for name in ("lr.yaml", "lr-tuned.yaml", "lr-auto.yaml"):
        config = load_config(Path(__file__).parents[1] / "examples" / "movielens-100k" / name)
        assert [c.name for c in config.coordinates] == ["global", "per_user", "per_movie"]
    assert all(c.l2_auto is not None for c in config.coordinates[1:])  # lr-auto: learned, not tuned
