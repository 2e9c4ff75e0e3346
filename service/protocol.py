"""The served port's own limits: uvicorn's httptools protocol with the guards uvicorn lacks.

httptools (llhttp, in C) parses a request several times faster than h11, uvicorn's pure-Python parser, which
matters when a small request's whole cost is a few milliseconds. It bounds nothing by itself: no header size, no
header read timeout, and uvicorn's ``limit_concurrency`` still holds every extra connection open (its file
descriptor) to answer 503. This subclass adds, per connection:

- a cap on open connections: one over it is answered 429 (JSON, ``Connection: close``) and closed at once, so a
  flood of idle connections cannot take every file descriptor;
- 431 (JSON) when the request line and headers exceed ``max_header_bytes``, and when the trailers of a chunked body
  do (httptools gathers a header's bytes until it ends: unbounded, they would grow memory and copying);
- 408 (JSON) when the headers are not complete within ``read_timeout_s`` (a body is timed by the gateway's body
  guard, service/middleware.py);
- its own malformed-request answers (uvicorn's text 400) in the one JSON error shape;
- one send for what is written in one turn of the event loop (an answer's head and body), not one per write;
- each request's scope holds a future of the connection's loss (``CONNECTION_LOST``).

uvicorn itself enforces the keep-alive timeout (``timeout_keep_alive``).
"""

import asyncio
import json
import resource
import sys

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

# the scope key of a request's future of its connection's loss (the deadline guard in service/dependencies.py
# awaits it beside the work; under another ASGI server, where it is absent, a task watches ``receive`` instead)
CONNECTION_LOST = "titok.connection_lost"


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


class _OneSend:
    """A connection's transport whose writes made in one turn of the event loop leave in one send: uvicorn writes an
    answer's head and body apart, and two sends cost a second packet and, on one machine, a second wake-up of the
    client (measured: the head's send was the event loop's largest single cost for a small answer). A large write
    leaves at once, uncopied, after what is held."""

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop):
        self._transport, self._loop = transport, loop
        self._held: list[bytes] = []

    def write(self, data: bytes) -> None:
        if len(data) >= 65536:
            self.flush()
            self._transport.write(data)
            return
        if not self._held:
            self._loop.call_soon(self.flush)
        self._held.append(data)

    def flush(self) -> None:
        if self._held:
            data = b"".join(self._held)
            self._held = []
            if not self._transport.is_closing():
                self._transport.write(data)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str):  # everything else is the transport's
        return getattr(self._transport, name)


def guarded_protocol(settings: Settings) -> type[HttpToolsProtocol]:
    """The httptools protocol class for ``uvicorn.run(http=...)`` with ``settings``' connection limits."""
    limit = settings.max_header_bytes
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
        f"the request line and headers are over the limit of {limit} bytes",
    )
    trailers_too_large = _answer(
        431,
        b"Request Header Fields Too Large",
        "headers_too_large",
        f"the trailers of the chunked body are over the limit of {limit} bytes",
    )
    too_slow = _answer(408, b"Request Timeout", "request_timeout", "the request headers were not received in time")

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        _refused = False
        _lost: asyncio.Future | None = None
        _header_timer: asyncio.TimerHandle | None = None
        # the request being read, as the parser reports it: "idle" before its first byte, "head" (request line and
        # headers), "body" (from the end of the headers to the end of the request)
        _phase = "idle"
        _section = 0  # bytes of the header section being read (a head, or trailers) in the reads before this one
        _tail = b""  # its last bytes: a blank line may be split between two reads
        _ended = 0  # requests read to their end
        _chunks = 0  # chunk headers of the body being read
        _chunk_empty = False  # the last chunk header has had no data yet: size 0 (trailers follow) or data to come

        def connection_made(self, transport) -> None:
            if len(self.server_state.connections) >= settings.max_connections:
                self._refused = True
                self.transport = transport
                transport.write(too_many)
                transport.close()
                return
            super().connection_made(transport)
            self.transport = _OneSend(transport, self.loop)  # type: ignore[assignment]
            self._await_headers()

        def connection_lost(self, exc) -> None:
            self._stop_header_timer()
            if self._refused:
                return
            super().connection_lost(exc)
            if self._lost is not None and not self._lost.done():
                self._lost.set_result(None)

        def data_received(self, data: bytes) -> None:
            if self._refused or self.transport.is_closing():
                return
            in_head, window = self._phase != "body", b""
            if in_head:
                # what came before and what came now: the header section's size, up to its blank line, whether it
                # arrives in one piece or byte by byte (checked before the parser gathers it)
                window = self._tail + data
                end = window.find(b"\r\n\r\n")
                if self._section + (len(data) if end < 0 else end + 4 - len(self._tail)) > limit:
                    return self._refuse(headers_too_large)
                self._await_headers()
            maybe_trailers, ended, chunks = self._in_last_chunk(), self._ended, self._chunks
            super().data_received(data)
            if self._ended != ended:
                # a request ended in this read; a next one begun in it (pipelined) is counted from the next read:
                # the parser does not say where it began, and the read is bounded (and in memory) anyway
                self._section, self._tail = 0, b""
            elif self._phase == "head":  # the same head goes on
                self._section, self._tail = self._section + len(data), window[-3:]
            elif in_head:  # the head ended in this read
                self._section, self._tail = 0, b""
            elif maybe_trailers and self._chunks == chunks and self._in_last_chunk():
                # a whole read after a chunk header and none of it data: that chunk had size 0, these are trailers
                self._section += len(data)
                if self._section > limit:
                    return self._refuse(trailers_too_large)
            if self._phase != "head":
                self._stop_header_timer()

        # the parser's callbacks: where the request being read is
        def on_message_begin(self) -> None:
            self._phase = "head"
            super().on_message_begin()
            # the connection's loss as a future the request's deadline guard awaits beside its work
            # (service/dependencies.py): no task per request to watch ``receive`` for the disconnect
            if self._lost is None:
                self._lost = self.loop.create_future()
            self.scope[CONNECTION_LOST] = self._lost  # type: ignore[literal-required]

        def on_headers_complete(self) -> None:
            self._phase, self._chunks = "body", 0
            super().on_headers_complete()

        def on_chunk_header(self) -> None:
            self._chunks += 1
            self._chunk_empty = True

        def on_body(self, body: bytes) -> None:
            self._chunk_empty = False
            super().on_body(body)

        def on_chunk_complete(self) -> None:
            self._chunk_empty = False

        def on_message_complete(self) -> None:
            self._phase, self._ended = "idle", self._ended + 1
            super().on_message_complete()

        def _in_last_chunk(self) -> bool:
            return self._phase == "body" and self._chunk_empty

        def send_400_response(self, msg: str) -> None:
            # uvicorn calls this while handling the parser's error, whose own message says more than ``msg``
            error = sys.exc_info()[1]
            detail = str(error) if error is not None and str(error) else msg
            self._refuse(_answer(400, b"Bad Request", "invalid_request", f"invalid HTTP request: {detail}"))

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
            if self._phase != "body" and (self.cycle is None or self.cycle.response_complete):
                self._refuse(too_slow)

    return GuardedHttpToolsProtocol
