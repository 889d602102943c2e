"""4. Detection latency: from the FIN to the leak's first line in the output.

The benchmark process itself is the leaking process: it connects to its
own listener, accepts, and closes the accepted side. That close() sends the
FIN, which loopback delivers before close() returns, so the time taken
just after it is the FIN's time within microseconds. It keeps the client
side open: a socket in CLOSE_WAIT, held. `closewait watch --pid <self>` is
running; the leak's first appearance is the arrival of its first leak line
(matched by its local endpoint). The bound is --min-age + --interval: a
socket becomes a leak at min-age and the next refresh reports it.

Leaks are made at spaced moments (a fraction of the interval apart that
is not a simple ratio of it), so they fall at different phases of the
refresh cycle and the worst case shows. Then each one is closed, and the
time to its ENDED line is measured too (kernel event, drained every
250 ms or sooner).

Then the same for leaks whose FIN came before closewait started (already
in CLOSE_WAIT at attach, younger than --min-age): each must be reported at
the first refresh after it comes of age, or after attach if later, so the
bound is max(attach, FIN + min-age) + interval + 0.5 s.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable

from bench import stats, tracers
from bench.config import Config

SLACK_S = 0.5  # the target: latency <= min-age + interval + 0.5 s
PHASE = 0.382  # leaks this fraction of an interval apart (golden-ratio spacing)


def run(cfg: Config, log: Callable[[str], None]) -> dict:
    min_age, interval = cfg.detect_min_age_s, cfg.detect_interval_s
    bound = min_age + interval
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    w = tracers.ClosewaitWatch(
        ["--pid", str(os.getpid()), "--min-age", f"{min_age}s", "--interval", f"{interval}s"],
        "closewait-detect",
        keep_leaks=True,
    )
    held: dict[str, tuple[socket.socket, float]] = {}  # local endpoint -> (socket, FIN time)
    samples: list[dict] = []
    try:
        w.wait_ready()
        log(f"detection: {cfg.detect_leaks} leak(s), min-age {min_age}s, interval {interval}s")
        for i in range(cfg.detect_leaks):
            if i:
                time.sleep(PHASE * interval)
            client = socket.create_connection(("127.0.0.1", port))
            accepted, _ = listener.accept()
            accepted.close()  # the FIN
            t_fin = time.monotonic()
            host, cport = client.getsockname()[:2]
            held[f"{host}:{cport}"] = (client, t_fin)

        deadline = time.monotonic() + bound + SLACK_S + 10
        first_seen = _wait_seen(w, set(held), deadline)
        for local, (_, t_fin) in held.items():
            t = first_seen.get(local)
            samples.append(
                {"local": local, "latency_s": None if t is None else round(t - t_fin, 3)}
            )

        # Now close them: FIN -> ENDED line.
        closed_at = {}
        for local, (sock, _) in held.items():
            sock.close()
            closed_at[local] = time.monotonic()
        end_seen = _wait_ended(w, set(held), time.monotonic() + interval + 5)
        for s in samples:
            t = end_seen.get(s["local"])
            s["close_to_ended_s"] = None if t is None else round(t - closed_at[s["local"]], 3)
    finally:
        for sock, _ in held.values():
            sock.close()
        listener.close()
        w.stop()

    lat = [s["latency_s"] for s in samples if s["latency_s"] is not None]
    ends = [s["close_to_ended_s"] for s in samples if s.get("close_to_ended_s") is not None]
    log(f"detection: {cfg.detect_leaks} leak(s) in CLOSE_WAIT before attach")
    pre = _preexisting(cfg)
    return {
        "preexisting": pre,
        "min_age_s": min_age,
        "interval_s": interval,
        "bound_s": bound,
        "target_s": bound + SLACK_S,
        "leaks": len(samples),
        "detected": len(lat),
        "latency_s_median": _r(stats.median(lat)),
        "latency_s_max": _r(max(lat) if lat else None),
        "close_to_ended_s_median": _r(stats.median(ends)),
        "close_to_ended_s_max": _r(max(ends) if ends else None),
        "samples": samples,
    }


def _preexisting(cfg: Config) -> dict:
    """Leaks made before closewait starts: FIN to first leak line, and how
    far each is past its bound (negative: early)."""
    min_age, interval = cfg.detect_min_age_s, cfg.detect_interval_s
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: dict[str, tuple[socket.socket, float]] = {}
    samples: list[dict] = []
    w = None
    try:
        for i in range(cfg.detect_leaks):
            if i:
                time.sleep(PHASE * interval / 2)
            client = socket.create_connection(("127.0.0.1", port))
            accepted, _ = listener.accept()
            accepted.close()
            host, cport = client.getsockname()[:2]
            held[f"{host}:{cport}"] = (client, time.monotonic())
        w = tracers.ClosewaitWatch(
            ["--pid", str(os.getpid()), "--min-age", f"{min_age}s", "--interval", f"{interval}s"],
            "closewait-detect-pre",
            keep_leaks=True,
        )
        w.wait_ready()
        t_ready = time.monotonic()
        deadline = t_ready + min_age + interval + SLACK_S + 10
        first_seen = _wait_seen(w, set(held), deadline)
        for local, (_, t_fin) in held.items():
            t = first_seen.get(local)
            bound = max(t_ready, t_fin + min_age) + interval + SLACK_S
            samples.append(
                {
                    "latency_s": None if t is None else round(t - t_fin, 3),
                    "past_bound_s": None if t is None else round(t - bound, 3),
                }
            )
    finally:
        for sock, _ in held.values():
            sock.close()
        listener.close()
        if w is not None:
            w.stop()
    lat = [s["latency_s"] for s in samples if s["latency_s"] is not None]
    past = [s["past_bound_s"] for s in samples if s["past_bound_s"] is not None]
    return {
        "leaks": len(samples),
        "detected": len(lat),
        "latency_s_max": _r(max(lat) if lat else None),
        "past_bound_s_max": _r(max(past) if past else None),
        "samples": samples,
    }


def _wait_seen(w: tracers.ClosewaitWatch, wanted: set[str], deadline: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    while time.monotonic() < deadline and len(seen) < len(wanted):
        for t, obj in list(w.output.leaks):
            local = obj.get("local")
            if local in wanted and local not in seen:
                seen[local] = t
        time.sleep(0.02)
    return seen


def _wait_ended(w: tracers.ClosewaitWatch, wanted: set[str], deadline: float) -> dict[str, float]:
    seen: dict[str, float] = {}
    while time.monotonic() < deadline and len(seen) < len(wanted):
        for t, obj in w.ended():
            local = obj.get("local")
            if local in wanted and local not in seen:
                seen[local] = t
        time.sleep(0.02)
    return seen


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
