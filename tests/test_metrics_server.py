"""The /metrics server on 127.0.0.1: TLS, basic auth and its back-off, /healthz, idle and slowloris clients, bounds."""

from __future__ import annotations

import base64
import os
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter

from exporter.metrics_server import Limits, MetricsServer, bind_listener, serve_metrics
from tests.e2e.fakebackend import CertificateAuthority
from tests.e2e.harness import wait_for


@pytest.fixture
def registry() -> CollectorRegistry:
    reg = CollectorRegistry()
    Counter("copilot_test_total", "A test counter.", registry=reg).inc(3)
    return reg


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    ca = CertificateAuthority(tmp_path_factory.mktemp("ca"))
    return str(ca._issue("127.0.0.1")), str(ca._leaf_key_path)


@pytest.fixture
def servers() -> Iterator[list[MetricsServer]]:
    started: list[MetricsServer] = []
    yield started
    for s in started:
        s.close()


def _get(
    url: str, auth: str | None = None, context: ssl.SSLContext | None = None, timeout: float = 1.0, method: str = "GET"
) -> tuple[int, str, dict[str, str]]:
    req = urllib.request.Request(url, method=method)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            return r.status, r.read().decode(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, "", dict(e.headers)


def _open_fds() -> int:
    """Open sockets of this process (other tests' files and pipes opening or closing meanwhile don't count)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:
            continue
    return count


def test_plain_scrape_healthz_head_and_close(registry: CollectorRegistry) -> None:
    server = serve_metrics(registry, "127.0.0.1", 0)
    try:
        assert (server.tls, server.auth) == (False, False)
        assert server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, body, headers = _get(server.url)
        assert status == 200 and "copilot_test_total 3.0" in body
        assert headers["Content-Length"] == str(len(body)) and headers["Connection"] == "close"
        assert _get(server.url.replace("/metrics", "/healthz"))[:2] == (200, "ok\n")
        assert _get(server.url, method="POST")[0] == 405  # prometheus_client's answer, as before
        with socket.create_connection(("127.0.0.1", server.port), timeout=1) as junk:
            junk.sendall(b"NOT HTTP\r\n\r\n")
            assert junk.recv(100) == b""  # junk is hung up on ...
        assert _get(server.url)[0] == 200  # ... and the server goes on
    finally:
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 3
    with socket.socket() as again:  # the port is free again (script reload)
        again.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        again.bind(("127.0.0.1", server.port))


def test_port_taken_and_missing_or_bad_tls_files_raise_oserror_naming_the_file(
    registry: CollectorRegistry, tmp_path: Path, tls_files: tuple[str, str]
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        with pytest.raises(OSError, match="in use"):
            serve_metrics(registry, "127.0.0.1", blocker.getsockname()[1])
    cert, key = tls_files
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(OSError, match=r"certificate file .*nope\.pem.*No such file"):
        serve_metrics(registry, "127.0.0.1", 0, certfile=missing)
    with pytest.raises(OSError, match=r"key file .*nope\.pem"):
        serve_metrics(registry, "127.0.0.1", 0, certfile=cert, keyfile=missing)
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    with pytest.raises(OSError, match=r"junk\.pem"):
        serve_metrics(registry, "127.0.0.1", 0, certfile=str(junk), keyfile=key)
    with pytest.raises(OSError, match=r"junk\.pem"):
        serve_metrics(registry, "127.0.0.1", 0, certfile=cert, keyfile=str(junk))


def test_tls_scrape_and_plain_http_is_refused(
    registry: CollectorRegistry, tls_files: tuple[str, str], servers: list[MetricsServer]
) -> None:
    cert, key = tls_files
    server = serve_metrics(registry, "127.0.0.1", 0, certfile=cert, keyfile=key)
    servers.append(server)
    assert server.tls and server.url == f"https://127.0.0.1:{server.port}/metrics"
    client = ssl.create_default_context(cafile=cert)
    assert _get(server.url, context=client)[:1] == (200,)
    assert _get(server.url.replace("/metrics", "/healthz"), context=client)[:2] == (200, "ok\n")
    with pytest.raises(OSError):
        _get(server.url.replace("https:", "http:"))
    assert _get(server.url, context=client)[0] == 200  # a plain-HTTP client did not hurt it


def test_idle_tcp_connections_do_not_block_tls_scrapes_or_healthz(
    registry: CollectorRegistry, tls_files: tuple[str, str], servers: list[MetricsServer]
) -> None:
    cert, key = tls_files
    server = serve_metrics(registry, "127.0.0.1", 0, certfile=cert, keyfile=key, limits=Limits(handshake_seconds=30))
    servers.append(server)
    client = ssl.create_default_context(cafile=cert)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(10)]  # no TLS hello, ever
    try:
        wait_for(lambda: server.connections == 10, 5, "the idle connections accepted")
        for _ in range(5):
            start = time.monotonic()
            # Before the fix the handshake ran in accept() on the one serving thread: this timed out (1 s).
            assert _get(server.url, context=client, timeout=1.0)[0] == 200
            assert _get(server.url.replace("/metrics", "/healthz"), context=client, timeout=1.0)[0] == 200
            assert time.monotonic() - start < 1.0
    finally:
        for s in idle:
            s.close()


def test_a_tls_handshake_that_never_comes_is_dropped_after_its_timeout(
    registry: CollectorRegistry, tls_files: tuple[str, str], servers: list[MetricsServer]
) -> None:
    cert, key = tls_files
    server = serve_metrics(registry, "127.0.0.1", 0, certfile=cert, keyfile=key, limits=Limits(handshake_seconds=0.3))
    servers.append(server)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as idle:
        start = time.monotonic()
        assert idle.recv(100) == b""  # the server hung up
        assert time.monotonic() - start < 3
    wait_for(lambda: server.connections == 0, 5, "the idle connection closed")


def test_two_hundred_slowloris_sockets_then_a_scrape_answers_and_descriptors_stay_bounded(
    registry: CollectorRegistry, servers: list[MetricsServer]
) -> None:
    limits = Limits(max_connections=32, head_seconds=1.5)
    server = serve_metrics(registry, "127.0.0.1", 0, limits=limits)
    servers.append(server)
    baseline = _open_fds()
    attackers = []
    try:
        for _ in range(200):
            s = socket.create_connection(("127.0.0.1", server.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a head that never ends
            attackers.append(s)
        wait_for(lambda: server.dropped >= 200 - 32, 5, "connections past the cap dropped")
        assert server.connections <= 32
        # The test's own 200 client sockets plus the server's capped ones (before: 200 more, held for ever).
        assert _open_fds() <= baseline + 200 + 32 + 8
        start = time.monotonic()
        status, body, _ = _get(server.url, timeout=1.0)
        assert status == 200 and "copilot_test_total" in body
        assert time.monotonic() - start < 1.0
        # The read timeout: every unfinished head is hung up on after head_seconds.
        wait_for(lambda: server.connections == 0, 10, "unfinished heads timed out")
    finally:
        for s in attackers:
            s.close()


def test_a_head_dribbled_byte_by_byte_is_cut_at_the_deadline(
    registry: CollectorRegistry, servers: list[MetricsServer]
) -> None:
    server = serve_metrics(registry, "127.0.0.1", 0, limits=Limits(head_seconds=0.5))
    servers.append(server)
    cut = False
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as s:
        start = time.monotonic()
        try:
            for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 200:
                s.sendall(bytes([byte]))  # a byte every 20 ms: each recv is quick, the head never ends
                time.sleep(0.02)
        except OSError:
            cut = True  # the server hung up while we were still sending
        elapsed = time.monotonic() - start
    assert cut and elapsed < 2.5, elapsed  # the whole dribble would take 4.5 s


def test_basic_auth_backs_off_after_failed_guesses(registry: CollectorRegistry, servers: list[MetricsServer]) -> None:
    limits = Limits(free_guesses=3, max_backoff_seconds=0.5)
    server = serve_metrics(registry, "127.0.0.1", 0, basic_auth=("prom", "s3cret-pass"), limits=limits)
    servers.append(server)
    assert server.auth
    assert _get(server.url)[0] == 401
    assert _get(server.url, "prom:s3cret-pass")[0] == 200  # a success forgets the failure
    codes = [_get(server.url, f"prom:guess{i}")[0] for i in range(6)]
    assert codes[:3] == [401, 401, 401] and set(codes[3:]) == {429}
    status, _, headers = _get(server.url, "prom:s3cret-pass")
    assert status == 429 and int(headers["Retry-After"]) >= 1  # locked: even the right password waits
    assert _get(server.url.replace("/metrics", "/healthz"))[:2] == (200, "ok\n")  # probes stay open
    wait_for(lambda: _get(server.url, "prom:s3cret-pass")[0] == 200, 5, "the back-off to end")


def test_guessing_rate_is_a_handful_not_thousands_per_second(
    registry: CollectorRegistry, servers: list[MetricsServer]
) -> None:
    server = serve_metrics(registry, "127.0.0.1", 0, basic_auth=("prom", "s3cret-pass"))
    servers.append(server)
    checked = 0
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if _get(server.url, f"prom:guess{checked}")[0] == 401:
            checked += 1  # a 401 means the guess was checked; a 429 means it was not
    assert checked <= 5  # before: ~1,950 guesses checked per second


def test_the_back_off_is_per_client_address(registry: CollectorRegistry, servers: list[MetricsServer]) -> None:
    server = serve_metrics(registry, "127.0.0.1", 0, basic_auth=("prom", "s3cret-pass"), limits=Limits(free_guesses=1))
    servers.append(server)
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert [_get(url, "prom:x")[0] for _ in range(3)] == [401, 429, 429]
    with socket.create_connection(("127.0.0.1", server.port), timeout=1, source_address=("127.0.0.2", 0)) as other:
        auth = base64.b64encode(b"prom:s3cret-pass").decode()
        other.sendall(f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n\r\n".encode())
        assert other.recv(12) == b"HTTP/1.1 200"


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_ipv6_and_host_names_by_getaddrinfo(registry: CollectorRegistry, servers: list[MetricsServer]) -> None:
    v6 = serve_metrics(registry, "::1", 0)
    servers.append(v6)
    assert v6.url == f"http://[::1]:{v6.port}/metrics"
    assert _get(v6.url)[0] == 200
    named = serve_metrics(registry, "localhost", 0)
    servers.append(named)
    family = named._listener.family
    host = "[::1]" if family == socket.AF_INET6 else "127.0.0.1"
    assert _get(f"http://{host}:{named.port}/metrics")[0] == 200


def test_close_returns_promptly_with_connections_open(registry: CollectorRegistry, tls_files: tuple[str, str]) -> None:
    cert, key = tls_files
    server = serve_metrics(registry, "127.0.0.1", 0, certfile=cert, keyfile=key)
    idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
    try:
        wait_for(lambda: server.connections == 5, 5, "connections accepted")
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 3
        for s in idle:
            s.settimeout(2)
            assert s.recv(10) == b""  # hung up on
    finally:
        for s in idle:
            s.close()


def test_clients_that_never_read_their_answer_cannot_lock_out_scrapes() -> None:
    big = b"# a large page\n" * (600_000)  # 9 MB: far more than the socket buffers hold

    def app(environ: dict[str, object], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok\n" if environ["PATH_INFO"] == "/small" else big]

    limits = Limits(max_connections=8, slow_reader_seconds=0.3, write_seconds=60)
    server = MetricsServer(bind_listener("127.0.0.1", 0), "127.0.0.1", app, None, limits)
    readers = []
    try:
        for _ in range(8):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", server.port))
            s.sendall(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # ... and never reads the answer
            readers.append(s)
        wait_for(lambda: server.answering == 8, 5, "eight answers blocked on clients that do not read")

        def small() -> bool:
            try:
                return _get(f"http://127.0.0.1:{server.port}/small", timeout=1.0)[:2] == (200, "ok\n")
            except OSError:
                return False  # refused while the slow readers are younger than slow_reader_seconds

        start = time.monotonic()
        wait_for(small, 5, "a scrape answered")  # before: refused until the 60 s write timeout
        assert time.monotonic() - start < 3
        assert server.connections <= 8
    finally:
        for s in readers:
            s.close()
        server.close()


def test_the_accept_thread_sleeps_without_a_timeout_and_close_still_ends_it(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle proxy's /metrics thread never wakes by itself (it used to poll ten times a second): it blocks in
    select() until a connection comes or close() writes to its wake-up socket."""
    import selectors

    timeouts: list[float | None] = []
    real = selectors.DefaultSelector

    class Recording(real):  # type: ignore[valid-type,misc]
        def select(self, timeout: float | None = None) -> Any:
            timeouts.append(timeout)
            return super().select(timeout)

    monkeypatch.setattr(selectors, "DefaultSelector", Recording)
    server = serve_metrics(registry, "127.0.0.1", 0)
    baseline = _open_fds()
    assert _get(server.url)[0] == 200
    server.close()
    assert not server._thread.is_alive()
    assert timeouts and set(timeouts) == {None}
    assert _open_fds() <= baseline - 3  # the listener and both ends of the wake-up pair are closed
