"""`closewait watch` and `closewait demo` as a user runs them: separate processes,
real BPF, output parsed back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

from tests.cli_helpers import CLOSEWAIT, ROOT, run_cli
from tests.conftest import connected_pair
from tracer.system import procfs

pytestmark = pytest.mark.bpf

LEAK_FIELDS = {
    "type", "ts", "pid", "comm", "fd", "fds", "inode", "family", "local", "remote",
    "holders", "netns", "age_s", "age_exact", "preexisting", "recv_q", "uid",
    "cgroup", "container", "opened_by", "opener_holds", "conn_age_s",
}  # fmt: skip
SUMMARY_FIELDS = {
    "type", "ts", "final", "elapsed_s", "leaks", "new", "ended", "targets", "leaks_by_pid",
    "exited", "unheld", "events_lost", "map_full", "creators_evicted", "latency_full",
    "decode_errors", "fins_seen", "fins_other_processes",
}  # fmt: skip


def bpf_programs() -> set[int]:
    out = subprocess.run(
        ["bpftool", "prog", "show", "--json"], capture_output=True, text=True, check=True
    )
    return {p["id"] for p in json.loads(out.stdout) if p.get("type") == "tracepoint"}


def programs_of(pid: int) -> set[int]:
    """Ids of the BPF programs a process holds open (its fds' fdinfo), so
    that other tracers on the host (other test suites) do not count."""
    ids = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as f:
                for line in f:
                    if line.startswith("prog_id:"):
                        ids.add(int(line.split()[1]))
        except OSError:
            continue
    return ids


def test_json_output_field_by_field_old_and_new_leaks_and_their_end(bpf_ok, peers, live) -> None:
    server, client = peers(), peers()
    # A leak older than the tracer: its age can only be estimated.
    old = connected_pair(server, client)
    server.call(op="send", fd=old["server_fd"], n=300)
    old_fin = server.call(op="close", fd=old["server_fd"])["wall"]
    time.sleep(3)

    cli = live(
        "watch", "--pid", str(client.pid), "--json",
        "--min-age", "1s", "--interval", "500ms", "--duration", "7s",
    )  # fmt: skip
    cli.wait_for_attach()
    ours = programs_of(cli.proc.pid)
    assert len(ours) >= 3 and ours <= bpf_programs(), "programs not attached"

    # A leak the kernel sees happen: exact age.
    new = connected_pair(server, client)
    server.call(op="send", fd=new["server_fd"], n=50)
    new_fin = server.call(op="close", fd=new["server_fd"])["wall"]
    leak_new = cli.wait_for_json(lambda o: o["type"] == "leak" and o["fd"] == new["client_fd"])
    leak_old = next(
        o
        for o in map(json.loads, reversed(cli.lines))
        if o["type"] == "leak" and o["fd"] == old["client_fd"]
    )

    assert set(leak_new) == LEAK_FIELDS and set(leak_old) == LEAK_FIELDS
    for leak, pair, fin, recv_q in ((leak_new, new, new_fin, 50), (leak_old, old, old_fin, 300)):
        assert leak["pid"] == client.pid
        assert leak["comm"] == "python" or leak["comm"].startswith("python")
        assert leak["fds"] == [pair["client_fd"]]
        assert leak["family"] == "ipv4"
        assert leak["local"] == f"127.0.0.1:{pair['client_port']}"
        assert leak["remote"] == f"127.0.0.1:{pair['port']}"
        assert leak["recv_q"] == recv_q
        assert leak["uid"] == 0
        assert leak["holders"] == [
            {"pid": client.pid, "comm": leak["comm"], "fd": pair["client_fd"]}
        ]
        true_age = leak["ts"] - fin
        assert abs(leak["age_s"] - true_age) <= max(0.5, 0.1 * true_age), (leak, true_age)
    assert leak_new["age_exact"] is True and leak_new["preexisting"] is False
    assert leak_new["opened_by"]["pid"] == client.pid and leak_new["opened_by"]["accepted"] is False
    assert leak_new["opener_holds"] is True and leak_old["opener_holds"] is None
    assert leak_new["cgroup"] == procfs.cgroup_path(client.pid) and leak_new["container"] is None
    assert leak_new["conn_age_s"] >= leak_new["age_s"]
    assert leak_old["age_exact"] is False and leak_old["preexisting"] is True
    assert leak_old["opened_by"] is None and leak_old["conn_age_s"] is None

    # Both ends are reported with who closed what.
    client.call(op="close", fd=old["client_fd"])
    end_old = cli.wait_for_json(lambda o: o["type"] == "ended" and o["fd"] == old["client_fd"])
    assert end_old["reason"] == "closed" and end_old["by_pid"] == client.pid
    assert end_old["by_fd"] == old["client_fd"] and end_old["via"] == "close"
    assert end_old["latency_exact"] is False

    assert cli.finish() == 0
    summaries = [o for o in cli.json_lines() if o["type"] == "summary"]
    assert all(set(s) == SUMMARY_FIELDS for s in summaries)
    final = summaries[-1]
    assert final["final"] is True and [s["final"] for s in summaries].count(True) == 1
    assert final["leaks"] == 1 and final["leaks_by_pid"] == {str(client.pid): 1}
    (target,) = final["targets"]
    assert (target["pid"], target["comm"], target["leaks"]) == (client.pid, leak_new["comm"], 1)
    assert target["fd_limit"] == procfs.fd_limit(client.pid) and target["open_fds"] >= 2
    assert final["events_lost"] == 0 and final["map_full"] == 0
    assert 6.5 < final["elapsed_s"] < 9
    assert not ours & bpf_programs(), "BPF programs left loaded after exit"


def test_table_output_and_sigterm_gives_final_report(bpf_ok, peers, live) -> None:
    server, client = peers(), peers()
    pair = connected_pair(server, client)
    server.call(op="close", fd=pair["server_fd"])
    cli = live("watch", "-p", str(client.pid), "--min-age", "0", "-i", "300ms")
    header = cli.wait_for(lambda line: "PID" in line and "REMOTE" in line, timeout=30)
    row = cli.wait_for(lambda line: f"127.0.0.1:{pair['client_port']}" in line)
    assert header.split()[:4] == ["PID", "COMM", "FD", "LOCAL"]
    assert row.split()[0] == str(client.pid) and row.split()[2] == str(pair["client_fd"])
    cli.proc.send_signal(signal.SIGTERM)
    assert cli.finish() == 0
    assert any("final report: 1 leaking socket" in line for line in cli.lines)


def test_target_exit_mid_trace_ends_cleanly(bpf_ok, peers, live) -> None:
    server, client = peers(), peers()
    pair = connected_pair(server, client)
    server.call(op="close", fd=pair["server_fd"])
    cli = live("watch", "--pid", str(client.pid), "--json", "--min-age", "0", "-i", "300ms")
    cli.wait_for_json(lambda o: o["type"] == "leak")
    client.kill()
    t0 = time.monotonic()
    assert cli.finish(timeout=10) == 0
    assert time.monotonic() - t0 < 5
    objs = cli.json_lines()
    ended = [o for o in objs if o["type"] == "ended"]
    assert ended and ended[0]["reason"] == "exited" and ended[0]["pid"] == client.pid
    notices = [o["message"] for o in objs if o["type"] == "notice"]
    assert any(f"pid {client.pid}" in n and "exited" in n for n in notices)
    assert objs[-1]["type"] == "summary" and objs[-1]["final"] is True
    assert objs[-1]["exited"][0]["pid"] == client.pid


def test_perf_buffer_fallback_delivers_events(bpf_ok, peers, live) -> None:
    """Kernels before 5.8 get the perf buffer; force it here to keep that path honest."""
    server, client = peers(), peers()
    cli = live("watch", "--pid", str(client.pid), "--json", "--min-age", "0", "-i", "300ms",
               "--perf-buffer")  # fmt: skip
    cli.wait_for_attach()
    pair = connected_pair(server, client)
    server.call(op="close", fd=pair["server_fd"])
    cli.wait_for_json(lambda o: o["type"] == "leak" and o["fd"] == pair["client_fd"])
    client.call(op="close", fd=pair["client_fd"])
    e = cli.wait_for_json(lambda o: o["type"] == "ended")
    assert e["reason"] == "closed" and e["by_fd"] == pair["client_fd"] and e["latency_exact"]


@pytest.mark.parametrize("mode", ["leaky", "healthy"])
def test_demo(bpf_ok, mode: str) -> None:
    # 17 s: the leaky client's pool of 8 is full after 4 s; the verdict needs 10 s more.
    duration = "17s" if mode == "leaky" else "9s"
    args = ["demo", "--json", "--duration", duration] + (["--healthy"] if mode == "healthy" else [])
    res = run_cli(*args, timeout=60)
    assert res.returncode == 0, res.stderr
    objs = [json.loads(line) for line in res.stdout.splitlines()]
    summaries = [o for o in objs if o["type"] == "summary"]
    leaks = [o for o in objs if o["type"] == "leak"]
    assert summaries and summaries[-1]["final"]
    ended = [o for o in objs if o["type"] == "ended"]
    if mode == "leaky":
        counts = [s["leaks"] for s in summaries]
        # The pool lends 8 connections; the finalizer closes one every 6 s.
        assert 6 <= max(counts) <= 8 and counts[-1] >= 5 and counts[-1] > counts[0], counts
        assert all(lk["comm"] == "leaky-client" for lk in leaks)
        assert any(lk["recv_q"] == 2048 for lk in leaks)  # the unread body
        assert any(
            lk["opened_by"] and lk["opened_by"]["comm"].startswith("pool-1-thread-") for lk in leaks
        )
        # The demo's finalizer thread closes the oldest leak every 6 s.
        assert ended and ended[0]["by_comm"] == "finalizer" and ended[0]["via"] == "close"
        assert ended[0]["latency_s"] > 2 and sum(s["ended"] for s in summaries) == len(ended)
        # The whole story: grouped by peer, growing while the pool fills,
        # then exhausted; latency profile.
        groups = [o for o in objs if o["type"] == "group"]
        group = groups[-1]
        assert group["side"] == "remote" and group["leaks"] == counts[-1]
        assert group["opened_by"] == "pool-1-thread-*"
        assert "growing" in [g["verdict"] for g in groups]
        assert group["verdict"] == "exhausted" and group["established"] == 0
        # Leaks the finalizer closed never went back to the pool: still a pool of 8.
        assert "a pool of 8 for this peer is probably exhausted" in group["verdict_text"]
        (target,) = summaries[-1]["targets"]
        assert target["fd_limit"] == 256 and target["open_fds"] > counts[-1]
        assert target["verdict"] == "exhausted" and target["rate_reliable"] is False
        latency = [o for o in objs if o["type"] == "latency"]
        assert sum(o["closes"] for o in latency) == len(ended)
        assert all(b["lo_us"] >= 2_000_000 for o in latency for b in o["buckets"])
    else:
        assert leaks == [] and ended == [] and all(s["leaks"] == 0 for s in summaries)
        assert summaries[-1]["targets"][0]["fd_exhaustion_eta_s"] is None  # not growing
        # Healthy closes: the pool evicts a connection the server closed within a second.
        latency = [o for o in objs if o["type"] == "latency"]
        assert sum(o["closes"] for o in latency) >= 5
        assert all(b["hi_us"] <= 2_097_152 for o in latency for b in o["buckets"])
    assert "demo:" in res.stderr


def test_pid_mode_leaves_other_processes_connections_out_of_the_kernel_map(
    bpf_ok, peers, live
) -> None:
    server, client, other = peers(), peers(), peers()
    cli = live("watch", "--pid", str(client.pid), "--json", "--min-age", "0", "-i", "300ms",
               "--duration", "3s")  # fmt: skip
    cli.wait_for_attach()
    mine, theirs = connected_pair(server, client), connected_pair(server, other)
    server.call(op="close", fds=[mine["server_fd"], theirs["server_fd"]])
    leak = cli.wait_for_json(lambda o: o["type"] == "leak")
    assert leak["pid"] == client.pid and leak["age_exact"] is True
    assert cli.finish() == 0
    final = [o for o in cli.json_lines() if o["type"] == "summary"][-1]
    assert final["fins_other_processes"] >= 1 and final["map_full"] == 0


def test_a_second_sigterm_aborts_a_stop_stuck_on_a_reader_that_went_away(bpf_ok, peers) -> None:
    # 2,000 leaks make every JSON report about 800 KB: with nobody reading
    # stdout, the first report fills the pipe (64 KB) and blocks. The first
    # SIGTERM only asks for a stop (the write goes on, blocked); the second
    # must end the process at once, with the "interrupted" status.
    server, client = peers(), peers()
    lst = server.call(op="listen")
    for _ in range(4):
        client.call(op="connect", addr="127.0.0.1", port=lst["port"], n=500)
        server.call(op="close", fds=server.call(op="accept", fd=lst["fd"], n=500)["fds"])
    proc = subprocess.Popen(
        [*CLOSEWAIT, "watch", "--pid", str(client.pid), "--json", "--interval", "100ms",
         "--min-age", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.read(1)  # it started reporting: the pipe fills next
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None, "the first SIGTERM must not abort: it asks for a final report"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 130
        assert proc.stderr is not None
        assert "closewait: interrupted" in proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
