"""Which custom resources the fake API server serves, and their validation.

The served kinds and their schemas come from the upstream CRDs vendored in
``tests/upstream/crds/*.yaml`` (training-operator v1.9 TFJob, mpi-operator v0.7 MPIJob,
spark-operator v2.4 SparkApplication). A created object is checked against the served
version's ``openAPIV3Schema`` *strictly*: an unknown field is an error (a real API server with
the default ``fieldValidation=Warn`` would drop it with a warning, which hides typos; the
rehearsal wants to see them), and schema ``default``\\ s are applied as the API server does.

Hook: when ``tests/crd_schema.py`` (maintained next to the vendored CRDs) provides
``validate(obj, crd)``, it is used instead of :func:`validate_object` below.
"""

from __future__ import annotations

import copy
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "tests" / "upstream" / "crds"


@dataclass(frozen=True)
class ServedKind:
    group: str
    version: str
    plural: str
    kind: str
    schema: dict | None


def load_crds(crd_dir: Path = CRD_DIR) -> dict[tuple[str, str, str], ServedKind]:
    """``(group, version, plural) -> ServedKind`` for every served version of every CRD file."""
    served: dict[tuple[str, str, str], ServedKind] = {}
    for path in sorted(Path(crd_dir).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc or doc.get("kind") != "CustomResourceDefinition":
                continue
            spec = doc["spec"]
            for version in spec.get("versions") or []:
                if not version.get("served", True):
                    continue
                schema = (version.get("schema") or {}).get("openAPIV3Schema")
                key = (spec["group"], version["name"], spec["names"]["plural"])
                served[key] = ServedKind(*key, spec["names"]["kind"], schema)
    return served


class Invalid(ValueError):
    """The object does not match its CRD's schema; ``causes`` are (field, message) pairs."""

    def __init__(self, causes: list[tuple[str, str]]) -> None:
        self.causes = causes
        super().__init__("; ".join(f"{f}: {m}" for f, m in causes))


_TYPES = {
    "object": dict, "array": list, "string": str, "boolean": bool,
}


def _check(value: Any, schema: dict, path: str, causes: list[tuple[str, str]]) -> Any:
    if value is None:
        if schema.get("nullable"):
            return value
        causes.append((path, "must not be null"))
        return value
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, (int, str)) or isinstance(value, bool):
            causes.append((path, f"must be an integer or a string, got {type(value).__name__}"))
        return value
    kind = schema.get("type")
    if kind == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            causes.append((path, f"must be an integer, got {value!r}"))
            return value
    elif kind == "number":
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            causes.append((path, f"must be a number, got {value!r}"))
            return value
    elif kind in _TYPES and not isinstance(value, _TYPES[kind]):
        causes.append((path, f"must be of type {kind}, got {type(value).__name__}"))
        return value
    if "enum" in schema and value not in schema["enum"]:
        causes.append((path, f"unsupported value {value!r}: one of {schema['enum']}"))
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            causes.append((path, f"must be >= {schema['minimum']}"))
        if "maximum" in schema and value > schema["maximum"]:
            causes.append((path, f"must be <= {schema['maximum']}"))
    if isinstance(value, str) and "pattern" in schema and not re.search(schema["pattern"], value):
        causes.append((path, f"must match {schema['pattern']}"))
    if isinstance(value, list):
        items = schema.get("items")
        if items:
            for i, item in enumerate(value):
                value[i] = _check(item, items, f"{path}[{i}]", causes)
    if isinstance(value, dict):
        props = schema.get("properties")
        additional = schema.get("additionalProperties")
        for req in schema.get("required") or []:
            if req not in value:
                causes.append((f"{path}.{req}", "Required value"))
        for key, sub in (props or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        for key in list(value):
            sub_path = f"{path}.{key}"
            if props is not None and key in props:
                value[key] = _check(value[key], props[key], sub_path, causes)
            elif isinstance(additional, dict):
                value[key] = _check(value[key], additional, sub_path, causes)
            elif additional is True or schema.get("x-kubernetes-preserve-unknown-fields"):
                continue
            elif props is not None:
                causes.append((sub_path, "unknown field"))
    return value


def validate_object(obj: dict, served: ServedKind) -> dict:
    """The object with schema defaults applied; raises :class:`Invalid`."""
    causes: list[tuple[str, str]] = []
    obj = copy.deepcopy(obj)
    if obj.get("apiVersion") != f"{served.group}/{served.version}":
        causes.append(("apiVersion", f"must be {served.group}/{served.version}, got {obj.get('apiVersion')!r}"))
    if obj.get("kind") != served.kind:
        causes.append(("kind", f"must be {served.kind}, got {obj.get('kind')!r}"))
    name = (obj.get("metadata") or {}).get("name") or ""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", name) or len(name) > 253:
        causes.append(("metadata.name", f"a lowercase RFC 1123 subdomain is required, got {name!r}"))
    hook = _external_validator()
    if hook is not None:
        try:
            hook(obj, served)
        except Exception as exc:  # noqa: BLE001 - whatever the hook raises is a validation error
            causes.append(("", str(exc)))
    elif served.schema is not None:
        body = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")}
        schema = {k: v for k, v in served.schema.items() if k not in ("properties", "required")}
        schema["required"] = [r for r in served.schema.get("required") or [] if r not in ("apiVersion", "kind", "metadata")]
        schema["properties"] = {k: v for k, v in (served.schema.get("properties") or {}).items()
                                if k not in ("apiVersion", "kind", "metadata")}
        body = _check(body, schema, "", causes)
        obj.update(body)
    if causes:
        raise Invalid([(f.lstrip("."), m) for f, m in causes])
    return obj


def _external_validator():
    path = REPO / "tests" / "crd_schema.py"
    if not path.is_file():
        return None
    spec = importlib.util.spec_from_file_location("_gdmix_tests_crd_schema", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception:  # noqa: BLE001 - a broken helper must not silently pass: use ours
        return None
    return getattr(module, "validate", None)
