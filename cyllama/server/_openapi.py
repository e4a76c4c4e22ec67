"""The embedded server's OpenAPI document with its request bodies.

The handlers read their bodies themselves (one validation, in :mod:`cyllama._openai.schema`, for
the server and the in-process client), so FastAPI cannot see them: this adds each route's request
body (the pydantic models' JSON Schema) and OpenAI's error body for 4xx/5xx answers, so that
``/openapi.json`` documents the API and clients and fuzzers can be generated from it.
"""

from __future__ import annotations

from typing import Any

from .._openai.schema import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

__all__ = ["install_openapi", "ERROR_SCHEMA"]

_REF = "#/components/schemas/{model}"

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "code": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}}}

_TOKENIZE = {"type": "object", "required": ["content"], "additionalProperties": False, "properties": {
    "content": {"type": "string"}, "add_special": {"type": "boolean"}, "parse_special": {"type": "boolean"},
    "with_pieces": {"type": "boolean"}}}
_DETOKENIZE = {"type": "object", "required": ["tokens"], "additionalProperties": False, "properties": {
    "tokens": {"type": "array", "items": {"type": "integer"}}}}
_AUDIO = {"type": "object", "required": ["file"], "properties": {
    "file": {"type": "string", "format": "binary"}, "language": {"type": "string"}, "prompt": {"type": "string"},
    "temperature": {"type": "number", "minimum": 0, "maximum": 1},
    "response_format": {"type": "string", "enum": ["json", "text", "srt", "vtt", "verbose_json"]},
    "timestamp_granularities[]": {"type": "array", "items": {"type": "string", "enum": ["word", "segment"]}}}}


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _bodies() -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Request bodies by path, and the component schemas they refer to."""
    from pydantic.json_schema import models_json_schema

    models = [(ChatCompletionRequest, "validation"), (CompletionRequest, "validation"),
              (EmbeddingRequest, "validation")]
    refs, defs = models_json_schema(models, ref_template=_REF)
    bodies = {"/v1/chat/completions": _json_body(refs[models[0]]), "/v1/completions": _json_body(refs[models[1]]),
              "/v1/embeddings": _json_body(refs[models[2]]), "/tokenize": _json_body(_TOKENIZE),
              "/detokenize": _json_body(_DETOKENIZE)}
    audio = {"required": True, "content": {"multipart/form-data": {"schema": _AUDIO}}}
    bodies["/v1/audio/transcriptions"] = bodies["/v1/audio/translations"] = audio
    return bodies, defs.get("$defs", {})


def install_openapi(app: Any) -> None:
    """Makes ``app.openapi()`` (served at ``/openapi.json``) include the request bodies and the
    error answers."""
    from fastapi.openapi.utils import get_openapi

    from .._version import __version__

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(title=app.title, version=__version__, description=app.description, routes=app.routes)
            bodies, defs = _bodies()
            schemas = doc.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(defs)
            schemas["Error"] = ERROR_SCHEMA
            error = {"description": "OpenAI's error body",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
            for path, ops in doc.get("paths", {}).items():
                for method, op in ops.items():
                    if method == "post" and path in bodies:
                        op["requestBody"] = bodies[path]
                    responses = op.setdefault("responses", {})
                    responses.pop("422", None)  # FastAPI's validation shape; ours is OpenAI's 400
                    responses.setdefault("4XX", error)
                    responses.setdefault("5XX", error)
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi
