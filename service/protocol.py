"""The served port's own limits: uvicorn's h11 protocol with the guards uvicorn lacks.

uvicorn itself enforces the keep-alive timeout (``timeout_keep_alive``) and, through h11, a bound on a request's
unparsed bytes (``h11_max_incomplete_event_size``, answered as a bare text 400). It has no header read timeout, no
header size answer of its own, and its ``limit_concurrency`` still holds every extra connection open (its file
descriptor) to answer 503. This subclass adds, per connection:

- a cap on open connections: one over it is answered 429 (JSON, ``Connection: close``) and closed at once, so a
  flood of idle connections cannot take every file descriptor;
- 431 (JSON) when the request line and headers exceed ``max_header_bytes``;
- 408 (JSON) when the headers are not complete within ``read_timeout_s`` (a body is timed by the gateway's body
  guard, service/middleware.py);
- its own malformed-request answers (uvicorn's text 400) in the one JSON error shape.
"""

import asyncio
import json
import resource

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .settings import Settings


def _answer(status: int, reason: bytes, type_: str, message: str, extra: bytes = b"") -> bytes:
    body = json.dumps({"error": {"type": type_, "message": message}}).encode()
    head = b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n" % (
        status,
        reason,
        len(body),
    )
    return head + extra + b"\r\n" + body


def raise_open_files_limit() -> int:
    """The soft limit of open files raised to the hard one (connections are files); the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def guarded_protocol(settings: Settings) -> type[H11Protocol]:
    """The h11 protocol class for ``uvicorn.run(http=...)`` with ``settings``' connection limits."""
    too_many = _answer(
        429,
        b"Too Many Requests",
        "overloaded",
        f"the gateway holds its maximum of {settings.max_connections} connections; retry shortly",
        b"retry-after: 1\r\n",
    )
    headers_too_large = _answer(
        431,
        b"Request Header Fields Too Large",
        "headers_too_large",
        f"the request line and headers are over the limit of {settings.max_header_bytes} bytes",
    )
    too_slow = _answer(408, b"Request Timeout", "request_timeout", "the request headers were not received in time")

    class GuardedH11Protocol(H11Protocol):
        _refused = False
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport) -> None:
            if len(self.server_state.connections) >= settings.max_connections:
                self._refused = True
                self.transport = transport
                transport.write(too_many)
                transport.close()
                return
            super().connection_made(transport)
            self._await_headers()

        def connection_lost(self, exc) -> None:
            self._stop_header_timer()
            if self._refused:
                return
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._refused or self.transport.is_closing():
                return
            if self.conn.their_state is h11.IDLE:  # still reading a request line and headers
                # what h11 holds (under max_header_bytes, else refused before) and what came: the header section's
                # size, up to its blank line, whether it arrives in one piece or byte by byte
                buffered = self.conn.trailing_data[0] + data
                end = buffered.find(b"\r\n\r\n")
                if (len(buffered) if end < 0 else end + 4) > settings.max_header_bytes:
                    return self._refuse(headers_too_large)
                self._await_headers()
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:  # the headers are in
                self._stop_header_timer()

        def send_400_response(self, msg: str) -> None:
            self._refuse(_answer(400, b"Bad Request", "invalid_request", f"invalid HTTP request: {msg}"))

        def _refuse(self, answer: bytes) -> None:
            self._stop_header_timer()
            if not self.transport.is_closing():
                self.transport.write(answer)
                self.transport.close()

        def _await_headers(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(settings.read_timeout_s, self._headers_late)

        def _stop_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
                self._refuse(too_slow)

    return GuardedH11Protocol
