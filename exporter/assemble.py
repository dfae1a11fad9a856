"""Building the UsageEvent of a finished call: counting decision, times, error, bounded labels and content."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from exporter import quota
from exporter.classify import MODEL_CALL_KINDS, Kind
from exporter.counting import Call, Counter, Decision
from exporter.credits import BACKGROUND_INTENT, CallUsage, PriceBook, Tokens, credits_of, error_code
from exporter.events import UsageEvent
from exporter.identity import clean
from exporter.labels import LabelBounds
from exporter.streams import Answer
from exporter.tools import classify_tool, mcp_server

if TYPE_CHECKING:
    from exporter.calls import InFlightCall, ResponseMeta


def decide(call: InFlightCall, resp: ResponseMeta, counter: Counter) -> Decision:
    """Runs the counting policy once for a finished call."""
    answer = call.parser.answer if call.parser is not None else None
    facts = call.facts
    return counter.decide(
        Call(
            kind=call.kind,
            status=resp.status,
            request_id=call.request_id,
            interaction_id=call.interaction_id,
            initiator=call.initiator or facts.initiator,
            intent=call.intent,
            speculative=call.speculative,
            user_last=facts.user_last,
            client_aborted=resp.error is not None,
            task_id=call.task_id,
        ),
        answer,
        call.started,
    )


def _error(call: InFlightCall, resp: ResponseMeta, answer: Answer | None) -> str | None:
    error = resp.error or call.parse_error or call.facts.error
    if answer is not None and answer.error and not error:
        error = answer.error
    return error


def _editor_version(call: InFlightCall) -> str | None:
    client = call.client
    if client.header_editor_version:
        return client.header_editor_version
    return f"{client.editor}/{client.editor_version}" if client.editor_version else None


def _tokens(answer: Answer | None) -> Tokens | None:
    if answer is None or (answer.input_tokens is None and answer.output_tokens is None):
        return None
    return Tokens(
        input=answer.input_tokens or 0,
        cached=answer.cached_tokens or 0,
        cache_write=answer.cache_write_tokens or 0,
        output=answer.output_tokens or 0,
    )


def _cost(call: InFlightCall, resp: ResponseMeta, answer: Answer | None, skip: str | None, prices: PriceBook) -> Any:
    """The credit, error-code and quota fields of the event (docs/cost.md)."""
    headers = call.meta.headers
    auto = bool(headers.get("copilot-session-token")) or (call.path_model or call.facts.model or "") == "auto"
    ok = resp.status is not None and (200 <= resp.status < 300 or resp.status == 101)  # 101: a WebSocket call
    credits = credits_of(
        CallUsage(
            kind=call.kind.value,
            model=call.path_model or call.facts.model,
            resolved_model=answer.resolved_model if answer is not None else None,
            skip_reason=skip,
            server_nano_aiu=answer.nano_aiu if answer is not None else None,
            tokens=_tokens(answer),
            auto=auto,
            ok=ok,
        ),
        prices,
    )
    failed = resp.status is None or resp.status >= 400
    details = answer.token_details if answer is not None else ()
    return {
        "credits_nano_aiu": credits.nano_aiu,
        "credits_source": credits.source,
        "nano_aiu_estimated": credits.estimated,
        "price_source": credits.price_source,
        "billed": credits.billed,
        "unknown_price": credits.unknown_price,
        "background": (headers.get("x-interaction-type") or "").strip().lower() == BACKGROUND_INTENT,
        "auto_model": auto,
        "cache_write_tokens": answer.cache_write_tokens if answer is not None else None,
        "token_details": json.dumps([d.as_dict() for d in details], separators=(",", ":")) if details else None,
        "error_code": error_code(answer.error if answer is not None else None) if failed else None,
        "quota": quota.to_json((*quota.from_headers(resp.quota_headers), *call.quota)),
        "copilot_plan": call.plan,
    }


def tool_facts(call: InFlightCall, answer: Answer | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Per tool call of the answer: its source (builtin, mcp, unknown) and MCP server ("" when none)."""
    if answer is None or not answer.tool_calls:
        return (), ()
    servers = answer.tool_servers + [""] * (len(answer.tool_calls) - len(answer.tool_servers))
    uses = [classify_tool(name, server, call.tools) for name, server in zip(answer.tool_calls, servers, strict=True)]
    return tuple(u.source for u in uses), tuple(u.server for u in uses)


def build_event(
    call: InFlightCall,
    resp: ResponseMeta,
    counter: Counter,
    bounds: LabelBounds,
    now: float,
    capture: bool,
    prices: PriceBook | None = None,
    teams: tuple[str, ...] = (),
) -> UsageEvent:
    """The event of a call that ended at `now` (the tracker's clock)."""
    decision = decide(call, resp, counter)
    answer = call.parser.answer if call.parser is not None else None
    finish = answer.finish_reason if answer is not None else None
    if resp.error is not None and finish is None:
        finish = "cancelled"
    ttft = call.first_content_at - call.started if call.first_content_at is not None else None
    meta = call.meta
    return UsageEvent(
        timestamp=datetime.fromtimestamp(call.started, UTC),
        user=meta.user,
        editor=bounds.editor(call.client.editor),
        editor_version=_editor_version(call),
        summary_key=call.client.summary_key,
        plugin=call.client.plugin,
        plugin_version=call.client.plugin_version,
        language=bounds.language(call.facts.language) if call.kind is Kind.COMPLETION else "unknown",
        kind=call.kind.value,
        model=call.path_model or call.facts.model,
        resolved_model=answer.resolved_model if answer is not None else None,
        initiator=decision.initiator,
        initiator_source=decision.initiator_source,
        interaction_id=call.interaction_id,
        request_id=call.request_id,
        intent=call.intent,
        host=meta.host,
        method=meta.method,
        path=clean(meta.path.split("?", 1)[0], 256) or "/",
        status=resp.status,
        duration_s=max(0.0, now - call.started),
        ttft_s=max(0.0, ttft) if ttft is not None else None,
        streamed=call.streamed,
        speculative=call.speculative,
        finish_reason=finish,
        **_usage(answer),
        counted=decision.counted,
        skip_reason=decision.skip.value if decision.skip is not None else None,
        model_call=call.kind in MODEL_CALL_KINDS,
        error=_error(call, resp, answer),
        prompt=call.facts.prompt if capture else None,
        completion=(answer.text or None) if capture and answer is not None else None,
        telemetry=call.telemetry,
        **_cost(call, resp, answer, decision.skip.value if decision.skip else None, prices or _PRICES),
        teams=teams,
        **_tools(call, answer),
    )


def _usage(answer: Answer | None) -> dict[str, Any]:
    """The token, credit and tool-call figures the answer reported (None where it gave none)."""
    if answer is None:
        none = dict.fromkeys(("input_tokens", "output_tokens", "cached_tokens", "reasoning_tokens", "nano_aiu"))
        return {**none, "tool_calls": ()}
    return {
        "input_tokens": answer.input_tokens,
        "output_tokens": answer.output_tokens,
        "cached_tokens": answer.cached_tokens,
        "reasoning_tokens": answer.reasoning_tokens,
        "nano_aiu": answer.nano_aiu,
        "tool_calls": tuple(answer.tool_calls),
    }


def _tools(call: InFlightCall, answer: Answer | None) -> dict[str, Any]:
    """Governance fields: each tool call's source and MCP server, and the MCP server of an MCP request."""
    sources, servers = tool_facts(call, answer)
    meta = call.meta
    mcp = mcp_server(meta.host, meta.path, copilot=True) if call.kind is Kind.MCP else None
    return {"tool_sources": sources, "tool_servers": servers, "mcp_server": mcp}


_PRICES = PriceBook()
