"""The demo's workload: a keep-alive HTTP server and a pooled HTTP client.

Run as separate processes by tracer.cli.demo (and by the tests):

    python -m tracer.demo.workload server            # prints its port, serves
    python -m tracer.demo.workload client PORT leaky|healthy [--rate R] [--pool N]

The server closes a keep-alive connection after 0.5 s idle, as servers
do. The client takes a connection from its pool for every request. In the
leaky mode it reads the status line and headers, then keeps the response
object (as code that never consumes or releases a response does) and never
returns the connection: when the server's idle timeout fires, the client's
socket sits in CLOSE_WAIT with the unread body in its receive queue. In the
healthy mode it reads the body and returns the connection; the pool closes
idle connections the server has closed. In the leaky mode a
"finalizer" thread closes the oldest abandoned response every 6 s, as a
garbage collector eventually would: those leaks end, very late, but the
pool never gets their connection back.

The pool lends at most N connections at once (--pool, 8 by default, like
most real pools: HttpClient's 20, urllib3's maxsize): once the leaky client
has leaked them all, its workers block in Pool.get() waiting for one and it
opens no connection any more, which closewait reports as an exhausted pool.
--pool 0 makes it unbounded: a new connection per request, leaks without end.
"""

from __future__ import annotations

import ctypes
import http.client
import http.server
import resource
import select
import socket
import sys
import threading
import time

IDLE_TIMEOUT_S = 0.5
FINALIZER_EVERY_S = 6.0
CLIENT_FD_LIMIT = 256
DEFAULT_POOL = 8  # connections the client's pool lends at once (0: unbounded)
BODY = b"x" * 2048
PR_SET_NAME = 15


def set_thread_name(name: str) -> None:
    """Name the OS thread (what the kernel's comm shows), like Java pool threads."""
    libc = ctypes.CDLL(None)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    timeout = IDLE_TIMEOUT_S  # idle keep-alive connections are closed after this

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve() -> None:
    set_thread_name("demo-server")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


class Pool:
    """A minimal connection pool that evicts idle connections the server closed.

    Checking only the connection being checked out (as urllib3 does) is not
    enough: a connection at the bottom of the idle stack may sit unused in
    CLOSE_WAIT indefinitely; closewait reports exactly that. So every pool
    operation closes every dropped idle connection, as Apache HttpClient's
    idle-connection eviction does.
    """

    def __init__(self, port: int, size: int = 0) -> None:
        self.port = port
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()
        # Connections lent out at once (0: no bound); a leaked one is never given back.
        self.slots = threading.BoundedSemaphore(size) if size else None

    def _evict_dropped(self) -> None:
        alive = []
        for conn in self.idle:
            if _dropped(conn):
                conn.close()
            else:
                alive.append(conn)
        self.idle = alive

    def get(self) -> http.client.HTTPConnection:
        """A connection: an idle one, else a new one; with a bound, waits
        (forever) while every connection is lent out."""
        if self.slots is not None:
            self.slots.acquire()
        with self.lock:
            self._evict_dropped()
            if self.idle:
                return self.idle.pop()
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self.lock:
            self._evict_dropped()
            self.idle.append(conn)
        self.release()

    def release(self) -> None:
        """Give a lent connection's slot back (closed or returned)."""
        if self.slots is not None:
            self.slots.release()


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """True if the server closed the connection (readable with no request pending)."""
    if conn.sock is None:
        return True
    readable, _, _ = select.select([conn.sock], [], [], 0)
    return bool(readable)


def client(
    port: int, mode: str, rate: float, pool_size: int = DEFAULT_POOL, threads: int = 2
) -> None:
    set_thread_name(f"{mode}-client")
    # A small fd limit, like many services run with, so that the forecast
    # ("fd limit in ~Nm") has something near to aim at.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(CLIENT_FD_LIMIT, hard), hard))
    pool = Pool(port, pool_size)
    forgotten: list[http.client.HTTPResponse] = []  # responses nobody consumes

    def worker(n: int) -> None:
        set_thread_name(f"pool-1-thread-{n}")
        while True:
            conn = pool.get()
            try:
                conn.request("GET", "/")
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException):
                conn.close()  # the server closed it under us: a retry is normal
                pool.release()
                continue
            if mode == "leaky":
                forgotten.append(resp)  # never read, never released
            else:
                resp.read()
                pool.put(conn)
            time.sleep(threads / rate)

    def finalizer() -> None:
        # Like a garbage collector finally reclaiming an abandoned response:
        # the oldest leaked connection gets closed, very late.
        set_thread_name("finalizer")
        while True:
            time.sleep(FINALIZER_EVERY_S)
            if forgotten:
                forgotten.pop(0).close()

    for n in range(1, threads + 1):
        threading.Thread(target=worker, args=(n,), daemon=True).start()
    if mode == "leaky":
        threading.Thread(target=finalizer, daemon=True).start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


def main(argv: list[str]) -> None:
    if argv[:1] == ["server"]:
        serve()
    elif len(argv) >= 3 and argv[0] == "client" and argv[2] in ("leaky", "healthy"):
        opts = dict(zip(argv[3::2], argv[4::2]))
        rate, pool = float(opts.get("--rate", 2.0)), int(opts.get("--pool", DEFAULT_POOL))
        client(int(argv[1]), argv[2], rate, pool)
    else:
        sys.exit(
            "usage: python -m tracer.demo.workload server | "
            "client PORT leaky|healthy [--rate R] [--pool N]"
        )


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (KeyboardInterrupt, BrokenPipeError, ConnectionError):
        sys.exit(0)
    except socket.timeout:
        sys.exit(0)
