"""Incremental SSE and content decoding: every split point, both event separators, compression, caps."""

from __future__ import annotations

import gzip
import zlib

import brotli
import pytest

from exporter.sse import BodyDecoder, DecodeError, SSEDecoder, SSEEvent
from tests import samples


def _decode_all(chunks: list[bytes]) -> list[SSEEvent]:
    d = SSEDecoder()
    out: list[SSEEvent] = []
    for c in chunks:
        out += d.feed(c)
    return out + d.close()


@pytest.mark.parametrize("ex", [e for e in samples.ALL if e.is_event_stream], ids=lambda e: e.name)
def test_every_split_point_gives_the_same_events(ex: samples.Exchange) -> None:
    body = ex.response_body
    whole = _decode_all([body])
    assert whole and all(e.data for e in whole)
    for i in range(len(body) + 1):
        assert _decode_all([body[:i], body[i:]]) == whole, i


def test_single_newline_separators_and_crlf_and_comments() -> None:
    body = b': keep-alive\r\ndata: {"a":1}\r\ndata:{"b":2}\nevent: message_stop\ndata: {"c":3}\n\ndata: [DONE]\n'
    assert _decode_all([body]) == [
        SSEEvent(None, '{"a":1}'),
        SSEEvent(None, '{"b":2}'),
        SSEEvent("message_stop", '{"c":3}'),
        SSEEvent(None, "[DONE]"),
    ]


def test_event_type_resets_at_blank_line() -> None:
    assert _decode_all([b"event: x\ndata: 1\n\ndata: 2\n\n"]) == [SSEEvent("x", "1"), SSEEvent(None, "2")]


def test_truncated_last_line_is_still_read_at_close() -> None:
    assert _decode_all([b'data: {"a":1}\n\ndata: {"b"']) == [SSEEvent(None, '{"a":1}'), SSEEvent(None, '{"b"')]


def test_over_long_line_is_dropped_and_decoding_goes_on() -> None:
    d = SSEDecoder(max_line=16)
    out = d.feed(b"data: " + b"x" * 40)
    out += d.feed(b"y" * 40 + b"\ndata: ok\n\n")
    assert out == [SSEEvent(None, "ok")]
    assert d.dropped_lines == 1


def test_non_utf8_is_replaced_not_raised() -> None:
    assert _decode_all([b"data: \xff\xfe\n\n"]) == [SSEEvent(None, "\ufffd\ufffd")]


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("identity", lambda b: b),
        ("", lambda b: b),
    ],
)
def test_incremental_decompression(encoding: str, pack: object) -> None:
    body = samples.BY_NAME["vscode_completion"].response_body
    packed = pack(body)  # type: ignore[operator]
    d = BodyDecoder(encoding)
    out = b"".join(d.feed(packed[i : i + 7]) for i in range(0, len(packed), 7))
    assert out == body


def test_gzip_bomb_is_capped() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    d = BodyDecoder("gzip", max_bytes=1024 * 1024)
    with pytest.raises(DecodeError, match="over"):
        d.feed(bomb)
    assert d.decoded_bytes == 0  # it stopped at the cap instead of expanding 64 MiB first


def test_corrupt_and_unknown_encodings_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        BodyDecoder("gzip").feed(b"definitely not gzip")
    with pytest.raises(DecodeError, match="unsupported"):
        BodyDecoder("compress")


def test_long_line_split_over_chunks_is_dropped_then_decoding_resumes_mid_chunk() -> None:
    d = SSEDecoder(max_line=10)
    out = d.feed(b'data: {"a":1}\ndata: ' + b"x" * 20)
    out += d.feed(b"y" * 5)
    out += d.feed(b'yyy\ndata: {"b":2}\n\n')
    assert out == [SSEEvent(None, '{"a":1}'), SSEEvent(None, '{"b":2}')]
    assert d.dropped_lines == 1
