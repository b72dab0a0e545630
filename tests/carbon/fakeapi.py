"""A tiny HTTP server on 127.0.0.1 that answers like a carbon API would, scripted per test."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass
class Reply:
    status: int = 200
    body: object = None  # dict/list -> JSON; str/bytes sent as is
    headers: dict = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Request:
    path: str
    query: dict
    headers: dict


Responder = Callable[[Request], Reply]


class FakeApi:
    def __init__(self, responder: Responder):
        self.responder = responder
        self.requests: list[Request] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                parts = urlsplit(self.path)
                req = Request(parts.path, {k: v[0] for k, v in parse_qs(parts.query).items()},
                              {k.lower(): v for k, v in self.headers.items()})
                api.requests.append(req)
                reply = api.responder(req)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                body = reply.body
                data = body if isinstance(body, bytes) else (
                    body.encode() if isinstance(body, str) else json.dumps(body).encode())
                try:
                    self.send_response(reply.status)
                    for k, v in {"Content-Type": "application/json", **reply.headers}.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def hits(self, prefix: str = "") -> int:
        return sum(1 for r in self.requests if r.path.startswith(prefix))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t
