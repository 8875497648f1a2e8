"""Strict offline validation of custom resources against the CRDs their operators publish.

Why strict: the schema of a ``apiextensions.k8s.io/v1`` CRD is *structural*, and a real API
server **prunes** what that schema does not declare: an unknown field (a typo such as ``comand``
or ``cleanPodPolicies``) and a ``null`` where the schema does not say ``nullable`` are dropped
without an error, and the job then runs with a default instead of what we asked for. Here both
are errors, so the typo fails a test instead of disappearing in the cluster: every object schema
with no ``additionalProperties`` and no ``x-kubernetes-preserve-unknown-fields: true`` is closed
(``additionalProperties: false``).

How a CRD version's ``openAPIV3Schema`` (OpenAPI v3.0 as Kubernetes reads it) becomes JSON Schema
(draft 4, whose ``exclusiveMinimum``/``exclusiveMaximum`` are booleans as in OpenAPI v3.0):

- ``type`` with ``nullable: true`` also admits ``null``; ``integer`` admits ints only (not ``1.0``
  or ``true``); ``format: int32``/``int64`` add their bounds, ``date-time`` an RFC 3339 pattern;
- ``x-kubernetes-int-or-string`` admits an integer or a string (its ``pattern`` binds strings);
- ``required`` without the fields that have a ``default`` (the server defaults, then validates);
- ``x-kubernetes-list-type: set``/``map`` require unique items/unique map keys, as the server does;
- ``enum``, ``pattern``, ``minimum``, ``maxLength``, ``anyOf`` ... are the same keywords in both;
- ``x-kubernetes-validations``: transition rules (they use ``oldSelf``) never apply to a create
  and are skipped; any other CEL rule stops the conversion, as does any keyword not listed here,
  so a newer CRD that uses something this module does not know fails loudly instead of being
  half checked.

A subtree marked ``x-kubernetes-preserve-unknown-fields: true`` is not checked by the CRD at all
(e.g. the SparkApplication ``driver.template`` pod template). :func:`validate` hands each such value
present in a manifest to the caller's ``check_opaque`` (e.g. a strict PodTemplateSpec check with
``kubernetes-validate``); without one it is an error.

``metadata`` cannot be described by a CRD (the API server validates ObjectMeta itself), so it is
checked against the core ObjectMeta schema of the cluster's Kubernetes version (kubernetes-validate,
strict) plus the syntax rules apimachinery applies to names, namespaces and labels.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

#: Where the vendored CRDs live (see tests/upstream/README.md).
UPSTREAM_CRDS = Path(__file__).resolve().parent / "upstream" / "crds"

#: Keywords with the same meaning in OpenAPI v3.0 and JSON Schema draft 4 (copied as they are).
_SAME_KEYWORDS = {
    "enum",
    "pattern",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
}
#: Keywords that do not constrain a value we send (documentation, defaulting, server-side apply).
_IGNORED_KEYWORDS = {"description", "title", "example", "default", "x-kubernetes-map-type"}
#: Keywords handled by :func:`_convert` itself.
_HANDLED_KEYWORDS = {
    "type",
    "nullable",
    "format",
    "properties",
    "additionalProperties",
    "items",
    "required",
    "anyOf",
    "allOf",
    "oneOf",
    "not",
    "x-kubernetes-int-or-string",
    "x-kubernetes-preserve-unknown-fields",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
    "x-kubernetes-validations",
}
_INT_BOUNDS = {"int32": (-(2**31), 2**31 - 1), "int64": (-(2**63), 2**63 - 1)}
_RFC3339 = r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})$"

#: A path into a manifest; ``"*"`` stands for every item of a list or every value of a map.
SchemaPath = tuple[str, ...]
OpaqueCheck = Callable[[tuple[str, ...], Any], None]


class InvalidManifest(Exception):
    """A manifest the cluster would reject or silently change; ``errors`` lists every problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


# --- OpenAPI v3 (structural schema) -> JSON Schema ---------------------------------------------


def to_json_schema(openapi: dict[str, Any]) -> tuple[dict[str, Any], list[SchemaPath]]:
    """The strict JSON Schema of a CRD version's ``openAPIV3Schema`` and its opaque subtrees.

    The top-level ``metadata`` is left open here: :func:`validate` checks it as ObjectMeta.
    """
    opaque: list[SchemaPath] = []
    schema = _convert(openapi, (), opaque, closing=True)
    schema["properties"]["metadata"] = {"type": "object"}
    return schema, opaque


def _convert(node: dict[str, Any], path: SchemaPath, opaque: list[SchemaPath], *, closing: bool) -> dict[str, Any]:
    """One schema node; ``closing`` is False inside ``anyOf``/``allOf``/``oneOf``/``not`` branches,
    which only add value checks to a node whose shape is declared outside them."""
    unknown = set(node) - _SAME_KEYWORDS - _IGNORED_KEYWORDS - _HANDLED_KEYWORDS
    if unknown:
        raise NotImplementedError(f"{_show(path)}: schema keywords not supported here: {sorted(unknown)}")
    _check_cel_rules(node, path)
    out = {k: v for k, v in node.items() if k in _SAME_KEYWORDS}
    out.update(_type_of(node, path))
    preserve = node.get("x-kubernetes-preserve-unknown-fields") is True
    if preserve and closing:
        opaque.append(path)
    if "properties" in node:
        out["properties"] = {
            k: _convert(v, path + (k,), opaque, closing=closing) for k, v in node["properties"].items()
        }
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _convert(node["additionalProperties"], path + ("*",), opaque, closing=closing)
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    elif closing and node.get("type") == "object" and not preserve:
        out["additionalProperties"] = False  # the API server would prune anything else
    if "items" in node:
        out["items"] = _convert(node["items"], path + ("*",), opaque, closing=closing)
    required = [r for r in node.get("required", []) if "default" not in node.get("properties", {}).get(r, {})]
    if required:
        out["required"] = required
    for junctor in ("anyOf", "allOf", "oneOf"):
        if junctor in node:
            out[junctor] = [_convert(branch, path, opaque, closing=False) for branch in node[junctor]]
    if "not" in node:
        out["not"] = _convert(node["not"], path, opaque, closing=False)
    out.update(_list_type(node))
    return out


def _type_of(node: dict[str, Any], path: SchemaPath) -> dict[str, Any]:
    """``type``/``nullable``/``format``/``x-kubernetes-int-or-string`` as JSON Schema."""
    if node.get("x-kubernetes-int-or-string"):
        types = ["integer", "string"]
    elif "type" in node:
        types = [node["type"]]
    else:
        types = []
    out: dict[str, Any] = {}
    if types:
        if node.get("nullable"):
            types.append("null")
        out["type"] = types[0] if len(types) == 1 else types
    fmt = node.get("format")
    if fmt in _INT_BOUNDS:
        low, high = _INT_BOUNDS[fmt]
        out["minimum"] = max(low, node.get("minimum", low))
        out["maximum"] = min(high, node.get("maximum", high))
    elif fmt == "date-time":
        out["pattern"] = _RFC3339
    elif fmt is not None:
        raise NotImplementedError(f"{_show(path)}: format '{fmt}' is not supported here")
    return out


def _list_type(node: dict[str, Any]) -> dict[str, Any]:
    """Uniqueness the API server enforces for ``set`` and ``map`` lists (``atomic``: none)."""
    kind = node.get("x-kubernetes-list-type")
    if kind == "set":
        return {"uniqueItems": True}
    if kind == "map":
        item_properties = node.get("items", {}).get("properties", {})
        keys = node["x-kubernetes-list-map-keys"]
        return {"uniqueKeys": {k: item_properties.get(k, {}).get("default") for k in keys}}
    return {}


def _check_cel_rules(node: dict[str, Any], path: SchemaPath) -> None:
    for rule in node.get("x-kubernetes-validations", []):
        if "oldSelf" not in rule["rule"]:
            raise NotImplementedError(f"{_show(path)}: CEL rule '{rule['rule']}' cannot be checked here")


def _unique_keys(validator, defaults: dict[str, Any], instance: Any, schema: dict) -> Iterator[Exception]:
    """The ``uniqueKeys`` keyword: no two items of a ``map`` list share their key fields."""
    if not validator.is_type(instance, "array"):
        return
    seen = []
    for item in instance:
        if not isinstance(item, dict):
            continue
        key = {k: item.get(k, default) for k, default in defaults.items()}
        if key in seen:
            yield jsonschema.ValidationError(f"two entries with {key} (list-type map)")
        seen.append(key)


def _is_integer(checker, instance: Any) -> bool:
    """JSON integers only: ``1.0`` is a float to the API server, ``true`` is not a number."""
    return isinstance(instance, int) and not isinstance(instance, bool)


StrictValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator,
    validators={"uniqueKeys": _unique_keys},
    type_checker=jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


# --- CRDs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CRD:
    """One served version of a CustomResourceDefinition, ready to validate manifests."""

    group: str
    version: str
    kind: str
    schema: dict[str, Any]
    opaque: tuple[SchemaPath, ...]
    has_status_subresource: bool

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}"


@lru_cache(maxsize=None)
def load_crd(path: Path, version: str) -> CRD:
    """Version ``version`` of the single CRD in the YAML file ``path``."""
    docs = [d for d in yaml.load_all(path.read_text(), Loader=yaml.CSafeLoader) if d]
    if len(docs) != 1 or docs[0].get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} does not hold exactly one CustomResourceDefinition")
    spec = docs[0]["spec"]
    served = {v["name"]: v for v in spec["versions"] if v.get("served")}
    if version not in served:
        raise ValueError(f"{path}: version '{version}' is not served (served: {sorted(served)})")
    schema, opaque = to_json_schema(served[version]["schema"]["openAPIV3Schema"])
    StrictValidator.check_schema(schema)
    return CRD(
        group=spec["group"],
        version=version,
        kind=spec["names"]["kind"],
        schema=schema,
        opaque=tuple(opaque),
        has_status_subresource="status" in served[version].get("subresources", {}),
    )


def validate(manifest: dict[str, Any], crd: CRD, k8s_version: str, check_opaque: OpaqueCheck | None = None) -> None:
    """Raise :class:`InvalidManifest` listing everything wrong with ``manifest`` for ``crd``.

    ``check_opaque(path, value)`` is called for every value under an
    ``x-kubernetes-preserve-unknown-fields`` subtree and should raise when the value is wrong.
    """
    errors = _identity_errors(manifest, crd)
    errors += _metadata_errors(manifest.get("metadata"), k8s_version)
    validator = StrictValidator(crd.schema)
    for error in sorted(validator.iter_errors(manifest), key=lambda e: list(map(str, e.absolute_path))):
        errors.append(f"{_show(error.absolute_path)}: {error.message}")
    errors += _opaque_errors(manifest, crd.opaque, check_opaque)
    if errors:
        raise InvalidManifest(errors)


def _identity_errors(manifest: dict[str, Any], crd: CRD) -> list[str]:
    errors = []
    if manifest.get("apiVersion") != crd.api_version:
        errors.append(f"apiVersion: '{manifest.get('apiVersion')}' is not '{crd.api_version}'")
    if manifest.get("kind") != crd.kind:
        errors.append(f"kind: '{manifest.get('kind')}' is not '{crd.kind}'")
    if crd.has_status_subresource and "status" in manifest:
        errors.append("status: set by the operator (status subresource); a create ignores it")
    return errors


def _opaque_errors(manifest: dict[str, Any], opaque: tuple[SchemaPath, ...], check: OpaqueCheck | None) -> list[str]:
    errors = []
    for schema_path in opaque:
        for path, value in _values_at(manifest, schema_path, ()):
            if check is None:
                errors.append(f"{_show(path)}: not checked by the CRD (preserve-unknown-fields) and no check given")
                continue
            try:
                check(path, value)
            except Exception as e:  # the caller's checker decides what is wrong; we report it
                errors.append(f"{_show(path)}: {_describe(e)}")
    return errors


def _values_at(value: Any, schema_path: SchemaPath, here: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """Every value of ``value`` at ``schema_path`` (``*`` matches every list item or map value)."""
    if not schema_path:
        yield here, value
        return
    head, rest = schema_path[0], schema_path[1:]
    if head == "*":
        items = enumerate(value) if isinstance(value, list) else value.items() if isinstance(value, dict) else ()
        for key, child in items:
            yield from _values_at(child, rest, here + (str(key),))
    elif isinstance(value, dict) and head in value:
        yield from _values_at(value[head], rest, here + (head,))


# --- metadata ----------------------------------------------------------------------------------

# apimachinery's pkg/util/validation: IsDNS1123Subdomain, IsDNS1123Label, IsQualifiedName,
# IsValidLabelValue (custom resources are named as DNS subdomains, namespaces are labels).
_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")


def _metadata_errors(metadata: Any, k8s_version: str) -> list[str]:
    """ObjectMeta: the core schema (strict), then the name, namespace and label syntax."""
    if not isinstance(metadata, dict):
        return ["metadata: missing or not an object"]
    carrier = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata}
    try:
        kubernetes_validate.validate(carrier, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [_describe(e)]
    errors = []
    name = metadata.get("name")
    if name is None and not metadata.get("generateName"):
        errors.append("metadata.name: required")
    elif name is not None and not _is_dns_subdomain(name):
        errors.append(f"metadata.name: '{name}' is not a DNS-1123 subdomain")
    namespace = metadata.get("namespace")
    if namespace is not None and not (len(namespace) <= 63 and re.fullmatch(_DNS_LABEL, namespace)):
        errors.append(f"metadata.namespace: '{namespace}' is not a DNS-1123 label")
    for key, value in (metadata.get("labels") or {}).items():
        if not _is_qualified_name(key):
            errors.append(f"metadata.labels: key '{key}' is not a qualified name")
        if value and not (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value)):
            errors.append(f"metadata.labels['{key}']: '{value}' is not a valid label value")
    for key in metadata.get("annotations") or {}:
        if not _is_qualified_name(key):
            errors.append(f"metadata.annotations: key '{key}' is not a qualified name")
    return errors


def _is_dns_subdomain(value: str) -> bool:
    return len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value) is not None


def _is_qualified_name(key: str) -> bool:
    """``[prefix/]name``: prefix a DNS subdomain, name at most 63 characters."""
    prefix, _, name = key.rpartition("/")
    if "/" in key and not _is_dns_subdomain(prefix):
        return False
    return len(name) <= 63 and _QUALIFIED_NAME.fullmatch(name) is not None


def _describe(error: Exception) -> str:
    """One line for an error: a JSON Schema error's path and message, without its schema dump."""
    if isinstance(error, jsonschema.ValidationError):
        return f"{_show(error.absolute_path)}: {error.message}"
    return str(error)


def _show(path) -> str:
    return ".".join(map(str, path)) or "(root)"


def strict_pod_template_check(k8s_version: str) -> OpaqueCheck:
    """A ``check_opaque`` for CRDs whose preserve-unknown-fields subtrees are pod templates
    (SparkApplication ``driver.template`` / ``executor.template``): the strict core
    PodTemplateSpec schema of ``k8s_version``; any other opaque subtree is an error."""

    def check(path: tuple[str, ...], value: Any) -> None:
        if path[-1] != "template":
            raise InvalidManifest([f"{_show(path)}: nothing knows how to check this preserve-unknown-fields subtree"])
        wrapper = {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "check"}, "template": value}
        kubernetes_validate.validate(wrapper, k8s_version, strict=True)

    return check
