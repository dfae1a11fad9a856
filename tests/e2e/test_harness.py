"""Tests of the e2e harness itself: bare mitmdump (no addon) in upstream mode in front of the fake backend."""

from __future__ import annotations

import base64
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, Gate
from tests.e2e.harness import REPO_ROOT, Mitmdump, open_stream, proxy_client, send, send_timed

pytestmark = pytest.mark.e2e

USER, PASSWORD = "alice", "pw"
SKIPPED_HEADERS = {"host", "content-length", "transfer-encoding", "connection"}


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeCopilotBackend]:
    with FakeCopilotBackend() as b:
        yield b


@pytest.fixture(scope="module")
def proxy(backend: FakeCopilotBackend, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mitmdump]:
    with Mitmdump(backend, tmp_path_factory.mktemp("mitmdump"), addon=None, proxyauth=f"{USER}:{PASSWORD}") as m:
        yield m
    assert m.returncode == 0, m.log_text()[-2000:]


def _raw_connect(port: int, authority: str, credentials: str | None) -> bytes:
    """Send a CONNECT by hand and return the response head."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
        if credentials is not None:
            head += f"Proxy-Authorization: Basic {base64.b64encode(credentials.encode()).decode()}\r\n"
        s.sendall((head + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n\r\n", 1)[0]


def test_completion_passes_through_unchanged(backend: FakeCopilotBackend, proxy: Mitmdump) -> None:
    ex = samples.VSCODE_COMPLETION
    rid = str(uuid.uuid4())
    with proxy_client(proxy.port, USER, PASSWORD, proxy.ca_cert_path) as client:
        status, headers, body = send(client, ex, request_id=rid)

    # The client got exactly what the fake sent, which is the sample's response.
    assert status == 200
    assert body == backend.sent_body(rid) == ex.response_body
    assert headers["content-type"] == "text/event-stream"
    assert headers["x-github-request-id"] == "ABCD:1234:5678:9ABC:00000001"

    # The fake saw the real host name (CONNECT authority and TLS SNI), path, body and headers.
    [got] = backend.requests_for(rid)
    assert (got.host, got.method, got.path, got.body) == (ex.host, "POST", ex.path, ex.request_body)
    assert got.connect_authority == f"{ex.host}:443"
    assert got.sni == ex.host
    assert got.source == "sample:vscode_completion"
    expected_headers = [
        (k, rid if k == "x-request-id" else v) for k, v in ex.request_headers if k.lower() not in SKIPPED_HEADERS
    ]
    assert [(k, v) for k, v in got.headers if k.lower() not in SKIPPED_HEADERS] == expected_headers
    assert got.header("host") == ex.host

    # Proxy credentials end at the proxy: not on the upstream CONNECT, not inside the tunnel.
    connects = [c for c in backend.connects() if c.authority == f"{ex.host}:443"]
    assert connects
    for c in connects:
        assert all(k.lower() != "proxy-authorization" for k, _ in c.headers)
    assert got.header("proxy-authorization") is None


def test_wrong_proxy_credentials_get_407(backend: FakeCopilotBackend, proxy: Mitmdump) -> None:
    ex = samples.VSCODE_TOKEN_EXCHANGE
    rid = str(uuid.uuid4())

    # httpx does not return the 407: the failed CONNECT surfaces as ProxyError.
    with (
        proxy_client(proxy.port, USER, "wrong", proxy.ca_cert_path) as client,
        pytest.raises(httpx.ProxyError, match=r"^407 Proxy Authentication Required$"),
    ):
        send(client, ex, request_id=rid)
    with (
        proxy_client(proxy.port, None, None, proxy.ca_cert_path) as client,
        pytest.raises(httpx.ProxyError, match=r"^407 "),
    ):
        send(client, ex, request_id=rid)

    # On the wire: a 407 with a Basic challenge (realm "mitmproxy"), for wrong and for missing credentials.
    for credentials in (f"{USER}:wrong", "mallory:pw", None):
        head = _raw_connect(proxy.port, f"{ex.host}:443", credentials).decode("latin-1")
        lines = head.split("\r\n")
        assert lines[0] == "HTTP/1.1 407 Proxy Authentication Required", head
        assert 'Proxy-Authenticate: Basic realm="mitmproxy"' in lines[1:], head

    # Nothing reached the backend; the right credentials still work on the same proxy.
    assert backend.requests_for(rid) == []
    assert _raw_connect(proxy.port, f"{ex.host}:443", f"{USER}:{PASSWORD}") == b"HTTP/1.1 200 Connection established"
    with proxy_client(proxy.port, USER, PASSWORD, proxy.ca_cert_path) as client:
        assert send(client, ex, request_id=rid).body == ex.response_body


def test_gated_stream_reaches_client_before_backend_finishes(backend: FakeCopilotBackend, tmp_path: Path) -> None:
    ex = samples.VSCODE_AGENT_STEP
    chunks = ex.response_chunks()
    assert len(chunks) > 2
    rid = str(uuid.uuid4())
    gate = Gate(after=1)
    backend.script_exchange(ex, request_id=rid, gate=gate)

    with (
        Mitmdump(
            backend, tmp_path, addon=None, proxyauth=f"{USER}:{PASSWORD}", options={"stream_large_bodies": "1"}
        ) as proxy,
        proxy_client(proxy.port, USER, PASSWORD, proxy.ca_cert_path, timeout=10) as client,
        open_stream(client, ex, request_id=rid) as response,
    ):
        assert response.status_code == 200
        raw = response.iter_raw()
        received = b""
        while len(received) < len(chunks[0]):
            received += next(raw)
        # The first event arrived while the backend is still held at the gate.
        assert received == chunks[0]
        assert gate.reached.is_set() and not gate.released
        sent = backend.response_for(rid)
        assert sent is not None and sent.chunks_sent == 1 and not sent.complete
        gate.release()
        rest = b"".join(raw)
    assert received + rest == ex.response_body == backend.sent_body(rid)
    assert backend.wait_for_response_complete(rid).complete
    assert proxy.returncode == 0


def test_http2_client_with_lazy_connection_strategy(backend: FakeCopilotBackend, tmp_path: Path) -> None:
    ex = samples.VSCODE_AGENT_TURN
    rid = str(uuid.uuid4())
    with (
        Mitmdump(
            backend,
            tmp_path,
            addon=None,
            proxyauth=f"{USER}:{PASSWORD}",
            options={"connection_strategy": "lazy"},
        ) as proxy,
        proxy_client(proxy.port, USER, PASSWORD, proxy.ca_cert_path, http2=True) as client,
    ):
        result = send_timed(client, ex, request_id=rid)
    assert result.http_version == "HTTP/2"
    assert result.status == 200 and result.body == ex.response_body
    assert result.started <= (result.first_chunk_at or 0) <= result.finished
    [got] = backend.requests_for(rid)
    assert got.http_version == "HTTP/1.1" and got.body == ex.request_body and got.host == ex.host


def test_standalone_backend_process(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.e2e.fakebackend", "--port", "0", "--ca-out", str(ca)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("fakebackend ready port="), line
        port = int(line.split("port=")[1].split()[0])
        assert ca.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
        assert _raw_connect(port, "api.github.com:443", None) == b"HTTP/1.1 200 Connection established"
    finally:
        proc.terminate()
        proc.wait(10)
    assert proc.returncode == 0
