"""The one configuration schema of a GDMix run, used by the CLI, the pipeline and the components.

A run is described by one YAML file validated here, once, at the edge: unknown keys are errors
(with their path in the message), defaults are explicit, and inner code receives typed, frozen
objects it can trust. Any value can be overridden from the command line with
``--set dotted.key=value``; list items of ``coordinates`` can be addressed by index or by name
(``--set coordinates.per_user.l2=10``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gdmix.errors import ConfigError

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(StrictModel):
    """Where the data is and which columns carry uid, label, weight and offset."""

    train: str
    validation: str | None = None
    test: str | None = Field(
        None, description="Optional held-out test data: scored and reported after every coordinate like "
                          "validation, never used to select anything (DeText's best step uses validation)."
    )
    uid: str = "uid"
    label: str = "label"
    weight: str | None = Field(
        None, description="Weight column; by default a column named 'weight' if present, else 1.0."
    )
    offset: str | None = Field(
        None, description="Offset column; by default a column named 'offset' if present, else 0.0."
    )


class LbfgsConfig(StrictModel):
    """Stopping rules of the fixed effect's L-BFGS-B.

    The defaults differ from GDMix's (100 iterations, relative decrease 1e-12) on purpose:
    those stop far from the optimum on correlated one-hot features.

    ``gtol`` is the rule that matters: the run stops when the largest projected-gradient entry of
    the objective, divided by the total sample weight, is at most ``gtol``. That is scale-free (it
    does not tighten or loosen with the number of rows) and, unlike a relative-decrease test, it
    certifies the optimum. ``tol`` is the relative objective decrease below which L-BFGS-B may
    also stop; it is deliberately tiny by default so it only fires at float64 round-off.
    """

    max_iter: int = Field(500, ge=0)
    tol: float = Field(1e-15, ge=0)
    gtol: float = Field(1e-9, gt=0)
    history: int = Field(10, ge=1, le=100)


class NewtonConfig(StrictModel):
    """Stopping rules of the batched per-entity Newton solver.

    An entity has converged when its largest gradient entry, divided by its total sample weight
    (at least 1), is at most ``tol``. Entities with more than ``max_dense_features`` local features
    are solved one by one with L-BFGS-B instead (a dense Hessian would be too large).
    """

    max_iter: int = Field(100, ge=0)
    tol: float = Field(1e-10, gt=0)
    max_dense_features: int = Field(512, ge=1)


class FixedEffectConfig(StrictModel):
    """A global logistic regression on one feature bag (no bag: intercept only).

    ``l2`` must be positive: without it a separable dataset has no finite optimum and the
    coefficients would depend on when the solver happened to stop.
    """

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["fixed_effect"]
    feature_bag: str | None = None
    l2: float = Field(1.0, gt=0)
    regularize_intercept: bool = False
    variance: Literal["none", "simple", "full"] = Field(
        "none", description="coefficient variances saved beside the coefficients: 1 / diag(H) (simple) or "
                            "diag(H^-1) (full: a dense Hessian, so few features), H the Hessian at the optimum")
    optimizer: LbfgsConfig = LbfgsConfig()


class L2Auto(StrictModel):
    """``l2: auto``: the ridge is the prior precision ``1 / sigma^2`` of every entity's
    coefficients, estimated in every pass by maximising the Laplace approximation of the
    coordinate's marginal likelihood (empirical Bayes, as glmer's Laplace fit), starting at ``init``
    (or at the previous pass's or warm start's estimate).

    ``per_group``: the intercept and the coefficients get a prior variance each (they live on
    different scales: a group's base rate against its features' effects), both learned together;
    it needs ``regularize_intercept`` (an unpenalised intercept has no prior to learn)."""

    auto: Literal[True] = True
    init: float = Field(1.0, gt=0)
    per_group: bool = False


class RandomEffectConfig(StrictModel):
    """One logistic regression per entity of column ``entity``, on that entity's rows only.

    The per-entity intercept is part of the random effect and is penalised by default. When it
    is not, an entity whose rows all carry one label has no finite optimum; such entities get
    the ridge ``one_label_intercept_l2`` (default: ``l2``) on their intercept and are counted.
    """

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["random_effect"]
    entity: str
    feature_bag: str | None = None
    l2: float | L2Auto = Field(1.0, description="the ridge weight, or 'auto' (learned from the data; see L2Auto)")
    regularize_intercept: bool = True
    one_label_intercept_l2: float | None = Field(None, gt=0)
    variance: Literal["none", "simple", "full"] = Field(
        "none", description="coefficient variances saved beside the coefficients: 1 / diag(H) (simple) or "
                            "diag(H^-1) (full), H the Hessian at the optimum")
    min_rows: int = Field(1, ge=1)
    max_rows: int | None = Field(None, ge=1)
    seed: int = 0
    partitions: int | None = Field(
        None, ge=1, description="Partitions of the entity population for partitioned training "
                                "(default: prep.partitions)."
    )
    solver: NewtonConfig = NewtonConfig()

    @field_validator("l2", mode="before")
    @classmethod
    def _auto(cls, value):
        return {"auto": True} if value == "auto" else value

    @field_validator("l2")
    @classmethod
    def _positive(cls, value):
        if isinstance(value, float) and not value > 0:
            raise ValueError(f"l2 must be positive (or 'auto'), got {value}")
        return value

    @property
    def l2_auto(self) -> L2Auto | None:
        """The settings of a learned ``l2``, None for a fixed one."""
        return self.l2 if isinstance(self.l2, L2Auto) else None

    @model_validator(mode="after")
    def _rows_bounds(self) -> "RandomEffectConfig":
        if self.max_rows is not None and self.max_rows < self.min_rows:
            raise ValueError(f"max_rows ({self.max_rows}) is below min_rows ({self.min_rows})")
        return self

    @model_validator(mode="after")
    def _per_group_prior(self) -> "RandomEffectConfig":
        if self.l2_auto is not None and self.l2_auto.per_group and not self.regularize_intercept:
            raise ValueError(f"coordinate '{self.name}': l2: auto with per_group learns the intercept's prior "
                             "variance, but regularize_intercept is false (the intercept has a flat prior); "
                             "drop per_group or set regularize_intercept: true")
        return self


class DetextConfig(StrictModel):
    """A deep text-ranking fixed effect (DeText): text encoders, interactions, wide features, an MLP.

    Text columns are normalised and tokenised inside the model (the same graph in training and
    serving); the vocabulary comes from the training rows. ``wide_bag`` is a name-term-value bag
    (sparse wide features, embedded and also added linearly); ``dense`` are numeric columns
    (standardised from the training rows, then rescaled by ``tanh(w*x + b)``). The offset (the
    other coordinates' scores) is added to the logit, so the deep model can be re-fitted on
    random-effect residuals in later passes. Random effects may follow only a ``pointwise``
    model: pairwise and listwise scores are not calibrated log-odds.
    """

    name: str = Field(pattern=NAME_PATTERN)
    type: Literal["detext"]
    doc_text: list[str] = Field(min_length=1, description="document text columns")
    query_text: str | None = None
    user_text: list[str] = []
    wide_bag: str | None = None
    dense: list[str] = []
    encoder: Literal["cnn", "lstm", "transformer", "pretrained"] = "cnn"
    pretrained_path: str | None = Field(None, description="a local SavedModel mapping strings [n] to vectors [n, d]")
    vocab_size: int = Field(30000, ge=8)
    min_token_count: int = Field(1, ge=1)
    max_len: int = Field(16, ge=1)
    max_text_bytes: int = Field(2048, ge=16, description="longer fields are cut before tokenising")
    embedding_dim: int = Field(64, ge=1)
    num_filters: int = Field(50, ge=1)
    filter_windows: list[int] = [1, 2, 3]
    num_units: int = Field(64, ge=1)
    num_layers: int = Field(1, ge=1)
    num_heads: int = Field(2, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    interactions: list[Literal["cosine", "hadamard", "diff", "concat"]] = ["cosine", "hadamard"]
    wide_embedding_dim: int = Field(16, ge=1)
    hidden: list[int] = [64]
    loss: Literal["pointwise", "pairwise", "listwise"] = "pointwise"
    group: str | None = Field(None, description="the query/list column (ranking losses and metrics)")
    optimizer: Literal["adam", "adamw", "sgd"] = "adamw"
    learning_rate: float = Field(0.002, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_gradient_norm: float | None = Field(1.0, gt=0)
    batch_size: int = Field(64, ge=1, description="global batch (rows); workers split it")
    steps: int = Field(1000, ge=1)
    eval_every: int = Field(200, ge=1)
    metric: str = Field("auc", description="auc, logloss, or ndcg@k / mrr@k / precision@k with a group")
    metric_direction: Literal["max", "min", "auto"] = "auto"
    seed: int = 0
    distribution: Literal["auto", "collective", "horovod"] = "auto"

    @model_validator(mode="after")
    def _consistent(self) -> "DetextConfig":
        if self.loss != "pointwise" and not self.group:
            raise ValueError(f"loss '{self.loss}' ranks rows within lists: set 'group' (the query/list column)")
        if self.encoder == "pretrained" and not self.pretrained_path:
            raise ValueError("encoder 'pretrained' needs pretrained_path (a local SavedModel)")
        return self

    @property
    def feature_bag(self) -> str | None:
        return self.wide_bag


class RawInputConfig(StrictModel):
    """Raw rows to prepare: a file or directory of Parquet, CSV, JSON lines or Avro."""

    path: str
    format: Literal["parquet", "csv", "json", "avro"] = "parquet"
    csv_delimiter: str = ","


class BagSpec(StrictModel):
    """How a feature bag is built from raw columns.

    ``numeric`` columns become (column, "", value); ``categorical`` columns become
    (column, str(value), 1.0); ``bags`` are existing name-term-value columns merged in. Nulls
    and zeros are left out.
    """

    numeric: list[str] = []
    categorical: list[str] = []
    bags: list[str] = []


class LabelSpec(StrictModel):
    """The label: the column itself (0/1), or ``column > threshold`` when a threshold is set."""

    column: str
    threshold: float | None = None


class SplitConfig(StrictModel):
    """A seeded split of ``prep.input`` by a hash of the uid: ``validation_fraction`` and
    ``test_fraction`` are fractions of the whole input (validation takes the hash band
    ``[0, validation_fraction)``, test the band after it, so a test split leaves the validation
    rows of the same seed unchanged). A split whose ``*_input`` is given is not drawn: its rows stay
    in train."""

    validation_fraction: float = Field(gt=0, lt=1)
    test_fraction: float = Field(0.0, ge=0, lt=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fractions(self) -> "SplitConfig":
        if self.validation_fraction + self.test_fraction >= 1:
            raise ValueError(f"validation_fraction + test_fraction must be below 1 (got {self.validation_fraction} + "
                             f"{self.test_fraction}): no training rows would be left")
        return self


class SparkConfig(StrictModel):
    """Spark settings of the prep stages. ``master: null`` leaves the master to ``spark-submit``
    (or the Spark operator), e.g. ``spark-submit --master k8s://... gdmix/prep/submit.py CONFIG``."""

    master: str | None = "local[*]"
    driver_memory: str = "4g"
    executor_instances: int = Field(2, ge=1, description="executors of a SparkApplication (cluster runs)")
    executor_memory: str = "4g"
    shuffle_partitions: int = Field(16, ge=1)
    conf: dict[str, str] = {}


class PrepConfig(StrictModel):
    """Spark data preparation: raw rows -> contract datasets, index maps, entity partitions.

    Output (under ``output``): ``train/``, ``validation/`` and, when asked (``test_input`` or
    ``split.test_fraction``), ``test/`` in the data contract,
    ``index_maps/<bag>/``, and for every random effect ``partitions/<coordinate>/`` with its
    rows grouped into size-balanced partitions and a ``manifest.json``.
    """

    input: RawInputConfig
    validation_input: RawInputConfig | None = None
    test_input: RawInputConfig | None = None
    output: str
    uid: str | None = Field("uid", description="uid column; null generates uids (not stable across inputs)")
    label: LabelSpec
    weight: str | None = None
    offset: str | None = None
    bags: dict[str, BagSpec] = {}
    columns: list[str] = Field([], description="other columns carried as they are (DeText's columns are added)")
    min_feature_count: int = Field(1, ge=1)
    split: SplitConfig | None = None
    partitions: int = Field(16, ge=1)
    missing_offsets: Literal["error", "zero"] = "error"
    spark: SparkConfig = SparkConfig()


class PipelineConfig(StrictModel):
    """How the Kubeflow pipeline runs the stages (``gdmix train`` ignores this section).

    ``backend: local`` runs every stage inside its own task: N fixed-effect workers as local
    processes with ``TF_CONFIG`` on 127.0.0.1, Spark ``local[*]``. ``backend: kubernetes``
    makes the fixed effect a TFJob (DeText an MPIJob or TFJob) and data prep a
    SparkApplication, created by the step's launcher in ``namespace``: by default the namespace
    the launcher's own pod runs in (KFP standalone: ``kubeflow``; multi-user Kubeflow: the
    profile's namespace), where its service account's RoleBinding lets it create jobs. Random
    effects always run as ``partition_groups`` parallel tasks per coordinate, at most
    ``parallelism`` at a time. ``name`` is the pipeline's name in KFP (default ``gdmix-`` and the
    coordinates' names): pipelines uploaded to one KFP need distinct names.
    """

    name: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,98}[a-z0-9])?$")
    backend: Literal["local", "kubernetes"] = "local"
    namespace: str | None = Field(None, pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
    fixed_effect_workers: int = Field(1, ge=1)
    partition_groups: int = Field(4, ge=1)
    parallelism: int = Field(4, ge=1)
    object_store_secret: str | None = Field(
        "gdmix-object-store", description="Kubernetes Secret whose keys become the environment of every "
                                          "step (AWS_ACCESS_KEY_ID, ...); null: none.")
    job_timeout_seconds: float = Field(24 * 3600, gt=0)


CoordinateConfig = Annotated[
    Union[FixedEffectConfig, RandomEffectConfig, DetextConfig], Field(discriminator="type")
]
COORDINATE_TYPES = ("fixed_effect", "random_effect", "detext")


class GdmixConfig(StrictModel):
    """A whole training run: data, output location, coordinates and coordinate-descent passes."""

    data: DataConfig
    output: str
    passes: int = Field(1, ge=1)
    coordinates: list[CoordinateConfig] = Field(min_length=1)
    warm_start: str | None = Field(
        None, description="Output directory of an earlier run whose models seed this one."
    )
    prep: PrepConfig | None = None
    pipeline: PipelineConfig = PipelineConfig()

    def coordinate(self, name: str, *kinds: type) -> CoordinateConfig:
        """The coordinate called ``name``, which must be one of ``kinds`` (any kind if none given)."""
        found = next((c for c in self.coordinates if c.name == name), None)
        if found is None:
            raise ConfigError(f"no coordinate named '{name}' (have: {', '.join(c.name for c in self.coordinates)})")
        if kinds and not isinstance(found, kinds):
            wanted = " or ".join(k.model_fields["type"].annotation.__args__[0] for k in kinds)
            raise ConfigError(f"coordinate '{name}' is a {found.type}, not {wanted}")
        return found

    @model_validator(mode="after")
    def _unique_names(self) -> "GdmixConfig":
        names = [c.name for c in self.coordinates]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"coordinate names must be unique; repeated: {', '.join(duplicated)}")
        ranking = [c.name for c in self.coordinates if isinstance(c, DetextConfig) and c.loss != "pointwise"]
        if ranking and len(self.coordinates) > 1:
            raise ValueError(f"{', '.join(ranking)}: a {self.coordinates[0].type} with a ranking loss gives scores "
                             "that are not log-odds, so no other coordinate can use them as offsets; "
                             "use loss: pointwise")
        return self


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> GdmixConfig:
    """Read (a local file or any fsspec URI), override and validate a YAML config; every problem
    becomes a :class:`ConfigError`."""
    try:
        text = _read_config_text(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    return load_config_text(text, overrides, source=str(path))


def load_config_text(text: str, overrides: list[str] | tuple[str, ...] = (), source: str = "config") -> GdmixConfig:
    """Like :func:`load_config`, from YAML text (a pipeline's runtime parameter)."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(raw).__name__}")
    for override in overrides:
        apply_override(raw, override)
    return validate_config(raw, source=source)


def _read_config_text(path: str | Path) -> str:
    """A launched job's pods read their config from the object store, so any fsspec URI works."""
    if "://" in str(path):
        from gdmix.io import fs

        return fs.read_text(str(path))
    return Path(path).read_text()


def validate_config(raw: dict[str, Any], source: str = "config") -> GdmixConfig:
    """Validate a plain dict; errors list every bad key with its dotted path."""
    try:
        return GdmixConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{_format_location(err['loc'])}: {_describe(err)}" for err in exc.errors()]
        raise ConfigError(f"{source}: invalid configuration\n  " + "\n  ".join(lines)) from None


def apply_override(raw: dict[str, Any], assignment: str) -> None:
    """Apply one ``dotted.key=value`` to a raw config dict (value parsed as YAML)."""
    key, sep, text = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects dotted.key=value, got '{assignment}'")
    try:
        value = yaml.safe_load(text) if text else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML: {exc}") from None
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts[:-1]):
        node = _descend(node, part, ".".join(parts[: depth + 1]))
    last = parts[-1]
    if isinstance(node, list):
        node[_list_index(node, last, key)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise ConfigError(f"--set {key}: '{'.'.join(parts[:-1])}' is not a mapping or list")


def _descend(node: Any, part: str, path: str) -> Any:
    if isinstance(node, dict):
        return node.setdefault(part, {})
    if isinstance(node, list):
        return node[_list_index(node, part, path)]
    raise ConfigError(f"--set: '{path}' cannot be indexed (it is {type(node).__name__})")


def _list_index(items: list[Any], part: str, path: str) -> int:
    """A list element by position, or by the value of its ``name`` key."""
    if part.lstrip("-").isdigit():
        index = int(part)
        if -len(items) <= index < len(items):
            return index
        raise ConfigError(f"--set {path}: index {index} out of range (list has {len(items)} items)")
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("name") == part:
            return index
    names = [str(item.get("name")) for item in items if isinstance(item, dict)]
    raise ConfigError(f"--set {path}: no item named '{part}' (names: {', '.join(names)})")


def _format_location(loc: tuple[Any, ...]) -> str:
    """('coordinates', 1, 'random_effect', 'l2') -> 'coordinates[1].l2'."""
    text = ""
    previous_was_index = False
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            previous_was_index = True
            continue
        if previous_was_index and part in COORDINATE_TYPES:
            previous_was_index = False
            continue  # pydantic's discriminator tag, not a key the user wrote
        text += f".{part}" if text else str(part)
        previous_was_index = False
    return text or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required key is missing"
    if err["type"] == "union_tag_invalid":
        return f"unknown coordinate type (expected one of: {', '.join(COORDINATE_TYPES)})"
    if err["type"] == "union_tag_not_found":
        return f"missing 'type' (one of: {', '.join(COORDINATE_TYPES)})"
    return err["msg"]
