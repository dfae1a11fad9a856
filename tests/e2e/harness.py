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
    `--set k=v` (a `copilot_metrics_port` other than 0 also gates readiness on /metrics answering 200).
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
        if self.metrics_port:
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
