"""A small, fast HTTPS load generator for the benchmark: asyncio streams, CONNECT with proxy auth, HTTP/1.1.

Each of `concurrency` workers is one developer's editor: it authenticates as its user (Basic
`Proxy-Authorization` on `CONNECT host:443`), keeps one TLS connection per Copilot host (SNI = the real
host name) and re-opens it every `per_connection` requests, and sends the traffic mix of
`benchmarks.traffic` in a closed loop. Bounded by a request count and a time limit. Records per
request the time to the first body byte and to the end of the answer (`time.perf_counter`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks import traffic


@dataclass(frozen=True, slots=True)
class LoadSpec:
    port: int  # the proxy (mitmdump, or the fake backend itself for "direct")
    ca_path: str  # the CA the client trusts inside the tunnel
    users: tuple[tuple[str, str], ...]  # (user, password); worker i is users[i % len(users)]
    requests: int
    concurrency: int
    run_id: int  # makes request and interaction ids unique across runs against the same proxy
    slow: bool = False  # only the slow (delayed-event) completion, for TTFB
    per_connection: int = 200  # requests per TLS connection before it is re-opened
    time_limit: float = 120.0


@dataclass(slots=True)
class LoadResult:
    ok: int = 0
    errors: int = 0
    counted: int = 0  # requests sent and answered that the addon must count
    model_calls: int = 0  # of them, upstream model calls (not telemetry posts)
    # Requests written but not seen answered: in flight when a run was cut at its time limit, or failed. The
    # proxy may have answered (and the addon counted) them, so a count check allows for these.
    unsure_counted: int = 0
    unsure_model_calls: int = 0
    by_name: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, request written -> answer complete
    ttfbs: list[float] = field(default_factory=list)  # seconds, request written -> first body byte
    first_errors: list[str] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0
    timed_out: bool = False
    connections: int = 0

    @property
    def elapsed(self) -> float:
        return self.finished - self.started

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0


class _Conn:
    __slots__ = ("reader", "used", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.used = 0

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class ProtocolError(Exception):
    pass


def client_context(ca_path: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca_path)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def _open(port: int, host: str, auth: str, ctx: ssl.SSLContext) -> _Conn:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    writer.write(
        f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nProxy-Authorization: {auth}\r\n"
        f"Proxy-Connection: keep-alive\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        writer.close()
        raise ProtocolError(f"CONNECT {host}: {head.splitlines()[0]!r}")
    await writer.start_tls(ctx, server_hostname=host)
    return _Conn(reader, writer)


async def _exchange(conn: _Conn, data: bytes) -> tuple[float, float]:
    """Send one request; read the whole answer. Returns (ttfb, latency) in seconds."""
    reader = conn.reader
    t0 = time.perf_counter()
    conn.writer.write(data)
    head = await reader.readuntil(b"\r\n\r\n")
    if head[9:12] != b"200":
        raise ProtocolError(f"status {head[:40]!r}")
    lower = head.lower()
    first = 0.0
    if b"transfer-encoding: chunked" in lower:
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected: the final CRLF
                break
            await reader.readexactly(size + 2)
            if not first:
                first = time.perf_counter()
    else:
        i = lower.find(b"content-length:")
        if i < 0:
            raise ProtocolError("neither chunked nor content-length")
        length = int(lower[i + 15 : lower.index(b"\r\n", i)])
        await reader.readexactly(length)
        first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, end - t0


def _unsure(result: LoadResult, tpl: traffic.Template) -> None:
    result.unsure_counted += tpl.counted
    result.unsure_model_calls += tpl.model_call


async def run_load(spec: LoadSpec, progress: Callable[[int], None] | None = None) -> LoadResult:
    """Drive `spec.requests` requests through the proxy with `spec.concurrency` workers."""
    ctx = client_context(spec.ca_path)
    result = LoadResult()
    ids = traffic.Ids(spec.run_id)
    remaining = spec.requests
    auths = ["Basic " + base64.b64encode(f"{user}:{password}".encode()).decode() for user, password in spec.users]

    async def worker(index: int) -> None:
        nonlocal remaining
        auth = auths[index % len(auths)]
        conns: dict[str, _Conn] = {}
        step = index  # start workers at different points of the mix
        interaction = ids.new()
        try:
            while remaining > 0 and len(result.first_errors) < 20:
                remaining -= 1
                tpl = traffic.SLOW_TEMPLATE if spec.slow else traffic.MIX_TEMPLATES[step % len(traffic.MIX_TEMPLATES)]
                step += 1
                if tpl.new_interaction:
                    interaction = ids.new()
                conn = conns.get(tpl.host)
                try:
                    if conn is None:
                        conn = conns[tpl.host] = await _open(spec.port, tpl.host, auth, ctx)
                        result.connections += 1
                    ttfb, latency = await _exchange(conn, tpl.render(ids.new(), interaction))
                except asyncio.CancelledError:
                    _unsure(result, tpl)
                    raise
                except (OSError, EOFError, asyncio.IncompleteReadError, ProtocolError, ValueError, ssl.SSLError) as e:
                    _unsure(result, tpl)
                    result.errors += 1
                    if len(result.first_errors) < 20:
                        result.first_errors.append(f"{tpl.name}: {type(e).__name__}: {e}"[:300])
                    if conn is not None:
                        conn.close()
                    conns.pop(tpl.host, None)
                    continue
                result.ok += 1
                result.latencies.append(latency)
                result.ttfbs.append(ttfb)
                result.by_name[tpl.name] = result.by_name.get(tpl.name, 0) + 1
                if tpl.counted:
                    result.counted += 1
                if tpl.model_call:
                    result.model_calls += 1
                if progress is not None:
                    progress(result.ok)
                conn.used += 1
                if conn.used >= spec.per_connection:
                    conn.close()
                    del conns[tpl.host]
        finally:
            for c in conns.values():
                c.close()

    result.started = time.perf_counter()
    tasks = [asyncio.create_task(worker(i)) for i in range(spec.concurrency)]
    done, pending = await asyncio.wait(tasks, timeout=spec.time_limit)
    result.finished = time.perf_counter()
    if pending:
        result.timed_out = True
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t.exception() is not None:
            raise t.exception()  # type: ignore[misc]
    await asyncio.sleep(0)  # let the transports close
    return result
