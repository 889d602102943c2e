"""Tests for threaddump: real dumps captured from the leaky clients, plus synthetic snippets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tracer.core.poolwaits import diagnose, find_pool_waits
from tracer.core.threaddump import (
    Frame,
    parse_jcmd_threads,
    parse_pyspy,
    parse_pyspy_json,
    parse_pyspy_text,
)

HERE = Path(__file__).parent / "fixtures"
SEED = [f"seed-worker-{i}" for i in range(1, 7)]
QUOTE = [f"quote-worker-{i}" for i in range(1, 6)]
INVOICE = [f"invoice-worker-{i}" for i in range(1, 5)]


def fixture(name: str) -> str:
    return (HERE / name).read_text()


# ------------------------------------------------------------ real Java dumps


def test_jcmd_httpclient4_parse() -> None:
    threads = parse_jcmd_threads(fixture("jstack-httpclient4-exhausted.txt"))
    by_name = {t.name: t for t in threads}
    assert len(threads) == 25
    assert set(SEED) <= set(by_name)
    w1 = by_name["seed-worker-1"]
    assert w1.tid == 0x15AC
    assert w1.state == "WAITING (parking)"
    assert w1.frames[0] == Frame(
        "java", "jdk.internal.misc.Unsafe.park", None, None, "java.base@17.0.15", native=True
    )
    assert w1.frames[1].file == "LockSupport.java" and w1.frames[1].line == 341
    assert any(
        f.display() == "shop.OrderService.fetchPrices(OrderService.java:22)" for f in w1.frames
    )
    # Hidden lambda class frame keeps its "/0x..." suffix, file unknown.
    lam = next(f for f in w1.frames if "$$Lambda" in f.function)
    assert lam.function.startswith("shop.LeakyPool$$Lambda$") and lam.file is None
    assert by_name["VM Thread"].frames == () and by_name["VM Thread"].tid == 0x15A0


def test_jcmd_httpclient4_diagnose() -> None:
    groups = diagnose(parse_jcmd_threads(fixture("jstack-httpclient4-exhausted.txt")))
    assert len(groups) == 1
    g = groups[0]
    assert [t.name for t in g.threads] == SEED
    assert g.signature.library == "Apache HttpClient 4"
    assert g.pool_frame.display() == (
        "org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking(AbstractConnPool.java:391)"
    )
    assert g.app_frame is not None
    assert g.app_frame.display() == "shop.OrderService.fetchPrices(OrderService.java:22)"
    assert g.sentence() == (
        "6 threads (seed-worker-1, seed-worker-2, seed-worker-3, seed-worker-4, seed-worker-5, "
        "seed-worker-6) wait for a pooled connection in "
        "org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking, "
        "called from shop.OrderService.fetchPrices(OrderService.java:22)"
    )
    assert g.sentence(max_names=2).startswith(
        "6 threads (seed-worker-1, seed-worker-2, and 4 more) wait"
    )


@pytest.mark.parametrize(
    ("name", "pool_function"),
    [
        ("jstack-httpclient5-exhausted.txt", "org.apache.hc.core5.pool.StrictConnPool$1.get"),
        (
            "jstack-httpclient5-lax-exhausted.txt",
            "org.apache.hc.core5.pool.LaxConnPool$PerRoutePool$1.get",
        ),
    ],
)
def test_jcmd_httpclient5_diagnose(name: str, pool_function: str) -> None:
    groups = diagnose(parse_jcmd_threads(fixture(name)))
    assert len(groups) == 1
    g = groups[0]
    assert [t.name for t in g.threads] == QUOTE
    assert g.signature.library == "Apache HttpClient 5"
    assert g.pool_frame.function == pool_function
    assert g.app_frame is not None
    assert g.app_frame.display() == "shop5.LeakyPool5$QuoteService.fetchQuotes(LeakyPool5.java:24)"
    assert all(t.state == "TIMED_WAITING (on object monitor)" for t in g.threads)


# ---------------------------------------------------------- real Python dumps


def test_pyspy_text_urllib3() -> None:
    threads = parse_pyspy_text(fixture("pyspy-urllib3-exhausted.txt"))
    assert [t.name for t in threads] == ["MainThread", *SEED]
    w1 = threads[1]
    assert w1.tid == 12744 and w1.state == "idle"
    assert w1.frames[0] == Frame("python", "Condition.wait", "threading.py", 320)
    groups = diagnose(threads)
    assert len(groups) == 1
    assert groups[0].sentence() == (
        "6 threads (seed-worker-1, seed-worker-2, seed-worker-3, seed-worker-4, seed-worker-5, "
        "seed-worker-6) wait for a pooled connection in HTTPConnectionPool._get_conn "
        "(urllib3/connectionpool.py), called from fetch_prices (leaky_urllib3.py:13)"
    )


def test_pyspy_json_urllib3() -> None:
    text = fixture("pyspy-urllib3-exhausted.json")
    threads = parse_pyspy(text)  # autodetects JSON
    assert threads == parse_pyspy_json(json.loads(text))
    assert sorted(t.name or "" for t in threads) == sorted(["MainThread", *SEED])
    w1 = next(t for t in threads if t.name == "seed-worker-1")
    assert w1.tid == 12744 and w1.state == "idle"
    assert w1.frames[0].file == "/usr/lib/python3.11/threading.py"
    (g,) = diagnose(threads)
    assert sorted(t.name or "" for t in g.threads) == SEED
    assert g.pool_frame.line == 280
    assert g.app_frame is not None
    assert g.app_frame.function == "fetch_prices" and g.app_frame.line == 13
    assert g.app_frame.file is not None and g.app_frame.file.endswith("/py/leaky_urllib3.py")
    # Names are listed in natural order even though py-spy's JSON is reversed.
    assert "(seed-worker-1, seed-worker-2, " in g.sentence()


@pytest.mark.parametrize(
    "name", ["pyspy-sqlalchemy-exhausted.txt", "pyspy-sqlalchemy-exhausted.json"]
)
def test_pyspy_sqlalchemy(name: str) -> None:
    (g,) = diagnose(parse_pyspy(fixture(name)))
    assert sorted(t.name or "" for t in g.threads) == INVOICE
    assert g.signature.library == "SQLAlchemy"
    assert g.pool_frame.function == "QueuePool._do_get"
    assert g.app_frame is not None
    assert (g.app_frame.function, g.app_frame.line) == ("load_invoices", 14)


# ------------------------------------------------------- synthetic Java dumps

HIKARI = """\
"http-nio-8080-exec-3" #40 [4711] daemon prio=5 os_prio=0 cpu=12.00ms elapsed=60.00s \
tid=0x00007f0000001000 nid=4711 waiting on condition  [0x00007f0000002000]
   java.lang.Thread.State: TIMED_WAITING (parking)
\tat jdk.internal.misc.Unsafe.park(java.base@21.0.2/Native Method)
\t- parking to wait for  <0x00000000c1a2b3c4> (a java.util.concurrent.SynchronousQueue$Transferer)
\tat java.util.concurrent.locks.LockSupport.parkNanos(java.base@21.0.2/LockSupport.java:269)
\tat java.util.concurrent.SynchronousQueue.poll(java.base@21.0.2/SynchronousQueue.java:399)
\tat com.zaxxer.hikari.util.ConcurrentBag.borrow(ConcurrentBag.java:151)
\tat com.zaxxer.hikari.pool.HikariPool.getConnection(HikariPool.java:180)
\tat com.zaxxer.hikari.pool.HikariPool.getConnection(HikariPool.java:146)
\tat com.zaxxer.hikari.HikariDataSource.getConnection(HikariDataSource.java:128)
\tat org.springframework.jdbc.datasource.DataSourceUtils.fetchConnection(DataSourceUtils.java:159)
\tat org.springframework.jdbc.core.JdbcTemplate.execute(JdbcTemplate.java:376)
\tat com.example.billing.InvoiceRepository.findOpen(InvoiceRepository.java:41)
\tat com.example.billing.BillingController.list(BillingController.java:27)

"""

JEDIS = """\
"cache-loader-1" #21 prio=5 os_prio=0 tid=0x00007f00aa000800 nid=0x2b0 waiting on condition \
[0x00007f00bb000000]
   java.lang.Thread.State: WAITING (parking)
\tat sun.misc.Unsafe.park(Native Method)
\tat java.util.concurrent.locks.LockSupport.park(LockSupport.java:175)
\tat java.util.concurrent.locks.AbstractQueuedSynchronizer$ConditionObject.await(\
AbstractQueuedSynchronizer.java:2039)
\tat org.apache.commons.pool2.impl.LinkedBlockingDeque.takeFirst(LinkedBlockingDeque.java:583)
\tat org.apache.commons.pool2.impl.GenericObjectPool.borrowObject(GenericObjectPool.java:442)
\tat org.apache.commons.pool2.impl.GenericObjectPool.borrowObject(GenericObjectPool.java:363)
\tat redis.clients.jedis.util.Pool.getResource(Pool.java:50)
\tat redis.clients.jedis.JedisPool.getResource(JedisPool.java:234)
\tat com.example.cache.SessionCache.load(SessionCache.java:55)

"""

C3P0 = """\
"report-job" #12 prio=5 os_prio=0 cpu=3.10ms elapsed=9.00s tid=0x1 nid=0x1f in Object.wait()  [0x2]
   java.lang.Thread.State: TIMED_WAITING (on object monitor)
\tat java.lang.Object.wait(java.base@11.0.20/Native Method)
\t- waiting on <0x0000000712345678> (a com.mchange.v2.resourcepool.BasicResourcePool)
\tat com.mchange.v2.resourcepool.BasicResourcePool.awaitAvailable(BasicResourcePool.java:1503)
\t- waiting to re-lock in wait() <0x0000000712345678> (a \
com.mchange.v2.resourcepool.BasicResourcePool)
\tat com.mchange.v2.resourcepool.BasicResourcePool.prelimCheckoutResource(\
BasicResourcePool.java:644)
\tat com.mchange.v2.c3p0.impl.AbstractPoolBackedDataSource.getConnection(\
AbstractPoolBackedDataSource.java:140)
\tat org.hibernate.engine.jdbc.connections.internal.DatasourceConnectionProviderImpl.getConnection(\
DatasourceConnectionProviderImpl.java:122)
\tat app//com.example.legacy.ReportJob.run(ReportJob.java:19)

"""

TOMCAT = """\
"order-writer-2" #33 daemon prio=5 os_prio=0 cpu=1.00ms elapsed=5.00s tid=0x3 nid=0x21 waiting on \
condition  [0x4]
   java.lang.Thread.State: TIMED_WAITING (parking)
\tat jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)
\tat java.util.concurrent.locks.LockSupport.parkNanos(java.base@17.0.15/LockSupport.java:252)
\tat java.util.concurrent.CountDownLatch.await(java.base@17.0.15/CountDownLatch.java:276)
\tat org.apache.tomcat.jdbc.pool.FairBlockingQueue.poll(FairBlockingQueue.java:155)
\tat org.apache.tomcat.jdbc.pool.ConnectionPool.borrowConnection(ConnectionPool.java:702)
\tat org.apache.tomcat.jdbc.pool.ConnectionPool.getConnection(ConnectionPool.java:198)
\tat org.apache.tomcat.jdbc.pool.DataSourceProxy.getConnection(DataSourceProxy.java:132)
\tat com.example.orders.OrderDao.save(OrderDao.java:73)

"""


@pytest.mark.parametrize(
    ("text", "library", "pool", "app"),
    [
        (
            HIKARI,
            "HikariCP",
            "com.zaxxer.hikari.util.ConcurrentBag.borrow",
            "com.example.billing.InvoiceRepository.findOpen(InvoiceRepository.java:41)",
        ),
        (
            JEDIS,
            "Apache Commons Pool 2",
            "org.apache.commons.pool2.impl.GenericObjectPool.borrowObject",
            "com.example.cache.SessionCache.load(SessionCache.java:55)",
        ),
        (
            C3P0,
            "c3p0",
            "com.mchange.v2.resourcepool.BasicResourcePool.awaitAvailable",
            "com.example.legacy.ReportJob.run(ReportJob.java:19)",
        ),
        (
            TOMCAT,
            "Tomcat JDBC",
            "org.apache.tomcat.jdbc.pool.ConnectionPool.borrowConnection",
            "com.example.orders.OrderDao.save(OrderDao.java:73)",
        ),
    ],
)
def test_synthetic_java_pools(text: str, library: str, pool: str, app: str) -> None:
    (g,) = diagnose(parse_jcmd_threads(text))
    assert g.signature.library == library
    assert g.pool_frame.function == pool
    assert g.app_frame is not None and g.app_frame.display() == app
    assert len(g.threads) == 1


def test_jdk18_decimal_nid_and_module_prefixes() -> None:
    (t,) = parse_jcmd_threads(HIKARI)
    assert t.tid == 4711 and t.name == "http-nio-8080-exec-3"
    assert t.frames[0].module == "java.base@21.0.2" and t.frames[0].native
    (c,) = parse_jcmd_threads(C3P0)
    assert c.tid == 0x1F
    assert c.frames[-1].function == "com.example.legacy.ReportJob.run"  # "app//" stripped


def test_thread_name_with_quotes_and_parens() -> None:
    text = '"worker "a" (x)" #9 prio=5 os_prio=0 tid=0x1 nid=0x10 runnable  [0x0]\n'
    (t,) = parse_jcmd_threads(text)
    assert t.name == 'worker "a" (x)' and t.tid == 16 and t.frames == ()


def test_runnable_thread_in_pool_code_is_not_waiting() -> None:
    text = """\
"busy" #5 prio=5 os_prio=0 tid=0x1 nid=0x5 runnable  [0x0]
   java.lang.Thread.State: RUNNABLE
\tat org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking(AbstractConnPool.java:380)
\tat com.example.A.b(A.java:1)
"""
    assert find_pool_waits(parse_jcmd_threads(text)) == []


def test_pool_frame_below_application_wait_is_not_a_pool_wait() -> None:
    text = """\
"cb" #5 prio=5 os_prio=0 tid=0x1 nid=0x5 waiting on condition  [0x0]
   java.lang.Thread.State: WAITING (parking)
\tat jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)
\tat com.example.Listener.onLease(Listener.java:9)
\tat org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking(AbstractConnPool.java:380)
\tat com.example.A.b(A.java:1)
"""
    assert find_pool_waits(parse_jcmd_threads(text)) == []


def test_groups_split_by_app_frame_and_sorted_by_size() -> None:
    one = HIKARI
    other = HIKARI.replace("http-nio-8080-exec-3", "http-nio-8080-exec-9").replace(
        "InvoiceRepository.java:41", "InvoiceRepository.java:58"
    )
    third = HIKARI.replace("http-nio-8080-exec-3", "http-nio-8080-exec-10")
    groups = diagnose(parse_jcmd_threads(other + one + third))
    assert [len(g.threads) for g in groups] == [2, 1]
    assert (
        groups[0]
        .sentence()
        .startswith(
            "2 threads (http-nio-8080-exec-3, http-nio-8080-exec-10) wait for a pooled "
            "connection in "
            "com.zaxxer.hikari.util.ConcurrentBag.borrow, called from "
            "com.example.billing.InvoiceRepository.findOpen(InvoiceRepository.java:41)"
        )
    )
    assert groups[1].sentence().startswith("1 thread (http-nio-8080-exec-9) waits for")


def test_no_application_frame() -> None:
    text = """\
"w" #5 prio=5 os_prio=0 tid=0x1 nid=0x5 waiting on condition  [0x0]
   java.lang.Thread.State: WAITING (parking)
\tat jdk.internal.misc.Unsafe.park(java.base@17.0.15/Native Method)
\tat org.apache.http.pool.AbstractConnPool.getPoolEntryBlocking(AbstractConnPool.java:391)
\tat java.lang.Thread.run(java.base@17.0.15/Thread.java:840)
"""
    (g,) = diagnose(parse_jcmd_threads(text))
    assert g.app_frame is None
    assert g.sentence().endswith("getPoolEntryBlocking, with no application frame found")


# ----------------------------------------------------- synthetic Python dumps

PSYCOPG_TEXT = """\
Process 4240: python -m reports
Python v3.10.12 (/usr/bin/python3.10)

Thread 4242 (idle): "report-worker-1"
    wait (threading.py:324)
    wait (psycopg_pool/pool.py:890)
    _getconn_unchecked (psycopg_pool/pool.py:262)
    _getconn_with_check_loop (psycopg_pool/pool.py:223)
    getconn (psycopg_pool/pool.py:208)
    connection (psycopg_pool/pool.py:180)
    __enter__ (contextlib.py:135)
    build_report (reports/daily.py:31)
        Arguments:
            day: (2024, 1, 2)
    run (threading.py:953)
Thread 0x7F00DEADBEEF (active+gil): "report-worker-2"
    getconn (psycopg_pool/pool.py:200)
    build_report (reports/daily.py:31)
Thread 0x7F00DEADBEE0 (idle)
    select (selectors.py:469)
"""


def test_pyspy_text_psycopg_pool_bare_names_and_locals() -> None:
    threads = parse_pyspy_text(PSYCOPG_TEXT)
    assert [t.name for t in threads] == ["report-worker-1", "report-worker-2", None]
    assert threads[0].tid == 4242 and threads[1].tid is None
    assert threads[2].label() == "unnamed thread"
    assert len(threads[0].frames) == 9  # the --locals lines are not frames
    (g,) = diagnose(threads)  # report-worker-2 is active: running pool code, not waiting
    assert [t.name for t in g.threads] == ["report-worker-1"]
    assert g.signature.library == "psycopg_pool"
    assert g.sentence() == (
        "1 thread (report-worker-1) waits for a pooled connection in getconn "
        "(psycopg_pool/pool.py), called from build_report (reports/daily.py:31)"
    )


def _json_thread(name: str, frames: list[tuple[str, str, int]]) -> dict[str, object]:
    return {
        "pid": 1,
        "thread_id": 140000000000000,
        "thread_name": name,
        "os_thread_id": 77,
        "active": False,
        "owns_gil": False,
        "frames": [
            {"name": n, "filename": f, "short_filename": f, "line": ln, "module": None}
            for n, f, ln in frames
        ],
    }


def test_pyspy_json_app_in_site_packages_falls_back_past_known_libraries() -> None:
    """An application pip-installed into site-packages is still found."""
    sp = "/srv/app/.venv/lib/python3.12/site-packages"
    data = [
        _json_thread(
            "sync-1",
            [
                ("Condition.wait", "/usr/lib/python3.12/threading.py", 355),
                ("Queue.get", "/usr/lib/python3.12/queue.py", 171),
                ("HTTPConnectionPool._get_conn", f"{sp}/urllib3/connectionpool.py", 280),
                ("HTTPConnectionPool.urlopen", f"{sp}/urllib3/connectionpool.py", 773),
                ("HTTPAdapter.send", f"{sp}/requests/adapters.py", 667),
                ("Session.request", f"{sp}/requests/sessions.py", 589),
                ("Syncer.push", f"{sp}/acme_sync/push.py", 42),
                ("Thread.run", "/usr/lib/python3.12/threading.py", 1010),
            ],
        )
    ]
    (g,) = diagnose(parse_pyspy_json(data))
    assert g.app_frame is not None
    # Strict pass finds nothing outside site-packages; the relaxed pass still
    # skips known libraries (requests), so it lands on the application.
    assert (g.app_frame.function, g.app_frame.line) == ("Syncer.push", 42)


def test_pyspy_json_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError):
        parse_pyspy_json('{"not": "a list"}')
