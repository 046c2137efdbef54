"""Field descriptors: each configuration field described once, and read three ways.

A `Field` says what a value is (kind, bounds, enum, pattern, default, description). The agent's
config (`config.py`) parses its YAML with them, the operator's model (`xtrace_operator/model.py`)
validates an XTraceMonitor spec with them, and `tools/crd.py` writes the CRD's OpenAPI schema from
them (`Field.openapi`). So a bound or an enum is written once, where its field is declared, and the
three can no longer disagree.

`parse()` raises `FieldError` (a ValueError) with the problem only; the caller adds the field's
path (``config: xdp.sampling: ...`` in the agent, ``spec.xdp.sampling: ...`` in the operator).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The http(s) URL rule of every remote-write address (agent config, command line, monitor spec).
URL_PATTERN = r"^https?://[^/\s]+.*$"
# Prometheus label names; names starting with "__" are reserved for the server.
LABEL_NAME_PATTERN = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
# A network interface's name or a shell glob of names (spec.interfaces, nic.interfaces).
IFACE_PATTERN = r"^[A-Za-z0-9_.:@*?!\[\]-]{1,64}$"


class FieldError(ValueError):
    """A value a field refuses. `at` is a path suffix below the field (``[2]``, ``.key``)."""

    def __init__(self, message: str, at: str = ""):
        super().__init__(message)
        self.at = at


def plain(x: float) -> str:
    """A bound as people write it: 1048576, not 1.04858e+06; 0.05 stays 0.05."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


@dataclass(frozen=True)
class Field:
    kind: str  # the OpenAPI type: integer, number, string, boolean, array or object
    description: str = ""
    default: Any = None  # None: no default (the CRD says none, the parsers leave the key out)
    bounds: tuple[float, float] | None = None  # inclusive; numbers from config.BOUNDS
    enum: tuple[Any, ...] | None = None
    pattern: str | None = None
    what: str = ""  # what a value the pattern refuses is not: "an interface name or glob"
    nonempty: bool = False  # strings: "" refused
    items: Field | None = None  # arrays: each item
    values: Field | None = None  # maps: each value (OpenAPI additionalProperties)
    properties: Mapping[str, Field] | None = None  # objects: the known fields
    required: tuple[str, ...] = ()
    min_items: int | None = None
    max_items: int | None = None
    unique: bool = False  # arrays: a set (x-kubernetes-list-type: set)
    max_length: int | None = None
    max_properties: int | None = None
    message: str = ""  # replaces the generic text of any refusal, e.g. "must be a non-empty list of ..."
    # After the checks above: a rule the schema cannot say, or a conversion (raises ValueError).
    refine: Callable[[Any], Any] | None = None
    rules: tuple[tuple[str, str], ...] = ()  # CEL (rule, message): the API server's half of `refine`
    openapi_extra: Mapping[str, Any] = field(default_factory=dict)  # CRD-only keywords (format, ...)
    attr: str = ""  # the agent config's dataclass attribute that holds the value

    # --- parsing ----------------------------------------------------------------------------

    def parse(self, v: Any) -> Any:
        """The value, checked and converted (lists become tuples, numbers float); FieldError if refused."""
        try:
            v = getattr(self, f"_{self.kind}")(v)
        except FieldError as e:
            if self.message and not e.at:
                raise FieldError(f"{self.message}, got {v!r}") from None
            raise
        return self.refine(v) if self.refine else v

    def _integer(self, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise FieldError(f"must be an integer, got {v!r}")
        self._bounded(v)
        return v

    def _number(self, v: Any) -> float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise FieldError(f"must be a number, got {v!r}")
        self._bounded(v)
        return float(v)

    def _bounded(self, v: float) -> None:
        if self.bounds and not self.bounds[0] <= v <= self.bounds[1]:
            lo, hi = self.bounds
            raise FieldError(f"must be between {plain(lo)} and {plain(hi)}, got {v!r}")
        self._enum(v)

    def _enum(self, v: Any) -> None:
        if self.enum is not None and v not in self.enum:
            raise FieldError(f"must be one of {', '.join(map(repr, self.enum))}, got {v!r}")

    def _string(self, v: Any) -> str:
        if not isinstance(v, str) or (self.nonempty and not v):
            raise FieldError(f"must be a {'non-empty ' if self.nonempty else ''}string, got {v!r}")
        self._enum(v)
        if self.max_length is not None and len(v) > self.max_length:
            raise FieldError(f"at most {self.max_length} characters, got {len(v)}")
        if self.pattern and not re.match(self.pattern, v):
            raise FieldError(f"{v!r} is not {self.what or 'valid'}")
        return v

    def _boolean(self, v: Any) -> bool:
        if not isinstance(v, bool):
            raise FieldError(f"must be true or false, got {v!r}")
        return v

    def _array(self, v: Any) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise FieldError(f"must be a list, got {v!r}")
        if self.min_items is not None and len(v) < self.min_items:
            raise FieldError(f"at least {self.min_items} items, got {len(v)}")
        if self.max_items is not None and len(v) > self.max_items:
            raise FieldError(f"at most {self.max_items} items, got {len(v)}")
        out = []
        for i, item in enumerate(v):
            try:
                out.append(self.items.parse(item) if self.items else item)
            except FieldError as e:
                raise FieldError(str(e), f"[{i}]{e.at}") from None
        if self.unique and len(set(out)) != len(out):
            raise FieldError("items must be unique")
        return tuple(out)

    def _object(self, v: Any) -> dict[str, Any]:
        if not isinstance(v, dict):
            raise FieldError(f"must be a map, got {v!r}")
        if self.values is not None:
            if not all(isinstance(k, str) for k in v):
                raise FieldError(f"must be a map with string keys, got {v!r}")
            if self.max_properties is not None and len(v) > self.max_properties:
                raise FieldError(f"at most {self.max_properties} entries, got {len(v)}")
            if self.values.kind == "string" and not all(isinstance(x, str) for x in v.values()):
                raise FieldError(f"must be a map of strings to strings, got {v!r}")
            out = {}
            for k, x in v.items():
                try:
                    out[k] = self.values.parse(x)
                except FieldError as e:
                    raise FieldError(str(e), f".{k}{e.at}") from None
            return out
        return dict(v)

    # --- the CRD's view ---------------------------------------------------------------------

    def openapi(self) -> dict[str, Any]:
        """This field as an OpenAPI v3 schema (a structural schema, as kube-apiserver wants it)."""
        out: dict[str, Any] = {} if "anyOf" in self.openapi_extra else {"type": self.kind}
        if self.description:
            out["description"] = self.description
        simple = {"enum": self.enum, "pattern": self.pattern, "maxLength": self.max_length,
                  "minItems": self.min_items, "maxItems": self.max_items, "maxProperties": self.max_properties}
        if self.bounds:
            simple["minimum"], simple["maximum"] = (_json_number(b) for b in self.bounds)
        out.update({k: list(x) if isinstance(x, tuple) else x for k, x in simple.items() if x is not None})
        if self.unique:
            out["x-kubernetes-list-type"] = "set"
        if self.required:
            out["required"] = list(self.required)
        if self.items:
            out["items"] = self.items.openapi()
        if self.values:
            out["additionalProperties"] = self.values.openapi()
        if self.properties is not None:
            out["properties"] = {k: f.openapi() for k, f in self.properties.items()}
        if self.default is not None:
            out["default"] = _json(self.default)
        if self.rules:
            out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in self.rules]
        out.update(self.openapi_extra)
        return out


def _json_number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def _json(v: Any) -> Any:
    if isinstance(v, tuple):
        return [_json(x) for x in v]
    if isinstance(v, dict):
        return {k: _json(x) for k, x in v.items()}
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


# --- shared rules ---------------------------------------------------------------------------

def label_names(labels: dict[str, str]) -> dict[str, str]:
    """Refine for a map of Prometheus labels: every key a label name, none reserved."""
    for k in labels:
        if not re.match(LABEL_NAME_PATTERN, k) or k.startswith("__"):
            raise FieldError(f"{k!r} is not a valid Prometheus label name")
    return labels


def http_url(v: Any) -> str:
    """An http:// or https:// URL with a host (a remote-write address)."""
    if not isinstance(v, str) or not re.match(URL_PATTERN, v):
        raise FieldError(f"must be an http:// or https:// URL, got {v!r}")
    return v
