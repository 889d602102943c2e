"""The correlation logic on hand-made observations: every rule, in milliseconds.

The same rules run against the real kernel in test_watch_kernel.py; here
each edge case (namespaces sharing a tuple, lost events, exits) is pinned
down without having to provoke it.
"""

from __future__ import annotations

import socket

from tracer.core.correlate import Observation, estimated_fin_ns
from tracer.core.model import (
    NS_PER_S,
    Creator,
    DiagSock,
    FdDrop,
    Holder,
    KernelSock,
    LeftCloseWait,
    ProcInfo,
    SockTuple,
)
from tracer.core.tracker import LeakTracker

S = NS_PER_S
NS1, NS2 = 4026531833, 4026532177
T1 = SockTuple(socket.AF_INET, "10.0.0.1", 40000, "10.0.0.9", 8080)
T2 = SockTuple(socket.AF_INET6, "::1", 40001, "::1", 8080)


def diag(
    t: SockTuple, inode: int, netns: int = NS1, recv_q: int = 0, est_fin_s: float | None = None
) -> DiagSock:
    return DiagSock(
        netns, t, inode, 1000, recv_q, None if est_fin_s is None else int(est_fin_s * S)
    )


def ksock(sk: int, fin_ns: int, t: SockTuple, tgid: int = 0, netns: int = NS1) -> KernelSock:
    """A kernel map entry; netns=0 as on a kernel without BTF."""
    creator = Creator(fin_ns - S, tgid, tgid, "pool-1-thread-1", False) if tgid else None
    return KernelSock(sk, fin_ns, t, creator, netns)


def obs(
    now: int,
    kernel=(),
    diags=(),
    holders=None,
    events=(),
    exited=(),
    netns=(NS1, NS2),
    targets=None,
) -> Observation:
    return Observation(
        now_ns=now,
        kernel={k.sk: k for k in kernel},
        diag=list(diags),
        holders=holders or {},
        procs={100: ProcInfo("java"), 200: ProcInfo("child")},
        events=list(events),
        queried_netns=set(netns),
        exited=set(exited),
        targets=None if targets is None else frozenset(targets),
    )


def event(
    sk: int,
    t: SockTuple,
    ts: int,
    tgid: int,
    drop: str | None,
    fd: int = 0,
    newstate: str = "CW_TCP_LAST_ACK",
    preexisting: bool = False,
    netns: int = NS1,
) -> LeftCloseWait:
    return LeftCloseWait(ts, sk, t if preexisting else None, netns if preexisting else 0,
                         tgid, tgid, "worker", drop, fd, fd, newstate == "CW_TCP_CLOSE",
                         preexisting)  # fmt: skip


def nobody(_leak) -> list[Holder]:
    return []


def tracked(attach: int = 0, min_age: float = 5) -> LeakTracker:
    return LeakTracker(min_age, attach_ns=attach)


def test_a_socket_becomes_a_leak_only_after_min_age_and_only_if_a_target_holds_it() -> None:
    tr = tracked()
    k = ksock(0xA, 10 * S, T1, tgid=100)
    held = {1: [Holder(100, 7)]}
    assert tr.update(obs(14 * S, [k], [diag(T1, 1)], held), nobody).new == []
    assert tr.update(obs(16 * S, [k], [diag(T1, 1)], {}), nobody).new == []  # not held
    ch = tr.update(obs(16 * S, [k], [diag(T1, 1, recv_q=42)], held), nobody)
    (leak,) = ch.new
    assert ch.watch == [leak]
    assert (leak.pid, leak.fds, leak.recv_q, leak.sk) == (100, [7], 42, 0xA)
    assert leak.age_exact and not leak.preexisting and leak.age_s(16 * S) == 6
    assert leak.creator is not None and leak.creator.tgid == 100
    # Seen again: not new, not watched twice.
    ch = tr.update(obs(18 * S, [k], [diag(T1, 1)], held), nobody)
    assert ch.new == [] and ch.watch == [] and len(tr.leaks) == 1


def test_socket_unknown_to_the_kernel_gets_an_estimated_age_from_tcp_info() -> None:
    tr = tracked(attach=100 * S)
    ch = tr.update(obs(101 * S, [], [diag(T1, 1, est_fin_s=71)], {1: [Holder(100, 3)]}), nobody)
    (leak,) = ch.new
    assert not leak.age_exact and leak.preexisting
    assert leak.fin_ns == 71 * S and leak.sk is None


def test_without_tcp_info_the_estimate_is_zero_age() -> None:
    assert estimated_fin_ns(diag(T1, 1, est_fin_s=None), 5 * S) == 5 * S


def test_same_tuple_in_two_namespaces_is_joined_by_namespace() -> None:
    tr = tracked()
    # FIN times chosen so that "the closest FIN to the estimate" would swap them.
    k1, k2 = ksock(0xA, 50 * S, T1, netns=NS1), ksock(0xB, 10 * S, T1, netns=NS2)
    d1 = diag(T1, 1, NS1, est_fin_s=10)
    d2 = diag(T1, 2, NS2, est_fin_s=50)
    ch = tr.update(
        obs(100 * S, [k1, k2], [d1, d2], {1: [Holder(100, 3)], 2: [Holder(200, 4)]}), nobody
    )
    by_inode = {lk.inode: lk for lk in ch.new}
    assert by_inode[1].sk == 0xA and by_inode[2].sk == 0xB
    assert by_inode[1].fin_ns == 50 * S and by_inode[1].age_exact
    # The kernel's exit event of one ends that one only.
    (e,) = tr.apply_events([event(0xB, T1, 101 * S, 200, "close", fd=4)], nobody).ended
    assert e.leak.inode == 2 and set(tr.leaks) == {1}


def test_without_btf_a_tuple_two_namespaces_share_joins_nothing() -> None:
    tr = LeakTracker(5, attach_ns=0, netns_known=False)
    k = ksock(0xA, 50 * S, T1, netns=0)  # the kernel cannot tell which twin it is
    d1 = diag(T1, 1, NS1, est_fin_s=10)
    d2 = diag(T1, 2, NS2, est_fin_s=50)
    held = {1: [Holder(100, 3)], 2: [Holder(200, 4)]}
    ch = tr.update(obs(100 * S, [k], [d1, d2], held), nobody)
    joined = {lk.inode: (lk.sk, lk.age_exact) for lk in ch.new}
    assert joined == {1: (None, False), 2: (None, False)}
    # Both would be watched by the same (0, tuple) key: neither is.
    assert {lk.inode for lk in ch.watch} - {lk.inode for lk in ch.unwatch} == set()
    # A tuple only one namespace has still joins exactly.
    tr2 = LeakTracker(5, attach_ns=0, netns_known=False)
    (leak,) = tr2.update(obs(100 * S, [k], [d1], {1: [Holder(100, 3)]}), nobody).new
    assert leak.sk == 0xA and leak.age_exact


def test_event_closed_by_the_holder_names_pid_fd_and_syscall() -> None:
    tr = tracked()
    k = ksock(0xA, 10 * S, T1)
    tr.update(obs(20 * S, [k], [diag(T1, 1)], {1: [Holder(100, 7), Holder(100, 9)]}), nobody)
    (e,) = tr.apply_events([event(0xA, T1, 25 * S, 100, "close", fd=9)], nobody).ended
    assert (e.reason, e.by_pid, e.by_fd, e.drop, e.exact) == ("closed", 100, 9, "close", True)
    assert e.latency_s == 15 and tr.leaks == {}


def test_event_from_an_unrelated_task_does_not_name_it() -> None:
    tr = tracked()
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    (e,) = tr.apply_events(
        [event(0xA, T1, 25 * S, 4242, None, newstate="CW_TCP_CLOSE")], nobody
    ).ended
    assert e.reason == "closed" and e.by_pid is None and e.by_fd is None


def test_event_while_the_fd_is_still_open_is_a_reset_not_a_close() -> None:
    tr = tracked()
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    still = [Holder(100, 7)]
    (e,) = tr.apply_events(
        [event(0xA, T1, 25 * S, 5, None, newstate="CW_TCP_CLOSE")], lambda _lk: still
    ).ended
    assert e.reason == "reset" and e.still_held == still


def test_exit_event_and_unknown_events() -> None:
    tr = tracked()
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    assert tr.apply_events([event(0xB, T1, 25 * S, 100, "close")], nobody).ended == []  # other
    (e,) = tr.apply_events([event(0xA, T1, 25 * S, 100, "exit")], nobody).ended
    assert e.reason == "exited" and e.by_pid == 100


def test_preexisting_leak_is_matched_by_tuple() -> None:
    tr = tracked(attach=100 * S)
    tr.update(obs(101 * S, [], [diag(T2, 1, est_fin_s=92)], {1: [Holder(100, 3)]}), nobody)
    (e,) = tr.apply_events(
        [event(0, T2, 102 * S, 100, "close_range", fd=3, preexisting=True)], nobody
    ).ended
    assert e.drop == "close_range" and e.by_fd == 3 and e.latency_s == 10


def test_leak_gone_from_close_wait_without_event_ends_by_polling() -> None:
    tr = tracked()
    k = ksock(0xA, 10 * S, T1)
    tr.update(obs(20 * S, [k], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    ch = tr.update(obs(22 * S, [], [], {}), nobody)
    (e,) = ch.ended
    assert e.reason == "closed" and not e.exact and ch.unwatch == [e.leak]


def test_leak_of_a_namespace_not_queried_is_kept_until_its_holders_exit() -> None:
    tr = tracked()
    tr.update(
        obs(20 * S, [ksock(0xA, 10 * S, T1, netns=NS2)], [diag(T1, 1, NS2)], {1: [Holder(200, 7)]}),
        nobody,
    )
    assert tr.update(obs(22 * S, netns=(NS1,)), nobody).ended == []
    (e,) = tr.update(obs(24 * S, netns=(NS1,), exited=(200,)), nobody).ended
    assert e.reason == "exited"


def test_no_target_holds_it_any_more_while_still_in_close_wait() -> None:
    tr = tracked()
    k = ksock(0xA, 10 * S, T1)
    tr.update(obs(20 * S, [k], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    (e,) = tr.update(obs(22 * S, [k], [diag(T1, 1)], {}), nobody).ended
    assert e.reason == "released"
    tr2 = tracked()
    tr2.update(obs(20 * S, [k], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    (e,) = tr2.update(obs(22 * S, [k], [diag(T1, 1)], {}, exited=(100,)), nobody).ended
    assert e.reason == "exited"


def test_holders_and_recv_q_are_refreshed_and_leaks_sorted_oldest_first() -> None:
    tr = tracked()
    ka, kb = ksock(0xA, 12 * S, T1), ksock(0xB, 10 * S, T2)
    tr.update(
        obs(
            20 * S, [ka, kb], [diag(T1, 1), diag(T2, 2)], {1: [Holder(100, 7)], 2: [Holder(100, 8)]}
        ),
        nobody,
    )
    assert [lk.inode for lk in tr.sorted_leaks()] == [2, 1]
    tr.update(obs(21 * S, [ka, kb], [diag(T1, 1, recv_q=5), diag(T2, 2)],
                  {1: [Holder(100, 7), Holder(200, 3)], 2: [Holder(100, 8)]}), nobody)  # fmt: skip
    leak = tr.leaks[1]
    assert leak.recv_q == 5 and [h.pid for h in leak.holders] == [100, 200]
    assert leak.proc(100).comm == "java" and leak.proc(200).comm == "child"


def test_unheld_sockets_are_counted_once_a_second_old_and_only_with_a_full_scan() -> None:
    young, old = diag(T1, 1, est_fin_s=99.5), diag(T2, 2, est_fin_s=98.5)
    o = obs(100 * S, [], [young, old], {})
    assert tracked(min_age=0).update(o, nobody).unheld == 0  # scan did not cover every process
    o.holders_complete = True
    assert tracked(min_age=0).update(o, nobody).unheld == 1


def fd_drop(tgid: int, fd: int, drop: str = "close", hi: int | None = None) -> FdDrop:
    return FdDrop(30 * S, tgid, tgid + 1, "worker", drop, fd, fd if hi is None else hi)


def test_closing_one_fd_of_a_socket_a_child_still_holds() -> None:
    tr = tracked()
    held = {1: [Holder(100, 7), Holder(200, 7)]}
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], held, targets={100}), nobody)
    ch = tr.apply_events([fd_drop(100, 7)], lambda _lk: [Holder(200, 7)])
    (r,) = ch.released_fds
    assert (r.pid, r.fd, r.via, r.still_held) == (100, 7, "close", [Holder(200, 7)])
    (e,) = ch.ended  # pid 100 was the only target holding it
    assert (e.reason, e.by_pid, e.by_fd, e.drop, e.exact) == ("released", 100, 7, "close", True)


def test_dropping_a_dup_keeps_the_leak_with_fewer_fds() -> None:
    tr = tracked()
    held = {1: [Holder(100, 7), Holder(100, 9)]}
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], held), nobody)
    ch = tr.apply_events([fd_drop(100, 5, "close_range", hi=8)], lambda _lk: [Holder(100, 9)])
    assert [r.fd for r in ch.released_fds] == [7] and ch.ended == []
    assert tr.leaks[1].holders == [Holder(100, 9)] and tr.leaks[1].fds == [9]


def test_fd_drop_that_releases_the_socket_is_left_to_its_exit_event() -> None:
    tr = tracked()
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    ch = tr.apply_events([fd_drop(100, 7), event(0xA, T1, 31 * S, 100, "close", fd=7)], nobody)
    assert ch.released_fds == [] and [e.reason for e in ch.ended] == ["closed"]


def test_closer_without_a_recorded_drop_is_credited_with_its_only_fd() -> None:
    tr = tracked()
    tr.update(obs(20 * S, [ksock(0xA, 10 * S, T1)], [diag(T1, 1)], {1: [Holder(100, 7)]}), nobody)
    (e,) = tr.apply_events([event(0xA, T1, 25 * S, 100, None)], nobody).ended
    assert (e.reason, e.by_pid, e.by_fd, e.drop) == ("closed", 100, 7, None)
