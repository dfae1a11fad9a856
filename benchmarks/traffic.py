"""The benchmark's Copilot traffic: real host names and paths, realistic bodies, one mix for every run.

Requests are built from the samples of `tests/samples.py` (VS Code and JetBrains ghost-text
completions, a speculative prefetch, a next-edit suggestion, a VS Code agent-mode chat turn and its tool-loop
step, a Copilot CLI prompt and its tool round over the Responses API, a token exchange) and a VS Code
telemetry post (gzip NDJSON, `tests/telemetry_samples.py`), with a fresh `x-request-id` per request and a
fresh `x-interaction-id` per chat turn, so the addon counts every completion, next edit and turn once and
skips every prefetch and agent step. The fake backend answers from `EXCHANGES` (same host, path and
body); the VS Code completion answer has 5 events.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

from tests import samples
from tests import telemetry_samples as ts

_CMPL = r'"id":"cmpl-FAKE000000000000000000001","created":1767220000,"model":"gpt-41-copilot"'
_COMPLETION_EVENTS = (
    "{" + _CMPL + r',"choices":[{"text":"return a","index":0,"finish_reason":null,"logprobs":null}]}',
    "{" + _CMPL + r',"choices":[{"text":" +","index":0,"finish_reason":null,"logprobs":null}]}',
    "{" + _CMPL + r',"choices":[{"text":" b","index":0,"finish_reason":"stop","logprobs":null}]}',
    "{" + _CMPL + r',"choices":[],"usage":{"prompt_tokens":27,"completion_tokens":4,"total_tokens":31}}',
    "[DONE]",
)
EVENTS_PER_COMPLETION = len(_COMPLETION_EVENTS)  # 5: the "streamed answer of 5 events"

VSCODE_COMPLETION = dataclasses.replace(
    samples.VSCODE_COMPLETION,
    name="bench_vscode_completion",
    response_body="".join(f"data: {e}\n\n" for e in _COMPLETION_EVENTS).encode(),
)
# The same completion with another body: the fake backend streams its answer with the slow-event delay
# (the TTFB runs); everything else streams without delay.
SLOW_COMPLETION = dataclasses.replace(
    VSCODE_COMPLETION,
    name="bench_slow_completion",
    request_body=VSCODE_COMPLETION.request_body.replace(b'"octo-org/octo-repo"', b'"octo-org/ttfb-repo"'),
)
SLOW_NAME = SLOW_COMPLETION.name
JETBRAINS_COMPLETION = samples.JETBRAINS_COMPLETION
AGENT_TURN = samples.VSCODE_AGENT_TURN
AGENT_STEP = samples.VSCODE_AGENT_STEP


def _telemetry_post() -> samples.Exchange:
    """A VS Code telemetry batch as it follows a few completions: 8 shown, 4 accepted (2 of them partial
    first), 2 rejected, 8 issued, 2 survival checks — 26 events, ~21 kB decoded, ~0.7 kB gzip."""
    rids = [f"be7c7e1e-0000-4000-8000-{i:012x}" for i in range(8)]
    envelopes = [ts.ghost("issued", r) for r in rids] + [ts.ghost("shown", r) for r in rids]
    envelopes += [ts.ghost("accepted", r, chars=12, lines=1, comp_type="partial") for r in rids[:2]]
    envelopes += [ts.ghost("accepted", r, chars=40, lines=2, comp_type="full") for r in rids[:4]]
    envelopes += [ts.ghost("rejected", r) for r in rids[6:]]
    envelopes += [ts.still_in_code(r, 30, True) for r in rids[:2]]
    exchange: samples.Exchange = ts.telemetry_exchange(ts.ndjson(envelopes), ts.vscode_headers(), rid="x")
    return dataclasses.replace(exchange, name="bench_telemetry")


TELEMETRY = _telemetry_post()

NEXT_EDIT = samples.VSCODE_NEXT_EDIT
SPECULATIVE = samples.VSCODE_COMPLETION_SPECULATIVE
TOKEN_EXCHANGE = samples.VSCODE_TOKEN_EXCHANGE
CLI_PROMPT = samples.CLI_RESPONSES_PROMPT
CLI_TOOL_ROUND = samples.CLI_RESPONSES_TOOL_ROUND

EXCHANGES: tuple[samples.Exchange, ...] = (
    VSCODE_COMPLETION,
    SLOW_COMPLETION,
    JETBRAINS_COMPLETION,
    AGENT_TURN,
    AGENT_STEP,
    TELEMETRY,
    NEXT_EDIT,
    SPECULATIVE,
    TOKEN_EXCHANGE,
    CLI_PROMPT,
    CLI_TOOL_ROUND,
)

# Per worker, repeated, 12 requests: what a few developers' editors send in a busy stretch (docs/performance.md,
# "The traffic mix"). Ghost text dominates: 4 completions (3 VS Code, 1 JetBrains) and 1 speculative prefetch
# (a model call, not counted), 1 next-edit suggestion; 1 VS Code agent-mode turn and its tool-loop step; 1 Copilot
# CLI prompt (Responses API) and its tool round; 1 telemetry post (one per 4 completions: VS Code batches its
# events for up to 15 s, so this overstates the telemetry cost); 1 token exchange (real clients exchange every
# ~25 minutes: overstated too, it is cheap). Counted: 4 completions + next edit + 2 turns = 7 of 12.
MIX: tuple[samples.Exchange, ...] = (
    VSCODE_COMPLETION,
    JETBRAINS_COMPLETION,
    AGENT_TURN,
    SPECULATIVE,
    VSCODE_COMPLETION,
    AGENT_STEP,
    NEXT_EDIT,
    CLI_PROMPT,
    VSCODE_COMPLETION,
    CLI_TOOL_ROUND,
    TELEMETRY,
    TOKEN_EXCHANGE,
)
COUNTED = frozenset(
    {
        VSCODE_COMPLETION.name,
        SLOW_COMPLETION.name,
        JETBRAINS_COMPLETION.name,
        AGENT_TURN.name,
        NEXT_EDIT.name,
        CLI_PROMPT.name,
    }
)
NOT_MODEL_CALLS = frozenset({TELEMETRY.name, TOKEN_EXCHANGE.name})

_SKIP = frozenset({"host", "content-length", "transfer-encoding", "connection"})


@dataclass(frozen=True, slots=True)
class Template:
    """A request as bytes with two placeholders: {rid} (x-request-id) and {iid} (x-interaction-id)."""

    name: str
    host: str
    head: str  # request line + headers, with {rid} / {iid} placeholders, ending in the blank line
    body: bytes
    counted: bool
    new_interaction: bool  # a user turn starts a new interaction id; a step reuses the last one
    model_call: bool = True  # telemetry posts and token exchanges are not model calls (copilot_model_calls_total)

    def render(self, rid: str, iid: str) -> bytes:
        return self.head.replace("{rid}", rid).replace("{iid}", iid).encode("latin-1") + self.body


def template(exchange: samples.Exchange) -> Template:
    lines = [f"{exchange.method} {exchange.path} HTTP/1.1", f"host: {exchange.host}"]
    for k, v in exchange.request_headers:
        lk = k.lower()
        if lk in _SKIP:
            continue
        if lk in ("x-request-id", "x-agent-task-id"):
            v = "{rid}"
        elif lk == "x-interaction-id":
            v = "{iid}"
        lines.append(f"{k}: {v}")
    lines.append(f"content-length: {len(exchange.request_body)}")
    head = "\r\n".join(lines) + "\r\n\r\n"
    return Template(
        name=exchange.name,
        host=exchange.host,
        head=head,
        body=exchange.request_body,
        counted=exchange.name in COUNTED,
        new_interaction=exchange.header("x-initiator") == "user",
        model_call=exchange.name not in NOT_MODEL_CALLS,
    )


MIX_TEMPLATES: tuple[Template, ...] = tuple(template(e) for e in MIX)
SLOW_TEMPLATE = template(SLOW_COMPLETION)
HOSTS: tuple[str, ...] = tuple(sorted({t.host for t in (*MIX_TEMPLATES, SLOW_TEMPLATE)}))


class Ids:
    """UUID-shaped ids, unique per run and process: cheaper than uuid4() per request."""

    def __init__(self, run: int) -> None:
        self._prefix = f"{run & 0xFFFFFFFF:08x}-be7c-4000-8000-"
        self._next = itertools.count(1)

    def new(self) -> str:
        return f"{self._prefix}{next(self._next):012x}"
