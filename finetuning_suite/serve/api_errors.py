"""Errors as the OpenAI API returns them: a status code and the body
`{"error": {"message", "type", "param", "code"}}`, which the `openai` client turns into
`BadRequestError`, `AuthenticationError`, `NotFoundError`, ...
"""
from __future__ import annotations

import json
from typing import Any

# OpenAI's `type` for each status this server returns
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
          500: "server_error", 503: "server_error"}


class APIError(Exception):
    """Raised anywhere in a request; the app answers with `status` and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, param=self.param, code=self.code)


def error_body(status: int, message: str, *, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": _TYPES.get(status, "invalid_request_error"),
                      "param": param, "code": code}}


def validation_message(errors: list[dict]) -> tuple[str, str | None]:
    """(message, param) for pydantic/FastAPI validation errors: the first one, named by its path
    in the request body ("messages.0.role: Input should be 'system', ..."), plus how many more."""
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        detail = (first.get("ctx") or {}).get("error")
        return (f"The request body is not valid JSON{f' ({detail})' if detail else ''}; send a JSON "
                "object with Content-Type: application/json.", None)
    path = [str(p) for p in first.get("loc", ()) if p != "body"]
    # a union (str | list[...]) reports each alternative's path ("prompt.str"): keep the field
    kinds = {"str", "list", "int", "float", "bool", "list[str]", "list[TextPart]"}
    while len(path) > 1 and (path[-1] in kinds or path[-1].startswith(("function-", "list["))):
        path.pop()
    param = ".".join(path) or None
    message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "missing":
        message = f"Missing required parameter: '{param}'." if param else "The request body is empty; send a JSON object."
    elif "input" in first and first.get("type") != "missing":
        shown = json.dumps(first["input"], default=str)
        message += f" (got {shown if len(shown) <= 80 else shown[:77] + '...'})"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return message, param
