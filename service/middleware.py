"""The request context (pure ASGI): request id, body limit, deadline, metrics and one access-log line."""

import json
import logging
import re
import time
import uuid

from starlette.datastructures import MutableHeaders

from .errors import PayloadTooLarge, error_body
from .metrics import Metrics

log = logging.getLogger("titok.access")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContext:
    """Wraps every HTTP request: X-Request-ID in and out, 413 beyond the body limit, metrics and the log line."""

    def __init__(self, app, *, max_body_bytes: int, metrics: Metrics, routes: set[str]):
        self.app, self.max_body_bytes, self.metrics, self.routes = app, max_body_bytes, metrics, routes

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

        received = 0

        async def receive_limited():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:  # a chunked body without Content-Length
                    raise PayloadTooLarge(f"request body is over the limit of {self.max_body_bytes} bytes")
            return message

        try:
            length = headers.get("content-length")
            if length is not None and (not length.isdigit() or int(length) > self.max_body_bytes):
                state["error_type"] = PayloadTooLarge.type
                msg = f"request body is over the limit of {self.max_body_bytes} bytes"
                await self._send_json(send_with_id, 413, error_body(PayloadTooLarge.type, msg))
            else:
                await self.app(scope, receive_limited, send_with_id)
        except Exception:  # a bug: answer 500 in the one shape, log the traceback, never send it
            log.exception("unhandled error", extra={"request_id": request_id})
            state["error_type"] = "internal_error"
            if status is None:
                await self._send_json(send_with_id, 500, error_body("internal_error", "internal error"))
        finally:
            in_flight.dec()
            duration = time.perf_counter() - start
            route = scope.get("route")
            label = route.path if route is not None and hasattr(route, "path") else "other"
            status = status or 499  # nothing was sent: the client went away first
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

    @staticmethod
    async def _send_json(send, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": data})
