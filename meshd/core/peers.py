"""The peer table: what this node knows of others, from their signed adverts.

Theory of operation: an advert is valid for its ``ttl_ms`` from the time we
received it (not the sender's clock). A newer advert (higher ``seq``)
replaces an older one; an older or equal ``seq`` is ignored (gossip repeats
and replays). A peer whose advert expired is *gone*: it is dropped from the
view, no longer a bid candidate, and counted. The table is bounded; on
overflow the entry that expires first is evicted.
"""

from __future__ import annotations

from dataclasses import dataclass

from .wire import Advert


@dataclass
class PeerEntry:
    peer_id: str
    advert: Advert
    first_seen_ms: int
    last_seen_ms: int
    expires_ms: int


class PeerTable:
    def __init__(self, max_peers: int) -> None:
        assert max_peers > 0
        self.max_peers = max_peers
        self._peers: dict[str, PeerEntry] = {}

    def update(self, peer_id: str, advert: Advert, now_ms: int) -> bool:
        """Record an advert; False if it was not newer than what we hold."""
        entry = self._peers.get(peer_id)
        if entry is not None and advert.seq <= entry.advert.seq and entry.expires_ms > now_ms:
            return False
        expires = now_ms + advert.ttl_ms
        if entry is None:
            if len(self._peers) >= self.max_peers:
                victim = min(self._peers.values(), key=lambda e: e.expires_ms)
                del self._peers[victim.peer_id]
            self._peers[peer_id] = PeerEntry(peer_id, advert, now_ms, now_ms, expires)
        else:
            entry.advert, entry.last_seen_ms, entry.expires_ms = advert, now_ms, expires
        return True

    def expire(self, now_ms: int) -> list[str]:
        """Drop peers whose advert expired; returns their ids."""
        gone = [p for p, e in self._peers.items() if e.expires_ms <= now_ms]
        for p in gone:
            del self._peers[p]
        return gone

    def alive(self, now_ms: int) -> list[PeerEntry]:
        return [e for e in self._peers.values() if e.expires_ms > now_ms]

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def next_expiry_ms(self) -> int | None:
        return min((e.expires_ms for e in self._peers.values()), default=None)

    def __len__(self) -> int:
        return len(self._peers)
