"""What the API server does with an XTraceMonitor at apply time, for tests: defaults, schema, CEL.

No API server runs here, so this applies the CRD's `openAPIV3Schema` the way the server does
for the parts we rely on: structural defaulting, unknown-field rejection (kubectl's default
strict field validation), types/enums/patterns/bounds (jsonschema), and the
`x-kubernetes-validations` CEL rules (cel-python), each evaluated with `self` bound to the value
at its schema node.
"""

from __future__ import annotations

import copy
from typing import Any

import celpy
import jsonschema


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting: a missing property with a default gets it, recursively."""
    value = copy.deepcopy(value)
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                value[key] = apply_defaults(sub, value[key])
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                value[key] = apply_defaults(extra, value[key])
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value = [apply_defaults(schema["items"], v) for v in value]
    return value


def _strict(schema: Any) -> Any:
    """The schema as jsonschema reads it, with unknown fields rejected as `kubectl apply` does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


_env = celpy.Environment()
_programs: dict[str, Any] = {}


def _cel(rule: str, value: Any) -> bool:
    if rule not in _programs:
        _programs[rule] = _env.program(_env.compile(rule))
    return bool(_programs[rule].evaluate({"self": celpy.json_to_cel(value)}))


def _cel_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    errors = [f"{path}: {v.get('message') or v['rule']}"
              for v in schema.get("x-kubernetes-validations") or [] if not _cel(v["rule"], value)]
    if isinstance(value, dict):
        for key, sub in (schema.get("properties") or {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}")
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            for key in value:
                errors += _cel_errors(extra, value[key], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, f"{path}[{i}]")
    return errors


def admit(crd: dict[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """(the object as stored, the reasons it would be rejected) for one XTraceMonitor."""
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    stored = apply_defaults(schema, obj)
    validator = jsonschema.Draft7Validator(_strict(schema))
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(stored)]
    if not errors:  # the server runs CEL only on values that pass the schema
        errors = _cel_errors(schema, stored, "")
    return stored, errors
