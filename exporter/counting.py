"""Whether a finished Copilot call counts as an interaction, or is skipped and why (copilot-traffic.md §4, §8)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from exporter.classify import CHAT_KINDS, INTERACTION_KINDS, Kind
from exporter.streams import Answer


class Skip(StrEnum):
    NOT_INTERACTION = "not_interaction"  # telemetry, model list, token exchange, embeddings…
    NO_RESPONSE = "no_response"  # the upstream never answered (connection error, client gone first)
    HTTP_ERROR = "http_error"  # non-2xx answer
    RETRY_DUPLICATE = "retry_duplicate"  # same X-Request-Id already counted
    SPECULATIVE = "speculative"  # x-copilot-speculative: true prefetch
    EMPTY_COMPLETION = "empty_completion"  # no choice had text
    CANCELLED = "cancelled"  # stream closed before its end: the user kept typing
    MALFORMED = "malformed"  # the answer could not be parsed
    AGENT_STEP = "agent_step"  # tool-loop round of a turn (x-initiator: agent)
    AUXILIARY = "auxiliary"  # agent call of another intent (title, categorisation…)
    TURN_FOLLOWUP = "turn_followup"  # a further user-initiated call of an already counted turn
    NOT_USER_TURN = "not_user_turn"  # no initiator header and the last message is not the user's


class SeenSet:
    """A bounded, time-limited map of keys seen (interaction ids, request ids) to a small value.

    Keys are kept as their 64-bit hash (stable within the process): a third of the memory of the ids."""

    def __init__(self, max_items: int = 100_000, ttl_seconds: float = 6 * 3600) -> None:
        self._items: OrderedDict[int, tuple[float, str]] = OrderedDict()
        self._max = max_items
        self._ttl = ttl_seconds

    def get(self, key: str, now: float) -> str | None:
        h = hash(key)
        item = self._items.get(h)
        if item is None:
            return None
        if now - item[0] > self._ttl:
            del self._items[h]
            return None
        return item[1]

    def add(self, key: str, now: float, value: str = "") -> None:
        h = hash(key)
        self._items[h] = (now, value)
        self._items.move_to_end(h)
        while len(self._items) > self._max:
            self._items.popitem(last=False)
        # Expire from the old end, a few at a time, so the set stays small without a sweep.
        for _ in range(2):
            oldest = next(iter(self._items.items()), None)
            if oldest is None or now - oldest[1][0] <= self._ttl:
                break
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass(frozen=True, slots=True)
class Call:
    """The facts about a finished call that counting needs."""

    kind: Kind
    status: int | None
    request_id: str | None
    interaction_id: str | None
    initiator: str | None  # from X-Initiator (or the WebSocket frame); None when absent
    intent: str | None
    speculative: bool
    user_last: bool | None  # body heuristic for the §4.3 fallback
    client_aborted: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    counted: bool
    skip: Skip | None = None
    initiator: str = "unknown"
    initiator_source: str = "none"  # header | body | heuristic | inferred | none


class Counter:
    """Holds the seen interaction ids and counted request ids; decides each call once."""

    def __init__(self, max_items: int = 100_000, ttl_seconds: float = 6 * 3600) -> None:
        # A turn can run for hours (long agent sessions); a retry follows its request within seconds.
        self.turns = SeenSet(max_items, ttl_seconds)
        self.requests = SeenSet(min(max_items, 20_000), min(ttl_seconds, 600.0))

    def decide(self, call: Call, answer: Answer | None, now: float) -> Decision:
        initiator, source = _initiator(call)
        decision = self._decide(call, answer, now, initiator, source)
        if decision.counted and call.request_id:
            self.requests.add(call.request_id, now)
        return decision

    def _decide(self, call: Call, answer: Answer | None, now: float, initiator: str, source: str) -> Decision:
        def skip(reason: Skip) -> Decision:
            return Decision(False, reason, initiator, source)

        if call.kind not in INTERACTION_KINDS:
            return skip(Skip.NOT_INTERACTION)
        if call.status is None:
            return skip(Skip.NO_RESPONSE)
        # A Responses-over-WebSocket call lives inside the 101 upgrade; its frames carry the answer.
        ok = 200 <= call.status < 300 or (call.kind is Kind.CHAT_WS and call.status == 101)
        if not ok:
            return skip(Skip.HTTP_ERROR)
        if call.request_id and self.requests.get(call.request_id, now) is not None:
            return skip(Skip.RETRY_DUPLICATE)
        if call.kind in CHAT_KINDS:
            return self._chat(call, now, initiator, source)
        # Completions and next edits: served only when the stream ended and carried text.
        if call.speculative:
            return skip(Skip.SPECULATIVE)
        if answer is None or (answer.events == 0 and answer.malformed_events > 0):
            return skip(Skip.MALFORMED)
        if call.client_aborted or not (answer.complete or answer.finish_reasons):
            return skip(Skip.CANCELLED)
        if not answer.has_text:
            return skip(Skip.EMPTY_COMPLETION)
        return Decision(True, None, initiator, source)

    def _chat(self, call: Call, now: float, initiator: str, source: str) -> Decision:
        if initiator != "user":
            reason = Skip.NOT_USER_TURN if source == "heuristic" else Skip.AGENT_STEP
            if call.interaction_id:
                turn_intent = self.turns.get(call.interaction_id, now)
                if turn_intent is not None and call.intent and turn_intent and call.intent != turn_intent:
                    reason = Skip.AUXILIARY
            return Decision(False, reason, initiator, source)
        if call.interaction_id:
            # Stateless first: a user-initiated call whose last message is not the user's (tool results,
            # the post-turn suggestions) continues a turn, so a replica that never saw the turn's first call
            # does not count it again (docs/counting.md, "Several replicas").
            if call.user_last is False or self.turns.get(call.interaction_id, now) is not None:
                return Decision(False, Skip.TURN_FOLLOWUP, initiator, source)
            self.turns.add(call.interaction_id, now, call.intent or "")
        return Decision(True, None, initiator, source)


def _initiator(call: Call) -> tuple[str, str]:
    if call.initiator in ("user", "agent"):
        return call.initiator, "header"
    if call.kind is Kind.COMPLETION:
        # Ghost text carries no X-Initiator: a prefetch is the client's own, the rest the user's typing.
        return ("agent" if call.speculative else "user"), "inferred"
    if call.kind in CHAT_KINDS and call.user_last is not None:
        return ("user" if call.user_last else "agent"), "heuristic"
    return "unknown", "none"
