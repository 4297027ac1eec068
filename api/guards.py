"""Pure ASGI middleware that protects the server before any route runs.

- `BodyLimit`: a request body over the limit is refused with 413 as it streams in, before the
  multipart parser can spool it to disk (Content-Length is checked first; bytes are counted too,
  for chunked uploads that announce nothing).
- `SecurityHeaders`: `X-Content-Type-Options: nosniff` on every response, so a browser never
  runs a served photo as something else.
"""

from __future__ import annotations

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Multipart framing around the file: boundaries, headers, the other form fields.
MULTIPART_OVERHEAD = 1 << 20


class BodyTooLarge(HTTPException):
    """Raised from inside `receive`: FastAPI re-raises HTTPExceptions from body parsing as they are."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload is larger than the {limit / 2**20:.0f} MiB limit")


class BodyLimit:
    def __init__(self, app: ASGIApp, limit_bytes: int) -> None:
        self.app = app
        self.limit = limit_bytes
        self.allowed = limit_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.allowed:
            await _reject(send, 413, BodyTooLarge(self.limit).detail)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.allowed:
                    raise BodyTooLarge(self.limit)
            return message

        await self.app(scope, counted, send)


async def _reject(send: Send, status: int, detail: str) -> None:
    import json

    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), (b"x-content-type-options", b"nosniff")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0].lower() != b"x-content-type-options"]
                message["headers"] = headers + [(b"x-content-type-options", b"nosniff")]
            await send(message)

        await self.app(scope, receive, with_headers)
