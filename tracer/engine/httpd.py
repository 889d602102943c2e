"""The exporter's HTTP server: /metrics, /healthz and a small / page.

A threading WSGI server (the standard library's wsgiref, as prometheus_client
uses) in a daemon thread; /metrics is prometheus_client's own WSGI app, which
answers in the Prometheus text format or, when the scraper's Accept header
asks for it, in OpenMetrics (and gzip when accepted). Optional TLS wraps the
listening socket. The handlers read only what the exporter publishes
(an immutable snapshot, a timestamp): they never call into the watcher.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from prometheus_client import CollectorRegistry, make_wsgi_app

from tracer.core.errors import CloseWaitError
from tracer.core.exitcodes import ExitStatus

DEFAULT_LISTEN_PORT = 9877
DEFAULT_LISTEN = f"127.0.0.1:{DEFAULT_LISTEN_PORT}"
METRICS_PATH = "/metrics"
HEALTH_PATH = "/healthz"
PATHS = {"metrics": METRICS_PATH, "health": HEALTH_PATH}

Health = Callable[[], tuple[bool, str]]


def parse_listen(text: str) -> tuple[str, int]:
    """`ADDR:PORT`, `[IPV6]:PORT` or `:PORT` (every interface) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not ADDR:PORT (e.g. 127.0.0.1:{DEFAULT_LISTEN_PORT})")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host or "0.0.0.0", int(port)


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck scrape never holds the exporter's exit
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 30  # a client that sends nothing does not keep a thread forever

    def log_message(self, format: str, *args: object) -> None:
        """Nothing per request: Prometheus scrapes every few seconds, forever."""


class MetricsServer:
    """Bound at construction (so a busy port fails before BPF is compiled),
    serving from start() until stop()."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        health: Health,
        page: Callable[[], str],
        tls_cert: str | None = None,
        tls_key: str | None = None,
    ) -> None:
        try:
            host, port = parse_listen(listen)
        except ValueError as exc:
            raise CloseWaitError(ExitStatus.USAGE, f"--listen: {exc}") from None
        server_class = type("Server", (_Server,), {"address_family": _family(host)})
        try:
            self._httpd = server_class((host, port), _QuietHandler)
        except OSError as exc:
            raise CloseWaitError(
                ExitStatus.USAGE,
                f"cannot listen on {listen}: {exc.strerror or exc}; "
                "fix: another --listen ADDR:PORT, or stop what holds it",
            ) from None
        self.tls = tls_cert is not None
        if tls_cert is not None:
            try:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.minimum_version = ssl.TLSVersion.TLSv1_2
                ctx.load_cert_chain(tls_cert, tls_key)
            except (OSError, ssl.SSLError) as exc:
                self._httpd.server_close()
                raise CloseWaitError(
                    ExitStatus.USAGE, f"--tls-cert/--tls-key: cannot load: {exc}"
                ) from None
            self._httpd.socket = ctx.wrap_socket(self._httpd.socket, server_side=True)
        self._httpd.set_app(make_app(registry, health, page))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="closewait-http", daemon=True
        )

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{METRICS_PATH}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
        self._httpd.server_close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def make_app(registry: CollectorRegistry, health: Health, page: Callable[[], str]) -> Callable:
    """The WSGI application: /metrics (prometheus_client), /healthz, /, 404."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict, start_response: Callable) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == METRICS_PATH:
            return metrics(environ, start_response)
        if path == HEALTH_PATH:
            ok, text = health()
            status = "200 OK" if ok else "503 Service Unavailable"
            return _reply(start_response, status, "text/plain; charset=utf-8", text + "\n")
        if path == "/":
            return _reply(start_response, "200 OK", "text/html; charset=utf-8", page())
        return _reply(
            start_response, "404 Not Found", "text/plain; charset=utf-8", "not found: see /\n"
        )

    return app


def _reply(start_response: Callable, status: str, ctype: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(body)))])
    return [body]
