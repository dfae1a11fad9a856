"""Whether a finished Copilot call counts as an interaction, or is skipped and why (copilot-traffic.md §4, §8)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from exporter.classify import CHAT_KINDS, INTERACTION_KINDS, Kind, intent_family
from exporter.streams import Answer
from exporter.values import quick_init


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


class SeenSet[V]:
    """A bounded, time-limited map of keys seen (interaction ids, request ids) to a small value.

    Keys are kept as their 64-bit hash (stable within the process): a third of the memory of the ids."""

    def __init__(self, max_items: int = 100_000, ttl_seconds: float = 6 * 3600) -> None:
        self._items: OrderedDict[int, tuple[float, V]] = OrderedDict()
        self._max = max_items
        self._ttl = ttl_seconds

    def get(self, key: str, now: float) -> V | None:
        h = hash(key)
        item = self._items.get(h)
        if item is None:
            return None
        if now - item[0] > self._ttl:
            del self._items[h]
            return None
        return item[1]

    def add(self, key: str, now: float, value: V) -> None:
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

    def discard(self, key: str) -> None:
        self._items.pop(hash(key), None)

    def __len__(self) -> int:
        return len(self._items)


@quick_init
@dataclass(frozen=True, slots=True)
class Call:
    """The facts about a finished call that counting needs, and where the tracker reads each one."""

    kind: Kind  # classify.route + chat_mode(OpenAI-Intent, X-Interaction-Type); chat_ws for a WebSocket frame
    status: int | None  # the HTTP status (101 for a WebSocket frame's call); None when nothing answered
    request_id: str | None  # X-Request-Id (a WebSocket call: the upgrade's, plus the call's number on the socket)
    interaction_id: str | None  # X-Interaction-Id; a WebSocket call: its frame's headers.X-Interaction-Id first
    initiator: str | None  # X-Initiator, or the WebSocket frame's `initiator`; None when absent
    intent: str | None  # OpenAI-Intent, else X-Interaction-Type (a WebSocket call: its frame's X-Interaction-Type)
    speculative: bool  # X-Copilot-Speculative: true
    user_last: bool | None  # body heuristic for the §4.3 fallback (bodies.RequestFacts.user_last)
    client_aborted: bool = False  # the client went away before the answer ended
    task_id: str | None = None  # X-Agent-Task-Id; a WebSocket call: headers.X-Agent-Task-Id, else agent_task_id


@quick_init
@dataclass(frozen=True, slots=True)
class Decision:
    counted: bool
    skip: Skip | None = None
    initiator: str = "unknown"
    initiator_source: str = "none"  # header | body | heuristic | inferred | retry | none


@quick_init
@dataclass(frozen=True, slots=True)
class _Turn:
    """What is remembered of an interaction: its user call's intent family and agent task (hashed)."""

    family: str
    task: int | None


class Counter:
    """Holds the seen interaction ids and counted request ids; decides each call once.

    A turn is an interaction id. It is counted once, on its first successful model call, when its first
    request was user-initiated, whatever the successful call's own initiator: a user call that failed
    (429, 5xx, no answer) leaves its id *pending*, and the next successful call of the same agent loop
    counts the turn (`initiator_source: retry`). The Copilot CLI resends a rate-limited prompt with
    `X-Initiator: agent`; without this the prompt would count zero times."""

    def __init__(self, max_items: int = 100_000, ttl_seconds: float = 6 * 3600) -> None:
        # A turn can run for hours (long agent sessions); a retry follows its request within seconds.
        self.turns: SeenSet[_Turn] = SeenSet(max_items, ttl_seconds)
        # Kept apart from the counted turns so that a storm of failing calls cannot push those out.
        self.pending: SeenSet[_Turn] = SeenSet(max_items, ttl_seconds)
        self.requests: SeenSet[bool] = SeenSet(min(max_items, 20_000), min(ttl_seconds, 600.0))

    def decide(self, call: Call, answer: Answer | None, now: float) -> Decision:
        initiator, source = _initiator(call)
        decision = self._decide(call, answer, now, initiator, source)
        if decision.counted and call.request_id:
            self.requests.add(call.request_id, now, True)
        return decision

    def _decide(self, call: Call, answer: Answer | None, now: float, initiator: str, source: str) -> Decision:
        def skip(reason: Skip) -> Decision:
            return Decision(False, reason, initiator, source)

        if call.kind not in INTERACTION_KINDS:
            return skip(Skip.NOT_INTERACTION)
        if call.status is None:
            self._fail(call, now, initiator)
            return skip(Skip.NO_RESPONSE)
        if not _succeeded(call, answer):
            self._fail(call, now, initiator)
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

    def _fail(self, call: Call, now: float, initiator: str) -> None:
        """A failed user call of a turn not yet counted leaves the turn pending (its first failure kept)."""
        iid = call.interaction_id
        if initiator != "user" or not iid or call.kind not in CHAT_KINDS:
            return
        if self.turns.get(iid, now) is None and self.pending.get(iid, now) is None:
            self.pending.add(iid, now, _turn_of(call))

    def _chat(self, call: Call, now: float, initiator: str, source: str) -> Decision:
        iid = call.interaction_id
        if initiator == "user":
            if iid:
                # Stateless first: a user-initiated call whose last message is not the user's (tool results,
                # the post-turn suggestions) continues a turn, so a replica that never saw the turn's first
                # call does not count it again (docs/counting.md, "Several replicas").
                if call.user_last is False or self.turns.get(iid, now) is not None:
                    return Decision(False, Skip.TURN_FOLLOWUP, initiator, source)
                self.turns.add(iid, now, self.pending.get(iid, now) or _turn_of(call))
                self.pending.discard(iid)
            return Decision(True, None, initiator, source)
        reason = Skip.NOT_USER_TURN if source == "heuristic" else Skip.AGENT_STEP
        if not iid:
            return Decision(False, reason, initiator, source)
        turn = self.turns.get(iid, now)
        if turn is not None:
            return Decision(False, Skip.AUXILIARY if _other_loop(turn, call) else reason, initiator, source)
        pending = self.pending.get(iid, now)
        if pending is None:
            return Decision(False, reason, initiator, source)
        if _other_loop(pending, call):  # e.g. a title request after the failed call: not its retry
            return Decision(False, Skip.AUXILIARY, initiator, source)
        # The retry of a failed user call answers the user's prompt: the turn counts now, as the user's.
        self.turns.add(iid, now, pending)
        self.pending.discard(iid)
        return Decision(True, None, "user", "retry")


def _succeeded(call: Call, answer: Answer | None) -> bool:
    if call.status is not None and 200 <= call.status < 300:
        return True
    if call.kind is not Kind.CHAT_WS or call.status != 101:
        return False
    # A Responses-over-WebSocket call lives inside the 101 upgrade; an `error` event in its frames (a rate
    # limit, a bad previous_response_id) that ended it before `response.completed` is its failure.
    return answer is None or answer.error is None or answer.complete


def _turn_of(call: Call) -> _Turn:
    return _Turn(intent_family(call.intent), hash(call.task_id) if call.task_id else None)


def _other_loop(turn: _Turn, call: Call) -> bool:
    """True for a call of another agent loop than the turn's: an auxiliary call (title, categorisation…).

    The same X-Agent-Task-Id is the same loop (the CLI keeps one per prompt); VS Code gives every call its
    own task id, so there the intent family decides: a known family that differs from the turn's."""
    if turn.task is not None and call.task_id and hash(call.task_id) == turn.task:
        return False
    family = intent_family(call.intent)
    return bool(turn.family and family and family != turn.family)


def _initiator(call: Call) -> tuple[str, str]:
    if call.initiator in ("user", "agent"):
        return call.initiator, "header"
    if call.kind is Kind.COMPLETION:
        # Ghost text carries no X-Initiator: a prefetch is the client's own, the rest the user's typing.
        return ("agent" if call.speculative else "user"), "inferred"
    if call.kind in CHAT_KINDS and call.user_last is not None:
        return ("user" if call.user_last else "agent"), "heuristic"
    return "unknown", "none"
