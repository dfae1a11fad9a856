"""Telemetry posts as the two Copilot clients send them (VS Code: gzip NDJSON; the language server: a JSON array)."""

from __future__ import annotations

import gzip
import json
from typing import Any

from exporter.telemetry import ENHANCED_IKEY, STANDARD_IKEY

TELEMETRY_HOST = "copilot-telemetry.githubusercontent.com"
VSCODE_EDITOR = "vscode/1.111.0"
VSCODE_PLUGIN = "copilot-chat/0.42.0"
JETBRAINS_EDITOR = "JetBrains-IC/2024.3.5"
JETBRAINS_PLUGIN = "copilot-intellij/1.5.40"
NEOVIM_EDITOR = "Neovim/0.10.4"
NEOVIM_PLUGIN = "copilot.vim/1.48.0"
# What an enhanced-store envelope carries that must never reach an output.
SECRET_CODE = "def leaked_secret_function(): return 'do-not-record-me'"


def envelope(
    name: str,
    props: dict[str, Any] | None = None,
    meas: dict[str, Any] | None = None,
    ikey: str = STANDARD_IKEY,
    editor: str | None = VSCODE_EDITOR,
    plugin: str | None = VSCODE_PLUGIN,
) -> dict[str, Any]:
    """One Application Insights envelope (the fields both SDKs send, common properties included)."""
    properties: dict[str, Any] = {
        "common_os": "linux",
        "common_vscodemachineid": "1" * 64,
        "copilot_trackingId": "0" * 32,
        **(props or {}),
    }
    if editor is not None:
        properties["editor_version"] = editor
    if plugin is not None:
        properties["editor_plugin_version"] = plugin
    return {
        "name": f"Microsoft.ApplicationInsights.{ikey.replace('-', '')}.Event",
        "time": "2026-12-02T06:00:00.000Z",
        "iKey": ikey,
        "tags": {"ai.user.id": "0" * 32, "ai.session.id": "s" * 40, "ai.cloud.roleInstance": "REDACTED"},
        "data": {
            "baseType": "EventData",
            "baseData": {"ver": 2, "name": name, "properties": properties, "measurements": meas or {}},
        },
    }


def ghost(
    event: str,
    request_id: str,
    prefix: str = "copilot/",
    choice: int = 0,
    language: str = "python",
    chars: int | None = None,
    lines: int | None = None,
    comp_type: str | None = None,
    **kw: Any,
) -> dict[str, Any]:
    """A ghostText.<event> envelope (VS Code `copilot/`, the language server `agent/`)."""
    props: dict[str, Any] = {"headerRequestId": request_id, "choiceIndex": str(choice), "languageId": language}
    if comp_type is not None:
        props["compType"] = comp_type
    meas: dict[str, Any] = {}
    if chars is not None:
        meas["compCharLen"] = chars
    if lines is not None:
        meas["numLines"] = lines
    return envelope(f"{prefix}ghostText.{event}", props, meas, **kw)


def still_in_code(request_id: str, timeout: int, still: bool, prefix: str = "copilot/", **kw: Any) -> dict[str, Any]:
    props = {"headerRequestId": request_id, "choiceIndex": "0", "languageId": "python"}
    meas = {"timeout": timeout, "stillInCodeHeuristic": 1 if still else 0, "lexEditDistance": 3}
    return envelope(f"{prefix}ghostText.stillInCode", props, meas, **kw)


def next_edit(request_id: str, shown: bool, acceptance: str, language: str = "python", **kw: Any) -> dict[str, Any]:
    props = {
        "opportunityId": f"opp-{request_id}",
        "headerRequestId": request_id,
        "activeDocumentLanguageId": language,
        "isShown": "true" if shown else "false",
        "acceptance": acceptance,
        "modelName": "copilot-nes-xtab",
    }
    return envelope("copilot-chat/copilot-nes/provideInlineEdit", props, {"promptTokens": 900}, **kw)


def chat_edit(outcome: str, language: str = "python", **kw: Any) -> dict[str, Any]:
    props = {"outcome": outcome, "languageId": language, "requestId": "msg-1", "participant": "editsAgent"}
    return envelope("copilot-chat/panel.edit.feedback", props, {}, **kw)


def inline_done(accepted: bool, language: str = "python", **kw: Any) -> dict[str, Any]:
    props = {"languageId": language, "conversationId": "c-1", "requestId": "msg-2"}
    return envelope("copilot-chat/inline.done", props, {"accepted": 1 if accepted else 0, "editCount": 2}, **kw)


def captured(request_id: str) -> dict[str, Any]:
    """An enhanced-store envelope with code in it (`rt=1` tokens only)."""
    props = {"headerRequestId": request_id, "capturedCodeJson": json.dumps({"code": SECRET_CODE})}
    return envelope("copilot/ghostText.capturedAfterAccepted", props, {}, ikey=ENHANCED_IKEY)


def ndjson(envelopes: list[dict[str, Any]], gz: bool = True) -> bytes:
    """VS Code's body: newline-delimited envelopes, gzip-compressed (Content-Encoding: gzip)."""
    body = "".join(json.dumps(e) + "\n" for e in envelopes).encode()
    return gzip.compress(body, mtime=0) if gz else body


def array(envelopes: list[dict[str, Any]]) -> bytes:
    """The language server's body: one JSON array."""
    return json.dumps(envelopes).encode()


def vscode_headers(gz: bool = True) -> dict[str, str]:
    out = {"content-type": "application/x-json-stream", "user-agent": "GitHubCopilotChat/0.42.0"}
    if gz:
        out["content-encoding"] = "gzip"
    return out


def ls_headers() -> dict[str, str]:
    return {"content-type": "application/json", "user-agent": "GithubCopilot/1.539.0"}


def full_report() -> Any:
    """A telemetry post's report touching every acceptance metric once (for tests over the whole table)."""
    from exporter.acceptance import Suggestion, TelemetryReport

    rid = "11111111-0000-4000-8000-0000000000ff"
    return TelemetryReport(
        events=(("standard", "ghostText.shown", 1),),
        skipped=(("bad_envelope", 1),),
        suggestions=(
            Suggestion("shown", "completion", "vscode", "python", rid),
            Suggestion("accepted", "completion", "vscode", "python", rid, chars=12, lines=1),
            Suggestion("rejected", "next_edit", "vscode", "python", "nes-1"),
            Suggestion("survival", "completion", "vscode", "python", rid, outcome="30s", still=True),
            Suggestion("chat_edit", "chat_edit", "vscode", "python", None, outcome="accepted"),
        ),
    )


def telemetry_exchange(body: bytes, headers: dict[str, str], status: int = 200, rid: str = "tele-1") -> Any:
    """A `POST /telemetry` as a sample Exchange (for the addon harness and the fake backend's scripts)."""
    from tests.samples import Exchange, _expected

    return Exchange(
        name="telemetry_post",
        method="POST",
        scheme="https",
        host=TELEMETRY_HOST,
        path="/telemetry",
        http_version="HTTP/1.1",
        request_headers=(*headers.items(), ("x-request-id", rid)),
        request_body=body,
        status=status,
        response_headers=(("content-type", "application/json"),),
        response_body=b'{"itemsReceived":1,"itemsAccepted":1,"errors":[]}',
        expected=_expected(kind="telemetry", counted=False, skip_reason="not_interaction"),
    )
