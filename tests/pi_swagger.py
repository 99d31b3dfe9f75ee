"""Validate simulator responses against the definitions of the PI Web API 2018 SP1 swagger spec
(``tests/data/swagger-2018sp1.json``, a copy of the shared spec), so the simulator cannot drift
from the real API.

Two adjustments, both in the direction of the real API:
* a schema that is only ``{"type": "object"}`` (e.g. ``TimedValue.Value``) is the generator's
  rendering of .NET ``object``, which holds any JSON value: numbers, strings, booleans, states;
* strict mode (the default) forbids properties the spec does not define, so a misspelled or
  invented field fails instead of passing silently.
"""
from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any, Dict

import jsonschema

SWAGGER = Path(__file__).resolve().parent / "data" / "swagger-2018sp1.json"


def _adjust(node: Any, strict: bool) -> Any:
    if isinstance(node, dict):
        if node.get("type") == "object" and not ({"properties", "additionalProperties", "$ref"} & set(node)):
            return {}
        out = {k: _adjust(v, strict) for k, v in node.items()}
        if strict and "properties" in out and "additionalProperties" not in out:
            out["additionalProperties"] = False
        return out
    if isinstance(node, list):
        return [_adjust(v, strict) for v in node]
    return node


@functools.lru_cache(maxsize=2)
def _definitions(strict: bool) -> Dict[str, Any]:
    spec = json.loads(SWAGGER.read_text())
    return _adjust(copy.deepcopy(spec["definitions"]), strict)


@functools.lru_cache(maxsize=None)
def validator(definition: str, strict: bool = True) -> jsonschema.Draft4Validator:
    defs = _definitions(strict)
    if definition not in defs:
        raise KeyError(f"no definition {definition!r} in the swagger spec")
    return jsonschema.Draft4Validator({"$ref": f"#/definitions/{definition}", "definitions": defs})


def validate(body: Any, definition: str, strict: bool = True) -> None:
    """Raise ``jsonschema.ValidationError`` if ``body`` does not match ``#/definitions/{definition}``."""
    validator(definition, strict).validate(body)


def response_definition(path: str, method: str, status: str) -> str:
    """The definition the spec names for a response, e.g. ('/streamsets/channel', 'get', '101')."""
    spec = json.loads(SWAGGER.read_text())
    ref = spec["paths"][path][method]["responses"][status]["schema"]["$ref"]
    return ref.rsplit("/", 1)[-1]
