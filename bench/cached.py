"""A caching proxy in front of the fake PostHog, so a benchmark measures the client, not the server.

    python bench/cached.py <fake url>      # prints ``READY <url>`` once listening

The fake spends about as much CPU per row as a client does, and shares this machine's 2 cores; an
independent simulator answers for next to nothing (a bare client reaches about 59,000 rows/s there). The
proxy forwards each API request once and then answers the same path and query (in any parameter order)
from memory; `/_fake/*` requests always go through, except `/_fake/requests`, which counts the API requests
the proxy answered. Run a sync once to fill the cache, then measure the next run.
"""

from __future__ import annotations

import sys
import threading
import urllib.error
import urllib.request
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import orjson

_KEPT_HEADERS = ("Content-Type", "Retry-After")


def _key(path: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    parts = urlsplit(path)
    return parts.path, tuple(sorted(parse_qsl(parts.query, keep_blank_values=True)))


def serve(upstream: str) -> None:
    """Serve the proxy on a free loopback port until killed."""
    cache: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[int, list[tuple[str, str]], bytes]] = {}
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
            pass

        def _forward(self) -> tuple[int, list[tuple[str, str]], bytes]:
            length = int(self.headers.get("Content-Length") or 0)
            request = urllib.request.Request(
                upstream + self.path, data=self.rfile.read(length) if length else None, method=self.command,
                headers={k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")},
            )
            try:
                with urllib.request.urlopen(request) as response:
                    return response.status, _headers(response.headers), response.read()
            except urllib.error.HTTPError as error:
                return error.code, _headers(error.headers), error.read()

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - the base class's name
            key = _key(self.path)
            if key[0] == "/_fake/requests":
                with lock:
                    self._answer(200, [("Content-Type", "application/json")], orjson.dumps(counts))
                return
            if key[0].startswith("/_fake/"):
                self._answer(*self._forward())
                return
            with lock:
                counts[key[0]] += 1
                hit = cache.get(key)
            if hit is None:
                hit = self._forward()
                if hit[0] == 200:
                    with lock:
                        cache[key] = hit
            self._answer(*hit)

        def do_POST(self) -> None:  # noqa: N802 - the base class's name
            self._answer(*self._forward())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"READY http://127.0.0.1:{server.server_address[1]}", flush=True)
    server.serve_forever()


def _headers(message: object) -> list[tuple[str, str]]:
    return [(name, value) for name in _KEPT_HEADERS if (value := message.get(name)) is not None]  # type: ignore[attr-defined]


if __name__ == "__main__":
    serve(sys.argv[1].rstrip("/"))
