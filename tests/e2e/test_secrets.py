"""Secrets never reach an output: unique canaries planted in every header and body field likely to carry one.

A real mitmdump + addon runs with `copilot_record=true`, `copilot_log_json=both` (JSON lines to the file
and to mitmdump's stdout) and mitmdump's default verbosity, once with content capture off (the default) and
once on (prompts and answers in the log: token-shaped strings in them must be masked). Traffic: a proxy
login with a wrong password (407), a token exchange, a completion, an agent chat turn and a Responses
WebSocket call, each carrying canaries. Then every file under the data dir, the /metrics page and
mitmdump's stdout+stderr are scanned for every canary (its whole value and its random core, so a partly
masked value is caught too).

Each canary must have passed through the proxy unchanged (the backend or the client got it), and where the
addon keeps the field that carried it, the field must be there, masked: the report printed at the end of
each run (`pytest -s`) names, for each canary, where it would have surfaced.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import string
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import httpx
import pytest

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, responses_ws_frames
from tests.e2e.harness import Mitmdump, free_port, open_websocket, proxy_client, request_headers, send
from tests.e2e.test_e2e import metric_total, parse_metrics, scrape

pytestmark = pytest.mark.e2e

S = samples
REDACTED = "[REDACTED]"
USER = "alice"
_ALNUM = string.ascii_letters + string.digits


def _alnum(n: int) -> str:
    return "".join(secrets.choice(_ALNUM) for _ in range(n))


@dataclass
class Canary:
    """A unique secret: where it was planted, and the substrings whose presence in an output is a leak."""

    name: str
    value: str
    planted_in: str
    needles: tuple[str, ...]
    surfaced: list[str] = field(default_factory=list)  # where the addon kept the field, masked

    @staticmethod
    def make(name: str, value: str, planted_in: str, *cores: str) -> Canary:
        return Canary(name, value, planted_in, tuple(dict.fromkeys([value, *cores])))


def make_canaries() -> dict[str, Canary]:
    """One fresh set per run: each value random, each core long enough never to appear by chance."""
    c: dict[str, Canary] = {}

    def add(name: str, value: str, planted_in: str, *cores: str) -> None:
        c[name] = Canary.make(name, value, planted_in, *cores)

    pw = f"Pw-{_alnum(24)}"
    add("proxy password", pw, "Proxy-Authorization: Basic on CONNECT (and the proxyauth option)")
    c["proxy password"].needles += (base64.b64encode(f"{USER}:{pw}".encode()).decode(),)
    wrong = f"Wrong-{_alnum(24)}"
    add("wrong proxy password", wrong, "Proxy-Authorization: Basic on a refused CONNECT (407)")
    c["wrong proxy password"].needles += (base64.b64encode(f"{USER}:{wrong}".encode()).decode(),)
    core = _alnum(36)
    add("GitHub OAuth token", f"gho_{core}", "Authorization: token on the token exchange", core)
    tid, sig = secrets.token_hex(16), secrets.token_hex(32)
    copilot = (
        f"tid={tid};exp=1767225600;sku=copilot_for_business_seat;proxy-ep=proxy.business.githubcopilot.com;8kp=1:{sig}"
    )
    add(
        "Copilot session token",
        copilot,
        "token-exchange answer `token`; Authorization: Bearer on completion, chat and WebSocket",
        tid,
        sig,
    )
    for name, where in (
        ("cookie", "Cookie request header"),
        ("set-cookie", "Set-Cookie response header (token exchange, completion)"),
        ("x-github-token", "X-GitHub-Token request header"),
        ("copilot-session-token", "Copilot-Session-Token request header"),
        ("copilot-edits-session", "Copilot-Edits-Session request header"),
        ("x-api-key", "X-Api-Key request header"),
        ("api-key", "Api-Key request header"),
    ):
        core = secrets.token_hex(16)
        add(f"{name} header", f"sess={core}" if "cookie" in name else core, where, core)
    core = secrets.token_hex(16)
    basic = base64.b64encode(f"{USER}:{core}".encode()).decode()
    add("inner Proxy-Authorization", f"Basic {basic}", "Proxy-Authorization header inside the tunnel", core, basic)
    for key in ("token", "access_token", "refresh_token", "password", "session_token"):
        core = secrets.token_hex(16)
        add(f"body key {key}", core, f"request body field `{key}` (completion top level, chat nested)", core)
    core = _alnum(36)
    add("gho_ in a prompt", f"gho_{core}", "completion prompt and chat user message text", core)
    core = _alnum(30)
    add("github_pat_ in a prompt", f"github_pat_{core}", "chat user message text", core)
    core = _alnum(36)
    add("ghu_ in a prompt", f"ghu_{core}", "chat user message text", core)
    core = secrets.token_hex(20)
    add("Bearer in a prompt", f"Bearer {core}", "chat user message text (a curl command)", core)
    core = _alnum(36)
    add("ghp_ in an answer", f"ghp_{core}", "completion answer text (streamed)", core)
    core = secrets.token_hex(16)
    add("answer key token", core, "`token` field of a streamed answer event", core)
    core = _alnum(36)
    add("gho_ in a WebSocket frame", f"gho_{core}", "input text of a response.create frame", core)
    core = secrets.token_hex(16)
    add("WebSocket frame key token", core, "`token` field of a response.create frame", core)
    return c


# ---------------------------------------------------------------------------------------------------
# Traffic carrying the canaries


def secret_headers(c: dict[str, Canary]) -> list[tuple[str, str]]:
    return [
        ("cookie", c["cookie header"].value),
        ("x-github-token", c["x-github-token header"].value),
        ("copilot-session-token", c["copilot-session-token header"].value),
        ("copilot-edits-session", c["copilot-edits-session header"].value),
        ("x-api-key", c["x-api-key header"].value),
        ("api-key", c["api-key header"].value),
        ("proxy-authorization", c["inner Proxy-Authorization"].value),
    ]


def with_headers(ex: samples.Exchange, rid: str, headers: list[tuple[str, str]], body: bytes) -> samples.Exchange:
    replaced = {k.lower() for k, _ in headers}
    kept = [(k, v) for k, v in request_headers(ex, rid) if k.lower() not in replaced]
    return replace(ex, request_headers=tuple(kept + headers), request_body=body, expected=dict(ex.expected))


def token_exchange(c: dict[str, Canary]) -> tuple[samples.Exchange, bytes, list[tuple[str, str]]]:
    ex = S.VSCODE_TOKEN_EXCHANGE
    rid = f"secrets-token-{uuid.uuid4()}"
    headers = [("authorization", f"token {c['GitHub OAuth token'].value}"), ("cookie", c["cookie header"].value)]
    answer = json.loads(ex.response_body)
    answer["token"] = c["Copilot session token"].value
    body = json.dumps(answer).encode()
    resp_headers = [("content-type", "application/json; charset=utf-8"), ("set-cookie", c["set-cookie header"].value)]
    return with_headers(ex, rid, headers, b""), body, resp_headers


def completion(c: dict[str, Canary]) -> tuple[samples.Exchange, bytes, list[tuple[str, str]]]:
    ex = S.VSCODE_COMPLETION
    rid = f"secrets-completion-{uuid.uuid4()}"
    headers = [("authorization", f"Bearer {c['Copilot session token'].value}"), *secret_headers(c)]
    body = json.loads(ex.request_body)
    body["prompt"] = f"# Path: src/util.py\n# deploy key: {c['gho_ in a prompt'].value}\ndef add(a, b):\n    "
    body["token"] = c["body key token"].value
    events = [
        {
            "id": "cmpl-1",
            "model": "gpt-41-copilot",
            "token": c["answer key token"].value,
            "choices": [{"text": f"return a  # {c['ghp_ in an answer'].value}", "index": 0, "finish_reason": None}],
        },
        {"id": "cmpl-1", "model": "gpt-41-copilot", "choices": [{"text": " + b", "index": 0, "finish_reason": "stop"}]},
        {"id": "cmpl-1", "choices": [], "usage": {"prompt_tokens": 27, "completion_tokens": 4, "total_tokens": 31}},
    ]
    answer = b"".join(b"data: %s\n\n" % json.dumps(e).encode() for e in events) + b"data: [DONE]\n\n"
    resp_headers = [("content-type", "text/event-stream"), ("set-cookie", c["set-cookie header"].value)]
    return with_headers(ex, rid, headers, json.dumps(body).encode()), answer, resp_headers


def chat(c: dict[str, Canary]) -> samples.Exchange:
    ex = S.VSCODE_AGENT_TURN
    rid = f"secrets-chat-{uuid.uuid4()}"
    headers = [
        ("authorization", f"Bearer {c['Copilot session token'].value}"),
        ("x-interaction-id", str(uuid.uuid4())),
        *secret_headers(c),
    ]
    body = json.loads(ex.request_body)
    body["messages"][-1]["content"] = (
        "Why does this fail?\n"
        f"curl -H 'Authorization: Bearer {c['Bearer in a prompt'].value.split(' ', 1)[1]}' https://api.github.com\n"
        f"GH_TOKEN={c['gho_ in a prompt'].value} GITHUB_PAT={c['github_pat_ in a prompt'].value}\n"
        f"token={c['ghu_ in a prompt'].value}"
    )
    body["metadata"] = {
        "auth": {
            "access_token": c["body key access_token"].value,
            "refresh_token": c["body key refresh_token"].value,
            "session_token": c["body key session_token"].value,
        },
        "password": c["body key password"].value,
        "token": c["body key token"].value,
    }
    return with_headers(ex, rid, headers, json.dumps(body).encode())


# ---------------------------------------------------------------------------------------------------
# One run


@dataclass
class SecretsRun:
    capture: bool
    canaries: dict[str, Canary]
    outputs: dict[str, str]  # where -> text
    recordings: list[dict[str, Any]]
    log_lines: list[dict[str, Any]]
    backend_saw: dict[str, bool]
    returncode: int | None


@pytest.fixture(scope="module", params=[False, True], ids=["capture-off", "capture-on"])
def secrets_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecretsRun]:
    capture = bool(request.param)
    tmp = tmp_path_factory.mktemp("secrets-capture-on" if capture else "secrets-capture-off")
    data = tmp / "data"
    c = make_canaries()
    pw = c["proxy password"].value
    with FakeCopilotBackend() as backend:
        proxy = Mitmdump(
            backend,
            tmp / "mitmdump",
            proxyauth=f"{USER}:{pw}",
            options={
                "copilot_data_dir": data,
                "copilot_metrics_port": free_port(),
                "copilot_flush_interval": "0.2",
                "copilot_record": True,
                "copilot_log_json": "both",
                "copilot_capture_content": capture,
            },
        ).start()
        try:
            with (
                proxy_client(proxy.port, USER, c["wrong proxy password"].value, proxy.ca_cert_path) as client,
                pytest.raises(httpx.ProxyError, match=r"^407 "),
            ):
                send(client, S.VSCODE_COMPLETION, request_id=f"secrets-refused-{uuid.uuid4()}")
            tok, tok_answer, tok_headers = token_exchange(c)
            comp, comp_answer, comp_headers = completion(c)
            backend.script(str(tok.request_id), 200, tok_headers, tok_answer)
            backend.script(str(comp.request_id), 200, comp_headers, S.split_sse_events(comp_answer))
            agent = chat(c)
            backend.script_exchange(agent)
            with proxy_client(proxy.port, USER, pw, proxy.ca_cert_path, http2=True) as client:
                got_tok = send(client, tok)
                got_comp = send(client, comp)
                got_chat = send(client, agent)
            assert got_tok.body == tok_answer and got_comp.body == comp_answer
            assert got_chat.body == agent.response_body
            assert got_tok.headers.get_list("set-cookie") == [c["set-cookie header"].value]

            ws_rid = f"secrets-ws-{uuid.uuid4()}"
            ws_ex = S.VSCODE_RESPONSES
            ws_headers = [
                (k, v)
                for k, v in request_headers(ws_ex, ws_rid)
                if k.lower() not in ("authorization", "x-interaction-id")
            ]
            ws_headers += [
                ("authorization", f"Bearer {c['Copilot session token'].value}"),
                ("x-interaction-id", str(uuid.uuid4())),
                ("cookie", c["cookie header"].value),
            ]
            frame_body = json.loads(ws_ex.request_body)
            frame_body.pop("stream")
            frame_body["input"][-1]["content"][0]["text"] = f"Use {c['gho_ in a WebSocket frame'].value} to push."
            frame_key = c["WebSocket frame key token"].value
            frame = json.dumps({"type": "response.create", **frame_body, "token": frame_key, "initiator": "user"})
            with open_websocket(proxy.port, USER, pw, proxy.ca_cert_path, ws_ex.host, "/responses", ws_headers) as ws:
                ws.send_text(frame)
                got_frames = [ws.receive() for _ in responses_ws_frames()]
            assert [p for _, p in got_frames] == [f.encode() for f in responses_ws_frames()]

            def all_counted() -> bool:
                m = parse_metrics(scrape(proxy.metrics_url))
                return metric_total(m, "copilot_responses_total") == 4 and len(list(data.rglob("usage/**/*.json"))) == 3

            proxy.wait_for(all_counted, 15.0, "four calls counted and three recordings")
            metrics_text = scrape(proxy.metrics_url)
        finally:
            returncode = proxy.stop()

        # What reached the backend: every planted request header and body canary passed unchanged.
        reqs = {r.request_id: r for r in backend.requests()}
        backend_saw = {
            "token exchange": reqs[tok.request_id].header("authorization") == f"token {c['GitHub OAuth token'].value}",
            "completion": reqs[comp.request_id].body == comp.request_body
            and all(reqs[comp.request_id].header(k) == v for k, v in secret_headers(c)),
            "chat": reqs[agent.request_id].body == agent.request_body
            and reqs[agent.request_id].header("authorization") == f"Bearer {c['Copilot session token'].value}",
            "websocket": backend.websockets_for(ws_rid)[0].received == [(True, frame.encode())],
        }
    outputs = {"/metrics": metrics_text, "mitmdump stdout+stderr": proxy.log_text()}
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        outputs[str(path.relative_to(data))] = path.read_text(encoding="utf-8", errors="replace")
    recordings = [json.loads(t) for k, t in outputs.items() if k.startswith("usage/")]
    log_lines = [
        json.loads(line) for k, t in outputs.items() if k.startswith("events/") for line in t.splitlines() if line
    ]
    yield SecretsRun(capture, c, outputs, recordings, log_lines, backend_saw, returncode)


# ---------------------------------------------------------------------------------------------------
# Where each canary would have surfaced (the field is kept, masked)


def _find_key(value: Any, key: str) -> list[Any]:
    if isinstance(value, dict):
        found = [v for k, v in value.items() if k == key]
        return found + [x for v in value.values() for x in _find_key(v, key)]
    if isinstance(value, list):
        return [x for v in value for x in _find_key(v, key)]
    return []


def _masked_in(value: Any) -> bool:
    return REDACTED in json.dumps(value)


def surfaced(run: SecretsRun) -> dict[str, list[str]]:
    """For each canary, the outputs that kept its carrying field, masked."""
    out: dict[str, list[str]] = {name: [] for name in run.canaries}
    recs = run.recordings

    def rec_where(pred: Callable[[dict[str, Any]], bool], label: str) -> list[str]:
        return [f"{label} of the {r['kind']} recording" for r in recs if pred(r)]

    def header(side: str, name: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r[side]["headers"].get(name) == REDACTED

    def key(side: str, name: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: REDACTED in _find_key(r[side]["content"], name)

    token_rec = rec_where(header("request", "authorization"), "request header authorization")
    out["Copilot session token"] += token_rec
    for name in ("cookie", "x-github-token", "copilot-session-token", "copilot-edits-session", "x-api-key", "api-key"):
        out[f"{name} header"] += rec_where(header("request", name), f"request header {name}")
    out["set-cookie header"] += rec_where(header("response", "set-cookie"), "response header set-cookie")
    out["inner Proxy-Authorization"] += rec_where(
        header("request", "proxy-authorization"), "request header proxy-authorization"
    )
    for name in ("token", "access_token", "refresh_token", "password", "session_token"):
        out[f"body key {name}"] += rec_where(key("request", name), f"request body `{name}`")
    out["answer key token"] += rec_where(key("response", "token"), "response event `token`")
    out["WebSocket frame key token"] += [
        w for w in rec_where(key("request", "token"), "request frame `token`") if "chat_ws" in w
    ]

    def prompt_masked(kind: str) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r["kind"] == kind and _masked_in(r["request"]["content"])

    out["gho_ in a prompt"] += rec_where(prompt_masked("completion"), "request prompt")
    out["gho_ in a prompt"] += rec_where(prompt_masked("chat_agent"), "request messages")
    for name in ("github_pat_ in a prompt", "ghu_ in a prompt", "Bearer in a prompt"):
        out[name] += rec_where(prompt_masked("chat_agent"), "request messages")
    out["gho_ in a WebSocket frame"] += rec_where(prompt_masked("chat_ws"), "request frame input")
    out["ghp_ in an answer"] += rec_where(
        lambda r: r["kind"] == "completion" and _masked_in(r["response"]["content"]), "response events"
    )
    if run.capture:
        for line in run.log_lines:
            prompt, answer = line.get("prompt") or "", line.get("completion") or ""
            where = f"JSON log `%s` of the {line['kind']} line (file and stdout)"
            if REDACTED in prompt:
                names = PROMPT_CANARIES.get(line["kind"], [])
                for name in names:
                    out[name].append(where % "prompt")
            if REDACTED in answer and line["kind"] == "completion":
                out["ghp_ in an answer"].append(where % "completion")
    return out


# The canaries planted in the prompt of each kind of call.
PROMPT_CANARIES = {
    "completion": ["gho_ in a prompt"],
    "chat_agent": ["gho_ in a prompt", "github_pat_ in a prompt", "ghu_ in a prompt", "Bearer in a prompt"],
    "chat_ws": ["gho_ in a WebSocket frame"],
}

# Canaries the addon never keeps in any form: mitmproxy consumes the proxy credentials, and token
# exchanges are neither recorded nor logged (their answer is read only to learn hosts).
NOWHERE = {
    "proxy password": "mitmproxy's proxyauth consumes it; the user name alone is kept",
    "wrong proxy password": "refused with 407 before any flow reaches the addon",
    "GitHub OAuth token": "only on the token exchange, which is neither recorded nor logged",
}


def report(run: SecretsRun, where: dict[str, list[str]], leaks: list[tuple[str, str]]) -> str:
    lines = [f"secrets report (capture_content={run.capture}): {len(run.canaries)} canaries planted"]
    for name, canary in run.canaries.items():
        shown = "; ".join(dict.fromkeys(where[name])) or f"nowhere ({NOWHERE.get(name, '?')})"
        lines.append(f"  {name:28} planted in {canary.planted_in}\n      would have surfaced: {shown}")
    lines.append(f"  outputs scanned: {len(run.outputs)} ({', '.join(sorted(run.outputs))})")
    lines.append(f"  leaks: {leaks or 'none'}")
    return "\n".join(lines)


def _json_events(text: str) -> list[str]:
    """The `event` of every JSON log line in mitmdump's output (its own lines are not JSON objects)."""
    events = []
    for line in text.splitlines():
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                events.append(json.loads(line).get("event"))
    return events


def test_no_canary_in_any_output(secrets_run: SecretsRun) -> None:
    run = secrets_run
    assert run.returncode == 0, run.outputs["mitmdump stdout+stderr"][-3000:]
    # Every channel was really written: the event log file and its stdout copy, the summary, recordings.
    assert {k.split("/")[0] for k in run.outputs} >= {"", "mitmdump stdout+stderr", "events", "metrics", "usage"}
    assert len(run.recordings) == 3 and {r["kind"] for r in run.recordings} == {"completion", "chat_agent", "chat_ws"}
    assert _json_events(run.outputs["mitmdump stdout+stderr"]).count("copilot.request") == 3  # the stdout copy
    # The canaries did pass through the proxy, unchanged.
    assert run.backend_saw == dict.fromkeys(run.backend_saw, True)
    leaks = [
        (name, where)
        for where, text in run.outputs.items()
        for name, canary in run.canaries.items()
        if any(needle in text for needle in canary.needles)
    ]
    where = surfaced(run)
    print(report(run, where, leaks))
    assert leaks == []
    # Not vacuous: each canary's carrying field was kept (masked) somewhere, except the known few.
    for name in run.canaries:
        assert bool(where[name]) == (name not in NOWHERE), (name, where[name])


def test_prompts_are_logged_only_with_capture_and_then_masked(secrets_run: SecretsRun) -> None:
    run = secrets_run
    calls = [
        r
        for r in run.log_lines
        if r["event"] != "copilot.secret_detected" and r["kind"] in ("completion", "chat_agent", "chat_ws")
    ]
    assert len(calls) == 3
    for line in calls:
        if not run.capture:
            assert "prompt" not in line and "completion" not in line, line
            continue
        assert REDACTED in line["prompt"], line
    if run.capture:
        prompts = {r["kind"]: r["prompt"] for r in calls}
        assert prompts["completion"].startswith("# Path: src/util.py\n# deploy key: [REDACTED]")
        assert prompts["chat_agent"].count(REDACTED) == 4  # Bearer, gho_, github_pat_, ghu_
        assert prompts["chat_ws"] == "Use [REDACTED] to push."
        [comp] = [r for r in calls if r["kind"] == "completion"]
        assert comp["completion"] == "return a  # [REDACTED] + b"
