"""A tiny fault-injecting HTTP proxy in front of moto's S3 server (test helper).

``FaultProxy(upstream)`` forwards every request to ``upstream`` (``http://host:port``) and
can, per request, answer ``500 InternalError`` instead, delay the answer, or fail every
``GET`` of a key containing a chosen text (a permanent failure of one object).
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

_ERROR = (b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>InternalError</Code>'
          b"<Message>injected fault</Message></Error>")
_HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "upgrade", "trailer"}


class FaultProxy:
    """Forward to ``upstream``; inject faults as configured by the attributes.

    Attributes
    ----------
    fail_every : int
        Answer 500 to every n-th request (0 = never) ...
    max_injected : int
        ... until this many have been injected.
    delay_s : float
        Sleep this long before forwarding each request (slow responses).
    doomed : str or None
        Every GET / HEAD whose path contains this text gets a 500 (a permanent failure).
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.host, self.port = parts.hostname or "127.0.0.1", int(parts.port or 80)
        self.fail_every = 0
        self.max_injected = 10**9
        self.delay_s = 0.0
        self.doomed: str | None = None
        self.requests = 0
        self.injected = 0
        self.doomed_hits = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: object) -> None:
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with proxy._lock:
                    proxy.requests += 1
                    n = proxy.requests
                    fail = (proxy.fail_every and n % proxy.fail_every == 0
                            and proxy.injected < proxy.max_injected)
                    doomed = (proxy.doomed is not None and proxy.doomed in self.path
                              and self.command in ("GET", "HEAD"))
                    proxy.injected += bool(fail)
                    proxy.doomed_hits += bool(doomed)
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                if fail or doomed:
                    self.send_response(500)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(_ERROR)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(_ERROR)
                    return
                conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status, resp.reason)
                for key, value in resp.getheaders():
                    if key.lower() not in _HOP and key.lower() != "content-length":
                        self.send_header(key, value)
                # HEAD: the upstream's length of the body it did not send
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` of the proxy."""
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
