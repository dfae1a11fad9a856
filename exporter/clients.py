"""Which editor a request came from, when its own headers do not say: joined from its connection, turn or user."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Mapping

from exporter.identity import UNKNOWN_CLIENT, ClientIdentity, identify

JOIN_CACHE = 10_000


class _LRU(OrderedDict[Hashable, ClientIdentity]):
    def put(self, key: Hashable, value: ClientIdentity) -> None:
        self[key] = value
        self.move_to_end(key)
        if len(self) > JOIN_CACHE:
            self.popitem(last=False)


class ClientDirectory:
    """The last identified client per connection, per interaction and per user (bounded LRUs).

    Requests without Editor-Version (next-edit calls, telemetry, the chat extension's side calls) borrow it
    from their connection, their interaction, or the user's last identified request of the same editor.
    `resolve` also says whether the client is new to the inventory (each distinct client once, in a bounded
    set, so a flood of made-up versions cannot grow memory).
    """

    def __init__(self) -> None:
        self._by_connection = _LRU()
        self._by_interaction = _LRU()
        self._by_user = _LRU()
        self._seen: OrderedDict[tuple[str, ClientIdentity], None] = OrderedDict()

    def resolve(
        self, connection: Hashable, user: str, interaction_id: str | None, headers: Mapping[str, str]
    ) -> tuple[ClientIdentity, bool]:
        """The client of a request, and True when it identified itself and was not seen before."""
        found = identify(headers)
        if found is not None and found.header_editor_version:
            self._by_connection.put(connection, found)
            if interaction_id:
                self._by_interaction.put(interaction_id, found)
            self._by_user.put(user, found)
            return found, self._first_sight(user, found)
        for joined in (
            self._by_connection.get(connection),
            self._by_interaction.get(interaction_id) if interaction_id else None,
            # The user's last identified client only when this request names at least its editor.
            self._by_user.get(user) if found is not None else None,
        ):
            if joined is not None and (found is None or found.editor in (joined.editor, "unknown")):
                return joined, False
        return found or UNKNOWN_CLIENT, False

    def _first_sight(self, user: str, client: ClientIdentity) -> bool:
        key = (user, client)
        if key in self._seen:
            self._seen.move_to_end(key)
            return False
        self._seen[key] = None
        if len(self._seen) > JOIN_CACHE:
            self._seen.popitem(last=False)
        return True

    def forget_connection(self, connection: Hashable) -> None:
        self._by_connection.pop(connection, None)
