"""Hardening round 2 on the real components: SSE line cost, capped inflating, the writer, the JSON log, recordings."""

from __future__ import annotations

import gzip
import time
import tracemalloc
import zlib
from collections.abc import Callable

import brotli
import pytest

from exporter.sse import BodyTooLarge, DecodeError, SSEDecoder, SSEEvent, inflate_capped, zstd
from tests import samples

MiB = 1024 * 1024


# -- #13: a long SSE line costs CPU linear in its bytes ---------------------------------------------------


def _cpu_to_feed(chunks: list[bytes]) -> tuple[float, int]:
    decoder = SSEDecoder()
    events = 0
    start = time.process_time()
    for chunk in chunks:
        events += len(decoder.feed(chunk))
    events += len(decoder.close())
    return time.process_time() - start, events


def _in_chunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_an_8_mib_line_in_4_kib_chunks_costs_about_what_short_lines_cost() -> None:
    size = 8 * MiB
    short_line = b'data: {"choices":[{"text":"' + b"x" * 60 + b'"}]}\n'
    short = _in_chunks(short_line * (size // len(short_line)), 4096)
    long = _in_chunks(b"data: " + b"y" * (size - 6), 4096)
    best_short = min(_cpu_to_feed(short)[0] for _ in range(3))
    best_long = min(_cpu_to_feed(long)[0] for _ in range(3))
    assert _cpu_to_feed(short)[1] == size // len(short_line)
    # Before the fix the pending line was copied again per chunk: 2,048 chunks re-copied up to 4 MiB each,
    # ~7x the short lines' cost. Linear work is about 1% of theirs (no events to build).
    assert best_long < best_short, (best_long, best_short)


def test_a_long_line_is_dropped_as_malformed_and_the_next_line_is_read() -> None:
    decoder = SSEDecoder(max_line=64 * 1024)
    out: list[SSEEvent] = []
    for chunk in _in_chunks(b"data: " + b"z" * (1 * MiB) + b'\ndata: {"ok":1}\n\n', 4096):
        out += decoder.feed(chunk)
        assert len(decoder._buf) <= 64 * 1024 + 4096  # never buffered past the cap (plus one chunk)
    assert out == [SSEEvent(None, '{"ok":1}')]
    assert decoder.dropped_lines == 1


@pytest.mark.parametrize("ex", [e for e in samples.ALL if e.is_event_stream], ids=lambda e: e.name)
@pytest.mark.parametrize("step", [1, 3, 17, 4096])
def test_decoding_is_the_same_for_every_chunk_size(ex: samples.Exchange, step: int) -> None:
    whole = SSEDecoder().feed(ex.response_body) + SSEDecoder().close()
    decoder = SSEDecoder()
    out: list[SSEEvent] = []
    for chunk in _in_chunks(ex.response_body, step):
        out += decoder.feed(chunk)
    assert out + decoder.close() == whole


# -- #1/#3: decompression bombs inflate only up to the cap ------------------------------------------------


def _brotli_bomb(size: int) -> bytes:
    packer = brotli.Compressor(quality=5)
    zeros = b"\0" * MiB
    out = b"".join(packer.process(zeros) for _ in range(size // MiB))
    return out + packer.finish()


def _peak_while(fn: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(BodyTooLarge):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_449_byte_brotli_body_inflating_to_256_mib_stops_at_the_cap_quickly() -> None:
    bomb = _brotli_bomb(256 * MiB)
    assert len(bomb) < 1024
    limit = 8 * MiB
    start = time.process_time()
    peak = _peak_while(lambda: inflate_capped(bomb, "br", limit))
    cpu = time.process_time() - start
    # Bound: the cap plus one step's output and the decoder's own buffers; the full inflate would be 256 MiB.
    assert peak < 2 * limit + 4 * MiB, peak
    assert cpu < 2.0, cpu  # 8 MiB of output, not 256 MiB (the full inflate is ~25x this)
    assert isinstance(BodyTooLarge("x"), ValueError) and isinstance(BodyTooLarge("x"), DecodeError)


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("zstd", zstd.compress),
        ("gzip, br", lambda b: brotli.compress(gzip.compress(b))),
    ],
)
def test_bombs_of_every_encoding_raise_with_bounded_memory(encoding: str, pack: Callable[[bytes], bytes]) -> None:
    bomb = pack(b"\0" * (64 * MiB))
    peak = _peak_while(lambda: inflate_capped(bomb, encoding, 4 * MiB))
    assert peak < len(bomb) + 2 * 4 * MiB + 4 * MiB, peak


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        (None, lambda b: b),
        ("", lambda b: b),
        ("identity", lambda b: b),
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", zstd.compress),
        ("br, gzip", lambda b: gzip.compress(brotli.compress(b))),
    ],
)
def test_normal_bodies_round_trip(encoding: str | None, pack: Callable[[bytes], bytes]) -> None:
    for ex in samples.ALL[:6]:
        for body in (ex.request_body, ex.response_body, ex.response_body * 40):
            assert inflate_capped(pack(body), encoding, 4 * MiB) == body


def test_exactly_the_cap_passes_and_one_byte_more_raises() -> None:
    body = b"a" * 10_000
    assert inflate_capped(gzip.compress(body), "gzip", 10_000) == body
    with pytest.raises(BodyTooLarge, match="over 9999 bytes"):
        inflate_capped(gzip.compress(body), "gzip", 9_999)
    with pytest.raises(BodyTooLarge):
        inflate_capped(body, None, 9_999)  # the cap holds for plain bodies too


def test_corrupt_or_unknown_encodings_raise_decode_error_not_too_large() -> None:
    with pytest.raises(DecodeError) as corrupt:
        inflate_capped(b"not gzip at all", "gzip", MiB)
    assert not isinstance(corrupt.value, BodyTooLarge)
    with pytest.raises(DecodeError, match="unsupported"):
        inflate_capped(b"x", "compress", MiB)
