"""The /metrics HTTP(S) server: a small WSGI host that idle, slow or guessing clients cannot stall or exhaust."""

from __future__ import annotations

import base64
import contextlib
import hmac
import io
import logging
import selectors
import socket
import ssl
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from prometheus_client import CollectorRegistry, make_wsgi_app

from exporter.values import quick_init

log = logging.getLogger("copilot_proxy_insight")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
App = Callable[[Environ, StartResponse], Iterable[bytes]]

MAX_CONNECTIONS = 64  # open metrics connections; past it the oldest one still sending its head is dropped
HANDSHAKE_SECONDS = 5.0  # a TLS client must finish its handshake within this
HEAD_SECONDS = 5.0  # ... and send its whole request head within this (slowloris)
WRITE_SECONDS = 10.0  # a client must take the answer within this
MAX_HEAD_BYTES = 16 * 1024
CLOSE_SECONDS = 2.0  # close() returns within about this


@quick_init
@dataclass(frozen=True, slots=True)
class Limits:
    """The server's bounds (tests shrink them)."""

    max_connections: int = MAX_CONNECTIONS
    handshake_seconds: float = HANDSHAKE_SECONDS
    head_seconds: float = HEAD_SECONDS
    write_seconds: float = WRITE_SECONDS
    slow_reader_seconds: float = 1.0  # an answer taking longer may be dropped at the cap (a scrape takes ms)
    free_guesses: int = 5  # failed basic-auth guesses per client address before it is made to wait
    max_backoff_seconds: float = 60.0


DEFAULT_LIMITS = Limits()


class _HeadError(Exception):
    """The request head is malformed, too big, or did not arrive in time."""


def healthz_app(app: App) -> App:
    """Answers /healthz itself (always open: container health checks carry no credentials)."""

    def routed(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok\n"]
        return app(environ, start_response)

    return routed


class BasicAuth:
    """HTTP basic auth for a WSGI app (constant-time compare), with a back-off per client after failed guesses.

    After `free_guesses` failures an address gets 429 without its credentials being checked, for a time that
    doubles with each further failure (up to `max_backoff_seconds`): a guesser gets a few tries a minute
    instead of ~2,000 a second. /healthz stays open."""

    _MAX_CLIENTS = 4096  # addresses remembered; the oldest are forgotten first

    def __init__(self, app: App, user: str, password: str, limits: Limits = DEFAULT_LIMITS) -> None:
        self._app = app
        self._expected = base64.b64encode(f"{user}:{password}".encode()).decode().encode()
        self._limits = limits
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # address -> (failures, locked until)
        self._lock = threading.Lock()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/healthz":
            return self._app(environ, start_response)
        client = str(environ.get("REMOTE_ADDR", ""))
        now = time.monotonic()
        with self._lock:
            _, locked_until = self._failures.get(client, (0, 0.0))
        if now < locked_until:
            wait = max(1, int(locked_until - now + 0.999))
            start_response("429 Too Many Requests", [("Retry-After", str(wait)), ("Content-Type", "text/plain")])
            return [b"too many failed logins, try later\n"]
        scheme, _, value = str(environ.get("HTTP_AUTHORIZATION", "")).partition(" ")
        if scheme.lower() == "basic" and hmac.compare_digest(value.strip().encode(), self._expected):
            with self._lock:
                self._failures.pop(client, None)
            return self._app(environ, start_response)
        self._failed(client, now)
        start_response(
            "401 Unauthorized",
            [("WWW-Authenticate", 'Basic realm="copilot-proxy-insight"'), ("Content-Type", "text/plain")],
        )
        return [b"authentication required\n"]

    def _failed(self, client: str, now: float) -> None:
        with self._lock:
            count = self._failures.pop(client, (0, 0.0))[0] + 1
            over = count - self._limits.free_guesses  # 0 at the last free guess: locked 1 s, then 2, 4, ...
            locked_until = now + min(self._limits.max_backoff_seconds, 2.0**over) if over >= 0 else 0.0
            self._failures[client] = (count, locked_until)
            while len(self._failures) > self._MAX_CLIENTS:
                self._failures.popitem(last=False)


def _read_head(conn: socket.socket, deadline: float) -> bytes:
    """The request head up to its blank line, within the deadline (a total, not per recv: a slowloris client
    dribbling a byte a second is cut off at the deadline like a silent one)."""
    data = bytearray()
    while True:
        end = data.find(b"\r\n\r\n")
        if end >= 0:
            return bytes(data[:end])
        if len(data) > MAX_HEAD_BYTES:
            raise _HeadError("request head too large")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _HeadError("request head timed out")
        conn.settimeout(remaining)
        chunk = conn.recv(4096)
        if not chunk:
            raise _HeadError("connection closed before the request head ended")
        data += chunk


def _environ(head: bytes, server: MetricsServer, peer: Any) -> Environ:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _HeadError("malformed request line")
    method, target, protocol = parts
    path, _, query = target.partition("?")
    environ: Environ = {
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),  # WSGI: decoded bytes as latin-1
        "QUERY_STRING": query,
        "SERVER_NAME": server.host,
        "SERVER_PORT": str(server.port),
        "SERVER_PROTOCOL": protocol,
        "REMOTE_ADDR": str(peer[0]) if isinstance(peer, tuple) and peer else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if server.tls else "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _HeadError("malformed header line")
        key = name.upper().replace("-", "_")
        key = key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"
        value = value.strip()
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def _respond(conn: socket.socket, environ: Environ, app: App, write_deadline: float) -> None:
    # Methods are the app's business (prometheus_client answers GET and OPTIONS, 405 otherwise).
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        answer["status"], answer["headers"] = status, headers
        return lambda _data: None  # the legacy write() callable; prometheus_client does not use it

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    _send(
        conn,
        answer["status"],
        answer["headers"],
        b"" if environ["REQUEST_METHOD"] == "HEAD" else body,
        write_deadline,
        content_length=len(body),
    )


def _send(
    conn: socket.socket,
    status: str,
    headers: list[tuple[str, str]],
    body: bytes,
    deadline: float,
    content_length: int | None = None,
) -> None:
    fixed = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
    fixed += [("Content-Length", str(len(body) if content_length is None else content_length)), ("Connection", "close")]
    head = f"HTTP/1.1 {status}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fixed) + "\r\n"
    conn.settimeout(max(0.01, deadline - time.monotonic()))
    conn.sendall(head.encode("latin-1") + body)


class MetricsServer:
    """Serves a WSGI app: one thread accepts; each connection gets a worker thread that does the TLS handshake
    and reads the head under deadlines, so an idle or slow client holds only its own worker. At most
    `max_connections` are open: past that the oldest one still in its handshake or head is dropped."""

    def __init__(
        self, listener: socket.socket, host: str, app: App, context: ssl.SSLContext | None, limits: Limits
    ) -> None:
        self._listener = listener
        self.host = host
        self.port = int(listener.getsockname()[1])
        self.tls = context is not None
        self.auth = isinstance(app, BasicAuth)
        self._app = healthz_app(app)
        self._context = context
        self._limits = limits
        self._lock = threading.Lock()
        # connection -> None while it has not sent its head, else when its answer began (in order of arrival)
        self._open: dict[socket.socket, float | None] = {}
        self._closing = threading.Event()
        # close() writes a byte here: the accept loop blocks in select() without a timeout (an idle proxy's
        # thread never wakes) and still ends at once.
        self._wake_r, self._wake_w = socket.socketpair()
        self.dropped = 0  # connections dropped at the cap
        self._thread = threading.Thread(target=self._accept_loop, name="copilot-proxy-insight-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        shown = self.host if self.host not in ("", "0.0.0.0", "::") else str(self._listener.getsockname()[0])
        shown = f"[{shown}]" if ":" in shown else shown
        return f"{'https' if self.tls else 'http'}://{shown}:{self.port}/metrics"

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._open)

    @property
    def answering(self) -> int:
        """Connections whose head has arrived (being answered)."""
        with self._lock:
            return sum(since is not None for since in self._open.values())

    def close(self) -> None:
        """Stop accepting, drop every open connection, and return within about CLOSE_SECONDS."""
        self._closing.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(CLOSE_SECONDS)
        with self._lock:
            conns = list(self._open)
        for conn in conns:
            _hang_up(conn)
        self._listener.close()
        if not self._thread.is_alive():
            self._wake_r.close()
            self._wake_w.close()

    def _accept_loop(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._listener, selectors.EVENT_READ)
            sel.register(self._wake_r, selectors.EVENT_READ)
            while not self._closing.is_set():
                if not any(key.fileobj is self._listener for key, _ in sel.select()):
                    continue
                try:
                    conn, peer = self._listener.accept()
                except OSError as e:  # EMFILE and the like: back off instead of spinning
                    log.warning("copilot-proxy-insight: /metrics cannot accept a connection: %s", e)
                    self._closing.wait(0.1)
                    continue
                self._admit(conn, peer)

    def _admit(self, conn: socket.socket, peer: Any) -> None:
        with self._lock:
            victim = None
            if len(self._open) >= self._limits.max_connections:
                victim = self._victim()
                if victim is None:  # all busy answering, and briskly: refuse this one
                    self.dropped += 1
                    conn.close()
                    return
                del self._open[victim]
                self.dropped += 1
            self._open[conn] = None
        if victim is not None:
            _hang_up(victim)  # its worker's recv or handshake returns at once and the worker ends
        worker = threading.Thread(target=self._serve, args=(conn, peer), name="copilot-proxy-insight-metrics-conn")
        worker.daemon = True
        try:
            worker.start()
        except RuntimeError as e:  # no thread to be had (a process limit): refuse this one, keep accepting
            with self._lock:
                self._open.pop(conn, None)
            conn.close()
            log.warning("copilot-proxy-insight: /metrics cannot serve a connection: %s", e)

    def _victim(self) -> socket.socket | None:
        """The connection to drop for a new one: the oldest still sending its head, else the oldest whose
        answer has taken over `slow_reader_seconds` (a client that does not read); None if neither."""
        waiting = next((c for c, since in self._open.items() if since is None), None)
        if waiting is not None:
            return waiting
        now = time.monotonic()
        slow = self._limits.slow_reader_seconds
        return next((c for c, since in self._open.items() if since is not None and now - since > slow), None)

    def _serve(self, raw: socket.socket, peer: Any) -> None:
        conn: socket.socket = raw
        try:
            if self._context is not None:
                raw.settimeout(self._limits.handshake_seconds)
                conn = self._context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
                self._swap(raw, conn)
                conn.do_handshake()  # on this worker, with its own timeout: never in accept
            environ = _environ(_read_head(conn, time.monotonic() + self._limits.head_seconds), self, peer)
            with self._lock:
                if conn not in self._open:
                    return  # dropped at the cap meanwhile
                self._open[conn] = time.monotonic()
            _respond(conn, environ, self._app, time.monotonic() + self._limits.write_seconds)
        except (OSError, _HeadError, ValueError):
            pass  # a client that timed out, hung up, spoke TLS to plain HTTP or sent junk: nothing to report
        except Exception:  # the app failed: the scrape gets no answer, the proxy goes on
            log.exception("copilot-proxy-insight: /metrics failed to answer")
        finally:
            with self._lock:
                self._open.pop(conn, None)
                self._open.pop(raw, None)
            conn.close()

    def _swap(self, old: socket.socket, new: socket.socket) -> None:
        with self._lock:
            if old in self._open:
                waiting = self._open.pop(old)
                self._open[new] = waiting
            else:
                raise _HeadError("dropped at the connection cap")


def _hang_up(conn: socket.socket) -> None:
    """Wake a worker blocked on this connection: shut the descriptor down (not SSLSocket.shutdown, which
    would also drop the TLS object under the worker's feet); the worker then closes it."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(conn, socket.SHUT_RDWR)


def _tls_context(certfile: str, keyfile: str | None) -> ssl.SSLContext:
    for what, path in (("certificate", certfile), ("key", keyfile)):
        if path is None:
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as e:
            raise OSError(e.errno, f"/metrics TLS {what} file {path!r}: {e.strerror or e}") from e
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except ssl.SSLError as e:
        named = f"certificate {certfile!r}" + (f" or key {keyfile!r}" if keyfile else "")
        raise OSError(f"/metrics TLS {named} cannot be loaded: {e.reason or e}") from e
    return context


def bind_listener(host: str, port: int) -> socket.socket:
    """A listening socket for host:port; the address family comes from getaddrinfo (names, IPv4, IPv6)."""
    infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def serve_metrics(
    registry: CollectorRegistry,
    host: str,
    port: int,
    *,
    basic_auth: tuple[str, str] | None = None,
    certfile: str | None = None,
    keyfile: str | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> MetricsServer:
    """Serves the registry on /metrics (and an open /healthz) from background threads.

    Raises OSError when the port cannot be bound, and an OSError naming the file for a missing, unreadable
    or invalid certificate or key."""
    context = _tls_context(certfile, keyfile or None) if certfile else None
    app: App = make_wsgi_app(registry)
    if basic_auth is not None:
        app = BasicAuth(app, *basic_auth, limits=limits)
    listener = bind_listener(host, port)
    return MetricsServer(listener, host, app, context, limits)
