"""Incremental server-sent-events decoding, with incremental content decoding (gzip, deflate, br, zstd)."""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from typing import Protocol

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # mitmproxy depends on the backport below 3.14
    from backports import zstd

MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_DECODED_BYTES = 32 * 1024 * 1024  # a long agent answer is well under 1 MiB


INFLATE_INPUT_CHUNK = 16 * 1024  # compressed bytes fed per step: output per step is capped by the budget anyway


class DecodeError(Exception):
    """The body could not be decoded (bad compression, over the size cap)."""


class BodyTooLarge(DecodeError, ValueError):
    """The decoded body passes its cap (a decompression bomb, or just too big to parse)."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One `data:` payload with the `event:` type in force for it."""

    event: str | None
    data: str


class _Decompressor(Protocol):
    def decompress(self, data: bytes, limit: int) -> bytes:
        """At most about `limit` bytes of output; more than that means the body is over the cap."""
        ...


class _Identity:
    def decompress(self, data: bytes, limit: int) -> bytes:
        return data


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def decompress(self, data: bytes, limit: int) -> bytes:
        return self._d.decompress(data, limit)


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def decompress(self, data: bytes, limit: int) -> bytes:
        return bytes(self._d.process(data, output_buffer_limit=limit))


class _Zstd:
    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor()

    def decompress(self, data: bytes, limit: int) -> bytes:
        return bytes(self._d.decompress(data, limit))


def _decompressor(encoding: str) -> _Decompressor:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity", "none"):
        return _Identity()
    if encoding in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Zlib(zlib.MAX_WBITS)
    if encoding == "br":
        return _Brotli()
    if encoding == "zstd":
        return _Zstd()
    raise DecodeError(f"unsupported content-encoding {encoding!r}")


class BodyDecoder:
    """Incrementally undoes Content-Encoding; never expands past the cap (gzip bombs)."""

    def __init__(self, content_encoding: str | None, max_bytes: int = MAX_DECODED_BYTES) -> None:
        self._steps = [_decompressor(e) for e in reversed((content_encoding or "").split(",")) if e.strip()]
        self._max = max_bytes
        self.decoded_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        budget = self._max - self.decoded_bytes + 1
        try:
            for step in self._steps:
                chunk = step.decompress(chunk, budget)
                if len(chunk) >= budget:
                    raise BodyTooLarge(f"decoded body over {self._max} bytes")
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
            raise DecodeError(f"corrupt compressed body: {e}") from e
        self.decoded_bytes += len(chunk)
        if self.decoded_bytes > self._max:
            raise BodyTooLarge(f"decoded body over {self._max} bytes")
        return chunk


def inflate_capped(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone; BodyTooLarge as soon as the output passes `limit` bytes.

    Inflates step by step (a 449-byte brotli body can hold 256 MiB): no more than `limit` decoded bytes plus
    one step's output are ever held, so a bomb costs at most the cap. DecodeError for a corrupt body or an
    unknown encoding. The joined result is one more copy of an accepted body (at most `limit` bytes)."""
    decoder = BodyDecoder(content_encoding, limit)
    parts: list[bytes] = []
    view = memoryview(raw)
    for start in range(0, len(raw), INFLATE_INPUT_CHUNK):
        part = decoder.feed(bytes(view[start : start + INFLATE_INPUT_CHUNK]))
        if part:
            parts.append(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


class SSEDecoder:
    """Splits an event stream into events as bytes arrive.

    Each `data:` line is one event: Copilot's payloads are single-line JSON, and streams are seen with
    both `\\n\\n` and single `\\n` between events. `event:` sets the type until the next blank line;
    comment lines (`:`) and other fields are ignored; `\\r\\n` is accepted; an over-long line is dropped.
    """

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._event: str | None = None
        self._max_line = max_line
        self._skipping = False
        self.dropped_lines = 0

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._skipping:  # inside an over-long line: drop up to its end
            nl = chunk.find(b"\n")
            if nl < 0:
                return out
            self._skipping = False
            chunk = chunk[nl + 1 :]
        if self._buf:
            # Only the new bytes are searched and appended: re-copying the pending line per chunk made an
            # 8 MiB line without a newline cost quadratic CPU on the event loop.
            nl = chunk.find(b"\n")
            if nl < 0:
                self._append(chunk)
                return out
            # Like a line that arrives whole in one chunk, a line completed here is read whatever its length:
            # the cap bounds what is held across chunks, and this chunk is in memory already.
            self._buf += chunk[:nl]
            self._line(bytes(self._buf), out)
            self._buf.clear()
            chunk = chunk[nl + 1 :]
        lines = chunk.split(b"\n")
        tail = lines.pop()  # the part after the last newline: an unfinished line
        for raw in lines:
            self._line(raw, out)
        if tail:
            self._append(tail)
        return out

    def close(self) -> list[SSEEvent]:
        """End of stream: a last line without a newline still counts (a truncated stream)."""
        out: list[SSEEvent] = []
        if self._buf and not self._skipping:
            self._line(bytes(self._buf), out)
        self._buf.clear()
        return out

    def _append(self, part: bytes) -> None:
        if self._skipping:
            return
        self._buf += part
        if len(self._buf) > self._max_line:
            self._buf.clear()
            self._skipping = True
            self.dropped_lines += 1

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw:
            self._event = None
            return
        if raw.startswith(b":"):
            return
        field, _, value = raw.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            out.append(SSEEvent(self._event, value.decode("utf-8", "replace")))
        elif field == b"event":
            self._event = value.decode("utf-8", "replace").strip() or None
