"""End-to-end tests of the core issue: real mitmdump + the addon in front of the fake Copilot backend.

Clients for two proxy users (htpasswd, bcrypt) and three editors send the sample exchanges through the
proxy; the tests then compare /metrics, the JSON event log and the daily summary with the counts the
samples promise and with each other, check that every byte reached the client unchanged, that streams
are not buffered, that a restart continues the day, that no secret leaks, and that the README's
quick start (the console script) works.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import bcrypt
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import samples
from tests.e2e.fakebackend import FakeCopilotBackend, Gate
from tests.e2e.harness import (
    CONSOLE_SCRIPT,
    Mitmdump,
    TimedResult,
    free_port,
    open_stream,
    proxy_client,
    send,
    send_timed,
)

pytestmark = pytest.mark.e2e

PASSWORDS = {"alice": "alice-Pw-7f3kQ9xLm2", "bob": "bob-Pw-2m8xZ4vRt6"}
WRONG_PASSWORD = "wrong-Pw-Hq5nY8cJw1"
USERS = tuple(PASSWORDS)

CHAT_KINDS = frozenset({"chat", "chat_agent", "chat_panel", "chat_edits", "chat_inline"})
MODEL_CALL_KINDS = CHAT_KINDS | {"completion", "next_edit", "instant_apply"}

# The client each sample belongs to: VS Code (HTTP/2, as Electron speaks it), the language server of
# JetBrains and of Neovim (HTTP/1.1, as §8.6 observed).
VSCODE, JETBRAINS, NEOVIM = "vscode", "jetbrains", "neovim"
HTTP2_CLIENTS = frozenset({VSCODE})

S = samples


# ---------------------------------------------------------------------------------------------------
# Traffic plans


@dataclass(frozen=True, slots=True)
class Call:
    """One request of the plan: who sends it, from which editor client, and the (re-id'd) exchange."""

    user: str
    client: str
    exchange: samples.Exchange

    @property
    def rid(self) -> str:
        rid = self.exchange.request_id
        assert rid is not None
        return rid

    @property
    def expected(self) -> dict[str, Any]:
        return self.exchange.expected


def variant(ex: samples.Exchange, interaction_id: str | None = None) -> samples.Exchange:
    """The sample with a fresh x-request-id (and x-agent-task-id), and optionally another interaction id,
    so that nothing is deduplicated by accident; `expected` follows."""
    rid = f"{ex.name}-{uuid.uuid4()}"
    headers: list[tuple[str, str]] = []
    for k, v in ex.request_headers:
        lk = k.lower()
        if lk in ("x-request-id", "x-agent-task-id"):
            v = rid
        elif lk == "x-interaction-id" and interaction_id is not None:
            v = interaction_id
        headers.append((k, v))
    expected = dict(ex.expected, request_id=rid)
    if interaction_id is not None and ex.expected["interaction_id"] is not None:
        expected["interaction_id"] = interaction_id
    return replace(ex, request_headers=tuple(headers), expected=expected)


def user_plan(user: str, vscode: int, jetbrains: int, neovim: int, turns: int) -> list[Call]:
    """A user's day: VS Code completions (normal, speculative, empty), agent turns with a tool round and
    the follow-up suggestions, a next edit, a token exchange; JetBrains and Neovim completions; telemetry."""
    calls = [Call(user, VSCODE, variant(S.VSCODE_TOKEN_EXCHANGE))]
    calls += [Call(user, VSCODE, variant(S.VSCODE_COMPLETION)) for _ in range(vscode)]
    calls += [Call(user, VSCODE, variant(S.VSCODE_COMPLETION_SPECULATIVE))]
    calls += [Call(user, VSCODE, variant(S.VSCODE_COMPLETION_EMPTY))]
    iid = ""
    for _ in range(turns):
        iid = str(uuid.uuid4())
        for ex in (S.VSCODE_AGENT_TURN, S.VSCODE_AGENT_STEP, S.VSCODE_AGENT_SUGGESTIONS):
            calls.append(Call(user, VSCODE, variant(ex, iid)))
    if turns:
        calls.append(Call(user, VSCODE, variant(S.VSCODE_NEXT_EDIT, iid)))
    calls += [Call(user, JETBRAINS, variant(S.JETBRAINS_COMPLETION)) for _ in range(jetbrains)]
    calls += [Call(user, NEOVIM, variant(S.NEOVIM_COMPLETION)) for _ in range(neovim)]
    calls.append(Call(user, NEOVIM, variant(S.TELEMETRY)))
    return calls


def expected_initiator(call: Call) -> str:
    """X-Initiator where sent; completions carry none: a prefetch is the client's own, else the user's."""
    exp = call.expected
    if exp["initiator"] is not None:
        return str(exp["initiator"])
    return "agent" if exp.get("speculative") else "user"


def language(exp: dict[str, Any]) -> str:
    return exp["language"] or "unknown"


def summary_key(editor_version: str) -> str:
    return editor_version.replace("/", "-")


# Expected counts, derived from the samples' `expected` facts.


def expected_requests(calls: Iterable[Call]) -> Counter[tuple[str, str, str, str]]:
    out: Counter[tuple[str, str, str, str]] = Counter()
    for c in calls:
        if c.expected["counted"]:
            out[(c.user, c.expected["editor"], language(c.expected), c.expected["kind"])] += 1
    return out


def expected_skipped(calls: Iterable[Call]) -> Counter[tuple[str, str]]:
    return Counter((c.expected["kind"], c.expected["skip_reason"]) for c in calls if not c.expected["counted"])


def expected_model_calls(calls: Iterable[Call]) -> Counter[tuple[str, str, str, str]]:
    out: Counter[tuple[str, str, str, str]] = Counter()
    for c in calls:
        if c.expected["kind"] in MODEL_CALL_KINDS:
            out[(c.user, c.expected["kind"], c.expected["model"], expected_initiator(c))] += 1
    return out


def expected_tokens(calls: Iterable[Call]) -> Counter[tuple[str, str, str, str]]:
    out: Counter[tuple[str, str, str, str]] = Counter()
    for c in calls:
        exp = c.expected
        for typ in ("input", "output"):
            n = exp[f"{typ}_tokens"]
            if exp["kind"] in MODEL_CALL_KINDS and n:
                out[(c.user, exp["kind"], exp["model"], typ)] += n
    return out


def expected_summary(calls: Iterable[Call]) -> Counter[tuple[str, str, str | None, str]]:
    """(user, editor key, language or None, "completion"|"chat") -> count, as the daily summary holds it."""
    out: Counter[tuple[str, str, str | None, str]] = Counter()
    for c in calls:
        exp = c.expected
        if not exp["counted"]:
            continue
        if exp["kind"] == "completion":
            out[(c.user, summary_key(exp["editor_version"]), language(exp), "completion")] += 1
        elif exp["kind"] in CHAT_KINDS:
            out[(c.user, summary_key(exp["editor_version"]), None, "chat")] += 1
    return out


# ---------------------------------------------------------------------------------------------------
# Reading the three outputs


Samples = list[tuple[str, dict[str, str], float]]


def scrape(url: str) -> str:
    r = httpx.get(url, timeout=5.0, trust_env=False)
    r.raise_for_status()
    return r.text


def parse_metrics(text: str) -> Samples:
    return [(s.name, dict(s.labels), s.value) for fam in text_string_to_metric_families(text) for s in fam.samples]


def metric(parsed: Samples, name: str, keys: tuple[str, ...]) -> Counter[tuple[str, ...]]:
    """name's non-zero samples as label-tuple -> value (floats that are whole become ints)."""
    out: Counter[tuple[str, ...]] = Counter()
    for n, labels, value in parsed:
        if n == name and value:
            out[tuple(labels[k] for k in keys)] += int(value) if value == int(value) else value  # type: ignore[assignment]
    return out


def metric_total(parsed: Samples, name: str, **match: str) -> float:
    return sum(v for n, labels, v in parsed if n == name and all(labels.get(k) == m for k, m in match.items()))


def read_log(data_dir: Path) -> list[dict[str, Any]]:
    lines: list[str] = []
    for path in sorted((data_dir / "events").glob("copilot-events_*.jsonl")):
        lines += path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def read_summaries(data_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted((data_dir / "metrics").glob("copilot-usage_*.json"))
    ]


def check_summary_schema(doc: dict[str, Any]) -> None:
    """The original tool's schema, with its internal sums consistent."""
    assert list(doc) == ["day", "total_chat_turns", "total_completions_count", "usage"]
    datetime.strptime(doc["day"], "%Y-%m-%d")
    chat_total = completions_total = 0
    for user, entry in doc["usage"].items():
        assert set(entry) == {"chat_turns", "completions_count", "chat", "completions"}, user
        assert entry["chat_turns"] == sum(entry["chat"].values()), user
        assert entry["completions_count"] == sum(n for langs in entry["completions"].values() for n in langs.values())
        chat_total += entry["chat_turns"]
        completions_total += entry["completions_count"]
    assert doc["total_chat_turns"] == chat_total
    assert doc["total_completions_count"] == completions_total


def summary_counts(docs: Iterable[dict[str, Any]]) -> Counter[tuple[str, str, str | None, str]]:
    out: Counter[tuple[str, str, str | None, str]] = Counter()
    for doc in docs:
        for user, entry in doc["usage"].items():
            for key, n in entry["chat"].items():
                out[(user, key, None, "chat")] += n
            for key, langs in entry["completions"].items():
                for lang, n in langs.items():
                    out[(user, key, lang, "completion")] += n
    return +out


def log_request_counts(records: Iterable[dict[str, Any]]) -> Counter[tuple[str, str, str, str]]:
    return Counter(
        (r["user"], r["editor"], r["language"], r["kind"]) for r in records if r["event"] == "copilot.request"
    )


def log_summary_counts(records: Iterable[dict[str, Any]]) -> Counter[tuple[str, str, str | None, str]]:
    out: Counter[tuple[str, str, str | None, str]] = Counter()
    for r in records:
        if r["event"] != "copilot.request":
            continue
        if r["kind"] == "completion":
            out[(r["user"], r["summary_key"], r["language"], "completion")] += 1
        elif r["kind"] in CHAT_KINDS:
            out[(r["user"], r["summary_key"], None, "chat")] += 1
    return out


# ---------------------------------------------------------------------------------------------------
# Running traffic


def write_htpasswd(path: Path, passwords: dict[str, str]) -> Path:
    """An Apache htpasswd file with bcrypt hashes (mitmproxy's htpasswd reader takes $2b$/$2y$ and {SHA})."""
    lines = [
        f"{user}:{bcrypt.hashpw(pw.encode(), bcrypt.gensalt(rounds=4)).decode()}" for user, pw in passwords.items()
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_proxy(
    backend: FakeCopilotBackend,
    tmp_dir: Path,
    data_dir: Path,
    htpasswd: Path,
    config: dict[str, object] | None = None,
    **options: object,
) -> Mitmdump:
    """mitmdump + addon with proxyauth=@htpasswd; `config` goes to mitmproxy's <confdir>/config.yaml."""
    if config:
        confdir = tmp_dir / "conf"  # Mitmdump's confdir
        confdir.mkdir(parents=True, exist_ok=True)
        (confdir / "config.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in config.items()))
    opts: dict[str, object] = {
        "copilot_data_dir": data_dir,
        "copilot_metrics_port": free_port(),
        # VS Code clients negotiate HTTP/2 with the proxy (see harness.proxy_client).
        "connection_strategy": "lazy",
    }
    opts.update(options)
    return Mitmdump(backend, tmp_dir, proxyauth=f"@{htpasswd}", options=opts).start()


def run_user(proxy: Mitmdump, calls: list[Call]) -> dict[str, TimedResult]:
    """One user's calls in order, each editor on its own client (and so its own connections)."""
    results: dict[str, TimedResult] = {}
    clients: dict[str, httpx.Client] = {}
    try:
        for call in calls:
            client = clients.get(call.client)
            if client is None:
                client = clients[call.client] = proxy_client(
                    proxy.port, call.user, PASSWORDS[call.user], proxy.ca_cert_path, http2=call.client in HTTP2_CLIENTS
                )
            results[call.rid] = send_timed(client, call.exchange)
    finally:
        for client in clients.values():
            client.close()
    return results


def run_traffic(backend: FakeCopilotBackend, proxy: Mitmdump, calls: list[Call]) -> dict[str, TimedResult]:
    """Scripts every call's answer by its request id, then runs the users concurrently (each in order)."""
    for call in calls:
        backend.script_exchange(call.exchange)
    per_user = {user: [c for c in calls if c.user == user] for user in dict.fromkeys(c.user for c in calls)}
    results: dict[str, TimedResult] = {}
    with ThreadPoolExecutor(len(per_user)) as pool:
        for part in pool.map(lambda cs: run_user(proxy, cs), per_user.values()):
            results.update(part)
    return results


def wait_until_counted(proxy: Mitmdump, n_calls: int) -> Samples:
    """/metrics once the addon has finished every call (its response hook may run after the client's last read)."""

    def done() -> Samples | None:
        parsed = parse_metrics(scrape(proxy.metrics_url))
        return parsed if metric_total(parsed, "copilot_responses_total") >= n_calls else None

    parsed: Samples = proxy.wait_for(done, 15.0, f"{n_calls} calls in copilot_responses_total")
    return parsed


# ---------------------------------------------------------------------------------------------------
# 1 + 4. Full traffic through one proxy: metrics, JSON log, daily summary, bytes, secrets


@dataclass
class FullRun:
    calls: list[Call]
    results: dict[str, TimedResult]
    backend: FakeCopilotBackend
    metrics_text: str
    metrics: Samples
    log: list[dict[str, Any]]
    summaries: list[dict[str, Any]]
    data_dir: Path
    mitmdump_log: str
    returncode: int | None


FULL_PLAN = (
    ("alice", {"vscode": 2, "jetbrains": 1, "neovim": 2, "turns": 1}),
    ("bob", {"vscode": 1, "jetbrains": 2, "neovim": 1, "turns": 2}),
)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FullRun]:
    tmp = tmp_path_factory.mktemp("full")
    data_dir = tmp / "data"
    htpasswd = write_htpasswd(tmp / "htpasswd", PASSWORDS)
    calls = [c for user, counts in FULL_PLAN for c in user_plan(user, **counts)]
    with FakeCopilotBackend() as backend:
        proxy = start_proxy(backend, tmp / "mitmdump", data_dir, htpasswd, copilot_record=True)
        try:
            # A wrong password is answered 407 and counted; it never reaches the backend.
            bad = variant(S.VSCODE_TOKEN_EXCHANGE)
            with (
                proxy_client(proxy.port, "alice", WRONG_PASSWORD, proxy.ca_cert_path) as client,
                pytest.raises(httpx.ProxyError, match=r"^407 "),
            ):
                send(client, bad)
            assert backend.requests_for(str(bad.request_id)) == []

            results = run_traffic(backend, proxy, calls)
            wait_until_counted(proxy, len(calls))
            metrics_text = scrape(proxy.metrics_url)  # read before stopping: the endpoint goes with the process
            metrics = parse_metrics(metrics_text)
        finally:
            returncode = proxy.stop()
        yield FullRun(
            calls=calls,
            results=results,
            backend=backend,
            metrics_text=metrics_text,
            metrics=metrics,
            log=read_log(data_dir),
            summaries=read_summaries(data_dir),
            data_dir=data_dir,
            mitmdump_log=proxy.log_text(),
            returncode=returncode,
        )


def test_full_traffic_plan_covers_the_issue(full_run: FullRun) -> None:
    """The plan itself: both users, three editors, every kind of call the issue names."""
    calls = full_run.calls
    assert {c.user for c in calls} == set(USERS)
    assert {c.expected["editor"] for c in calls if c.expected["kind"] == "completion"} == {
        "vscode",
        "jetbrains-iu",
        "neovim",
    }
    assert {c.exchange.name for c in calls} == {
        "vscode_completion",
        "vscode_completion_speculative",
        "vscode_completion_empty",
        "vscode_agent_turn",
        "vscode_agent_step",
        "vscode_agent_suggestions",
        "vscode_next_edit",
        "vscode_token_exchange",
        "jetbrains_completion",
        "neovim_completion",
        "telemetry",
    }
    assert len({c.rid for c in calls}) == len(calls)
    # The proxy ran and stopped cleanly: no addon error, no sink failure logged.
    assert full_run.returncode == 0, full_run.mitmdump_log[-3000:]
    for bad in ("Addon error", "Traceback", " failed: "):  # " failed: ": the addon's ErrorReporter lines
        assert bad not in full_run.mitmdump_log, full_run.mitmdump_log[-3000:]


def test_full_traffic_metrics(full_run: FullRun) -> None:
    m, calls = full_run.metrics, full_run.calls
    requests = metric(m, "copilot_requests_total", ("user", "editor", "language", "kind"))
    # Spelled out once (the samples' `expected` facts give the same table, checked below).
    assert requests == {
        ("alice", "vscode", "python", "completion"): 2,
        ("alice", "jetbrains-iu", "java", "completion"): 1,
        ("alice", "neovim", "lua", "completion"): 2,
        ("alice", "vscode", "unknown", "chat_agent"): 1,
        ("alice", "vscode", "unknown", "next_edit"): 1,
        ("bob", "vscode", "python", "completion"): 1,
        ("bob", "jetbrains-iu", "java", "completion"): 2,
        ("bob", "neovim", "lua", "completion"): 1,
        ("bob", "vscode", "unknown", "chat_agent"): 2,
        ("bob", "vscode", "unknown", "next_edit"): 1,
    }
    assert requests == expected_requests(calls)
    assert (
        metric(m, "copilot_skipped_requests_total", ("kind", "reason"))
        == expected_skipped(calls)
        == {
            ("completion", "speculative"): 2,
            ("completion", "empty_completion"): 2,
            ("chat_agent", "agent_step"): 3,
            ("chat_panel", "turn_followup"): 3,
            ("token_exchange", "not_interaction"): 2,
            ("telemetry", "not_interaction"): 2,
        }
    )
    assert metric(m, "copilot_model_calls_total", ("user", "kind", "model", "initiator")) == expected_model_calls(calls)
    assert metric(m, "copilot_tokens_total", ("user", "kind", "model", "type")) == expected_tokens(calls)
    per_kind = Counter(c.expected["kind"] for c in calls)
    assert metric(m, "copilot_responses_total", ("kind", "code")) == {(k, "200"): n for k, n in per_kind.items()}
    assert metric(m, "copilot_request_duration_seconds_count", ("kind",)) == {(k,): n for k, n in per_kind.items()}
    assert metric_total(m, "copilot_proxy_auth_failures_total") == 1
    assert metric_total(m, "copilot_exporter_errors_total") == 0
    inventory = set(metric(m, "copilot_client_info", ("user", "editor", "editor_version", "plugin", "plugin_version")))
    for user in USERS:
        assert {
            (user, "vscode", "1.111.0", "copilot-chat", "0.42.0"),
            (user, "jetbrains-iu", "243.22562.218", "copilot-intellij", "1.5.60-243"),
            (user, "neovim", "0.11.2", "copilot.vim", "1.50.0"),
        } <= inventory
    assert metric_total(m, "copilot_exporter_build_info") == 1


def test_full_traffic_json_log(full_run: FullRun) -> None:
    records = full_run.log
    by_rid: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        if r["event"] != "copilot.telemetry":
            by_rid.setdefault(r["request_id"], []).append(r)
    model_calls = [c for c in full_run.calls if c.expected["kind"] in MODEL_CALL_KINDS]
    # One line per model call (counted or skipped); token exchanges are not model calls. Telemetry posts have
    # their own copilot.telemetry lines (docs/acceptance.md).
    assert sorted(by_rid) == sorted(c.rid for c in model_calls)
    telemetry = sorted(c.rid for c in full_run.calls if c.expected["kind"] == "telemetry")
    assert sorted(r["request_id"] for r in records if r["event"] == "copilot.telemetry") == telemetry
    for call in model_calls:
        exp = call.expected
        [rec] = by_rid[call.rid]
        assert rec["event"] == ("copilot.request" if exp["counted"] else "copilot.skipped"), call.exchange.name
        assert rec["level"] == "info"
        stamp = datetime.fromisoformat(rec["timestamp"])
        assert rec["timestamp"].endswith("Z") and stamp.tzinfo is not None
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 600
        got = {k: rec[k] for k in ("user", "editor", "language", "kind", "model", "initiator", "interaction_id")}
        assert got == {
            "user": call.user,
            "editor": exp["editor"],
            "language": language(exp),
            "kind": exp["kind"],
            "model": exp["model"],
            "initiator": expected_initiator(call),
            "interaction_id": exp["interaction_id"],
        }, call.exchange.name
        # The next edit carries no Editor-Version: it borrows the one of its connection / interaction.
        assert rec["editor_version"] == (exp["editor_version"] or "vscode/1.111.0"), call.exchange.name
        assert rec["summary_key"] == summary_key(rec["editor_version"])
        assert rec["status"] == 200 and rec["method"] == "POST" and rec["host"] == call.exchange.host
        assert rec["path"] == call.exchange.path
        assert (rec["counted"], rec["skip_reason"]) == (exp["counted"], exp["skip_reason"]), call.exchange.name
        assert rec["streamed"] is exp["streamed"] is True
        assert rec["finish_reason"] == exp["finish_reason"], call.exchange.name
        assert (rec["input_tokens"], rec["output_tokens"]) == (exp["input_tokens"], exp["output_tokens"])
        assert rec["resolved_model"] == exp["resolved_model"], call.exchange.name
        assert isinstance(rec["duration_s"], float) and 0 <= rec["duration_s"] < 60
        if rec["ttft_s"] is not None:
            assert 0 <= rec["ttft_s"] <= rec["duration_s"]
        if exp.get("text"):
            assert rec["ttft_s"] is not None, call.exchange.name
        if "tool_calls" in exp:
            assert rec["tool_calls"] == [name for name, _ in exp["tool_calls"]]
        # Content capture is off by default.
        assert "prompt" not in rec and "completion" not in rec
    assert log_request_counts(records) == expected_requests(full_run.calls)


def test_full_traffic_daily_summary(full_run: FullRun) -> None:
    docs = full_run.summaries
    assert docs, "no daily summary written"
    for doc in docs:
        check_summary_schema(doc)
    days = {r["timestamp"][:10] for r in full_run.log}
    assert {d["day"] for d in docs} == days
    assert summary_counts(docs) == expected_summary(full_run.calls)
    if len(docs) == 1:  # (unless the run crossed midnight UTC)
        assert docs[0]["usage"] == {
            "alice": {
                "chat_turns": 1,
                "completions_count": 5,
                "chat": {"vscode-1.111.0": 1},
                "completions": {
                    "vscode-1.111.0": {"python": 2},
                    "JetBrains-IU-243.22562.218": {"java": 1},
                    "Neovim-0.11.2": {"lua": 2},
                },
            },
            "bob": {
                "chat_turns": 2,
                "completions_count": 4,
                "chat": {"vscode-1.111.0": 2},
                "completions": {
                    "vscode-1.111.0": {"python": 1},
                    "JetBrains-IU-243.22562.218": {"java": 2},
                    "Neovim-0.11.2": {"lua": 1},
                },
            },
        }
        assert (docs[0]["total_chat_turns"], docs[0]["total_completions_count"]) == (3, 9)


def test_full_traffic_three_outputs_agree(full_run: FullRun) -> None:
    """Per user/editor/language/kind counts derived from each source are equal to each other."""
    from_metrics = metric(full_run.metrics, "copilot_requests_total", ("user", "editor", "language", "kind"))
    from_log = log_request_counts(full_run.log)
    assert from_metrics == from_log
    from_summary = summary_counts(full_run.summaries)
    assert from_summary == log_summary_counts(full_run.log)
    # The summary's totals equal the metrics' completions and chat turns.
    completions = sum(n for (_u, _e, _l, kind), n in from_metrics.items() if kind == "completion")
    chats = sum(n for (_u, _e, _l, kind), n in from_metrics.items() if kind in CHAT_KINDS)
    assert sum(d["total_completions_count"] for d in full_run.summaries) == completions == 9
    assert sum(d["total_chat_turns"] for d in full_run.summaries) == chats == 3
    for user in USERS:
        assert sum(d["usage"].get(user, {}).get("completions_count", 0) for d in full_run.summaries) == sum(
            n for (u, _e, _l, kind), n in from_metrics.items() if u == user and kind == "completion"
        )


def read_extended(data_dir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text(encoding="utf-8")) for p in sorted((data_dir / "metrics").glob("copilot-insight_*.json"))
    ]


def extended_counts(docs: Iterable[dict[str, Any]], section: str) -> Counter[tuple[str, ...]]:
    """(user, *keys) -> n from one section of the extended summaries (three levels deep below the user)."""
    out: Counter[tuple[str, ...]] = Counter()
    for doc in docs:
        for user, entry in doc["users"].items():
            for a, level2 in entry[section].items():
                for b, level3 in level2.items():
                    if isinstance(level3, dict):
                        for c, n in level3.items():
                            out[(user, a, b, c)] += n
                    else:
                        out[(user, a, b)] += level3
    return out


def check_extended_against_metrics(docs: list[dict[str, Any]], metrics: Samples) -> None:
    """The extended summary says per user what /metrics says (every model call and every interaction)."""
    assert docs and all(d["schema_version"] == 1 for d in docs)
    interactions = extended_counts(docs, "interactions")  # (user, kind, editor, language)
    assert Counter({(u, e, lang, k): n for (u, k, e, lang), n in interactions.items()}) == metric(
        metrics, "copilot_requests_total", ("user", "editor", "language", "kind")
    )
    assert extended_counts(docs, "model_calls") == metric(
        metrics, "copilot_model_calls_total", ("user", "kind", "model", "initiator")
    )
    tokens = extended_counts(docs, "tokens")
    assert Counter({k: n for k, n in tokens.items() if k[3] in ("input", "output")}) == metric(
        metrics, "copilot_tokens_total", ("user", "kind", "model", "type")
    )
    assert extended_counts(docs, "errors") == metric(metrics, "copilot_user_errors_total", ("user", "kind", "code"))
    skipped: Counter[tuple[str, ...]] = Counter()
    for (_user, kind, reason), n in extended_counts(docs, "skipped").items():
        skipped[(kind, reason)] += n
    model_call_skips = Counter(
        {k: n for k, n in metric(metrics, "copilot_skipped_requests_total", ("kind", "reason")).items() if k in skipped}
    )
    assert skipped == model_call_skips and skipped
    for doc in docs:
        users = doc["users"].values()
        assert doc["totals"]["interactions"] == sum(u["totals"]["interactions"] for u in users)
        assert doc["totals"]["model_calls"] == sum(u["totals"]["model_calls"] for u in users)


def test_full_traffic_extended_summary_equals_metrics_log_and_rebuild(full_run: FullRun) -> None:
    from exporter.rebuild import rebuild_both

    docs = read_extended(full_run.data_dir)
    check_extended_against_metrics(docs, full_run.metrics)
    assert sum(d["totals"]["model_calls"] for d in docs) == sum(1 for r in full_run.log if r["model_call"])
    assert sum(d["totals"]["interactions"] for d in docs) == sum(1 for r in full_run.log if r["counted"])
    for doc in docs:
        original, extended, bad = rebuild_both(full_run.data_dir, doc["day"], write=False)
        assert bad == 0 and json.loads(extended) == doc
        assert json.loads(original) == next(d for d in full_run.summaries if d["day"] == doc["day"])


def test_full_traffic_bytes_reach_clients_unchanged(full_run: FullRun) -> None:
    backend = full_run.backend
    for call in full_run.calls:
        ex, got = call.exchange, full_run.results[call.rid]
        sent = backend.response_for(call.rid)
        assert sent is not None and sent.complete, call.exchange.name
        assert got.status == sent.status == ex.status
        assert got.body == bytes(sent.body) == ex.response_body, call.exchange.name
        for name, value in ex.response_headers:
            assert got.headers.get_list(name) == [value], (call.exchange.name, name)
        assert got.http_version == ("HTTP/2" if call.client in HTTP2_CLIENTS else "HTTP/1.1")
        # The request reached the backend once, unchanged (body and every header the client sent).
        [req] = backend.requests_for(call.rid)
        assert (req.method, req.host, req.path, req.body) == (ex.method, ex.host, ex.path, ex.request_body)
        for name, value in ex.request_headers:
            if name.lower() not in ("host", "content-length", "transfer-encoding", "connection"):
                assert req.header(name) == value, (call.exchange.name, name)
        assert req.header("proxy-authorization") is None
    for c in backend.connects():
        assert all(k.lower() != "proxy-authorization" for k, _ in c.headers)


def secrets() -> dict[str, str]:
    out = {f"password of {u}": pw for u, pw in PASSWORDS.items()}
    out["wrong password"] = WRONG_PASSWORD
    for u, pw in [*PASSWORDS.items(), ("alice", WRONG_PASSWORD)]:
        out[f"basic credentials of {u}"] = base64.b64encode(f"{u}:{pw}".encode()).decode()
    out["business token"] = S.BUSINESS_TOKEN
    out["individual token"] = S.INDIVIDUAL_TOKEN
    out["business token id"] = S.BUSINESS_TOKEN.split(";")[0]
    out["individual token id"] = S.INDIVIDUAL_TOKEN.split(";")[0]
    out["token prefix"] = "tid="
    out["oauth token"] = S.GITHUB_OAUTH_TOKEN
    out["oauth prefix"] = "gho_"
    return out


def test_no_secret_in_any_output(full_run: FullRun) -> None:
    data = full_run.data_dir
    outputs: dict[str, str] = {
        "/metrics": full_run.metrics_text,
        "mitmdump log": full_run.mitmdump_log,
    }
    for path in sorted(p for p in data.rglob("*") if p.is_file()):
        outputs[str(path.relative_to(data))] = path.read_text(encoding="utf-8", errors="replace")
    assert any(k.startswith("events/") for k in outputs) and any(k.startswith("metrics/") for k in outputs)
    assert any(k.startswith("usage/") for k in outputs), "copilot_record was on: recordings expected"
    # The secrets did pass through the proxy (the token exchange's answer carries the session token).
    assert S.BUSINESS_TOKEN.encode() in S.VSCODE_TOKEN_EXCHANGE.response_body
    leaks = [(what, where) for where, text in outputs.items() for what, secret in secrets().items() if secret in text]
    assert leaks == []


# ---------------------------------------------------------------------------------------------------
# 2. Streaming: events reach the client while the backend still holds the rest


def test_stream_reaches_client_before_backend_finishes_and_is_counted(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    ex = variant(S.VSCODE_COMPLETION)
    chunks = ex.response_chunks()
    assert len(chunks) == 4
    gate = Gate(after=1)
    labels = {"user": "alice", "editor": "vscode", "language": "python", "kind": "completion"}

    def counted(proxy: Mitmdump) -> float:
        return metric_total(parse_metrics(scrape(proxy.metrics_url)), "copilot_requests_total", **labels)

    with FakeCopilotBackend() as backend:
        backend.script_exchange(ex, gate=gate)
        proxy = start_proxy(backend, tmp_path / "mitmdump", tmp_path / "data", htpasswd)
        try:
            with (
                proxy_client(proxy.port, "alice", PASSWORDS["alice"], proxy.ca_cert_path, timeout=15) as client,
                open_stream(client, ex) as response,
            ):
                assert response.status_code == 200
                raw = response.iter_raw()
                received = b""
                while len(received) < len(chunks[0]):
                    received += next(raw)
                held_from = datetime.now(UTC)
                # The first event is here while the backend is held at the gate with the rest unsent.
                assert received == chunks[0]
                assert gate.reached.is_set() and not gate.released
                sent = backend.response_for(str(ex.request_id))
                assert sent is not None and sent.chunks_sent == 1 and not sent.complete
                # Not counted while in flight.
                assert counted(proxy) == 0
                held = (datetime.now(UTC) - held_from).total_seconds()
                gate.release()
                rest = b"".join(raw)
            assert received + rest == ex.response_body == backend.sent_body(str(ex.request_id))
            proxy.wait_for(lambda: counted(proxy) == 1, 10.0, "the streamed completion to be counted")
        finally:
            assert proxy.stop() == 0, proxy.log_text()[-3000:]
    [rec] = read_log(tmp_path / "data")
    assert rec["event"] == "copilot.request" and rec["request_id"] == ex.request_id
    assert (rec["streamed"], rec["finish_reason"], rec["output_tokens"]) == (True, "stop", 4)
    # Time to first token was taken from the tee when the first event passed, not at the end of the body:
    # the stream was held open (at least `held` seconds) after it.
    assert rec["ttft_s"] is not None and rec["duration_s"] >= held
    assert rec["ttft_s"] <= rec["duration_s"] - held + 0.005
    [doc] = read_summaries(tmp_path / "data")
    assert doc["usage"]["alice"]["completions"] == {"vscode-1.111.0": {"python": 1}}


# ---------------------------------------------------------------------------------------------------
# 3. Restart in the middle of a day


def test_restart_in_the_middle_of_the_day_continues_the_summary_and_log(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    data = tmp_path / "data"
    first = user_plan("alice", vscode=2, jetbrains=1, neovim=0, turns=1) + user_plan(
        "bob", vscode=0, jetbrains=1, neovim=1, turns=0
    )
    second = user_plan("alice", vscode=1, jetbrains=0, neovim=1, turns=0) + user_plan(
        "bob", vscode=1, jetbrains=0, neovim=2, turns=1
    )
    with FakeCopilotBackend() as backend:
        proxy = start_proxy(backend, tmp_path / "run1", data, htpasswd)
        try:
            run_traffic(backend, proxy, first)
            wait_until_counted(proxy, len(first))
        finally:
            assert proxy.stop() == 0, proxy.log_text()[-3000:]
        log_after_first = read_log(data)
        lines_after_first = [p.read_text() for p in sorted((data / "events").glob("*.jsonl"))]
        assert summary_counts(read_summaries(data)) == expected_summary(first)
        assert log_request_counts(log_after_first) == expected_requests(first)

        # A new process on the same data dir, flushing its summary every 0.2 s while it runs (set in
        # config.yaml here; the test below sets it with --set).
        proxy = start_proxy(backend, tmp_path / "run2", data, htpasswd, config={"copilot_flush_interval": "0.2"})
        try:
            parsed = parse_metrics(scrape(proxy.metrics_url))
            assert metric_total(parsed, "copilot_requests_total") == 0  # counters are per process
            run_traffic(backend, proxy, second)
            parsed = wait_until_counted(proxy, len(second))
            assert metric(parsed, "copilot_requests_total", ("user", "editor", "language", "kind")) == (
                expected_requests(second)
            )
            both = expected_summary(first + second)
            # The running process's periodic write already holds both runs.
            proxy.wait_for(lambda: summary_counts(read_summaries(data)) == both, 10.0, "the merged summary")
        finally:
            assert proxy.stop() == 0, proxy.log_text()[-3000:]

    docs = read_summaries(data)
    for doc in docs:
        check_summary_schema(doc)
    # Neither lost nor counted twice by the shutdown write.
    assert summary_counts(docs) == expected_summary(first + second)
    assert sum(d["total_completions_count"] for d in docs) == 5 + 5
    assert sum(d["total_chat_turns"] for d in docs) == 1 + 1
    records = read_log(data)
    model_rids = {c.rid for c in first + second if c.expected["kind"] in MODEL_CALL_KINDS}
    assert sorted(r["request_id"] for r in records if r["event"] != "copilot.telemetry") == sorted(model_rids)
    assert log_request_counts(records) == expected_requests(first + second)
    # Appended, not rewritten: the first run's lines are still there, first.
    lines_now = [p.read_text() for p in sorted((data / "events").glob("*.jsonl"))]
    assert "".join(lines_now).startswith("".join(lines_after_first))
    assert not list((data / "metrics").glob(".*.tmp"))
    # The extended summary continued across the restart too: it holds both runs' interactions and calls.
    extended = read_extended(data)
    assert sum(d["totals"]["interactions"] for d in extended) == sum(expected_requests(first + second).values())
    assert sum(d["totals"]["model_calls"] for d in extended) == len(model_rids)


def test_flush_interval_can_be_set_on_the_command_line(tmp_path: Path) -> None:
    htpasswd = write_htpasswd(tmp_path / "htpasswd", PASSWORDS)
    data = tmp_path / "data"
    ex = variant(S.NEOVIM_COMPLETION)
    with FakeCopilotBackend() as backend:
        backend.script_exchange(ex)
        proxy = start_proxy(backend, tmp_path / "mitmdump", data, htpasswd, copilot_flush_interval="0.2")
        try:
            with proxy_client(proxy.port, "bob", PASSWORDS["bob"], proxy.ca_cert_path) as client:
                assert send(client, ex).body == ex.response_body
            # Written by the periodic flush while the proxy runs, not only at shutdown.
            proxy.wait_for(
                lambda: summary_counts(read_summaries(data)) == {("bob", "Neovim-0.11.2", "lua", "completion"): 1},
                10.0,
                "the periodic summary write",
            )
        finally:
            assert proxy.stop() == 0


# ---------------------------------------------------------------------------------------------------
# 5. Quick start: the console script, as the README runs it


def test_quick_start_console_script_counts_a_completion(tmp_path: Path) -> None:
    metrics_port = free_port()
    data = tmp_path / "copilot-data"
    workdir = tmp_path / "somewhere-else"
    workdir.mkdir()
    ex = variant(S.VSCODE_COMPLETION)
    with FakeCopilotBackend() as backend:
        backend.script_exchange(ex)
        proxy = Mitmdump(
            backend,
            tmp_path / "mitmdump",
            executable=CONSOLE_SCRIPT,
            addon=None,  # the console script loads it
            options={"copilot_data_dir": data, "copilot_metrics_port": metrics_port},
            cwd=workdir,
            repo_on_path=False,  # the installed package, not the checkout on PYTHONPATH
        )
        cmd = proxy.command()
        assert cmd[0] == str(CONSOLE_SCRIPT) and "-s" not in cmd
        with proxy:
            assert f"/metrics on http://127.0.0.1:{metrics_port}/metrics" in proxy.log_text()
            # No proxyauth: the Proxy-Authorization the IDE sends anyway still names the user.
            with proxy_client(proxy.port, "alice", "whatever", proxy.ca_cert_path) as client:
                result = send(client, ex)
            assert result.status == 200 and result.body == ex.response_body
            labels = {"user": "alice", "editor": "vscode", "language": "python", "kind": "completion"}
            proxy.wait_for(
                lambda: metric_total(parse_metrics(scrape(proxy.metrics_url)), "copilot_requests_total", **labels) == 1,
                10.0,
                "the completion in /metrics",
            )
            parsed = parse_metrics(scrape(proxy.metrics_url))
            assert metric_total(parsed, "copilot_exporter_build_info") == 1
        assert proxy.returncode == 0, proxy.log_text()[-3000:]
    assert not (workdir / "logs").exists()
    [rec] = read_log(data)
    assert (rec["user"], rec["kind"], rec["counted"]) == ("alice", "completion", True)
    [doc] = read_summaries(data)
    assert doc["total_completions_count"] == 1
