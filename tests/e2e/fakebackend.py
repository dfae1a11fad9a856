"""A fake Copilot backend reached as mitmproxy's upstream proxy: CONNECT, TLS per SNI, HTTP/1.1 inside.

mitmdump runs with `--mode upstream:http://127.0.0.1:<port>` and
`--set ssl_verify_upstream_trusted_ca=<backend.ca_cert_path>`. It sends `CONNECT host:443` here, then
does TLS with SNI = the real Copilot host; this server answers with a certificate for that host signed
by its own test CA, and serves HTTP/1.1 (keep-alive, Content-Length or chunked request bodies).

Responses, in order of preference: a one-time answer registered with `answer_once` for requests carrying
given header values (clients without an `x-request-id`, such as the Copilot CLI: "a 429 for this prompt's
first call, once"); a script registered by the test for the request's `x-request-id`;
the sample of `tests/samples.py` with that request id; the sample with the same host, path and body;
the first sample with the same method, host and path; else a 404 JSON body. Event streams are sent
chunked, one event per chunk, `event_delay` seconds apart; a `Gate` holds a stream after N chunks
until the test releases it; a script's `reset_after=N` resets the connection (TCP RST) after N chunks.

A `GET` with `Upgrade: websocket` (the Responses API over WebSocket, `GET /responses`) is accepted
(101, no extensions) and served with wsproto: each client text frame `{"type":"response.create",…}`
is answered with the frames scripted with `script_websocket`, else with those of the WebSocket sample
(`status` 101, e.g. `samples.CLI_WEBSOCKET`) whose `request_body` is the same JSON as the frame, else with
the Responses API event objects of `samples.VSCODE_RESPONSES`, one JSON per text frame; binary frames
are echoed; every frame both ways is recorded (`websockets_for`).

Use in-process (`FakeCopilotBackend(...).start()`, a background thread with its own event loop) or as
a process: `python -m tests.e2e.fakebackend --port N --ca-out PATH [--event-delay-ms 50]`, which
prints `fakebackend ready port=<port> ca=<path>` once it listens.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import http
import ipaddress
import json
import os
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from wsproto import ConnectionType
from wsproto import events as ws_events
from wsproto.connection import Connection as WsConnection
from wsproto.utilities import generate_accept_token

if __package__ in (None, ""):  # run as a file: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import samples

_MAX_HEAD = 64 * 1024
_MAX_BODY = 64 * 1024 * 1024


# ---------------------------------------------------------------------------------------------------
# Certificates


class CertificateAuthority:
    """A throw-away CA that issues leaf certificates per host name (cached), written as PEM files."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "Fake Copilot Backend Test CA"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "copilot-proxy-insight tests"),
            ]
        )
        self._name = name
        ski = x509.SubjectKeyIdentifier.from_public_key(self._key.public_key())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .sign(self._key, hashes.SHA256())
        )
        self.cert_path = directory / "fake-copilot-ca.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self._leaf_key_path = directory / "leaf-key.pem"
        self._leaf_key_path.write_bytes(
            self._leaf_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def write_ca(self, path: Path) -> None:
        """Also write the CA certificate PEM to `path`."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _issue(self, host: str) -> Path:
        now = datetime.datetime.now(datetime.UTC)
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host[:64])]))
            .issuer_name(self._name)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host)
        path = self.directory / f"leaf-{safe}.pem"
        path.write_bytes(
            cert.public_bytes(serialization.Encoding.PEM) + self.cert.public_bytes(serialization.Encoding.PEM)
        )
        return path

    def context_for(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context with a certificate for `host` (ALPN: http/1.1 only), cached."""
        host = host.lower()
        with self._lock:
            ctx = self._contexts.get(host)
            if ctx is None:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                ctx.set_alpn_protocols(["http/1.1"])
                ctx.load_cert_chain(self._issue(host), self._leaf_key_path)
                self._contexts[host] = ctx
            return ctx


# ---------------------------------------------------------------------------------------------------
# Scripts, gates and records


class Gate:
    """Holds a scripted stream after `after` chunks until `release()` (callable from any thread)."""

    def __init__(self, after: int = 1) -> None:
        self.after = after
        self.reached = threading.Event()  # set once the server has sent `after` chunks and waits
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    @property
    def released(self) -> bool:
        """True once `release()` was called."""
        return self._released.is_set()

    def release(self) -> None:
        """Let the server send the remaining chunks."""
        with self._lock:
            self._released.set()
            waiters, self._waiters = self._waiters, []
        for loop, event in waiters:
            with contextlib.suppress(RuntimeError):  # loop already closed
                loop.call_soon_threadsafe(event.set)

    async def _wait(self) -> None:
        event = asyncio.Event()
        with self._lock:
            if self._released.is_set():
                return
            self._waiters.append((asyncio.get_running_loop(), event))
        await event.wait()


@dataclass(frozen=True, slots=True)
class Script:
    """A scripted answer for one `x-request-id`."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body_chunks: tuple[bytes, ...]
    gate: Gate | None = None
    chunked: bool | None = None  # None: chunked iff the content type is text/event-stream
    delay: float | None = None  # seconds between chunks; None: the backend's event_delay
    reset_after: int | None = None  # after this many body chunks (and the gate), reset the connection (RST)


@dataclass(frozen=True, slots=True)
class RecordedConnect:
    """A CONNECT request the backend received (what mitmproxy sent upstream)."""

    authority: str
    headers: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """An HTTP request received inside a tunnel (or as a plain proxy request)."""

    host: str  # TLS SNI, else the CONNECT host, else the Host header
    method: str
    path: str
    http_version: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    connect_authority: str | None
    sni: str | None
    source: str  # "script", "sample:<name>" or "404"

    def header(self, name: str) -> str | None:
        """First header with this name, case-insensitively."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), None)

    @property
    def request_id(self) -> str | None:
        """The `x-request-id` header value."""
        return self.header("x-request-id")


@dataclass(slots=True)
class WebSocketSession:
    """A WebSocket the backend accepted: every message received and sent, in order, as (is_text, payload)."""

    request_id: str | None
    host: str
    path: str
    headers: tuple[tuple[str, str], ...]
    received: list[tuple[bool, bytes]] = field(default_factory=list)
    sent: list[tuple[bool, bytes]] = field(default_factory=list)
    closed: bool = False
    close_code: int | None = None


def responses_ws_frames(exchange: samples.Exchange | None = None) -> tuple[str, ...]:
    """The `data:` JSON objects of a Responses API event stream (default: `VSCODE_RESPONSES`), one per frame."""
    ex = exchange if exchange is not None else samples.VSCODE_RESPONSES
    frames = []
    for event in samples.split_sse_events(ex.response_body):
        data = [line[5:].strip() for line in event.decode().splitlines() if line.startswith("data:")]
        if data:
            frames.append("\n".join(data))
    return tuple(frames)


@dataclass(slots=True)
class SentResponse:
    """What the backend sent for one request: status, headers and exact body bytes (so far)."""

    request_id: str | None
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytearray = field(default_factory=bytearray)
    chunks_sent: int = 0
    complete: bool = False
    error: str | None = None


class _BadRequest(Exception):
    pass


# ---------------------------------------------------------------------------------------------------
# The server


class FakeCopilotBackend:
    """Fake upstream proxy + Copilot backend. Thread-safe accessors; `start()`/`stop()` or a `with`."""

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        ca_dir: str | os.PathLike[str] | None = None,
        event_delay: float = 0.0,
        exchanges: Iterable[samples.Exchange] = samples.ALL,
    ) -> None:
        self.host = host
        self._requested_port = port
        self._own_dir: tempfile.TemporaryDirectory[str] | None = None
        if ca_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="fakebackend-")
            ca_dir = self._own_dir.name
        self.ca = CertificateAuthority(Path(ca_dir))
        self.event_delay = event_delay
        self._exchanges = tuple(exchanges)
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._scripts: dict[str, Script] = {}
        self._requests: list[RecordedRequest] = []
        self._connects: list[RecordedConnect] = []
        self._sent: list[SentResponse] = []
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sni: dict[int, str] = {}
        self._ws_scripts: dict[str, tuple[str, ...]] = {}
        self._websockets: list[WebSocketSession] = []
        self._once: list[tuple[tuple[tuple[str, str], ...], Script]] = []

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The listening port (after `start()`)."""
        if self._port is None:
            raise RuntimeError("backend not started")
        return self._port

    @property
    def ca_cert_path(self) -> Path:
        """PEM of the CA that signs every host certificate: pass to `ssl_verify_upstream_trusted_ca`."""
        return self.ca.cert_path

    @property
    def upstream_url(self) -> str:
        """The value for mitmproxy's `--mode upstream:<url>`."""
        return f"http://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> FakeCopilotBackend:
        """Start the server in a background thread; return once it listens."""
        if self._thread is not None:
            raise RuntimeError("already started")
        self._thread = threading.Thread(target=self._thread_main, name="fake-copilot-backend", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"fake backend did not start listening within {timeout}s")
        if self._startup_error is not None:
            raise RuntimeError("fake backend failed to start") from self._startup_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, abort open connections (releasing nothing), and join the thread."""
        loop, stop_event, thread = self._loop, self._stop_event, self._thread
        if thread is None:
            return
        if loop is not None and stop_event is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(stop_event.set)
        thread.join(timeout)
        if thread.is_alive():
            raise RuntimeError("fake backend thread did not stop")
        self._thread = None
        if self._own_dir is not None:
            self._own_dir.cleanup()
            self._own_dir = None

    def __enter__(self) -> FakeCopilotBackend:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _thread_main(self) -> None:
        try:
            asyncio.run(self.serve())
        except BaseException as e:
            self._startup_error = e
            self._ready.set()

    async def serve(self, on_ready: asyncio.Event | None = None) -> None:
        """Serve until `stop()` (or until cancelled). Usable directly inside an event loop."""
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        server = await asyncio.start_server(self._on_client, self.host, self._requested_port)
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        if on_ready is not None:
            on_ready.set()
        try:
            await self._stop_event.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    # -- test API -------------------------------------------------------------------------------

    def script(
        self,
        request_id: str,
        status: int,
        headers: Sequence[tuple[str, str]] | dict[str, str],
        body_chunks: Sequence[bytes] | bytes,
        gate: Gate | None = None,
        *,
        chunked: bool | None = None,
        delay: float | None = None,
        reset_after: int | None = None,
    ) -> Script:
        """Answer requests with this `x-request-id` with this status, headers and body chunks.

        `reset_after=N`: after N body chunks (and after the gate, if it holds at N) the connection is
        reset (SO_LINGER 0 + abort: a TCP RST) instead of sending the rest."""
        hdrs = tuple(headers.items()) if isinstance(headers, dict) else tuple(headers)
        chunks = (body_chunks,) if isinstance(body_chunks, bytes) else tuple(body_chunks)
        s = Script(status, hdrs, chunks, gate, chunked, delay, reset_after)
        with self._lock:
            self._scripts[request_id] = s
        return s

    def script_exchange(
        self,
        exchange: samples.Exchange,
        request_id: str | None = None,
        gate: Gate | None = None,
        *,
        reset_after: int | None = None,
    ) -> Script:
        """Script a sample's response (one SSE event per chunk) for `request_id` (default: its own)."""
        rid = request_id or exchange.request_id
        if rid is None:
            raise ValueError("exchange has no x-request-id")
        return self.script(
            rid, exchange.status, exchange.response_headers, exchange.response_chunks(), gate, reset_after=reset_after
        )

    def answer_once(
        self,
        match: dict[str, str],
        status: int,
        headers: Sequence[tuple[str, str]] | dict[str, str],
        body: bytes,
    ) -> Script:
        """Answer the next request whose headers have all of `match` (names in any case, exact values) with
        this status, headers and body, once; later such requests are answered as usual."""
        hdrs = tuple(headers.items()) if isinstance(headers, dict) else tuple(headers)
        s = Script(status, hdrs, (body,))
        with self._lock:
            self._once.append((tuple((k.lower(), v) for k, v in match.items()), s))
        return s

    def script_websocket(self, request_id: str, frames: Sequence[str]) -> None:
        """Answer each `response.create` frame of the WebSocket opened with this `x-request-id` with `frames`."""
        with self._lock:
            self._ws_scripts[request_id] = tuple(frames)

    def websockets_for(self, request_id: str) -> list[WebSocketSession]:
        """Copies of the WebSocket sessions opened with this `x-request-id`."""
        with self._lock:
            return [
                WebSocketSession(
                    w.request_id, w.host, w.path, w.headers, list(w.received), list(w.sent), w.closed, w.close_code
                )
                for w in self._websockets
                if w.request_id == request_id
            ]

    def wait_for_websocket(
        self, request_id: str, condition: Callable[[WebSocketSession], bool], timeout: float = 10.0
    ) -> WebSocketSession:
        """Block until the WebSocket opened with this `x-request-id` satisfies `condition`; return a copy."""

        def match() -> bool:
            return any(w.request_id == request_id and condition(w) for w in self._websockets)

        with self._changed:
            if not self._changed.wait_for(match, timeout):
                raise TimeoutError(f"websocket {request_id} did not reach the condition within {timeout}s")
        return next(w for w in self.websockets_for(request_id) if condition(w))

    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in arrival order."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, request_id: str) -> list[RecordedRequest]:
        """Requests received with this `x-request-id`."""
        with self._lock:
            return [r for r in self._requests if r.request_id == request_id]

    def connects(self) -> list[RecordedConnect]:
        """Every CONNECT received so far."""
        with self._lock:
            return list(self._connects)

    def response_for(self, request_id: str) -> SentResponse | None:
        """A copy of the last response sent (or being sent) for this `x-request-id`."""
        with self._lock:
            for s in reversed(self._sent):
                if s.request_id == request_id:
                    return SentResponse(
                        s.request_id, s.status, s.headers, bytearray(s.body), s.chunks_sent, s.complete, s.error
                    )
        return None

    def sent_body(self, request_id: str) -> bytes | None:
        """Exact body bytes sent so far for the last request with this id (de-chunked)."""
        r = self.response_for(request_id)
        return None if r is None else bytes(r.body)

    def wait_for_request(self, request_id: str, timeout: float = 10.0) -> RecordedRequest:
        """Block until a request with this id has arrived."""
        with self._changed:
            ok = self._changed.wait_for(lambda: any(r.request_id == request_id for r in self._requests), timeout)
            if not ok:
                raise TimeoutError(f"no request with x-request-id {request_id} within {timeout}s")
            return next(r for r in self._requests if r.request_id == request_id)

    def wait_for_response_complete(self, request_id: str, timeout: float = 10.0) -> SentResponse:
        """Block until the response for this id was fully written."""

        def done() -> bool:
            return any(s.request_id == request_id and (s.complete or s.error) for s in self._sent)

        with self._changed:
            if not self._changed.wait_for(done, timeout):
                raise TimeoutError(f"response for {request_id} not complete within {timeout}s")
        r = self.response_for(request_id)
        assert r is not None
        return r

    def reset(self) -> None:
        """Forget scripts and records."""
        with self._lock:
            self._scripts.clear()
            self._requests.clear()
            self._connects.clear()
            self._sent.clear()
            self._ws_scripts.clear()
            self._websockets.clear()
            self._once.clear()

    # -- connection handling --------------------------------------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._handle_connection(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, _BadRequest, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            writer.transport.abort()

    async def _handle_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await _read_head(reader)
        if head is None:
            return
        method, target, _version, headers = head
        if method.upper() != "CONNECT":
            # A plain proxy request (absolute-form URL): serve it without a tunnel.
            await self._serve_requests(reader, writer, first=head, connect_authority=None, sni=None)
            return
        with self._changed:
            self._connects.append(RecordedConnect(target, headers))
            self._changed.notify_all()
        connect_host = target.rsplit(":", 1)[0].strip("[]")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        ctx = self._tunnel_context(connect_host)
        await writer.start_tls(ctx)
        ssl_obj = writer.get_extra_info("ssl_object")
        sni = self._sni.pop(id(ssl_obj), None) if ssl_obj is not None else None
        await self._serve_requests(reader, writer, first=None, connect_authority=target, sni=sni)

    def _tunnel_context(self, connect_host: str) -> ssl.SSLContext:
        base = self.ca.context_for(connect_host)
        # A fresh wrapper context per tunnel is costly; instead attach one SNI callback to the cached
        # context that switches to the certificate of the requested name and remembers it.
        if base.sni_callback is None:

            def on_sni(obj: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext) -> None:
                if name:
                    self._sni[id(obj)] = name
                    if name.lower() != connect_host.lower():
                        obj.context = self.ca.context_for(name)

            base.sni_callback = on_sni
        return base

    async def _serve_requests(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        first: tuple[str, str, str, tuple[tuple[str, str], ...]] | None,
        connect_authority: str | None,
        sni: str | None,
    ) -> None:
        head = first
        while True:
            if head is None:
                head = await _read_head(reader)
                if head is None:
                    return
            method, target, version, headers = head
            body = await _read_body(reader, headers)
            host_header = _get(headers, "host")
            path = target
            host = sni or (connect_authority.rsplit(":", 1)[0] if connect_authority else None)
            if target.startswith(("http://", "https://")):
                rest = target.split("://", 1)[1]
                authority, _, p = rest.partition("/")
                path = "/" + p
                host = host or authority.rsplit(":", 1)[0]
            host = host or (host_header or "").rsplit(":", 1)[0]
            request_id = _get(headers, "x-request-id")
            if method.upper() == "GET" and (_get(headers, "upgrade") or "").lower() == "websocket":
                with self._changed:
                    self._requests.append(
                        RecordedRequest(host, method, path, version, headers, body, connect_authority, sni, "websocket")
                    )
                    self._changed.notify_all()
                await self._serve_websocket(reader, writer, request_id, host, path, headers)
                return
            script, source = self._take_once(headers) or self._choose(method, host, path, body, request_id)
            with self._changed:
                self._requests.append(
                    RecordedRequest(host, method, path, version, headers, body, connect_authority, sni, source)
                )
                self._changed.notify_all()
            keep_alive = (_get(headers, "connection") or "").lower() != "close" and version == "HTTP/1.1"
            await self._send(writer, request_id, script, keep_alive, head_only=method.upper() == "HEAD")
            if not keep_alive:
                return
            head = None

    def _take_once(self, headers: tuple[tuple[str, str], ...]) -> tuple[Script, str] | None:
        have = {(k.lower(), v) for k, v in headers}
        with self._lock:
            for i, (match, script) in enumerate(self._once):
                if all(pair in have for pair in match):
                    del self._once[i]
                    return script, "once"
        return None

    def _ws_sample_frames(self, payload: bytes) -> tuple[str, ...] | None:
        """The server frames of the WebSocket sample whose client frame is the same JSON as `payload`."""
        try:
            frame = json.loads(payload)
        except ValueError:
            return None
        for e in self._exchanges:
            if e.status == 101 and e.request_body and json.loads(e.request_body) == frame:
                return responses_ws_frames(e)
        return None

    def _choose(self, method: str, host: str, path: str, body: bytes, request_id: str | None) -> tuple[Script, str]:
        with self._lock:
            if request_id is not None and request_id in self._scripts:
                return self._scripts[request_id], "script"
        candidates: list[samples.Exchange] = []
        if request_id is not None:
            candidates += [e for e in self._exchanges if e.request_id == request_id]
        same_place = [e for e in self._exchanges if e.host == host and e.path == path]
        candidates += [e for e in same_place if e.request_body == body and e.method == method]
        candidates += [e for e in same_place if e.method == method]
        if candidates:
            e = candidates[0]
            return Script(e.status, e.response_headers, e.response_chunks()), f"sample:{e.name}"
        body404 = json.dumps({"error": {"message": f"fake backend: no sample for {method} {host}{path}"}})
        return (
            Script(404, (("content-type", "application/json"),), (body404.encode(),)),
            "404",
        )

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        request_id: str | None,
        script: Script,
        keep_alive: bool,
        head_only: bool,
    ) -> None:
        content_type = next((v for k, v in script.headers if k.lower() == "content-type"), "")
        chunked = script.chunked
        if chunked is None:
            chunked = content_type.lower().startswith("text/event-stream")
        drop = {"content-length", "transfer-encoding", "connection"}
        headers = [(k, v) for k, v in script.headers if k.lower() not in drop]
        if chunked:
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            headers.append(("Content-Length", str(sum(len(c) for c in script.body_chunks))))
        if not keep_alive:
            headers.append(("Connection", "close"))
        try:
            reason = http.HTTPStatus(script.status).phrase
        except ValueError:
            reason = "Unknown"
        record = SentResponse(request_id, script.status, tuple(headers))
        with self._changed:
            self._sent.append(record)
        head = f"HTTP/1.1 {script.status} {reason}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
        writer.write(head.encode("latin-1") + b"\r\n")
        await writer.drain()
        delay = self.event_delay if script.delay is None else script.delay
        try:
            if not head_only:
                for i, chunk in enumerate(script.body_chunks):
                    if script.gate is not None and i == script.gate.after:
                        script.gate.reached.set()
                        await script.gate._wait()
                    elif i > 0 and delay > 0:
                        await asyncio.sleep(delay)
                    if script.reset_after is not None and i >= script.reset_after:
                        await self._reset(writer, record)
                    if not chunk:
                        continue
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                    await writer.drain()
                    with self._changed:
                        record.body += chunk
                        record.chunks_sent += 1
                        self._changed.notify_all()
                if script.gate is not None and script.gate.after >= len(script.body_chunks):
                    script.gate.reached.set()
                if script.reset_after is not None:
                    if script.gate is not None and script.gate.after >= len(script.body_chunks):
                        await script.gate._wait()
                    await self._reset(writer, record)
                if chunked:
                    writer.write(b"0\r\n\r\n")
                    await writer.drain()
        except (ConnectionError, asyncio.CancelledError) as e:
            with self._changed:
                record.error = record.error or type(e).__name__  # (a scripted reset already said "reset")
                self._changed.notify_all()
            raise
        with self._changed:
            record.complete = True
            self._changed.notify_all()

    async def _reset(self, writer: asyncio.StreamWriter, record: SentResponse) -> None:
        """Let the bytes written so far reach the socket, then reset the connection (RST) and raise."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while writer.transport.get_write_buffer_size() and loop.time() < deadline:
            await asyncio.sleep(0.005)  # polling the transport's buffer, bounded by the deadline
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with self._changed:
            record.error = "reset"
            self._changed.notify_all()
        writer.transport.abort()
        raise ConnectionResetError("scripted reset")

    async def _serve_websocket(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request_id: str | None,
        host: str,
        path: str,
        headers: tuple[tuple[str, str], ...],
    ) -> None:
        """Accept the upgrade (no extensions) and answer `response.create` frames until the close."""
        key = _get(headers, "sec-websocket-key")
        if not key:
            raise _BadRequest("websocket upgrade without Sec-WebSocket-Key")
        session = WebSocketSession(request_id, host, path, headers)
        with self._changed:
            self._websockets.append(session)
            scripted = self._ws_scripts.get(request_id or "")
            self._changed.notify_all()
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + generate_accept_token(key.encode()) + b"\r\n\r\n"
        )
        await writer.drain()
        ws = WsConnection(ConnectionType.SERVER)
        parts: list[bytes | str] = []

        async def send(is_text: bool, payload: bytes) -> None:
            data = payload.decode() if is_text else payload
            message = ws_events.TextMessage(data=data) if isinstance(data, str) else ws_events.BytesMessage(data=data)
            writer.write(ws.send(message))
            await writer.drain()
            with self._changed:
                session.sent.append((is_text, payload))
                self._changed.notify_all()

        try:
            while True:
                data = await reader.read(65536)
                ws.receive_data(data or None)
                for event in ws.events():
                    if isinstance(event, ws_events.Message):
                        parts.append(event.data)
                        if not event.message_finished:
                            continue
                        is_text = isinstance(event, ws_events.TextMessage)
                        payload = (
                            "".join(p for p in parts if isinstance(p, str)).encode()
                            if is_text
                            else b"".join(p for p in parts if isinstance(p, bytes))
                        )
                        parts.clear()
                        with self._changed:
                            session.received.append((is_text, payload))
                            self._changed.notify_all()
                        if not is_text:
                            await send(False, payload)
                            continue
                        try:
                            frame_type = json.loads(payload).get("type")
                        except (ValueError, AttributeError):
                            frame_type = None
                        if frame_type == "response.create":
                            answer = scripted or self._ws_sample_frames(payload) or responses_ws_frames()
                            for frame in answer:
                                await send(True, frame.encode())
                    elif isinstance(event, ws_events.Ping):
                        writer.write(ws.send(event.response()))
                        await writer.drain()
                    elif isinstance(event, ws_events.CloseConnection):
                        with self._changed:
                            session.close_code = event.code
                            self._changed.notify_all()
                        with contextlib.suppress(Exception):
                            writer.write(ws.send(event.response()))
                            await writer.drain()
                        return
                if not data:
                    return
        finally:
            with self._changed:
                session.closed = True
                self._changed.notify_all()


# ---------------------------------------------------------------------------------------------------
# HTTP/1.1 parsing helpers


def _get(headers: Iterable[tuple[str, str]], name: str) -> str | None:
    lname = name.lower()
    return next((v for k, v in headers if k.lower() == lname), None)


async def _read_head(
    reader: asyncio.StreamReader,
) -> tuple[str, str, str, tuple[tuple[str, str], ...]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial.strip():
            return None
        raise _BadRequest("truncated request head") from e
    except asyncio.LimitOverrunError as e:
        raise _BadRequest("request head too long") from e
    if len(raw) > _MAX_HEAD:
        raise _BadRequest("request head too long")
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3:
        raise _BadRequest(f"bad request line {lines[0]!r}")
    method, target, version = parts
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise _BadRequest(f"bad header line {line!r}")
        headers.append((name.strip(), value.strip()))
    return method, target, version, tuple(headers)


async def _read_body(reader: asyncio.StreamReader, headers: tuple[tuple[str, str], ...]) -> bytes:
    te = (_get(headers, "transfer-encoding") or "").lower()
    if "chunked" in te:
        out = bytearray()
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return bytes(out)
            if len(out) + size > _MAX_BODY:
                raise _BadRequest("request body too large")
            out += await reader.readexactly(size)
            await reader.readexactly(2)
    length = int(_get(headers, "content-length") or 0)
    if length > _MAX_BODY:
        raise _BadRequest("request body too large")
    return await reader.readexactly(length) if length else b""


# ---------------------------------------------------------------------------------------------------
# Standalone process


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fake backend as a process until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on the ready line)")
    parser.add_argument("--ca-out", required=True, type=Path, help="where to write the CA certificate PEM")
    parser.add_argument("--event-delay-ms", type=float, default=0.0, help="pause between streamed events")
    args = parser.parse_args(argv)

    async def run() -> None:
        backend = FakeCopilotBackend(args.port, host=args.host, event_delay=args.event_delay_ms / 1000)
        ready = asyncio.Event()
        task = asyncio.create_task(backend.serve(on_ready=ready))
        ready_wait = asyncio.create_task(ready.wait())
        await asyncio.wait({task, ready_wait}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            ready_wait.cancel()
            await task  # re-raise the startup error
            return
        backend.ca.write_ca(args.ca_out)
        print(f"fakebackend ready port={backend.port} ca={args.ca_out}", flush=True)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, backend._stop_event.set if backend._stop_event else task.cancel)
        try:
            await task
        finally:
            if backend._own_dir is not None:
                backend._own_dir.cleanup()

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
