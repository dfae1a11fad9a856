"""Incremental server-sent-events decoding, with incremental content decoding (gzip, deflate, br, zstd)."""

from __future__ import annotations

import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import brotli

from exporter.values import quick_init

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # mitmproxy depends on the backport below 3.14
    from backports import zstd

MAX_LINE_BYTES = 4 * 1024 * 1024
MAX_DECODED_BYTES = 32 * 1024 * 1024  # a long agent answer is well under 1 MiB


INFLATE_INPUT_CHUNK = 64 * 1024  # compressed bytes fed at a time to inflate_capped's decoder
INFLATE_STEP = 256 * 1024  # decoded bytes produced at a time: the most a bomb gets past the cap


class DecodeError(Exception):
    """The body could not be decoded (bad compression, over the size cap)."""


class BodyTooLarge(DecodeError, ValueError):
    """The decoded body passes its cap (a decompression bomb, or just too big to parse)."""


@quick_init
@dataclass(frozen=True, slots=True)
class SSEEvent:
    """One `data:` payload with the `event:` type in force for it."""

    event: str | None
    data: str


class _Decompressor(Protocol):
    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        """The output for `data`, in pieces of about `step` bytes (a bomb is never inflated in one go)."""
        ...


_IDENTITY = ("", "identity", "none")  # Content-Encoding values that leave the body as it is


class _Identity:
    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        yield data  # already in memory whole


class _Zlib:
    def __init__(self, wbits: int) -> None:
        self._d = zlib.decompressobj(wbits)

    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        out = self._d.decompress(data, step)
        while True:
            if out:
                yield out
            if len(out) < step and not self._d.unconsumed_tail:
                return
            out = self._d.decompress(self._d.unconsumed_tail, step)


class _Brotli:
    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        out = self._d.process(data, output_buffer_limit=step)
        while True:
            if out:
                yield bytes(out)
            if self._d.can_accept_more_data() or not out:
                return
            out = self._d.process(b"", output_buffer_limit=step)


class _Zstd:
    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor()

    def pieces(self, data: bytes, step: int) -> Iterator[bytes]:
        out = self._d.decompress(data, step)
        while True:
            if out:
                yield bytes(out)
            if self._d.needs_input or self._d.eof or not out:
                return
            out = self._d.decompress(b"", step)


def _decompressor(encoding: str) -> _Decompressor:
    encoding = encoding.strip().lower()
    if encoding in _IDENTITY:
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
    """Incrementally undoes Content-Encoding; never expands past the cap (gzip bombs).

    Output is produced in pieces of INFLATE_STEP bytes, each counted against the cap as it comes: a chunk
    that would inflate past the cap raises after at most the cap plus one piece, never after inflating all of
    it. Every stage of a chained encoding (`gzip, br`) is capped the same way."""

    def __init__(self, content_encoding: str | None, max_bytes: int = MAX_DECODED_BYTES) -> None:
        steps = [_decompressor(e) for e in reversed((content_encoding or "").split(",")) if e.strip()]
        self._steps: list[_Decompressor] = steps or [_Identity()]  # an identity stage: the cap holds for plain bodies
        self._max = max_bytes
        self._stage_bytes = [0] * len(self._steps)
        self._plain = not steps
        self.decoded_bytes = 0

    def feed(self, chunk: bytes) -> bytes:
        if self._plain:  # no Content-Encoding (the common case): count it against the cap, no generators
            self._stage_bytes[0] += len(chunk)
            if self._stage_bytes[0] > self._max:
                raise BodyTooLarge(f"decoded body over {self._max} bytes")
            self.decoded_bytes += len(chunk)
            return chunk
        parts = list(self.pieces(chunk))
        self.decoded_bytes += sum(len(p) for p in parts)  # only once the whole chunk is within the cap
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pieces(self, chunk: bytes) -> Iterator[bytes]:
        """The decoded output of `chunk`, piece by piece (not added to `decoded_bytes`).

        Raises BodyTooLarge when the output passes the cap, DecodeError for a corrupt body."""
        flow: Iterator[bytes] = iter((chunk,))
        for i, step in enumerate(self._steps):
            flow = self._capped(i, step, flow)
        try:
            yield from flow
        except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as e:
            raise DecodeError(f"corrupt compressed body: {e}") from e

    def _capped(self, stage: int, step: _Decompressor, flow: Iterator[bytes]) -> Iterator[bytes]:
        for part in flow:
            for piece in step.pieces(part, INFLATE_STEP):
                self._stage_bytes[stage] += len(piece)
                if self._stage_bytes[stage] > self._max:
                    raise BodyTooLarge(f"decoded body over {self._max} bytes")
                yield piece


def inflate_capped(raw: bytes, content_encoding: str | None, limit: int) -> bytes:
    """The body with its Content-Encoding undone; BodyTooLarge as soon as the output passes `limit` bytes.

    Inflates piece by piece (a 405-byte brotli body can hold 256 MiB): a bomb costs at most `limit` decoded
    bytes plus one piece before it raises. DecodeError for a corrupt body or an unknown encoding. An accepted
    body is copied once more when its pieces are joined; a body without Content-Encoding (most request
    bodies) is only checked against the cap and returned as it is."""
    if content_encoding is None or content_encoding.strip().lower() in _IDENTITY:
        if len(raw) > limit:
            raise BodyTooLarge(f"decoded body over {limit} bytes")
        return raw
    decoder = BodyDecoder(content_encoding, limit)
    parts: list[bytes] = []
    view = memoryview(raw)
    for start in range(0, max(len(raw), 1), INFLATE_INPUT_CHUNK):
        parts.extend(decoder.pieces(bytes(view[start : start + INFLATE_INPUT_CHUNK])))
    if len(parts) == 1:
        return parts[0]
    return b"".join(parts)


def inflate_prefix(raw: bytes, content_encoding: str | None, limit: int) -> tuple[bytes, bool]:
    """The first `limit` decoded bytes of the body and whether there was more (for recordings: a bomb is cut
    after `limit` bytes plus a piece, never inflated whole). DecodeError for a corrupt body."""
    decoder = BodyDecoder(content_encoding, limit + 4 * INFLATE_STEP)  # room for the piece that crosses it
    parts: list[bytes] = []
    total = 0
    view = memoryview(raw)
    try:
        for start in range(0, max(len(raw), 1), INFLATE_INPUT_CHUNK):
            for piece in decoder.pieces(bytes(view[start : start + INFLATE_INPUT_CHUNK])):
                parts.append(piece)
                total += len(piece)
                if total > limit:
                    return b"".join(parts)[:limit], True
    except BodyTooLarge:
        return b"".join(parts)[:limit], True
    return b"".join(parts), False


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
            if raw[:6] == b"data: " and raw[-1:] != b"\r":  # most lines: read here, without a call
                out.append(SSEEvent(self._event, raw[6:].decode("utf-8", "replace")))
            else:
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
