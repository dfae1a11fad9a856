"""The secret scanner: every type in every body shape, encodings, near misses, hostile bodies, and that scanning
never holds up a flow."""

from __future__ import annotations

import gzip
import json
import os
import queue
import threading
from pathlib import Path
from typing import Any

import brotli
import pytest

from exporter import secrets as s
from exporter.calls import CallTracker, RequestMeta, ResponseMeta
from exporter.classify import HostRole, HostTable
from exporter.labels import LabelBounds
from exporter.scanner import (
    MAX_DEPTH,
    QUEUE_FULL,
    REPEAT_WINDOW_S,
    SCAN_ERROR,
    SECRET_EVENT,
    TRUNCATED,
    UNDECODABLE,
    ScanJob,
    Scanner,
    SecretFinding,
    scan_job,
)
from exporter.settings import SettingsError, settings_from
from exporter.writer import ErrorReporter
from tests import canaries
from tests import samples as S
from tests.conftest import Harness

KEY = b"k" * 32


def job(body: bytes | str, user: str = "alice", kind: str = "chat_agent") -> ScanJob:
    raw = body.encode() if isinstance(body, str) else body
    return ScanJob(1767220000.0, user, "vscode", kind, "gpt-4.1", "req-1", "int-1", raw)


def found(body: bytes | str) -> list[SecretFinding]:
    return scan_job(job(body), KEY)


# -- every type in every body shape ------------------------------------------------------------------


def _shapes(text: str) -> dict[str, tuple[dict[str, Any], str]]:
    """Body shape -> (a request body carrying `text` there, the location the finding must name)."""
    return {
        "completion prompt": ({"prompt": f"# Path: src/app.py\n{text}\n", "suffix": "", "stream": True}, "prompt"),
        "completion suffix": ({"prompt": "def f():\n", "suffix": f"\n{text}\n"}, "suffix"),
        "chat user message": (
            {"messages": [{"role": "system", "content": "hi"}, {"role": "user", "content": text}]},
            "user",
        ),
        "chat tool result": (
            {
                "messages": [
                    {"role": "user", "content": "read .env"},
                    {"role": "tool", "tool_call_id": "call_1", "content": f"A=1\n{text}\nB=2"},
                ]
            },
            "tool_result",
        ),
        "responses input item": (
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}], "model": "gpt-5"},
            "user",
        ),
        "responses function_call_output": (
            {"input": [{"type": "function_call_output", "call_id": "c1", "output": text}]},
            "tool_result",
        ),
        "anthropic text block": ({"messages": [{"role": "user", "content": [{"type": "text", "text": text}]}]}, "user"),
        "anthropic tool_result block": (
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "tool_result", "tool_use_id": "t1", "content": [{"type": "text", "text": text}]}
                        ],
                    }
                ]
            },
            "tool_result",
        ),
        "websocket response.create frame": (
            {"type": "response.create", "input": [{"role": "user", "content": [{"type": "input_text", "text": text}]}]},
            "user",
        ),
    }


SECRET_TYPES = sorted(canaries.fresh())
SHAPES = sorted(_shapes("x"))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("secret_type", SECRET_TYPES)
def test_each_type_in_each_body_shape_is_found_once_with_its_location(secret_type: str, shape: str) -> None:
    line = canaries.fresh()[secret_type]
    body, location = _shapes(line)[shape]
    result = found(json.dumps(body))
    assert [(f.secret_type, f.location) for f in result] == [(secret_type, location)]
    secret = canaries.core(line, secret_type)
    # Nothing of the secret, nor of the text around it, is in what is reported.
    assert secret not in json.dumps(result[0].log_fields())
    assert result[0].fingerprint == s.fingerprint(KEY, secret_type, secret)


def test_every_known_type_has_a_canary() -> None:
    assert set(SECRET_TYPES) == {p.type for p in s.PATTERNS}


@pytest.mark.parametrize("encoding", ["gzip", "br"])
def test_compressed_bodies_are_scanned_decoded(encoding: str) -> None:
    line = canaries.fresh()[s.GITHUB_TOKEN]
    raw = json.dumps({"messages": [{"role": "user", "content": line}]}).encode()
    packed = gzip.compress(raw) if encoding == "gzip" else brotli.compress(raw)
    got: list[SecretFinding] = []
    scanner = Scanner(lambda findings, skipped: got.extend(findings))
    scanner.configure(True, 1_000_000, 8, KEY)
    tracker = CallTracker(HostTable(), LabelBounds(), ErrorReporter(lambda _: None), scanner=scanner)
    meta = RequestMeta("api.business.githubcopilot.com", HostRole.API, "POST", "/chat/completions", {}, "bob", 1)
    tracker.start("f1", meta)
    tracker.request_body("f1", packed, encoding)
    assert scanner.wait_idle()
    scanner.stop()
    assert [(f.user, f.secret_type) for f in got] == [("bob", s.GITHUB_TOKEN)]
    assert tracker.finish("f1", ResponseMeta(status=200)) is not None


def test_an_undecodable_body_is_counted_as_skipped() -> None:
    skips: list[str] = []
    scanner = Scanner(lambda findings, skipped: skips.extend(skipped))
    scanner.configure(True, 1_000_000, 8, KEY)
    tracker = CallTracker(HostTable(), LabelBounds(), ErrorReporter(lambda _: None), scanner=scanner)
    meta = RequestMeta("api.business.githubcopilot.com", HostRole.API, "POST", "/chat/completions", {}, "bob", 1)
    tracker.start("f1", meta)
    tracker.request_body("f1", b"\x1f\x8b not gzip at all", "gzip")
    scanner.stop()
    assert skips == [UNDECODABLE]


# -- split across lines, escapes and several secrets ---------------------------------------------------


def test_secrets_split_across_lines_and_line_endings() -> None:
    pem = canaries.fresh()[s.PRIVATE_KEY]
    crlf = pem.replace("\n", "\r\n")
    env = "\r\n".join(["DEBUG=1", canaries.fresh()[s.STRIPE_KEY], "PORT=8080"])
    result = found(json.dumps({"messages": [{"role": "user", "content": f"{crlf}\n\n{env}"}]}))
    assert [f.secret_type for f in result] == [s.PRIVATE_KEY, s.STRIPE_KEY]
    # The same key wrapped at a different width is the same secret (fingerprints ignore whitespace).
    rewrapped = pem.replace("\n", "\n  ")
    assert found(json.dumps({"prompt": rewrapped}))[0].fingerprint == result[0].fingerprint


def test_a_body_that_is_not_json_is_scanned_as_text() -> None:
    line = canaries.fresh()[s.NPM_TOKEN]
    result = found(f"not json {{ {line} \n trailing")
    assert [(f.secret_type, f.location) for f in result] == [(s.NPM_TOKEN, "body")]


def test_a_secret_repeated_in_one_body_is_reported_once() -> None:
    line = canaries.fresh()[s.SLACK_TOKEN]
    body = {"messages": [{"role": "user", "content": line}, {"role": "assistant", "content": f"I see {line}"}]}
    assert len(found(json.dumps(body))) == 1


# -- near misses: must not match -------------------------------------------------------------------------

NEAR_MISSES = [
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
    "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "request id 123e4567-e89b-12d3-a456-426614174000",
    'token = "123e4567-e89b-12d3-a456-426614174000"',
    "sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    'secret_hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"',
    "commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    'api_key_md5 = "d41d8cd98f00b204e9800998ecf8427e"',
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4gRG9lIiwiaWF0IjoxNTE2MjM5MDIyfQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c",
    "stripe.api_key = 'sk_test_4eC39HqLyjWDarjtT1zdp7dc'",
    'password = "password"',
    "DATABASE_URL=postgres://user:password@localhost/db",
    "DATABASE_URL=postgres://app:${DB_PASSWORD}@db/app",
    "url = 'https://user:<password>@host/'",
    'api_key = "<your-api-key-here>"',
    'API_TOKEN = "YOUR_API_TOKEN_GOES_HERE"',
    "token = get_token_from_environment()",
    "secret_key = settings.SECRET_KEY_FROM_VAULT",
    "ghp_short",
    "github_pat_tooShort_123",
    "AKIA1234",
    "eyJub3QiOiJhIGp3dCJ9.eyJhbHNvIjoibm90In0.c2lnbmF0dXJlLW5vdC1hLWp3dA",  # header without "alg"
    "image data:image/png;base64,"
    + "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==",
    "x = 'AIza' + 'Sy' # built at run time",
    "password: ********",
    "key = 0x1F2E3D4C5B6A79881F2E3D4C5B6A7988",
]


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_do_not_match(text: str) -> None:
    assert s.find_secrets(text) == []
    assert found(json.dumps({"messages": [{"role": "user", "content": text}]})) == []


# -- hostile bodies ----------------------------------------------------------------------------------------


def test_a_huge_body_is_cut_to_the_byte_cap_and_counted() -> None:
    early, late = canaries.fresh()[s.GITHUB_TOKEN], canaries.fresh()[s.NPM_TOKEN]
    filler = "x = 1\n" * 400_000  # 2.4 MB
    body = json.dumps({"prompt": f"{early}\n{filler}{late}"}).encode()
    got: list[SecretFinding] = []
    skips: list[str] = []
    scanner = Scanner(lambda f, sk: (got.extend(f), skips.extend(sk)))
    scanner.configure(True, 1_000_000, 8, KEY)
    scanner.submit(job(body))
    assert scanner.wait_idle()
    scanner.stop()
    assert skips == [TRUNCATED]
    assert [f.secret_type for f in got] == [s.GITHUB_TOKEN]  # the part past the cap was not read


def test_a_deeply_nested_body_is_walked_without_recursion() -> None:
    line = canaries.fresh()[s.GCP_API_KEY]
    shallow: Any = {"role": "user", "content": line}
    for _ in range(MAX_DEPTH - 4):
        shallow = [shallow]
    assert [f.secret_type for f in found(json.dumps({"messages": shallow}))] == [s.GCP_API_KEY]
    # Deeper than the JSON parser goes: scanned as text, nothing raises.
    hostile = "[" * 200_000 + json.dumps(line) + "]" * 200_000
    assert [f.secret_type for f in found(hostile)] == [s.GCP_API_KEY]


@pytest.mark.parametrize("odd_type", [[], {}, ["tool_result"], 7, None, True])
def test_a_non_string_type_does_not_end_the_scan(odd_type: Any) -> None:
    # An unhashable "type" made the location lookup raise: the body went unscanned (counted as an error).
    line = canaries.fresh()[s.GITHUB_TOKEN]
    body = {"messages": [{"type": odd_type, "role": "user", "content": line}]}
    assert [(f.secret_type, f.location) for f in found(json.dumps(body))] == [(s.GITHUB_TOKEN, "user")]


def test_invalid_utf8_around_a_secret() -> None:
    line = canaries.fresh()[s.AWS_ACCESS_KEY]
    body = b'{"prompt": "\xff\xfe\xc3(' + line.encode() + b' \xed\xa0\x80"}'
    assert [f.secret_type for f in found(body)] == [s.AWS_ACCESS_KEY]


def test_a_failing_detector_is_counted_and_the_worker_goes_on() -> None:
    skips: list[str] = []
    got: list[SecretFinding] = []
    calls = []

    def flaky(j: ScanJob, key: bytes) -> list[SecretFinding]:
        calls.append(j)
        if len(calls) == 1:
            raise ValueError("boom")
        return scan_job(j, key)

    scanner = Scanner(lambda f, sk: (got.extend(f), skips.extend(sk)), scan=flaky)
    scanner.configure(True, 1_000_000, 8, KEY)
    scanner.submit(job("nothing"))
    scanner.submit(job(canaries.fresh()[s.PYPI_TOKEN]))
    assert scanner.wait_idle()
    scanner.stop()
    assert skips == [SCAN_ERROR] and [f.secret_type for f in got] == [s.PYPI_TOKEN]


# -- queue, repeats, fingerprints ----------------------------------------------------------------------------


def test_a_full_queue_skips_and_counts_instead_of_waiting() -> None:
    gate = threading.Event()
    started = threading.Event()
    skips: list[str] = []

    def blocked(j: ScanJob, key: bytes) -> list[SecretFinding]:
        started.set()
        assert gate.wait(10)
        return []

    scanner = Scanner(lambda f, sk: skips.extend(sk), scan=blocked)
    scanner.configure(True, 1_000_000, 2, KEY)
    scanner.submit(job("first"))  # taken by the worker, which then blocks
    assert started.wait(10)
    scanner.submit(job("second"))
    scanner.submit(job("third"))  # the queue (2) is now full
    scanner.submit(job("fourth"))
    scanner.submit(job("fifth"))
    assert skips == [QUEUE_FULL, QUEUE_FULL]
    gate.set()
    assert scanner.wait_idle()
    scanner.stop()


def test_submitting_does_not_wake_the_worker_until_the_queue_is_half_full() -> None:
    # A worker woken per body takes the GIL from the event loop every time; it wakes on its tick instead,
    # or at once when half of the queue is waiting. An hour's tick: only the half-full wake can start it.
    scanned = threading.Event()
    seen: list[bytes] = []

    def scan(j: ScanJob, key: bytes) -> list[SecretFinding]:
        seen.append(j.body)
        if len(seen) == 4:
            scanned.set()
        return []

    scanner = Scanner(lambda f, sk: None, scan=scan, batch_seconds=3600.0)
    scanner.configure(True, 1_000_000, 8, KEY)
    for i in range(3):
        scanner.submit(job(f"body {i}"))
        assert not scanner._wake.is_set()
    scanner.submit(job("body 3"))  # 4 of 8 waiting
    assert scanned.wait(10)
    assert seen == [b"body 0", b"body 1", b"body 2", b"body 3"]
    scanner.stop()


def test_a_repeat_is_reported_once_per_user_per_window() -> None:
    now = [1767220000.0]
    got: list[SecretFinding] = []
    scanner = Scanner(lambda f, sk: got.extend(f), clock=lambda: now[0])
    scanner.configure(True, 1_000_000, 8, KEY)
    line = canaries.fresh()[s.JWT]
    for user in ("alice", "alice", "bob"):  # the agent loop resends the history; bob leaks it too
        scanner.submit(job(line, user=user))
    assert scanner.wait_idle()
    now[0] += REPEAT_WINDOW_S + 1
    scanner.submit(job(line, user="alice"))
    assert scanner.wait_idle()
    scanner.stop()
    assert [f.user for f in got] == ["alice", "bob", "alice"]
    assert len({f.fingerprint for f in got}) == 1


def test_fingerprints_are_keyed() -> None:
    a = s.fingerprint(b"a" * 32, s.GITHUB_TOKEN, "ghp_x")
    assert a == s.fingerprint(b"a" * 32, s.GITHUB_TOKEN, "ghp_x")
    assert a != s.fingerprint(b"b" * 32, s.GITHUB_TOKEN, "ghp_x")
    assert a.startswith("s-") and "ghp" not in a


def test_the_install_key_is_generated_once_private_and_reused(tmp_path: Path) -> None:
    key = s.install_key("", tmp_path)
    path = tmp_path / s.KEY_FILE
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert s.install_key("", tmp_path) == key and len(key) == 32
    # With a pseudonym key: derived from it (stable across installs sharing it), no file written.
    other = tmp_path / "other"
    assert s.install_key("pk", other) == s.install_key("pk", tmp_path / "third") != key
    assert not other.exists()


# -- path hints ---------------------------------------------------------------------------------------------------


def test_path_hints_from_the_prompt_context() -> None:
    gh = canaries.fresh()[s.GITHUB_TOKEN]
    completion = found(json.dumps({"prompt": f"# Path: deploy/settings.py\nimport os\n{gh}\n"}))
    assert completion[0].path_hint == "deploy/settings.py"
    attachment = f'<attachment id="a" filePath="/w/app/.env">\n{gh}\n</attachment>'
    assert found(json.dumps({"messages": [{"role": "user", "content": attachment}]}))[0].path_hint == "/w/app/.env"
    # A tool result carries the path its read_file call named in the message before.
    body = {
        "messages": [
            {"role": "user", "content": "check the env"},
            {
                "role": "assistant",
                "tool_calls": [
                    {"id": "c", "function": {"name": "read_file", "arguments": '{"filePath":"/w/.env.prod"}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c", "content": gh},
        ]
    }
    result = found(json.dumps(body))
    assert [(f.location, f.path_hint) for f in result] == [("tool_result", "/w/.env.prod")]
    assert found(json.dumps({"messages": [{"role": "user", "content": gh}]}))[0].path_hint is None


# -- options -------------------------------------------------------------------------------------------------------


def _get(**over: Any) -> Any:
    from exporter.options import BY_NAME

    values = {name: o.default for name, o in BY_NAME.items()}
    values.update(over)
    return values.__getitem__


def test_scanning_is_on_by_default_and_its_options_are_checked() -> None:
    scan = settings_from(_get()).secret_scan
    assert (scan.enabled, scan.max_bytes, scan.queue_size) == (True, 1_000_000, 64)
    assert settings_from(_get(copilot_secret_scan=False)).secret_scan.enabled is False
    with pytest.raises(SettingsError, match=r"copilot_secret_scan_max_bytes=10: expected 1024\.\.67108864"):
        settings_from(_get(copilot_secret_scan_max_bytes=10))
    with pytest.raises(SettingsError, match="copilot_secret_scan_queue=0"):
        settings_from(_get(copilot_secret_scan_queue=0))


# -- through the addon ------------------------------------------------------------------------------------------------


def _chat_with(text: str, request_id: str) -> S.Exchange:
    from dataclasses import replace

    body = json.loads(S.VSCODE_AGENT_TURN.request_body)
    body["messages"].append({"role": "user", "content": text})
    headers = tuple(
        (k, request_id if k.lower() == "x-request-id" else v) for k, v in S.VSCODE_AGENT_TURN.request_headers
    )
    return replace(S.VSCODE_AGENT_TURN, request_body=json.dumps(body).encode(), request_headers=headers)


def test_findings_reach_the_counter_and_the_log_and_never_the_secret(harness: Harness) -> None:
    line = canaries.fresh()[s.AZURE_STORAGE_KEY]
    secret = canaries.core(line, s.AZURE_STORAGE_KEY)
    harness.flow(_chat_with(f"# File: infra/storage.tf\n{line}", "rid-1"), user="carol")
    assert harness.addon.outputs.scanner.wait_idle()
    labels = {"user": "carol", "kind": "chat_agent", "type": s.AZURE_STORAGE_KEY}
    assert harness.sample("copilot_secrets_detected_total", **labels) == 1
    harness.flush()
    lines = [json.loads(x) for x in (harness.data_dir / "events").glob("*.jsonl").__next__().read_text().splitlines()]
    secret_lines = [x for x in lines if x["event"] == SECRET_EVENT]
    assert len(secret_lines) == 1
    rec = secret_lines[0]
    assert (rec["user"], rec["secret_type"], rec["location"], rec["path_hint"]) == (
        "carol",
        s.AZURE_STORAGE_KEY,
        "user",
        "infra/storage.tf",
    )
    assert rec["fingerprint"].startswith("s-") and rec["editor"] == "vscode" and rec["model"] == "gpt-4.1"
    for path in harness.data_dir.rglob("*"):
        if path.is_file():
            assert secret not in path.read_text(errors="replace")


def test_scanning_off_reads_nothing(harness: Harness) -> None:
    harness.tctx.configure(harness.addon, copilot_secret_scan=False)
    harness.flow(_chat_with(canaries.fresh()[s.GITHUB_TOKEN], "rid-2"))
    assert harness.addon.outputs.scanner.wait_idle()
    assert harness.sample("copilot_secrets_detected_total", user="alice", kind="chat_agent", type=s.GITHUB_TOKEN) == 0


def test_a_1mb_prompt_being_scanned_does_not_hold_up_other_flows(harness: Harness) -> None:
    """Ordering, not timing: the scan of a 1 MB prompt is held on a gate while five more flows run through the
    hooks; every one of them ends (its event is emitted) before the scan is allowed to finish."""
    scanner = harness.addon.outputs.scanner
    gate, scanning = threading.Event(), threading.Event()

    def gated(j: ScanJob, key: bytes) -> list[SecretFinding]:
        if len(j.body) > 1_000_000:
            scanning.set()
            assert gate.wait(30)
        return scan_job(j, key)

    scanner._scan = gated
    harness.tctx.configure(harness.addon, copilot_secret_scan_max_bytes=2_000_000)
    big = canaries.fresh()[s.GITHUB_TOKEN] + "\n" + "print('hello world')\n" * 50_000
    assert len(big) > 1_000_000
    harness.flow(_chat_with(big, "rid-big"))
    assert scanning.wait(10)
    for i in range(5):
        harness.flow(_chat_with(f"small prompt {i}", f"rid-{i}"))
    assert len(harness.events) == 6 and not gate.is_set()
    assert harness.sample("copilot_secrets_detected_total", user="alice", kind="chat_agent", type=s.GITHUB_TOKEN) == 0
    assert scanner.wait_idle(timeout=0.05) is False  # the held scan is still queued work
    gate.set()
    assert scanner.wait_idle()
    assert harness.sample("copilot_secrets_detected_total", user="alice", kind="chat_agent", type=s.GITHUB_TOKEN) == 1


def test_an_idle_worker_waits_longer_and_longer_up_to_a_second_and_a_job_sets_it_back() -> None:
    # An idle proxy's scanner used to wake ten times a second; now its waits double while nothing comes.
    scanned: list[bytes] = []
    scanner = Scanner(lambda f, sk: None, scan=lambda j, k: scanned.append(j.body) or [], batch_seconds=0.1)
    jobs: queue.Queue[ScanJob | None] = queue.Queue()
    timeouts: list[float | None] = []
    steps = {6: lambda: jobs.put(job("a body")), 9: lambda: jobs.put(None)}

    class Wake:
        def wait(self, timeout: float | None = None) -> bool:
            timeouts.append(timeout)
            step = steps.get(len(timeouts))
            if step is not None:
                step()
            return False

        def clear(self) -> None:
            return None

    scanner._wake = Wake()  # type: ignore[assignment]
    scanner._run(jobs)  # returns at the None the ninth wait queued
    assert scanned == [b"a body"]
    assert timeouts == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 0.1, 0.2, 0.4]


def test_the_first_body_after_a_quiet_spell_wakes_the_worker() -> None:
    scanner = Scanner(lambda f, sk: None, batch_seconds=3600.0)
    scanner.enabled = True  # no worker thread: only what submit() does to the wake-up event is looked at
    scanner.submit(job("body 0"))
    assert not scanner._wake.is_set()  # in its batch pace: no hand-off for a body
    scanner._idle = True  # what the worker sets while in a wait longer than a batch
    scanner.submit(job("body 1"))
    assert scanner._wake.is_set() and not scanner._idle
    assert scanner._queue.qsize() == 2
