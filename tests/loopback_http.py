"""The HTTP server under the vendor stand-ins (Twilio, Gemini): a threaded server on a loopback port."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class LoopbackServer:
    server: ThreadingHTTPServer
    thread: threading.Thread

    @classmethod
    def start(
        cls, handler: type[BaseHTTPRequestHandler], *, name: str, host: str = "127.0.0.1", port: int = 0
    ) -> LoopbackServer:
        server = ThreadingHTTPServer((host, port), handler)
        server.daemon_threads = True
        # A short poll keeps shutdown fast: each test starts and stops its own stand-in.
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
        thread.start()
        return cls(server, thread)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def send_json(handler: BaseHTTPRequestHandler, status: int, body: bytes) -> None:
    """Answer with a JSON body; a client that already gave up (timed out) is not an error here."""
    try:
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the point of a deliberate stall
