"""The rewritten hot-path functions say exactly what main's 8605799 said (tests/reference.py), on tables and
generated input: telemetry posts, secret detection and whole-body scans."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter import scanner, secrets, telemetry
from exporter.bodies import parse_request, read_request
from exporter.scanner import ScanJob
from exporter.tools import RequestTools, request_tools
from tests import canaries, reference
from tests import samples as S
from tests import telemetry_samples as ts
from tests.test_secrets_scan import NEAR_MISSES, SHAPES, _shapes

RID = "0c3a5a3e-1111-4a1b-9f00-000000000001"
KEY = b"r" * 32

# -- telemetry posts ---------------------------------------------------------------------------------------

TABLE_ENVELOPES: list[Any] = [
    ts.ghost("shown", RID, chars=56, lines=2),
    ts.ghost("shown", RID, "agent/", choice=2, language="lua", editor=ts.NEOVIM_EDITOR, plugin=ts.NEOVIM_PLUGIN),
    ts.ghost("accepted", RID, chars=12, lines=1, comp_type="partial"),
    ts.ghost("accepted", RID, chars=40, lines=2, comp_type="full"),
    ts.ghost("rejected", RID),
    ts.ghost("issued", RID),
    ts.still_in_code(RID, 30, True),
    ts.still_in_code(RID, 15, False),
    ts.still_in_code(RID, 600, False, "agent/"),
    ts.next_edit("nes-1", True, "accepted"),
    ts.next_edit("nes-2", False, "rejected"),
    ts.chat_edit("saved"),
    ts.chat_edit("bogus"),
    ts.inline_done(True),
    ts.inline_done(False),
    ts.captured(RID),
    ts.envelope("copilot/ghostText.shown", {"headerRequestId": RID}, ikey=" 7D7048DF-6DD0-4048-BB23-B716C1461F8F "),
    ts.envelope("copilot/ghostText.shown", {"headerRequestId": RID}, ikey="not-a-known-key"),
    {"data": "not a dict"},
    {"data": {"baseData": "not a dict"}},
    {"iKey": 7, "data": {"baseData": {"name": "copilot/ghostText.shown", "properties": [], "measurements": 3}}},
    {"data": {"baseData": {"name": "x" * 300}}},
    "not an envelope",
    7,
]


def _same(body: bytes) -> None:
    assert telemetry.parse_post(body) == reference.parse_post(body)


@pytest.mark.parametrize("i", range(len(TABLE_ENVELOPES)))
def test_each_table_envelope_reads_as_before(i: int) -> None:
    _same(ts.array([TABLE_ENVELOPES[i]]))


def test_the_whole_table_as_one_post_reads_as_before() -> None:
    envs = TABLE_ENVELOPES
    _same(ts.array(envs))
    _same(ts.ndjson([e for e in envs if isinstance(e, dict)], gz=False))
    _same(b'{"broken": \n' + ts.ndjson([e for e in envs if isinstance(e, dict)], gz=False))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=3),
    max_leaves=12,
)
_PROPS = [
    "headerRequestId",
    "choiceIndex",
    "languageId",
    "activeDocumentLanguageId",
    "editor_version",
    "editor_plugin_version",
    "compType",
    "timeout",
    "stillInCodeHeuristic",
    "accepted",
    "isShown",
    "acceptance",
    "opportunityId",
    "outcome",
]
_NAMES = st.sampled_from(
    [
        "copilot/ghostText.shown",
        "copilot/ghostText.accepted",
        "agent/ghostText.rejected",
        "copilot/ghostText.stillInCode",
        "copilot-chat/copilot-nes/provideInlineEdit",
        "copilot-chat/inline.done",
        "GitHub.copilot-chat/panel.edit.feedback",
        "copilot/ghostText.issued",
        "something/else",
    ]
)
_ENVELOPE = st.builds(
    lambda n, p, m, k: ts.envelope(n, p, m, ikey=k),
    _NAMES,
    st.dictionaries(
        st.sampled_from(_PROPS), _JSON | st.sampled_from(["0", "30", "true", "partial", "x\n"]), max_size=8
    ),
    st.dictionaries(
        st.sampled_from(["compCharLen", "numLines", "timeout", "choiceIndex", "accepted", "isShown"]), _JSON
    ),
    st.sampled_from([telemetry.STANDARD_IKEY, telemetry.ENHANCED_IKEY, telemetry.ENHANCED_IKEY.upper(), "other"]),
)


@given(st.lists(_ENVELOPE | _JSON, max_size=6))
@settings(max_examples=400, deadline=None)
def test_generated_posts_read_as_before(envs: list[Any]) -> None:
    _same(json.dumps(envs).encode())


# -- secret detection ----------------------------------------------------------------------------------------

_FRAGMENTS = [
    *(n for p in secrets.PATTERNS for n in p.needles),
    "TOKEN",
    "Secret",
    "API_KEY",
    " = ",
    "=",
    ": '",
    '"',
    "\n",
    ";",
    "@",
    "://",
    "a1B2c3D4e5F6g7H8i9J0kLmNoPqRsTuV",
    "0123456789abcdef0123456789abcdef",
    "K",  # KELVIN SIGN: lower-cases to an ASCII k
    "İ",
    "é",
]


@pytest.mark.parametrize("secret_type", sorted(canaries.fresh()))
def test_canaries_are_found_as_before(secret_type: str) -> None:
    line = canaries.fresh()[secret_type]
    for text in (line, f"prefix {line} suffix", f"{line}\n{line}", line.upper(), line.lower()):
        assert secrets.find_secrets(text) == reference.find_secrets(text)


@pytest.mark.parametrize("text", NEAR_MISSES)
def test_near_misses_are_found_as_before(text: str) -> None:
    assert secrets.find_secrets(text) == reference.find_secrets(text)


@given(st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=30))
@settings(max_examples=500, deadline=None)
def test_generated_texts_are_found_as_before(parts: list[str]) -> None:
    text = "".join(parts)
    assert secrets.find_secrets(text) == reference.find_secrets(text)


def _job(body: bytes) -> ScanJob:
    return ScanJob(1767220000.0, "alice", "vscode", "chat_agent", "gpt-4.1", "req-1", "int-1", body)


@pytest.mark.parametrize("shape", SHAPES)
def test_whole_bodies_are_scanned_as_before(shape: str) -> None:
    lines = canaries.fresh()
    for text in ("no secret here, only code: max_tokens = 3", *lines.values(), "\n".join(lines.values())):
        body, _ = _shapes(text)[shape]
        raw = json.dumps(body).encode()
        assert scanner.scan_job(_job(raw), KEY) == reference.scan_job(_job(raw), KEY)


def test_path_hints_carried_across_parts_as_before() -> None:
    gh = canaries.fresh()[secrets.GITHUB_TOKEN]
    body = {
        "messages": [
            {"role": "user", "content": "# Path: a/first.py\nnothing"},
            {"role": "assistant", "tool_calls": [{"function": {"arguments": '{"filePath":"/w/.env"}'}}]},
            {"role": "tool", "content": gh},
            {"role": "user", "content": f"```python b/second.py\n{gh}x\n```"},
        ]
    }
    raw = json.dumps(body).encode()
    assert scanner.scan_job(_job(raw), KEY) == reference.scan_job(_job(raw), KEY) != []
    assert scanner.scan_job(_job(b"not json " + raw), KEY) == reference.scan_job(_job(b"not json " + raw), KEY)


@pytest.mark.parametrize("shape", SHAPES)
def test_a_body_parsed_once_scans_as_the_bytes_do(shape: str) -> None:
    text = "\n".join(canaries.fresh().values())
    raw = json.dumps(_shapes(text)[shape][0]).encode()
    facts, parsed = read_request(raw, None)
    assert parsed == json.loads(raw) and facts == parse_request(raw, None)
    with_doc = ScanJob(1767220000.0, "alice", "vscode", "chat_agent", "gpt-4.1", "req-1", "int-1", raw, parsed)
    assert scanner.scan_job(with_doc, KEY) == reference.scan_job(_job(raw), KEY) != []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"null",
        b"[1, 2]",
        b"not json mcp",
        b'{"tools": "mcp"}',
        json.dumps(S.VSCODE_AGENT_TURN.request_body.decode()),
    ],
)
def test_bodies_that_do_not_parse_to_an_object_give_the_same_facts_and_tools(body: bytes | str) -> None:
    raw = body.encode() if isinstance(body, str) else body
    facts, parsed = read_request(raw, None)
    assert facts == parse_request(raw, None)
    assert request_tools(raw, parsed) == request_tools(raw)


def test_a_parsed_tool_list_gives_the_same_servers() -> None:
    body = json.dumps({"tools": [{"type": "mcp", "server_label": "Notion"}], "mcp_servers": [{"name": "linear"}]})
    raw = body.encode()
    _, parsed = read_request(raw, None)
    assert request_tools(raw, parsed) == request_tools(raw) == RequestTools(("notion", "linear"))


_KEYS = ["role", "content", "type", "prompt", "suffix", "messages", "tool_calls", "arguments", "input", "text", "x"]
_TEXTS = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=8), max_size=6).map("".join)
_BODIES = st.recursive(
    _TEXTS | st.integers() | st.none(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4),
    max_leaves=20,
)


def _string_types(doc: Any) -> Any:
    """`doc` with every non-string "type" kept under another key, in its place: the fixed scan reads it as
    no type at all, and its strings as any other key's."""
    if isinstance(doc, list):
        return [_string_types(d) for d in doc]
    if isinstance(doc, dict):
        return {("type_" if k == "type" and not isinstance(v, str) else k): _string_types(v) for k, v in doc.items()}
    return doc


@given(_BODIES)
@settings(max_examples=400, deadline=None)
def test_generated_bodies_are_scanned_as_before(doc: object) -> None:
    # The one-pass needle pre-check over all of a body's strings must never skip a body the per-text scan
    # finds something in; parsed or not, the findings are the reference's.
    raw = json.dumps(doc).encode()
    try:
        expected = reference.scan_job(_job(raw), KEY)
    except TypeError:  # main's scan raised on a non-string "type" (e.g. {"type": []}); fixed since
        expected = reference.scan_job(_job(json.dumps(_string_types(doc)).encode()), KEY)
    assert scanner.scan_job(_job(raw), KEY) == expected
    parsed = dataclasses.replace(_job(raw), parsed=json.loads(raw))
    assert scanner.scan_job(parsed, KEY) == expected
    assert sorted(scanner.strings(json.loads(raw))) == sorted(t for _, t in scanner.texts(json.loads(raw)))
