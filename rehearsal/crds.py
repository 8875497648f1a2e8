"""Which custom resources the fake API server serves, and their validation.

The served kinds and their schemas come from the upstream CRDs vendored in
``tests/upstream/crds/*.yaml`` (training-operator v1.9 TFJob, mpi-operator v0.7 MPIJob,
spark-operator v2.4 SparkApplication). A created object is checked with
:mod:`rehearsal.crd_schema`, the same strict check the offline tests use: an unknown field is
an error (a real API server with the default ``fieldValidation=Warn`` would drop it with a
warning, which hides typos; the rehearsal wants to see them). Then schema ``default``\\ s are
applied, as the API server does.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rehearsal import crd_schema

#: Kubernetes version of the rehearsed cluster (the kind node image and the PSA labels agree)
K8S_VERSION = "1.33"

REPO = Path(__file__).resolve().parent.parent
CRD_DIR = REPO / "tests" / "upstream" / "crds"


@dataclass(frozen=True)
class ServedKind:
    group: str
    version: str
    plural: str
    kind: str
    schema: dict | None
    path: Path | None = None  # the CRD file


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
                served[key] = ServedKind(*key, spec["names"]["kind"], schema, path)
    return served


class Invalid(ValueError):
    """The object does not match its CRD's schema; ``causes`` are (field, message) pairs."""

    def __init__(self, causes: list[tuple[str, str]]) -> None:
        self.causes = causes
        super().__init__("; ".join(f"{f}: {m}" for f, m in causes))


def validate_object(obj: dict, served: ServedKind) -> dict:
    """The object with schema defaults applied; raises :class:`Invalid` (every problem, by field)."""
    if served.path is not None:
        crd = crd_schema.load_crd(served.path, served.version)
        try:
            crd_schema.validate(obj, crd, K8S_VERSION, check_opaque=crd_schema.strict_pod_template_check(K8S_VERSION))
        except crd_schema.InvalidManifest as exc:
            raise Invalid([_field_and_message(error) for error in exc.errors]) from None
        except Exception as exc:  # noqa: BLE001 - kubernetes_validate's own errors on a pod template
            raise Invalid([("", str(exc))]) from None
    return _with_defaults(copy.deepcopy(obj), served.schema or {})


def _field_and_message(error: str) -> tuple[str, str]:
    field, sep, message = error.partition(": ")
    return (field, message) if sep else ("", error)


def _with_defaults(value: Any, schema: dict) -> Any:
    """``value`` with the schema's ``default``\\ s filled in where a field is absent."""
    if isinstance(value, dict):
        properties = schema.get("properties") or {}
        for key, sub in properties.items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
        additional = schema.get("additionalProperties")
        for key in value:
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub:
                value[key] = _with_defaults(value[key], sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_with_defaults(item, schema["items"]) for item in value]
    return value
