"""How many y-websocket sockets are open per session and per remote address.

A socket is counted from its handshake until it closes; one over either limit is closed
at once with 1013 ("try again later", RFC 6455), which y-websocket clients answer by
reconnecting with backoff, and nothing of it reaches the session. Counts are per replica.

Error handling: `enter` returns the reason to refuse (None: admitted); `leave` never
raises.
"""

from __future__ import annotations

TRY_AGAIN_LATER = 1013


class SocketCounts:
    def __init__(self, per_session: int, per_address: int) -> None:
        self.per_session = per_session
        self.per_address = per_address
        self._sessions: dict[str, int] = {}
        self._addresses: dict[str, int] = {}

    @property
    def total(self) -> int:
        """Sockets open now."""
        return sum(self._sessions.values())

    def enter(self, session: str, address: str) -> str | None:
        """Count a socket in; the reason it is refused instead (nothing counted)."""
        on_session = self._sessions.get(session, 0)
        if on_session >= self.per_session:
            return f"session has {on_session} sockets on this replica (limit {self.per_session})"
        from_address = self._addresses.get(address, 0)
        if from_address >= self.per_address:
            return f"{from_address} sockets from your address (limit {self.per_address})"
        self._sessions[session] = on_session + 1
        self._addresses[address] = from_address + 1
        return None

    def leave(self, session: str, address: str) -> None:
        for counts, name in ((self._sessions, session), (self._addresses, address)):
            left = counts.get(name, 0) - 1
            if left > 0:
                counts[name] = left
            else:
                counts.pop(name, None)
