"""A service calling an HTTP peer through urllib3's bounded, blocking pool
(tests/test_pool.py), never releasing its responses.

Usage: leaky_urllib3.py PORT POOL_SIZE WORKERS
"""

import sys
import threading
import time

import urllib3

_LEAKED: list[object] = []


def fetch_prices(http: urllib3.PoolManager, url: str) -> int:
    """The application frame --threads must point at (line 18: the request)."""
    resp = http.request("GET", url, preload_content=False)
    # Never read nor released: the pool slot stays taken, and the server's
    # idle close leaves the socket in CLOSE_WAIT. A reference is kept (as a
    # cache of responses would): a collected response would close its socket.
    _LEAKED.append(resp)
    return resp.status


def worker(http: urllib3.PoolManager, url: str) -> None:
    while True:
        try:
            fetch_prices(http, url)
        except Exception as exc:
            print(threading.current_thread().name, exc, file=sys.stderr)
        time.sleep(0.05)


def main() -> None:
    port, pool, workers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    http = urllib3.PoolManager(maxsize=pool, block=True)
    url = f"http://127.0.0.1:{port}/prices"
    for i in range(1, workers + 1):
        name = f"seed-worker-{i}"
        threading.Thread(target=worker, args=(http, url), name=name, daemon=True).start()
    while True:
        time.sleep(2)


if __name__ == "__main__":
    main()
