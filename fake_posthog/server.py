"""Serving a fake: HTTP on 127.0.0.1 in a thread, or an `httpx.MockTransport` that answers in process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from .core import FakePostHog


@contextlib.contextmanager
def serve(fake: FakePostHog, port: int = 0) -> Iterator[str]:
    """Serve `fake` on 127.0.0.1 (port 0 = any free one) in a daemon thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
    server.daemon_threads = True
    server.fake = fake  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def transport(fake: FakePostHog) -> httpx.MockTransport:
    """An `httpx.MockTransport` answering through `fake` exactly as `serve` does, without a socket."""

    def answer(request: httpx.Request) -> httpx.Response:
        host = request.headers.get("Host") or request.url.netloc.decode()
        status, body, ctype, headers = fake._respond(request.method, request.url.raw_path.decode(),
                                                     request.headers.get("Authorization"), host)
        # bytes get a Content-Length, a streamed page (an iterator) is sent chunked: as over HTTP
        headers = {"Content-Type": ctype, "Date": _date(fake), **headers}
        return httpx.Response(status, headers=headers, content=body)

    return httpx.MockTransport(answer)


def _date(fake: FakePostHog) -> str:
    """The `Date` header from the fake's clock, as a real server sends its own."""
    return formatdate(fake.now.timestamp(), usegmt=True)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # keep-alive + separate header/body writes would hit delayed-ACK stalls
    timeout = 120

    def _answer(self) -> None:
        fake: FakePostHog = self.server.fake  # type: ignore[attr-defined]
        if length := int(self.headers.get("Content-Length") or 0):
            self.rfile.read(length)
        host = self.headers.get("Host") or f"127.0.0.1:{self.server.server_address[1]}"
        auth = self.headers.get("Authorization")
        status, body, ctype, headers = fake._respond(self.command, self.path, auth, host)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        for k, v in headers.items():
            self.send_header(k, v)
        if isinstance(body, bytes):
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for chunk in body:
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def date_time_string(self, timestamp: float | None = None) -> str:
        return _date(self.server.fake)  # type: ignore[attr-defined]

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass
