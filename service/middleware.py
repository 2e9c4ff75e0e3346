"""Three pure-ASGI middlewares: the request context (request id, arrival, HEAD, the one error shape, metrics and
one access-log line), outermost; the body guard (the body read whole, under a byte limit and a read timeout,
before any route parses it), inside CORS so that its 413 and 408 carry CORS headers; and, innermost, the hot
routes' direct dispatch."""

import asyncio
import json
import logging
import re
import sys
import time
import uuid

from starlette.datastructures import MutableHeaders
from starlette.requests import Request

from .errors import PayloadTooLarge, error_for, short
from .metrics import Metrics

log = logging.getLogger("titok.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


_TYPES = {400: "invalid_request", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}
# what a JSON body may hold at most (array items and objects, counted by their separators): far above any valid
# request (64 sequences of 256 ids), far below what would stall the loop while it is parsed
MAX_JSON_VALUES = 1 << 16


class RequestContext:
    """Wraps every HTTP request: X-Request-ID in and out, the arrival time (deadlines count from it), HEAD as GET,
    the one error shape for the framework's own refusals, metrics and the log line."""

    def __init__(self, app, *, metrics: Metrics, routes: set[str]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        headers = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"])
        given = headers.get("x-request-id", "")
        request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["arrival"] = time.monotonic()  # each family's deadlines count from here (service/limits.py)
        # the label of a route must not come from the raw path (a fuzzer would make unbounded label values)
        path_label = scope["path"] if scope["path"] in self.routes else "other"
        in_flight = self.metrics.in_flight.labels(path_label)
        in_flight.inc()
        status = None

        async def send_with_id(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                MutableHeaders(scope=message).append("X-Request-ID", request_id)
            await send(message)

        head = scope["method"] == "HEAD"
        if head:  # HEAD wherever GET is allowed: the GET answer without its body
            # a copy: the server's own scope must still say HEAD (uvicorn's httptools protocol then expects no body)
            scope = {**scope, "method": "GET"}
        error_start: dict | None = None
        error_sent = False

        async def send_json_errors(message):
            # a refusal of the framework's (CORS, 405...) that is not JSON leaves in the one error shape
            nonlocal error_start, error_sent
            if error_sent:
                return
            if message["type"] == "http.response.start" and message["status"] >= 400:
                kind = dict(message.get("headers", [])).get(b"content-type", b"")
                if not kind.startswith(b"application/json"):
                    error_start = message
                    return
            if error_start is not None and message["type"] == "http.response.body":
                text = short(message.get("body", b"").decode("utf-8", "replace").strip() or "request refused")
                code = error_start["status"]
                drop = (b"content-type", b"content-length")
                kept = [(k, v) for k, v in error_start.get("headers", []) if k.lower() not in drop]
                state.setdefault("error_type", _TYPES.get(code, "invalid_request"))
                data = json.dumps(error_for(scope["path"], code, state["error_type"], text)).encode()
                length = str(len(data)).encode()
                headers = [*kept, (b"content-type", b"application/json"), (b"content-length", length)]
                await send_with_id({"type": "http.response.start", "status": code, "headers": headers})
                await send_with_id({"type": "http.response.body", "body": b"" if head else data})
                error_sent = True
                return
            if head and message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_json_errors)
        except Exception:  # a bug: answer 500 in the one shape, log the traceback, never send it
            log.exception("unhandled error", extra={"request_id": request_id})
            state["error_type"] = "internal_error"
            if status is None:
                await _send_json(send_with_id, 500, error_for(scope["path"], 500, "internal_error", "internal error"))
        finally:
            in_flight.dec()
            duration = time.perf_counter() - start
            route = scope.get("route")
            label = route.path if route is not None and hasattr(route, "path") else "other"
            if status is None:  # nothing was sent: the client went away first
                status = 499
                state.setdefault("error_type", "client_closed_request")
            self.metrics.requests.labels(label, scope["method"], str(status)).inc()
            self.metrics.request_seconds.labels(label, scope["method"], str(status)).observe(duration)
            if status >= 400:
                self.metrics.errors.labels(state.get("error_type", f"http_{status}")).inc()
            log.info(
                "request",
                extra={
                    "request_id": request_id,
                    "method": scope["method"],
                    "route": label,
                    "path": scope["path"],
                    "status": status,
                    "duration_ms": round(duration * 1000, 3),
                    "client": (scope.get("client") or ("", 0))[0],
                },
            )


class _Refused(Exception):
    def __init__(self, status: int, type_: str, message: str):
        self.status, self.type, self.message = status, type_, message


class BodyGuard:
    """Reads a request's body whole before the app sees it: 413 past ``max_body_bytes`` (declared or streamed,
    chunked included), 408 when a chunk takes longer than ``read_timeout_s`` or the whole body more than
    ``body_timeout_s`` from the request's arrival (before the route, and so its family's deadline, is known), a client
    that leaves counted as a disconnect (499); a JSON body with too many values is 413 before any parse."""

    def __init__(self, app, *, max_body_bytes: int, read_timeout_s: float, body_timeout_s: float):
        self.app, self.max_body_bytes, self.read_timeout_s = app, max_body_bytes, read_timeout_s
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "OPTIONS"):
            return await self.app(scope, receive, send)
        state = scope.setdefault("state", {})
        headers = dict((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"])
        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                raise self._too_large()
            kind = headers.get("content-type", "").split(";")[0].strip().lower()
            is_json = kind == "application/json" or kind.endswith("+json")
            deadline = state.get("arrival", time.monotonic()) + self.body_timeout_s
            body = await self._read(receive, deadline, is_json)
        except _Refused as e:
            state["error_type"] = e.type
            return await _send_json(send, e.status, error_for(scope["path"], e.status, e.type, e.message), close=True)
        except _ClientLeft:
            state["error_type"] = "client_closed_request"
            return  # nobody is there to answer: logged and counted as 499
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: the disconnect, for the request's watcher

        await self.app(scope, replay, send)

    def _too_large(self) -> _Refused:
        return _Refused(413, PayloadTooLarge.type, f"request body is over the limit of {self.max_body_bytes} bytes")

    async def _read(self, receive, deadline: float, is_json: bool) -> bytes:
        chunks, size, values = [], 0, 0
        while True:
            wait = min(self.read_timeout_s, deadline - time.monotonic())
            try:
                message = await _within(receive(), max(wait, 0.001))
            except asyncio.TimeoutError:
                raise _Refused(408, "request_timeout", "the request body was not received in time") from None
            if message["type"] == "http.disconnect":
                raise _ClientLeft
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large()
            if is_json:  # counted as it comes: refused at the first chunk over, not after reading 16 MB
                values += _json_values(chunk)
                if values > MAX_JSON_VALUES:
                    raise _Refused(413, PayloadTooLarge.type, f"the JSON body holds over {MAX_JSON_VALUES} values")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class _ClientLeft(Exception):
    pass


if sys.version_info >= (3, 11):

    async def _within(awaitable, seconds: float):
        """``awaitable`` under a timeout, without the task that ``asyncio.wait_for`` of Python 3.11 makes for it."""
        async with asyncio.timeout(seconds):
            return await awaitable

else:
    _within = asyncio.wait_for


def _json_values(body: bytes) -> int:
    """An upper bound on the values of a JSON text, from its separators (C-speed: ~1 ms a MB, no parse)."""
    return body.count(b",") + body.count(b"[") + body.count(b"{")


async def _send_json(send, status: int, body: dict, close: bool = False) -> None:
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    if close:  # the rest of an unread body is not waited for
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class HotRoutes:
    """The hot routes (POST /v1/tokenize, /v1/detokenize, /v1/generate) called directly, inside every middleware of
    ours (request context, CORS, body guard), without FastAPI's exception middleware, exit stack, router and
    request handler around them: that plumbing was a quarter of a small request's time on the event loop
    (bench/routes.py). Their handlers take the request and call their checks themselves (service/routes.py); an
    exception leaves through the app's own handlers, as it would through FastAPI's; any other request goes on to
    the app. The routes stay declared on the app too, for OpenAPI."""

    def __init__(self, app, *, routes: dict, exception_handlers: dict):
        self.app = app
        self.routes = routes  # path -> (FastAPI's route, for the metrics' label; the handler)
        # the app's handlers by exception class, but not the catch-all: an unexpected error goes on up to the
        # request context's 500, as it does from FastAPI's router
        self.handlers = {k: v for k, v in exception_handlers.items() if isinstance(k, type) and k is not Exception}

    async def __call__(self, scope, receive, send):
        hot = self.routes.get(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if hot is None:
            return await self.app(scope, receive, send)
        route, handler = hot
        scope["route"] = route
        request = Request(scope, receive, send)
        try:
            response = await handler(request)
        except Exception as exc:
            answer = next((self.handlers[c] for c in type(exc).__mro__ if c in self.handlers), None)
            if answer is None:
                raise
            response = await answer(request, exc)
        await response(scope, receive, send)
