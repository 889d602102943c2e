"""A process that opens, holds and closes sockets on command, for tests.

Tests run it as a child (possibly in another network namespace) and talk to
it with one JSON object per line on stdin/stdout. Every reply carries
`mono`, CLOCK_MONOTONIC in ns right after the operation: the same clock as
the kernel's bpf_ktime_get_ns(), so tests can compute true ages.

It deliberately uses only the standard library: it must start fast and run
under any python3 in any namespace.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import socket
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15


def main() -> None:
    socks: dict[int, socket.socket] = {}
    children: list[int] = []
    in_flight: list[socket.socket] = []
    kept: list[socket.socket] = []
    # Tests hold thousands of sockets: take the whole hard limit.
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    def reply(**kw: object) -> None:
        kw["mono"] = time.monotonic_ns()
        kw["wall"] = time.time()
        sys.stdout.write(json.dumps(kw) + "\n")
        sys.stdout.flush()

    reply(pid=os.getpid())
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "listen":
                fam = socket.AF_INET6 if cmd.get("v6") else socket.AF_INET
                s = socket.socket(fam, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                addr = cmd.get("addr", "::1" if cmd.get("v6") else "127.0.0.1")
                s.bind((addr, cmd.get("port", 0)))
                s.listen(1024)
                socks[s.fileno()] = s
                reply(fd=s.fileno(), port=s.getsockname()[1])
            elif op == "connect":
                n = int(cmd.get("n", 1))
                fds = []
                for _ in range(n):
                    # bind_port: a fixed local port, for twins in two namespaces.
                    src = (cmd["addr"], cmd["bind_port"]) if "bind_port" in cmd else None
                    s = socket.create_connection((cmd["addr"], cmd["port"]), source_address=src)
                    socks[s.fileno()] = s
                    fds.append(s.fileno())
                reply(fd=fds[0], fds=fds, local_port=socks[fds[0]].getsockname()[1])
            elif op == "accept":
                n = int(cmd.get("n", 1))
                lst = socks[cmd["fd"]]
                fds = []
                for _ in range(n):
                    a, _ = lst.accept()
                    socks[a.fileno()] = a
                    fds.append(a.fileno())
                reply(fd=fds[0], fds=fds)
            elif op == "send":
                socks[cmd["fd"]].sendall(b"d" * int(cmd["n"]))
                reply()
            elif op == "close":
                for fd in cmd.get("fds", [cmd.get("fd")]):
                    socks.pop(fd).close()
                reply()
            elif op == "closerange":
                os.closerange(cmd["lo"], cmd["hi"] + 1)
                for fd in range(cmd["lo"], cmd["hi"] + 1):
                    s = socks.pop(fd, None)
                    if s is not None:
                        s.detach()
                reply()
            elif op == "stash":
                # Send the fd over a unix socket pair and close it: the socket
                # then lives only in the in-flight message, held by no fd.
                a, b = socket.socketpair(socket.AF_UNIX)
                socket.send_fds(a, [b"x"], [cmd["fd"]])
                socks.pop(cmd["fd"]).close()
                in_flight.extend((a, b))
                reply()
            elif op == "dup2_devnull":
                # dup2() /dev/null onto the fd: closes the socket's fd in passing.
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, cmd["fd"])
                os.close(null)
                socks.pop(cmd["fd"]).detach()
                reply()
            elif op == "cycle_after_fin":
                # n times: connect, wait for the peer's FIN, wait delay_ms, close.
                # Timed here, in one process, so the FIN-to-close delay is exact.
                for _ in range(int(cmd["n"])):
                    s = socket.create_connection((cmd["addr"], cmd["port"]))
                    select.select([s], [], [])
                    time.sleep(cmd["delay_ms"] / 1000)
                    s.close()
                reply()
            elif op == "leak_steadily":
                # In the background: connect every interval_s and keep the socket.
                def leak(addr: str, port: int, n: int, every: float) -> None:
                    t0 = time.monotonic()
                    for i in range(n):
                        kept.append(socket.create_connection((addr, port)))
                        time.sleep(max(0, t0 + (i + 1) * every - time.monotonic()))

                args = (cmd["addr"], cmd["port"], int(cmd["n"]), float(cmd["interval_s"]))
                threading.Thread(target=leak, args=args, daemon=True).start()
                reply()
            elif op == "dup":
                # Untraced on purpose: dup() adds an fd no probe reports.
                new = os.dup(cmd["fd"])
                if cmd.get("inheritable"):
                    os.set_inheritable(new, True)
                socks[new] = socket.socket(fileno=new)
                reply(fd=new)
            elif op == "uring_close":
                # Close through io_uring (IORING_OP_CLOSE): no close-family syscall.
                sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
                from uring import uring_close

                res = uring_close(cmd["fd"])
                socks.pop(cmd["fd"]).detach()
                reply(res=res)
            elif op == "exec_sleep":
                # Replace this process with sleep(1): close-on-exec fds (every
                # Python socket's) are closed by execve, inheritable ones stay.
                reply()
                os.execv("/bin/sleep", ["sleep", str(cmd.get("s", 60))])
            elif op == "fork_hold":
                # The child keeps every fd and sleeps; the parent may close its copy.
                pid = os.fork()
                if pid == 0:
                    # Die with the parent, even if the test kills it with SIGKILL.
                    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
                    os.close(0)
                    time.sleep(3600)
                    os._exit(0)
                children.append(pid)
                reply(child=pid)
            elif op == "rename":
                # The process's name (comm), as any process may set its own.
                name = cmd["name"].encode("utf-8", "surrogateescape")[:15]
                ctypes.CDLL(None).prctl(PR_SET_NAME, ctypes.c_char_p(name), 0, 0, 0)
                reply()
            elif op == "exit":
                reply()
                break
            else:
                reply(error=f"unknown op {op}")
        except Exception as exc:  # report, keep serving
            reply(error=f"{type(exc).__name__}: {exc}")
    for pid in children:
        try:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        except OSError:
            pass


if __name__ == "__main__":
    main()
