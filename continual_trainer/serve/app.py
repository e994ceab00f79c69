"""The ASGI application: `POST /predict`, `GET /health`, `/version`, `/metrics` and `/`.

What every request needs is middleware, written as plain ASGI classes (no per-request objects
beyond the scope): `RequestIds` names each request (the client's `X-Request-Id` when it is a
plain token, else one of the server's) and echoes it; `Timing` counts `/predict` requests by
version and status with their latency; `Token` refuses a request without the bearer token
(`/health` excepted, for load balancers); `BodyLimit` reads the body whole, refusing one over
the limit with 413 and a client that goes away mid-body with one log line.

`/predict` is a plain ASGI endpoint on the hot path: the body is typed at the edge
(`serve.edge`), scored through the version's batcher (`serve.scoring`) and answered as JSON by
orjson; the other pages are Starlette routes.
"""

from __future__ import annotations

import hmac
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from html import escape
from importlib.resources import files
from string import Template
from typing import Any
from urllib.parse import parse_qs

import orjson

from continual_trainer.data.errors import UserError
from continual_trainer.serve.edge import ARROW, JSON, BadRequest
from continual_trainer.serve.metrics import CONTENT_TYPE
from continual_trainer.serve.served import Served

__all__ = ["MAX_BODY", "app"]

log = logging.getLogger("continual_trainer.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MAX_BODY = 64 * 2**20  # bytes a request body may have (--max-body)
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}")  # a client's X-Request-Id, used as the request's id
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_JSON_HEADER = (b"content-type", b"application/json")


async def respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """Send a whole JSON response."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [_JSON_HEADER, (b"content-length", b"%d" % len(body)), *(headers or ())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def refuse(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    """A one-line error: `{"error": message}`."""
    await respond(send, status, orjson.dumps({"error": message}), headers)


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


class RequestIds:
    """Names each HTTP request: `scope["ctrain.request_id"]` is the client's `X-Request-Id` when
    it is a plain token of at most 64 characters, else None (the server chooses one); `/predict`'s
    answers and refusals carry the id in `X-Request-Id`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = header(scope, b"x-request-id")
        scope["ctrain.request_id"] = given.decode() if given and _REQUEST_ID.fullmatch(given) else None
        return await self.app(scope, receive, send)


class Timing:
    """Counts `/predict` requests by version and status, with their latency (`ServerMetrics`)."""

    def __init__(self, app: ASGIApp, served: Served) -> None:
        self.app, self.served = app, served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        status = [0]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            if status[0]:
                current = self.served.current
                version = scope.get("ctrain.version") or (current.version if current else "none")
                self.served.metrics.answered(
                    version, status[0], scope.get("ctrain.rows", 0), time.perf_counter() - start
                )


class Token:
    """Refuses (401) any request but `/health` that does not bear `Authorization: Bearer <token>`
    (compared in constant time)."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode() if token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.expected is None or scope["type"] != "http" or scope["path"] == "/health":
            return await self.app(scope, receive, send)
        if hmac.compare_digest(header(scope, b"authorization") or b"", self.expected):
            return await self.app(scope, receive, send)
        return await refuse(send, 401, "request: missing or wrong bearer token", [(b"www-authenticate", b"Bearer")])


class BodyLimit:
    """Reads a request's body whole before the application sees it (one `http.request` message):
    413 for a body over `max_body` bytes (declared or sent), and a client that goes away before
    its body ends is one log line, never a traceback."""

    def __init__(self, app: ASGIApp, max_body: int) -> None:
        self.app, self.max_body = app, max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            return await self.app(scope, receive, send)
        declared = header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return await refuse(send, 413, f"request: body of {int(declared):,} bytes; at most {self.max_body:,}")
        message = await receive()
        body = message.get("body", b"")
        if message.get("more_body"):
            chunks, size = [body], len(body)
            while message.get("more_body"):
                message = await receive()
                if message["type"] == "http.disconnect":
                    break
                chunks.append(message.get("body", b""))
                size += len(chunks[-1])
                if size > self.max_body:
                    return await refuse(send, 413, f"request: body over {self.max_body:,} bytes")
            body = b"".join(chunks)
        if message["type"] == "http.disconnect":
            log.info("a client went away before its request's body ended (%s %s)", scope["method"], scope["path"])
            return None
        whole: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replay() -> Message:
            return whole.pop() if whole else await receive()

        return await self.app(scope, replay, send)


class Predict:
    """`POST /predict`: rows in (JSON or an Arrow IPC stream), the answer out, as JSON."""

    def __init__(self, served: Served) -> None:
        self.served = served

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        served = self.served
        if scope["method"] != "POST":
            return await refuse(send, 405, "request: POST rows to /predict", [(b"allow", b"POST")])
        loaded = served.current  # the version this request is answered with, whatever happens next
        if loaded is None:
            return await refuse(send, 503, "no version is loaded yet")
        kind = (header(scope, b"content-type") or b"").split(b";")[0].strip().decode("latin-1")
        if kind not in (JSON, ARROW):
            return await refuse(send, 415, f"request: send rows as {JSON} or {ARROW}, not {kind or 'no content type'}")
        body = (await receive()).get("body", b"")
        request = served.request_id(scope.get("ctrain.request_id"))
        try:
            if scope["query_string"]:
                ref = parse_qs(scope["query_string"].decode("latin-1")).get("version")
                if ref:
                    loaded = await _pinned(served, ref[-1])
            rows = served.decoder.json(body) if kind == JSON else served.decoder.arrow(body)
            scored = await loaded.batcher(served.inputs(rows), rows.n)
            answer = served.answer(loaded, rows, request, scored)
        except BadRequest as exc:
            return await refuse(send, 400, str(exc), [(b"x-request-id", request.encode())])
        except UserError as exc:
            return await refuse(send, 422, str(exc), [(b"x-request-id", request.encode())])
        except Exception as exc:  # not the request's fault: one line, never a traceback
            log.error("request %s: scoring failed (%s: %s)", request, type(exc).__name__, str(exc).splitlines()[:1])
            return await refuse(
                send,
                500,
                f"the server failed to score the rows ({type(exc).__name__})",
                [(b"x-request-id", request.encode())],
            )
        scope["ctrain.version"], scope["ctrain.rows"] = loaded.version, rows.n
        headers = [(b"x-ctrain-version", loaded.version.encode()), (b"x-request-id", request.encode())]
        await respond(send, 200, orjson.dumps(answer, option=_NUMPY), headers)


async def _pinned(served: Served, ref: str) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(served.pinned, ref)  # loading a version must not stop the event loop


def app(
    served: Served, max_body: int = MAX_BODY, token: str | None = None, replica: int | None = None, own: bool = False
) -> ASGIApp:
    """The ASGI application answering for `served`. With `token`, every request but `/health`
    needs `Authorization: Bearer <token>`. `replica` (a Ray Serve replica's process id) is named
    in `/version`. With `own`, the application starts `served` when it starts and stops it (the
    prediction log written) when it stops."""
    from contextlib import asynccontextmanager

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import HTMLResponse, JSONResponse, Response
    from starlette.routing import Route

    page = Template((files("continual_trainer.serve") / "status.html").read_text(encoding="utf-8"))

    async def health(request: Request) -> JSONResponse:
        if served.current is None:
            return JSONResponse({"status": "loading"}, status_code=503)
        return JSONResponse({"status": "ready", "version": served.current.version})

    async def version(request: Request) -> JSONResponse:
        current = served.current
        return JSONResponse(
            {
                "version": current.version if current else None,
                "reloads": served.reloads,
                "refused": served.refused,
                "store": served.store.display,
                "pid": os.getpid(),
                **({"replica": replica} if replica is not None else {}),
            }
        )

    async def metrics(request: Request) -> Response:
        return Response(served.metrics.text(), media_type=CONTENT_TYPE)

    async def status(request: Request) -> HTMLResponse:
        rows = "".join(
            f"<tr><td>{escape(v)}</td><td>{escape(s)}</td><td class='num'>{n:,}</td></tr>"
            for v, s, n in served.metrics.requests_by()
        )
        refusals = "".join(f"<li>{escape(v)}: {escape(w)}</li>" for v, w in served.refused.items())
        current = served.current
        return HTMLResponse(
            page.substitute(
                store=escape(served.store.display),
                version=escape(current.version if current else "none yet"),
                reloads=served.reloads,
                pid=os.getpid(),
                rows=rows or "<tr><td colspan='3'>no requests yet</td></tr>",
                refusals=f"<ul>{refusals}</ul>" if refusals else "<p>no version refused</p>",
            )
        )

    @asynccontextmanager
    async def lifespan(_: Any) -> Any:
        if own:
            served.start()
        try:
            yield
        finally:
            if own:
                served.stop()

    site = Starlette(
        routes=[Route("/health", health), Route("/version", version), Route("/metrics", metrics), Route("/", status)],
        lifespan=lifespan,
    )
    predict = Predict(served)

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict":
            return await predict(scope, receive, send)
        return await site(scope, receive, send)

    return RequestIds(Timing(Token(BodyLimit(route, max_body), token), served))
