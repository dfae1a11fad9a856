"""End-to-end test harness: run real mitmdump processes and talk to them through httpx clients.

Typical use::

    with FakeCopilotBackend() as backend, Mitmdump(backend, tmp_path, proxyauth="alice:pw") as proxy:
        with proxy_client(proxy.port, "alice", "pw", proxy.ca_cert_path) as client:
            status, headers, body = send(client, samples.VSCODE_COMPLETION)

Nothing here sleeps for a fixed time: readiness and shutdown are waited for with `wait_for`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import httpx
from wsproto import ConnectionType, WSConnection
from wsproto import events as ws_events

from tests import samples

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_ADDON = REPO_ROOT / "exporter" / "addon.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
# The project's console script (`copilot-proxy-insight`): mitmdump with the addon already loaded.
CONSOLE_SCRIPT = Path(sys.executable).parent / "copilot-proxy-insight"

# Headers a client library sets itself; `send` never copies them from a sample.
_SKIP_REQUEST_HEADERS = frozenset({"host", "content-length", "transfer-encoding", "connection"})


class _Upstream(Protocol):
    @property
    def port(self) -> int: ...

    @property
    def ca_cert_path(self) -> Path: ...


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ProcessDied(AssertionError):
    """A process the test waits on has exited; `wait_for` lets this through at once."""


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll `condition` until it returns something truthy (returned); TimeoutError naming `what`.

    Exceptions from `condition` count as "not yet" (the last one is reported on timeout), except
    `ProcessDied`, which propagates immediately."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = condition()
        except ProcessDied:
            raise
        except Exception as e:  # a condition may raise while the thing is not up yet
            last_exc = e
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)  # polling interval, not a timing assumption


def port_accepts(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP connection to host:port succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class Mitmdump:
    """A `mitmdump` subprocess listening on 127.0.0.1, by default in upstream mode to a fake backend.

    `upstream` is a started `FakeCopilotBackend` (or anything with `port` and `ca_cert_path`), or None
    for regular mode. `addon` defaults to exporter/addon.py; None runs bare mitmdump. `options` become
    `--set k=v` (a `copilot_metrics_port` other than 0 also gates readiness on /metrics answering 200,
    unless `wait_metrics=False`, e.g. when the test has taken that port on purpose).
    Logs (stdout+stderr) go to `<tmp_dir>/mitmdump.log`; mitmproxy's CA is `<tmp_dir>/conf/...`.
    `executable` replaces mitmdump (e.g. `CONSOLE_SCRIPT`, with `addon=None`); `cwd` defaults to the
    checkout; `repo_on_path=False` leaves the checkout off PYTHONPATH (the installed package is used).
    """

    def __init__(
        self,
        upstream: _Upstream | None,
        tmp_dir: str | os.PathLike[str] | None = None,
        *,
        addon: str | os.PathLike[str] | None = DEFAULT_ADDON,
        proxyauth: str | None = None,
        options: Mapping[str, object] | None = None,
        extra_args: Sequence[str] = (),
        port: int | None = None,
        start_timeout: float = 30.0,
        stop_timeout: float = 15.0,
        env: Mapping[str, str] | None = None,
        executable: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        repo_on_path: bool = True,
        wait_metrics: bool = True,
    ) -> None:
        self._own_tmp: tempfile.TemporaryDirectory[str] | None = None
        if tmp_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix="mitmdump-")
            tmp_dir = self._own_tmp.name
        self.tmp_dir = Path(tmp_dir)
        self.confdir = self.tmp_dir / "conf"
        self.log_path = self.tmp_dir / "mitmdump.log"
        self.port = port or free_port()
        self.upstream = upstream
        self.addon = None if addon is None else Path(addon)
        self.proxyauth = proxyauth
        self.options: dict[str, object] = dict(options or {})
        self.extra_args = tuple(extra_args)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.env = dict(env or {})
        self.executable = Path(executable) if executable is not None else MITMDUMP
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT
        self.repo_on_path = repo_on_path
        self.wait_metrics = wait_metrics
        self.proc: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self._log_file: Any = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def ca_cert_path(self) -> Path:
        """mitmproxy's CA certificate (clients trust this)."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def pid(self) -> int:
        """Process id of mitmdump."""
        if self.proc is None:
            raise RuntimeError("mitmdump not started")
        return self.proc.pid

    @property
    def metrics_port(self) -> int:
        """The `copilot_metrics_port` option passed (0 if none)."""
        return int(str(self.options.get("copilot_metrics_port", 0)))

    @property
    def metrics_url(self) -> str:
        """URL of the addon's /metrics endpoint."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def proxy_url(self, user: str | None = None, password: str | None = None) -> str:
        """`http://[user:pass@]127.0.0.1:<port>`."""
        auth = f"{user}:{password}@" if user is not None else ""
        return f"http://{auth}127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        """The mitmdump command line."""
        cmd = [str(self.executable), "--listen-host", "127.0.0.1", "--listen-port", str(self.port)]
        if self.upstream is not None:
            cmd += ["--mode", f"upstream:http://127.0.0.1:{self.upstream.port}"]
            cmd += ["--set", f"ssl_verify_upstream_trusted_ca={self.upstream.ca_cert_path}"]
        cmd += ["--set", f"confdir={self.confdir}"]
        if self.addon is not None:
            cmd += ["-s", str(self.addon)]
        if self.proxyauth is not None:
            cmd += ["--set", f"proxyauth={self.proxyauth}"]
        for key, value in self.options.items():
            if isinstance(value, bool):
                value = "true" if value else "false"
            cmd += ["--set", f"{key}={value}"]
        cmd += list(self.extra_args)
        return cmd

    def log_text(self) -> str:
        """Everything mitmdump wrote so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        """True while the process is alive."""
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Mitmdump:
        """Start mitmdump; return when the proxy port (and /metrics, if configured) answers."""
        if self.proc is not None:
            raise RuntimeError("already started")
        self.confdir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_ENV}
        if self.repo_on_path:
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.env)
        self._log_file = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            cwd=self.cwd,
            env=env,
        )
        try:
            wait_for(self._ready, self.start_timeout, f"mitmdump to listen on 127.0.0.1:{self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if not self.running():
            raise ProcessDied(
                f"mitmdump exited with {self.proc.returncode if self.proc else None} during start-up; "
                f"log:\n{self.log_text()[-4000:]}"
            )
        if not (port_accepts(self.port) and self.ca_cert_path.exists()):
            return False
        if self.metrics_port and self.wait_metrics:
            try:
                r = httpx.get(self.metrics_url, timeout=1.0, trust_env=False)
            except httpx.HTTPError:
                return False
            return r.status_code == 200
        return True

    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        """`wait_for`, failing early (with the log tail) if mitmdump dies meanwhile."""

        def check() -> Any:
            if not self.running():
                raise ProcessDied(f"mitmdump died while waiting for {what}; log:\n{self.log_text()[-4000:]}")
            return condition()

        return wait_for(check, timeout, what)

    def wait_for_log(self, text: str, timeout: float = 10.0) -> str:
        """Wait until `text` appears in the log; return the log."""
        log: str = self.wait_for(lambda: text in self.log_text() and self.log_text(), timeout, repr(text))
        return log

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGINT, wait for a graceful exit (addons' `done` run), SIGKILL after the deadline."""
        proc = self.proc
        if proc is not None and self.returncode is None:
            deadline = self.stop_timeout if timeout is None else timeout
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(deadline)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            self.returncode = proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return self.returncode

    def __enter__(self) -> Mitmdump:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None


_PROXY_ENV = frozenset({"http_proxy", "https_proxy", "all_proxy", "no_proxy"})


# ---------------------------------------------------------------------------------------------------
# Clients


class _H2FirstContext(ssl.SSLContext):
    """Offers h2 before http/1.1 in ALPN, as browsers and Electron do (httpcore lists http/1.1 first,
    and mitmproxy honours the client's order, so plain httpx would never get HTTP/2 through it)."""

    def set_alpn_protocols(self, alpn_protocols: Iterable[str]) -> None:
        super().set_alpn_protocols(sorted(alpn_protocols, key=lambda p: p != "h2"))


def proxy_client(
    proxy_port: int,
    user: str | None,
    password: str | None,
    ca_path: str | os.PathLike[str],
    http2: bool = False,
    timeout: float = 30.0,
) -> httpx.Client:
    """An httpx client that tunnels through the proxy (Basic proxy auth on CONNECT if `user` is set),
    trusts mitmproxy's CA, ignores the environment and sends no default Accept/User-Agent headers.

    With `http2=True` the client prefers h2. Note: mitmproxy's default `connection_strategy=eager`
    connects upstream first and mirrors the upstream ALPN to the client, so with the HTTP/1.1-only
    fake backend the client still gets HTTP/1.1; pass `connection_strategy=lazy` to mitmdump to get
    HTTP/2 between client and proxy (mitmproxy then translates to HTTP/1.1 upstream)."""
    auth = f"{user}:{password}@" if user is not None else ""
    ctx: ssl.SSLContext = _H2FirstContext(ssl.PROTOCOL_TLS_CLIENT) if http2 else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(ca_path))
    client = httpx.Client(
        proxy=f"http://{auth}127.0.0.1:{proxy_port}",
        verify=ctx,
        http1=True,
        http2=http2,
        trust_env=False,
        timeout=timeout,
    )
    for name in ("accept", "accept-encoding", "user-agent"):
        del client.headers[name]
    return client


class Result(NamedTuple):
    """What `send` returns: status, response headers, raw body bytes (as received, not decoded)."""

    status: int
    headers: httpx.Headers
    body: bytes


class TimedResult(NamedTuple):
    """`send_timed`: like `Result`, plus monotonic times and the body chunks as they arrived."""

    status: int
    headers: httpx.Headers
    body: bytes
    started: float
    first_chunk_at: float | None
    finished: float
    chunks: tuple[bytes, ...]
    http_version: str


def request_headers(exchange: samples.Exchange, request_id: str | None = None) -> list[tuple[str, str]]:
    """The sample's request headers minus Host/Content-Length/..., with `x-request-id` replaced if given."""
    headers = [(k, v) for k, v in exchange.request_headers if k.lower() not in _SKIP_REQUEST_HEADERS]
    if request_id is not None:
        headers = [(k, request_id if k.lower() == "x-request-id" else v) for k, v in headers]
        if not any(k.lower() == "x-request-id" for k, _ in headers):
            headers.append(("x-request-id", request_id))
    return headers


@contextlib.contextmanager
def open_stream(
    client: httpx.Client, exchange: samples.Exchange, request_id: str | None = None
) -> Iterator[httpx.Response]:
    """Send a sample request and yield the streaming response (read it with `iter_raw`)."""
    content = exchange.request_body if exchange.request_body or exchange.method != "GET" else None
    with client.stream(
        exchange.method,
        exchange.url,
        headers=request_headers(exchange, request_id),
        content=content,
    ) as response:
        yield response


def send(client: httpx.Client, exchange: samples.Exchange, request_id: str | None = None) -> Result:
    """Send a sample's request to https://<host><path>; read the body as a stream."""
    with open_stream(client, exchange, request_id) as r:
        body = b"".join(r.iter_raw())
        return Result(r.status_code, r.headers, body)


def send_timed(client: httpx.Client, exchange: samples.Exchange, request_id: str | None = None) -> TimedResult:
    """`send`, recording when the request started, the first body chunk arrived and the body ended."""
    started = time.monotonic()
    first: float | None = None
    chunks: list[bytes] = []
    with open_stream(client, exchange, request_id) as r:
        for chunk in r.iter_raw():
            if first is None:
                first = time.monotonic()
            chunks.append(chunk)
        finished = time.monotonic()
        return TimedResult(
            r.status_code,
            r.headers,
            b"".join(chunks),
            started,
            first,
            finished,
            tuple(chunks),
            r.http_version,
        )


# ---------------------------------------------------------------------------------------------------
# Raw tunnels: WebSocket and HTTP/2 clients through the proxy


def connect_tunnel(
    proxy_port: int,
    user: str | None,
    password: str | None,
    ca_path: str | os.PathLike[str],
    host: str,
    alpn: Sequence[str],
    timeout: float = 10.0,
) -> ssl.SSLSocket:
    """A TLS socket to `host` through the proxy: CONNECT host:443 (Basic proxy auth if `user`), then TLS
    with SNI `host`, trusting mitmproxy's CA, offering `alpn`."""
    import base64

    raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
    try:
        head = f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n"
        if user is not None:
            creds = base64.b64encode(f"{user}:{password}".encode()).decode()
            head += f"Proxy-Authorization: Basic {creds}\r\n"
        raw.sendall((head + "\r\n").encode())
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = raw.recv(4096)
            if not chunk:
                raise ConnectionError(f"proxy closed the CONNECT: {answer!r}")
            answer += chunk
        status_line = answer.split(b"\r\n", 1)[0]
        if b" 200 " not in status_line + b" ":
            raise ConnectionError(f"CONNECT refused: {status_line!r}")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cafile=str(ca_path))
        ctx.set_alpn_protocols(list(alpn))
        return ctx.wrap_socket(raw, server_hostname=host)
    except BaseException:
        raw.close()
        raise


class H2Stream:
    """One request on an `H2Client` connection and what came back so far."""

    def __init__(self, stream_id: int, exchange: samples.Exchange, request_id: str | None) -> None:
        self.stream_id = stream_id
        self.exchange = exchange
        self.request_id = request_id
        self.status: int | None = None
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.chunks: list[bytes] = []
        self.ended = False
        self.reset_code: int | None = None  # RST_STREAM error code received from the proxy

    @property
    def done(self) -> bool:
        return self.ended or self.reset_code is not None


class H2Client:
    """A hand-driven HTTP/2 client on one TLS connection through the proxy (h2 library), for what httpx
    cannot do: several streams at once from one thread, and cancelling one stream with RST_STREAM (as VS
    Code does when the user keeps typing) while the connection and its other streams go on."""

    def __init__(
        self,
        proxy_port: int,
        user: str | None,
        password: str | None,
        ca_path: str | os.PathLike[str],
        host: str,
        timeout: float = 10.0,
    ) -> None:
        import h2.config
        import h2.connection

        self.host = host
        self.timeout = timeout
        self.sock = connect_tunnel(proxy_port, user, password, ca_path, host, ("h2",), timeout)
        if self.sock.selected_alpn_protocol() != "h2":
            self.sock.close()
            raise ConnectionError(f"the proxy did not negotiate h2 (got {self.sock.selected_alpn_protocol()!r})")
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.conn.initiate_connection()
        self.streams: dict[int, H2Stream] = {}
        self.terminated = False
        self._flush()

    def _flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, exchange: samples.Exchange, request_id: str | None = None) -> H2Stream:
        """Send a sample's request (headers lower-cased, as over h2) on a new stream."""
        sid = self.conn.get_next_available_stream_id()
        headers = [
            (":method", exchange.method),
            (":scheme", "https"),
            (":authority", exchange.host),
            (":path", exchange.path),
        ]
        headers += [(k.lower(), v) for k, v in request_headers(exchange, request_id)]
        body = exchange.request_body
        if body:
            # As browsers and Electron send it. (Without it, mitmproxy 12 forwards an h2 body to an HTTP/1.1
            # upstream with neither Content-Length nor Transfer-Encoding, so the upstream reads no body.)
            headers.append(("content-length", str(len(body))))
        self.conn.send_headers(sid, headers, end_stream=not body)
        if body:
            self.conn.send_data(sid, body, end_stream=True)
        self._flush()
        stream = self.streams[sid] = H2Stream(sid, exchange, request_id or exchange.request_id)
        return stream

    def cancel(self, stream: H2Stream) -> None:
        """RST_STREAM(CANCEL) on this stream."""
        from h2.errors import ErrorCodes

        self.conn.reset_stream(stream.stream_id, ErrorCodes.CANCEL)
        self._flush()

    def pump(self, until: Callable[[], bool], timeout: float | None = None) -> None:
        """Read and handle frames until `until()` is true (TimeoutError at the deadline)."""
        import h2.events

        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("HTTP/2 condition not reached before the deadline")
            if self.terminated:
                raise ConnectionError("HTTP/2 connection terminated by the proxy")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("proxy closed the HTTP/2 connection")
            for event in self.conn.receive_data(data):
                stream = self.streams.get(getattr(event, "stream_id", 0) or 0)
                if isinstance(event, h2.events.ResponseReceived) and stream is not None:
                    hdrs = [(str(k), str(v)) for k, v in event.headers]
                    stream.status = int(next(v for k, v in hdrs if k == ":status"))
                    stream.headers = [(k, v) for k, v in hdrs if not k.startswith(":")]
                elif isinstance(event, h2.events.DataReceived):
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                    if stream is not None and event.data:
                        stream.body += event.data
                        stream.chunks.append(bytes(event.data))
                elif isinstance(event, h2.events.StreamEnded) and stream is not None:
                    stream.ended = True
                elif isinstance(event, h2.events.StreamReset) and stream is not None:
                    stream.reset_code = int(event.error_code)
                elif isinstance(event, h2.events.ConnectionTerminated):
                    self.terminated = True
            self._flush()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close_connection()
            self._flush()
        self.sock.close()

    def __enter__(self) -> H2Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class WebSocketClient:
    """A WebSocket client tunnelled through the proxy (see `open_websocket`); every wait has a deadline."""

    def __init__(self, sock: ssl.SSLSocket, ws: WSConnection, timeout: float) -> None:
        self.sock = sock
        self.ws = ws
        self.timeout = timeout
        self.closed_by_peer: ws_events.CloseConnection | None = None
        self._pending: list[ws_events.Event] = []
        self._parts: list[bytes | str] = []

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(ws_events.TextMessage(data=text)))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(ws_events.BytesMessage(data=data)))

    def _next_event(self, deadline: float) -> ws_events.Event:
        while not self._pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no WebSocket event before the deadline")
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            self.ws.receive_data(data or None)
            self._pending.extend(self.ws.events())
            if not data and not self._pending:
                raise ConnectionError("connection closed without a WebSocket close frame")
        return self._pending.pop(0)

    def receive(self, timeout: float | None = None) -> tuple[bool, bytes]:
        """The next whole message as (is_text, payload); ConnectionError if the peer closes instead."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            event = self._next_event(deadline)
            if isinstance(event, ws_events.Message):
                self._parts.append(event.data)
                if not event.message_finished:
                    continue
                parts, self._parts = self._parts, []
                if isinstance(event, ws_events.TextMessage):
                    return True, "".join(p for p in parts if isinstance(p, str)).encode()
                return False, b"".join(p for p in parts if isinstance(p, bytes))
            if isinstance(event, ws_events.Ping):
                self.sock.sendall(self.ws.send(event.response()))
            elif isinstance(event, ws_events.CloseConnection):
                self.closed_by_peer = event
                with contextlib.suppress(Exception):
                    self.sock.sendall(self.ws.send(event.response()))
                raise ConnectionError(f"WebSocket closed by the peer: {event.code} {event.reason}")

    def close(self, code: int = 1000) -> None:
        """Send a close frame and wait (bounded) for the peer's close reply."""
        if self.closed_by_peer is not None:
            return
        with contextlib.suppress(OSError):
            self.sock.sendall(self.ws.send(ws_events.CloseConnection(code=code)))
            deadline = time.monotonic() + self.timeout
            with contextlib.suppress(TimeoutError, ConnectionError, OSError):
                while True:
                    event = self._next_event(deadline)
                    if isinstance(event, ws_events.CloseConnection):
                        self.closed_by_peer = event
                        return


@contextlib.contextmanager
def open_websocket(
    proxy_port: int,
    user: str | None,
    password: str | None,
    ca_path: str | os.PathLike[str],
    host: str,
    path: str,
    headers: Iterable[tuple[str, str]] = (),
    timeout: float = 10.0,
) -> Iterator[WebSocketClient]:
    """CONNECT host:443 through the proxy (Basic proxy auth if `user`), TLS trusting mitmproxy's CA with
    ALPN http/1.1, then a wsproto WebSocket handshake `GET path` with `headers`; yields the client."""
    sock = connect_tunnel(proxy_port, user, password, ca_path, host, ("http/1.1",), timeout)
    try:
        ws = WSConnection(ConnectionType.CLIENT)
        skip = _SKIP_REQUEST_HEADERS | {"content-type", "upgrade", "sec-websocket-key", "sec-websocket-version"}
        extra = [(k.encode(), v.encode()) for k, v in headers if k.lower() not in skip]
        sock.sendall(ws.send(ws_events.Request(host=host, target=path, extra_headers=extra)))
        client = WebSocketClient(sock, ws, timeout)
        deadline = time.monotonic() + timeout
        while True:
            event = client._next_event(deadline)
            if isinstance(event, ws_events.AcceptConnection):
                break
            if isinstance(event, ws_events.RejectConnection):
                raise ConnectionError(f"WebSocket upgrade rejected: {event.status_code}")
        yield client
        client.close()
    finally:
        sock.close()
