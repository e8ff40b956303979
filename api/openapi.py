"""The OpenAPI document as clients (and fuzzers) read it.

FastAPI writes it from the routes; this completes what the routes cannot say:
- the answers any /api operation can give whatever its route: 401 from the request gate,
  403 and 422 for the account (`X-Account-Id`), 429 over its rate limit, 413 for a body
  over the limit, 503 when the database is down;
- an example on every request body, parameter and response, taken from the schemas' own
  examples (api/examples.py) or composed from their fields';
- parameters that are absent or a value, never `null` (a header or a query string cannot
  carry JSON's null), and HEAD answers without a body;
- the values configuration allows where a body names a package or a plan.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from api.errors import error_entry, error_example
from api.middleware import PUBLIC_PATHS
from core.settings import Settings

Schema = dict[str, Any]

_TENANT_HEADER = "x-account-id"
_EXAMPLE_UUID = "9b2f4c1e-3d5a-4e6f-8a7b-1c2d3e4f5a6b"


def install(app: FastAPI, settings: Settings) -> None:
    generate = app.openapi
    completed: list[Schema] = []

    def openapi() -> Schema:
        document = generate()
        if not completed or completed[-1] is not document:  # FastAPI regenerates on change
            complete(document)
            _configured_choices(document, settings)
            completed[:] = [document]
        return document

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: Schema) -> None:
    components = document.get("components", {}).get("schemas", {})
    for path, item in document["paths"].items():
        for method, operation in item.items():
            _complete_operation(path, method, operation, components)
    components.update(_error_components(components))


def _configured_choices(document: Schema, settings: Settings) -> None:
    """Packages and plans are configuration: the document lists the configured ones."""
    components = document.get("components", {}).get("schemas", {})
    sold = [n for n, p in settings.plans.items() if p.price_cents > 0 or p.stripe_price]
    for schema, field, choices in (
        ("PurchaseIn", "package", sorted(settings.packages)),
        ("SubscribeIn", "plan", sold),
    ):
        if choices and schema in components:
            components[schema]["properties"][field]["enum"] = choices


def _complete_operation(path: str, method: str, operation: Schema, components: Schema) -> None:
    parameters = operation.get("parameters", [])
    for parameter in parameters:
        parameter["schema"] = _without_null(parameter["schema"])
        if "example" not in parameter and "examples" not in parameter:
            example = _example(parameter["schema"], components)
            if example is not None:
                parameter["example"] = example

    answers = operation["responses"]
    if path.startswith("/api/") and path not in PUBLIC_PATHS:
        common = [401, 503]
        if any(p["name"] == _TENANT_HEADER for p in parameters):
            common += [403, 422, 429]  # an account's call: counted against its rate limit
        if "requestBody" in operation:
            common += [413, 422]
        for status in common:
            answers.setdefault(str(status), _entry(status))

    body = operation.get("requestBody", {}).get("content", {})
    for media in body.values():
        _give_example(media, components)
    for status, answer in answers.items():
        if method == "head":
            answer.pop("content", None)
            continue
        for media in answer.get("content", {}).values():
            _give_example(media, components)
        if status == "422" and "content" in answer:
            answer["content"]["application/json"].setdefault("example", error_example(422))


def _entry(status: int) -> Schema:
    entry = error_entry(status)
    return {
        "description": entry["description"],
        "content": {
            "application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorResponse"},
                "example": entry["content"]["application/json"]["example"],
            }
        },
    }


def _error_components(components: Schema) -> Schema:
    """ErrorResponse is referenced by the answers added here even where no route names it."""
    if "ErrorResponse" in components:
        return {}
    from api.errors import ErrorResponse

    schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    defs = schema.pop("$defs", {})
    return {**defs, "ErrorResponse": schema}


def _give_example(media: Schema, components: Schema) -> None:
    if "example" in media or "examples" in media:
        return
    example = _example(media.get("schema", {}), components)
    if example is not None:
        media["example"] = example


def _without_null(schema: Schema) -> Schema:
    options = schema.get("anyOf")
    if not options:
        return schema
    kept = [option for option in options if option.get("type") != "null"]
    if len(kept) == len(options):
        return schema
    rest = {k: v for k, v in schema.items() if k != "anyOf"}
    return {**kept[0], **rest} if len(kept) == 1 else {**rest, "anyOf": kept}


def _example(schema: Schema, components: Schema, depth: int = 0) -> Any:
    """The schema's own example, or one composed from its parts (as Swagger UI would)."""
    if depth > 8:
        return None
    if "$ref" in schema:
        return _example(components[schema["$ref"].rsplit("/", 1)[-1]], components, depth + 1)
    if schema.get("examples"):
        return schema["examples"][0]
    if "example" in schema:
        return schema["example"]
    if "default" in schema and schema["default"] is not None:
        return schema["default"]
    if "enum" in schema:
        return schema["enum"][0]
    for key in ("anyOf", "oneOf", "allOf"):
        for option in schema.get(key, []):
            if option.get("type") != "null":
                return _example(option, components, depth + 1)
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        return {
            name: _example(part, components, depth + 1)
            for name, part in schema.get("properties", {}).items()
        }
    if kind == "array":
        item = _example(schema.get("items", {}), components, depth + 1)
        return [] if item is None else [item]
    return {
        "string": {"uuid": _EXAMPLE_UUID, "date-time": "2026-11-23T10:15:00Z"}.get(
            schema.get("format", ""), "string"
        ),
        "integer": 1,
        "number": 1.0,
        "boolean": True,
    }.get(kind or "")
