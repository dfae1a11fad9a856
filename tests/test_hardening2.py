"""Hardening round 2 on the real components: SSE line cost, capped inflating, the writer, the JSON log, recordings."""

from __future__ import annotations

import contextlib
import errno
import gzip
import io
import json
import os
import shutil
import threading
import time
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import brotli
import pytest

from exporter.sinks.jsonlog import JsonLogSink, log_path
from exporter.sinks.recorder import MAX_RECORDED_EVENTS, RecorderSink, Recording, redact_url
from exporter.sse import BodyTooLarge, DecodeError, SSEDecoder, SSEEvent, inflate_capped, inflate_prefix, zstd
from exporter.writer import BackgroundWriter, ErrorReporter
from tests import samples
from tests.e2e.harness import wait_for
from tests.factories import Driven, event

MiB = 1024 * 1024


def _driven(sink: Any) -> Driven:
    """The sink as the addon drives it: behind a real dispatcher (`handle(event, recording)`)."""
    return Driven(sink)


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


def test_a_405_byte_brotli_body_inflating_to_256_mib_stops_at_the_cap_quickly() -> None:
    bomb = _brotli_bomb(256 * MiB)
    assert len(bomb) < 1024
    limit = 8 * MiB
    start = time.process_time()
    peak = _peak_while(lambda: inflate_capped(bomb, "br", limit))
    cpu = time.process_time() - start
    # Bound: the cap plus one 256 KiB piece (measured: 8.4 MiB); inflating all of it holds 256 MiB.
    assert peak < limit + 2 * MiB, peak
    assert cpu < 2.0, cpu  # 8 MiB of output, not 256 MiB (measured: 0.03 s against 1.3-1.9 s for all of it)
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
    assert peak < len(bomb) + 4 * MiB + 2 * MiB, peak  # the input, the cap and a piece or two


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


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity ", "none", "identity, gzip"])
def test_a_plain_body_is_returned_as_it_is_within_the_cap_and_refused_past_it(encoding: str | None) -> None:
    body = b'{"prompt": "x"}' * 700  # 10.5 kB
    packed = gzip.compress(body) if encoding and "gzip" in encoding else body
    assert inflate_capped(packed, encoding, len(body)) == body
    if encoding != "identity, gzip":  # no decoding step: the body itself, not a copy
        assert inflate_capped(packed, encoding, len(body)) is body
    with pytest.raises(BodyTooLarge, match=f"over {len(body) - 1} bytes"):
        inflate_capped(packed, encoding, len(body) - 1)


def test_corrupt_or_unknown_encodings_raise_decode_error_not_too_large() -> None:
    with pytest.raises(DecodeError) as corrupt:
        inflate_capped(b"not gzip at all", "gzip", MiB)
    assert not isinstance(corrupt.value, BodyTooLarge)
    with pytest.raises(DecodeError, match="unsupported"):
        inflate_capped(b"x", "compress", MiB)


# -- #14: a blocked write (a FIFO nobody reads) is reported, starves nothing, and stop gives up ------------


class _Counted:
    def __init__(self) -> None:
        self.components: list[str] = []

    def __call__(self, component: str) -> None:
        self.components.append(component)


def _fifo_day_log(data_dir: Path) -> Path:
    fifo = log_path(data_dir, "2026-11-24")  # the factories' day
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)
    return fifo


def _release(fifo: Path) -> None:
    """Give the stuck open() its reader, so the abandoned thread ends instead of outliving the test."""
    with contextlib.suppress(OSError):
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        time.sleep(0.05)
        os.close(fd)


def test_a_fifo_day_log_is_reported_stuck_the_summary_goes_on_and_stop_gives_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fifo = _fifo_day_log(tmp_path)
    counted = _Counted()
    writer = BackgroundWriter(ErrorReporter(counted), interval=0.05, stuck_seconds=0.3)
    sink = _driven(JsonLogSink(tmp_path, "file", writer))
    rounds: list[float] = []
    writer.every_interval("daily", lambda: rounds.append(time.monotonic()))
    writer.start()
    try:
        for i in range(50):
            sink.handle(event(request_id=f"r{i}"))
        wait_for(lambda: "jsonlog_stuck" in counted.components, 5, "the stuck write reported")
        before = len(rounds)
        wait_for(lambda: len(rounds) >= before + 5, 5, "periodic rounds going on while the log is stuck")
        looked = len(rounds)  # each periodic round follows a watchdog look: let it look 5 more times
        wait_for(lambda: len(rounds) >= looked + 5, 5, "the watchdog to look again")
        assert counted.components.count("jsonlog_stuck") == 1
        stuck_logs = [r for r in caplog.records if "has not returned" in r.getMessage()]
        assert len(stuck_logs) == 1 and "jsonlog" in stuck_logs[0].getMessage()
        start = time.monotonic()
        assert writer.stop(timeout=1.0) is False  # gave up: the caller must not close the log either
        assert time.monotonic() - start < 2.0
        assert any("gave up on a stuck write (jsonlog)" in r.getMessage() for r in caplog.records)
    finally:
        _release(fifo)


def test_the_json_log_backlog_is_capped_in_bytes_and_drops_are_counted(tmp_path: Path) -> None:
    counted = _Counted()
    writer = BackgroundWriter(ErrorReporter(counted))  # not started: everything stays queued, as when stuck
    sink = _driven(JsonLogSink(tmp_path, "file", writer, max_pending_bytes=20_000))
    for i in range(500):
        sink.handle(event(request_id=f"r{i}"))
    line_bytes = sink.pending_bytes / len(sink._lines)
    assert sink.pending_bytes <= 20_000 + line_bytes  # before: no byte cap at all (+85 KiB per call)
    dropped = counted.components.count("jsonlog_queue")
    kept = len(sink._lines)
    assert dropped > 0 and kept + dropped == 500
    writer.flush()
    assert len(log_path(tmp_path, "2026-11-24").read_text().splitlines()) == kept  # lines on disk == kept
    sink.handle(event(request_id="after"))  # the backlog is gone: lines are kept again
    assert counted.components.count("jsonlog_queue") == dropped


def test_a_blocked_periodic_job_is_reported_and_does_not_stop_log_writes(tmp_path: Path) -> None:
    counted = _Counted()
    writer = BackgroundWriter(ErrorReporter(counted), interval=0.05, stuck_seconds=0.3)
    sink = _driven(JsonLogSink(tmp_path, "file", writer))
    release = threading.Event()
    writer.every_interval("daily", lambda: release.wait(10) and None)
    writer.start()
    try:
        wait_for(lambda: "daily_stuck" in counted.components, 5, "the stuck summary reported")
        sink.handle(event())
        path = log_path(tmp_path, "2026-11-24")
        wait_for(lambda: path.exists() and path.read_text().count("\n") == 1, 5, "the log line written")
    finally:
        release.set()
        assert writer.stop(timeout=5) is True


# -- #6: the data dir deleted, or the day's file moved, while running -------------------------------------


def _lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_log_is_reopened_when_the_data_dir_is_deleted_or_the_file_moved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    sink = _driven(JsonLogSink(tmp_path, "file", writer))
    path = log_path(tmp_path, "2026-11-24")
    sink.handle(event(request_id="before"))
    writer.flush()
    shutil.rmtree(tmp_path / "events")
    for i in range(3):
        sink.handle(event(request_id=f"after-rm-{i}"))
    writer.flush()
    # Before the fix these went to the deleted inode: 0 lines on disk, nothing counted.
    assert [line["request_id"] for line in _lines(path)] == ["after-rm-0", "after-rm-1", "after-rm-2"]
    path.rename(path.with_suffix(".moved"))
    sink.handle(event(request_id="after-mv"))
    writer.flush()
    assert [line["request_id"] for line in _lines(path)] == ["after-mv"]
    assert sum("was deleted or moved" in r.getMessage() for r in caplog.records) == 2
    sink.close()


class _DeletingFile:
    """A day file whose 2nd write removes the data dir first: the dir is deleted in the middle of a batch."""

    def __init__(self, path: Path, data_dir: Path) -> None:
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._dir = data_dir
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes == 2:
            shutil.rmtree(self._dir / "events")
        return self._f.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def test_a_batch_written_while_the_dir_was_deleted_is_written_again(tmp_path: Path) -> None:
    opened: list[_DeletingFile] = []

    def opener(path: Path) -> IO[str]:
        f = _DeletingFile(path, tmp_path) if not opened else open(path, "a", encoding="utf-8")  # noqa: SIM115
        opened.append(f)  # type: ignore[arg-type]
        return f  # type: ignore[return-value]

    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    sink = _driven(JsonLogSink(tmp_path, "file", writer, opener=opener))
    for i in range(4):
        sink.handle(event(request_id=f"r{i}"))
    writer.flush()
    assert [line["request_id"] for line in _lines(log_path(tmp_path, "2026-11-24"))] == ["r0", "r1", "r2", "r3"]
    sink.close()


# -- #9: a write that fails in the middle of a line (disk full) -------------------------------------------


class _FullDisk:
    """A day file whose flush writes half of what is buffered and then fails with ENOSPC, once."""

    def __init__(self, path: Path, fail: list[bool]) -> None:
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed by close())
        self._buffer: list[str] = []
        self._fail = fail

    def write(self, text: str) -> int:
        self._buffer.append(text)
        return len(text)

    def flush(self) -> None:
        data, self._buffer = "".join(self._buffer), []
        if self._fail and self._fail.pop():
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")
        self._f.write(data)
        self._f.flush()

    def close(self) -> None:
        self._f.close()

    def fileno(self) -> int:
        return self._f.fileno()


def test_after_a_write_cut_mid_line_the_next_line_starts_on_a_new_line(tmp_path: Path) -> None:
    fail = [False, True, False]  # popped from the end: batch 1 ok, batch 2 cut, batch 3 ok
    counted = _Counted()
    writer = BackgroundWriter(ErrorReporter(counted))
    sink = _driven(JsonLogSink(tmp_path, "file", writer, opener=lambda p: _FullDisk(p, fail)))  # type: ignore[arg-type,return-value]
    sink.handle(event(request_id="good-1"))
    writer.flush()
    sink.handle(event(request_id="cut"))
    writer.flush()
    assert counted.components == ["jsonlog"]
    sink.handle(event(request_id="good-2"))
    sink.handle(event(request_id="good-3"))
    writer.flush()
    text = log_path(tmp_path, "2026-11-24").read_text()
    raw = text.splitlines()
    assert len(raw) == 4 and raw[1].startswith('{"') and not raw[1].endswith("}")  # the cut line, ended
    whole = [json.loads(line)["request_id"] for line in raw if line.endswith("}")]
    # Before the fix the cut line was glued to good-2, and the rebuild lost good-2 with it.
    assert whole == ["good-1", "good-2", "good-3"]


# -- U+2028/U+2029 and URLs with secrets in the JSON log ----------------------------------------------------


def test_line_separators_are_escaped_and_query_secrets_masked_in_log_lines(tmp_path: Path) -> None:
    out = io.StringIO()
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    sink = _driven(JsonLogSink(tmp_path, "both", writer, stdout=out))
    secret = "s3cr3tValue42"
    sink.handle(
        event(
            language="py\u2028thon\u2029",
            error=f"upstream said: GET https://x.test/y?access_token={secret}&auth=Bearer%20{secret}&ok=1",
        )
    )
    writer.flush()
    for text in (out.getvalue(), log_path(tmp_path, "2026-11-24").read_text()):
        assert "\u2028" not in text and "\u2029" not in text and "\\u2028" in text
        assert secret not in text
        (line,) = text.splitlines()
        parsed = json.loads(line)
        assert parsed["language"] == "py\u2028thon\u2029"
        assert parsed["error"].endswith("?access_token=[REDACTED]&auth=[REDACTED]&ok=1")


# -- #11 recordings: query secrets, atomic files, capped events ---------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://h/p?access_token=abc&x=1", "https://h/p?access_token=[REDACTED]&x=1"),
        ("https://h/p?token=abc&auth=Bearer%20abcdefghij", "https://h/p?token=[REDACTED]&auth=[REDACTED]"),
        ("https://h/p?X-Amz-Signature=f00&Api-Key=k", "https://h/p?X-Amz-Signature=[REDACTED]&Api-Key=[REDACTED]"),
        ("https://h/p?q=gho%5F" + "a" * 30, "https://h/p?q=[REDACTED]"),  # token-shaped once URL-decoded
        ("https://h/p?q=Bearer+abcdefghijk", "https://h/p?q=[REDACTED]"),
        ("https://h/p?client_secret=&n=2", "https://h/p?client_secret=&n=2"),
        ("https://u:pw@h/p", "https://[REDACTED]@h/p"),
        (
            "https://h/v1/engines/gpt-4/completions?n=1&lang=py%20x",
            "https://h/v1/engines/gpt-4/completions?n=1&lang=py%20x",
        ),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def _recording(url: str, events: list[object]) -> Recording:
    return Recording(
        url=url,
        method="POST",
        request_headers=[("content-type", "application/json")],
        request_content={"prompt": "x"},
        response_headers=[],
        response_content=events,
    )


def test_recordings_mask_query_secrets_are_atomic_and_cap_events(tmp_path: Path) -> None:
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    recorder = _driven(RecorderSink(tmp_path, writer, record_telemetry=False))
    secret = "q7Zp0-secret-value"
    url = f"https://api.test/chat/completions?access_token={secret}&token={secret}&auth=Bearer%20{secret}"
    events: list[object] = [{"i": i} for i in range(MAX_RECORDED_EVENTS + 250)]
    recorder.handle(event(kind="chat"), _recording(url, events))
    writer.flush()
    (path,) = [p for p in (tmp_path / "usage").rglob("*") if p.is_file()]
    text = path.read_text()
    assert secret not in text and not path.name.startswith(".")
    doc = json.loads(text)
    content = doc["response"]["content"]
    assert len(content) == MAX_RECORDED_EVENTS + 1
    assert content[-1] == {"truncated": True, "events_left_out": 250}


def test_a_failed_recording_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    counted = _Counted()
    writer = BackgroundWriter(ErrorReporter(counted))
    recorder = _driven(RecorderSink(tmp_path, writer, record_telemetry=False))

    def full(src: object, dst: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    recorder.handle(event(kind="chat"), _recording("https://api.test/chat/completions", [{"a": 1}]))
    writer.flush()
    assert counted.components == ["recorder"]
    assert [p for p in (tmp_path / "usage").rglob("*") if p.is_file()] == []  # neither the file nor a temp


def test_inflate_prefix_cuts_a_bomb_after_the_limit_for_recordings() -> None:
    bomb = _brotli_bomb(256 * MiB)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        head, cut = inflate_prefix(bomb, "br", MiB)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (head, cut) == (b"\0" * MiB, True)
    assert peak < 4 * MiB, peak
    body = samples.BY_NAME["vscode_completion"].request_body
    assert inflate_prefix(gzip.compress(body), "gzip", len(body)) == (body, False)
    assert inflate_prefix(gzip.compress(body), "gzip", 10) == (body[:10], True)
    assert inflate_prefix(body, None, 10) == (body[:10], True)
    with pytest.raises(DecodeError):
        inflate_prefix(b"not brotli", "br", 10)


class _FullDiskKeepingTheRest(_FullDisk):
    """Like a BufferedWriter: what a failed flush could not write stays buffered and is written next time."""

    def flush(self) -> None:
        data = "".join(self._buffer)
        if self._fail and self._fail.pop():
            self._f.write(data[: len(data) // 2])
            self._f.flush()
            self._buffer = [data[len(data) // 2 :]]
            raise OSError(errno.ENOSPC, "No space left on device")
        self._buffer = []
        self._f.write(data)
        self._f.flush()


def test_a_cut_line_whose_rest_was_kept_is_completed_not_ended(tmp_path: Path) -> None:
    fail = [False, True, True, False]  # batch 1 ok, batch 2 cut, batch 3 still full, then space again
    writer = BackgroundWriter(ErrorReporter(lambda c: None))
    opener = lambda p: _FullDiskKeepingTheRest(p, fail)  # noqa: E731
    sink = _driven(JsonLogSink(tmp_path, "file", writer, opener=opener))  # type: ignore[arg-type]
    for rid in ("good-1", "cut-then-completed", "lost-while-full", "good-2"):
        sink.handle(event(request_id=rid))
        writer.flush()
    raw = log_path(tmp_path, "2026-11-24").read_text().splitlines()
    ids = [json.loads(line)["request_id"] for line in raw]
    # The kept rest of the cut line was written first, so the line is whole; a line ended early would lose it.
    assert ids[:2] == ["good-1", "cut-then-completed"] and ids[-1] == "good-2"
