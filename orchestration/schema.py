"""OpenAPI extensions: describe the API-key authentication to drf-spectacular."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension


class ApiKeyScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "ACCESS_KEY.SECRET from `muster login` or the keys API",
        }


ERROR_SCHEMA = {
    "type": "object",
    "description": "Every error the API answers (4xx, and 500 from a server fault) has this body.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "description": "a short machine-readable code, e.g. `invalid`"},
                "message": {"type": "string", "description": "what was wrong, for people"},
                "field": {"type": "string", "description": "the input field at fault, when one is"},
                "fields": {
                    "type": "object",
                    "additionalProperties": True,
                    "description": "validation errors: every field's messages",
                },
            },
            "required": ["code", "message"],
        }
    },
    "required": ["error"],
}
ERRORS = {
    "400": "Bad input: `error.field` names the field and `error.message` what is wrong with it.",
    "401": "No API key, or one that is unknown, expired or revoked.",
    "403": "The key may not do this (read-only, another owner's object, an agent key on a person's endpoint).",
    "404": "Nothing by that id or name, in the path or named in the body (`error.field` says which).",
    "409": "The object's state does not allow this now (e.g. enqueue a running experiment); "
    "for an agent: the attempt's lease is no longer current, kill the run.",
    "413": "The body is larger than MAX_REQUEST_BYTES.",
    "429": "Too many attempts: wait and try again.",
}


def _error_codes(path: str, method: str, operation: dict[str, Any]) -> list[str]:
    writes = method in ("post", "put", "patch", "delete")
    public = not operation.get("security")
    codes = []
    if writes or any(p.get("in") == "query" for p in operation.get("parameters", [])):
        codes.append("400")
    if public:
        codes.append("429")  # the only public endpoint, the login, is throttled
        codes.append("401")  # a wrong username or password
    else:
        codes += ["401", "403"]
    if "{" in path or (writes and "requestBody" in operation and not public):
        codes.append("404")  # the object in the path, or one the body names (a queue, a group)
    if writes and not public:
        codes.append("409")
    if "requestBody" in operation:
        codes.append("413")
    return sorted(codes)


def error_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular post-processing: the error answers of every operation, all with the one Error body."""
    components = result.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    shared = components.setdefault("responses", {})
    for code, description in ERRORS.items():
        shared[f"Error{code}"] = {"description": description, "content": body}
    for path, item in result.get("paths", {}).items():
        for method, operation in item.items():
            responses = operation.setdefault("responses", {})
            for code in _error_codes(path, method, operation):
                responses.setdefault(code, {"$ref": f"#/components/responses/Error{code}"})
    return result
