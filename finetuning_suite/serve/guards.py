"""What every request passes before it reaches a route: the API key and the body-size bound.

A plain ASGI middleware, so it also covers unknown paths and answers before any body is parsed:
with a key set, a request without `Authorization: Bearer <key>` gets 401 (compared in constant
time); a body above `max_body_bytes` gets 413, from its Content-Length when it has one, else as
soon as the bytes read pass the bound (the body is read here, at most `max_body_bytes`, and
handed on to the app).
"""
from __future__ import annotations

import hmac
import json

from .api_errors import error_body


class Guards:
    def __init__(self, app, *, api_key: str | None, max_body_bytes: int):
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        if self.api_key is not None:
            problem = self._auth_problem(headers.get(b"authorization"))
            if problem:
                await _answer(send, 401, problem, code="invalid_api_key",
                              headers=[(b"www-authenticate", b"Bearer")])
                return
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                await _answer(send, 400, f"Content-Length {length.decode(errors='replace')!r} is not "
                              "a number.")
                return
            if size > self.max_body_bytes:
                await _answer(send, 413, self._too_large(size), code="request_too_large")
                return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await _answer(send, 413, self._too_large(None), code="request_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        first = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()  # later: http.disconnect, which streaming responses watch

        await self.app(scope, replay, send)

    def _auth_problem(self, header: bytes | None) -> str | None:
        if not header:
            return ("You didn't provide an API key. Send it as 'Authorization: Bearer <key>' (the "
                    "openai client does this with api_key=...).")
        scheme, _, token = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.api_key):
            return "Incorrect API key provided."
        return None

    def _too_large(self, size: int | None) -> str:
        got = f" ({size} bytes)" if size is not None else ""
        return (f"The request body{got} is larger than this server's limit of {self.max_body_bytes} "
                "bytes.")


async def _answer(send, status: int, message: str, *, code: str | None = None,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps(error_body(status, message, code=code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
