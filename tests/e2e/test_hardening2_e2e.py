"""Hardening round 2 against a real mitmdump: the data dir deleted while running, a FIFO as the day's log,
secrets in URL query strings of recorded calls."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend
from tests.e2e.harness import Mitmdump, proxy_client, send_timed
from tests.e2e.test_e2e import read_log, variant
from tests.e2e.test_faults import PASSWORD, assert_transparent, counted, errors, start_proxy

pytestmark = pytest.mark.e2e

S = samples


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeCopilotBackend]:
    with FakeCopilotBackend() as b:
        yield b


def _completions(backend: FakeCopilotBackend, proxy: Mitmdump, user: str, n: int) -> list[str]:
    ids = []
    with proxy_client(proxy.port, user, PASSWORD, proxy.ca_cert_path) as client:
        for _ in range(n):
            ex = variant(S.VSCODE_COMPLETION)
            assert_transparent(backend, ex, send_timed(client, ex))
            ids.append(str(ex.request_id))
    return ids


@contextlib.contextmanager
def _proxy(backend: FakeCopilotBackend, tmp: Path, data_dir: Path, **options: object) -> Iterator[Mitmdump]:
    proxy = start_proxy(backend, tmp, data_dir, **options)
    try:
        yield proxy
    finally:
        proxy.stop()


def _logged_ids(data_dir: Path) -> list[str]:
    try:
        return [str(r["request_id"]) for r in read_log(data_dir)]
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def test_data_dir_deleted_while_running_lines_on_disk_equal_calls_counted(
    backend: FakeCopilotBackend, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    user = "deleted-dir"
    with _proxy(backend, tmp_path / "mitmdump", data_dir) as proxy:
        before = _completions(backend, proxy, user, 3)
        proxy.wait_for(lambda: _logged_ids(data_dir) == before, 10, "the first calls on disk")
        shutil.rmtree(data_dir)  # an operator (or a tmp cleaner) removes the whole data dir
        after = _completions(backend, proxy, user, 5)
        proxy.wait_for(lambda: counted(proxy, user=user) == 8, 10, "all calls counted")
        # Before the fix: 0 lines on disk (all written to the deleted inode) and 0 errors counted.
        proxy.wait_for(lambda: _logged_ids(data_dir) == after, 10, "the later calls on disk, in a new file")
        assert proxy.wait_for_log("was deleted or moved")
        assert len(_logged_ids(data_dir)) == counted(proxy, user=user) - len(before)


def test_a_fifo_as_the_day_log_is_reported_the_summary_goes_on_and_sigint_ends_the_proxy(
    backend: FakeCopilotBackend, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    fifo = data_dir / "events" / f"copilot-events_{day}.jsonl"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)  # nobody ever reads it: opening it for writing blocks for ever, like a hung mount
    user = "fifo-log"
    proxy = start_proxy(backend, tmp_path / "mitmdump", data_dir)
    try:
        _completions(backend, proxy, user, 3)
        summary = data_dir / "metrics" / f"copilot-usage_{day}.json"

        def summary_total() -> int:
            try:
                return int(json.loads(summary.read_text())["total_completions_count"])
            except (FileNotFoundError, ValueError, KeyError):
                return -1

        # The summary is a periodic job: a stuck log write no longer starves it.
        proxy.wait_for(lambda: summary_total() == 3, 10, "the daily summary written while the log is stuck")
        # The watchdog reports the stuck write (after STUCK_SECONDS, 10 s), counted and logged once.
        proxy.wait_for(lambda: errors(proxy, "jsonlog_stuck") == 1, 20, "the stuck write counted")
        assert proxy.log_text().count("write has not returned") == 1
        _completions(backend, proxy, user, 2)  # traffic still passes
        proxy.wait_for(lambda: counted(proxy, user=user) == 5, 10, "later calls counted")
        start = time.monotonic()
        code = proxy.stop(timeout=30)
        took = time.monotonic() - start
        print(f"SIGINT with the day log a FIFO: mitmdump exited in {took:.1f} s (status {code})")
        # Before the fix SIGINT never ended the proxy (stop() joined the stuck writer, then wrote on this thread).
        assert code is not None and took < 10, took  # the writer gives up after 5 s
        assert "gave up on a stuck write (jsonlog)" in proxy.log_text()
    finally:
        proxy.stop(timeout=5)
        with open(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK), "rb"):
            pass


def test_secrets_in_url_query_strings_reach_no_recording_or_log(backend: FakeCopilotBackend, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    secrets = {name: f"{name}-{uuid.uuid4().hex}" for name in ("access", "token", "bearer", "shaped")}
    query = (
        f"?access_token={secrets['access']}&token={secrets['token']}&auth=Bearer%20{secrets['bearer']}"
        f"&q=ghu%5F{secrets['shaped'].replace('-', '')}&n=1"
    )
    with _proxy(backend, tmp_path / "mitmdump", data_dir, copilot_record=True) as proxy:
        ex = variant(S.VSCODE_AGENT_TURN)
        ex = replace(ex, path=ex.path + query)
        backend.script_exchange(ex, str(ex.request_id))
        with proxy_client(proxy.port, "query-user", PASSWORD, proxy.ca_cert_path) as client:
            got = send_timed(client, ex)
        assert got.status == ex.status and got.body == ex.response_body
        [req] = backend.requests_for(str(ex.request_id))
        assert req.path.endswith(query)  # the proxy passed the secrets on unchanged
        recordings = data_dir / "usage"
        proxy.wait_for(lambda: any(p.is_file() for p in recordings.rglob("*.json")), 10, "the recording")
        proxy.wait_for(lambda: _logged_ids(data_dir), 10, "the log line")
        outputs = {p: p.read_text() for p in data_dir.rglob("*") if p.is_file()}
        [recording] = [text for p, text in outputs.items() if p.is_relative_to(recordings)]
        url = json.loads(recording)["request"]["url"]
        assert "access_token=[REDACTED]&token=[REDACTED]&auth=[REDACTED]&q=[REDACTED]&n=1" in url
        for where, text in {**{str(p): t for p, t in outputs.items()}, "mitmdump log": proxy.log_text()}.items():
            for name, value in secrets.items():
                core = value.split("-", 1)[1]
                assert core not in text, (name, where)


@contextlib.contextmanager
def _small_tmpfs(where: Path) -> Iterator[Path]:
    where.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)], capture_output=True, text=True)
    if r.returncode != 0:
        why = f"cannot mount a tmpfs to make a full disk (needs root): {r.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _fill(path: Path) -> None:
    """Take every free block (4 KiB pages): the day log's last page keeps what room it had, so the next lines
    fill it and then fail in the middle of a line."""
    with open(path, "wb", buffering=0) as f:
        for _ in range(1000):
            try:
                f.write(b"\0" * 4096)
            except OSError:
                return
    raise AssertionError("the tmpfs never filled up")


def test_disk_full_in_the_middle_of_a_line_loses_no_later_line(backend: FakeCopilotBackend, tmp_path: Path) -> None:
    user = "full-disk"
    with _small_tmpfs(tmp_path / "mnt") as mnt, _proxy(backend, tmp_path / "mitmdump", mnt / "data") as proxy:
        data_dir = mnt / "data"
        before = _completions(backend, proxy, user, 1)
        proxy.wait_for(lambda: _logged_ids(data_dir) == before, 10, "the first line on disk")
        _fill(mnt / "fill")
        during: list[str] = []
        path = next((data_dir / "events").glob("copilot-events_*.jsonl"))
        for _ in range(8):  # one per write batch, until one of them is cut by ENOSPC (8 x ~1 KiB > one page)
            failed = errors(proxy, "jsonlog")
            [rid] = _completions(backend, proxy, user, 1)
            during.append(rid)
            tried = proxy.wait_for(
                lambda r=rid, f=failed: ("failed" if errors(proxy, "jsonlog") > f else None) or (r in _whole(path)),
                10,
                "the line written or its write failed",
            )
            if tried == "failed":
                break
        else:
            raise AssertionError("the full disk never failed a log write")
        (mnt / "fill").unlink()  # space comes back
        after = _completions(backend, proxy, user, 3)
        proxy.wait_for(lambda: path.read_text().rstrip("\n").endswith("}") and len(_whole(path)) >= 4, 10, "lines")
        proxy.wait_for(lambda: [i for i in _whole(path) if i in after] == after, 10, "the later lines on disk")
        whole, raw = _whole(path), path.read_text().splitlines()
        cut = [line for line in raw if not _parses(line)]
        assert len(cut) <= 1 and len(whole) + len(cut) == len(raw), raw
        # Before the fix the cut line was glued to the first line after the space came back: that line was lost.
        assert whole[: len(before)] == before and whole[-3:] == after
        assert set(whole) <= set(before + during + after)
        print(f"disk full mid-line: {len(during)} calls while full, {len(cut)} line cut, {len(whole)} whole lines")


def _parses(line: str) -> bool:
    try:
        json.loads(line)
    except ValueError:
        return False
    return True


def _whole(path: Path) -> list[str]:
    return [str(json.loads(line)["request_id"]) for line in path.read_text().splitlines() if _parses(line)]
