"""The peer view and membership pacing: what this node knows of others, from
their signed adverts, and how often it advertises itself.

Theory of operation
-------------------
An advert is valid for its ``ttl_ms`` from the time we received it (not the
sender's clock); the sender chose that TTL (:func:`advert_ttl_for`), and we
honour it. A newer advert (higher ``seq``) replaces an older one; an older
or equal ``seq`` is ignored (gossip repeats and replays). A peer whose advert
expired is *gone*: it is dropped from the view, no longer a bid candidate,
and counted. A peer that shuts down cleanly says so (a *leave notice*: an
advert with ``ttl_ms == LEAVE_TTL_MS`` and a higher ``seq``): it is gone at
once (:meth:`PeerTable.leave`), and an older advert of its arriving late does
not bring it back. A crashed peer still ages out by its TTL.

The view is bounded (``advert_view_max``), so memory and the origin's scans
over it stay bounded however large the mesh. When a new peer's advert finds
the view full, one entry goes (possibly the newcomer): among the *capability
class* holding most entries (:func:`capability_class`: runtimes, GPUs, tier,
network, images, warmth), the one with the fewest cores, then the least RAM
(then the smallest peer id). Every class present keeps its largest machines,
so "no peer in the view fits" means "no peer fits" while the mesh has fewer
classes than the bound. Placement does not depend on the view being whole:
offers reach every node by gossip, workers judge fit themselves, and an
origin accepts a bid from a peer outside its view on the same checks.

The mesh size a node paces itself by is estimated from *every* advert it
receives, kept or not (:class:`MeshSize`, a k-minimum-values sketch of the
senders' hashed ids), so it keeps growing past the view bound.

Pacing (:func:`advert_interval_for`): a node heartbeats once an interval of
``1.5 × est_nodes × 1000 / advert_rate_budget`` ms (between
``advert_interval_ms`` and ``advert_interval_max_ms``) passed without an
advert; its adverts on change take tokens refilled one per two intervals
(the worker's bucket). At most 1.5 adverts per interval in all, so each node
receives at most about ``advert_rate_budget`` adverts a second whatever the
mesh size (up to the size where the ceiling binds).
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from .params import CoreParams
from .wire import LEAVE_TTL_MS, MAX_ADVERT_TTL_MS, Advert

ClassKey = tuple[object, ...]


def advert_interval_for(params: CoreParams, est_nodes: int) -> int:
    """The heartbeat interval (ms) for a mesh of ``est_nodes`` nodes (us included)."""
    floor, ceiling = max(1, params.advert_interval_ms), params.advert_interval_max_ms
    budget = params.advert_rate_budget
    want = int(1500 * max(1, est_nodes) / budget) if budget > 0 else ceiling
    return max(floor, min(ceiling, want))


def advert_ttl_for(params: CoreParams, interval_ms: int) -> int:
    """The ``ttl_ms`` an advert sent at ``interval_ms`` carries: the same
    multiple of the interval as ``advert_ttl_ms`` is of ``advert_interval_ms``."""
    base = max(1, params.advert_interval_ms)
    ttl = params.advert_ttl_ms * max(interval_ms, base) // base
    return max(LEAVE_TTL_MS + 1, min(MAX_ADVERT_TTL_MS, ttl))  # never a leave notice


def capability_class(a: Advert) -> ClassKey:
    """What separates peers for the fit check, apart from cores and RAM (the
    eviction rule keeps the largest of each class)."""
    return (
        tuple(sorted(a.runtimes)),
        a.gpu_runtime,
        tuple(sorted((g.model, g.memory_mb) for g in a.gpus)),
        a.tier,
        a.network_allowed,
        tuple(sorted(a.images)),
        a.warm,
    )


def _id_hash(peer_id: str) -> float:
    """A peer id's position in [0, 1): the same on every node."""
    digest = hashlib.blake2b(peer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class MeshSize:
    """How many peers are alive, estimated from the adverts received.

    Keeps the ``k`` live peers with the smallest hashed ids (and when each
    one's advert expires). Below ``k`` peers the count is exact; beyond, the
    estimate is ``(k − 1) / h_k``, ``h_k`` the largest hash kept. Memory and
    work per advert are bounded by ``k``.
    """

    def __init__(self, k: int) -> None:
        self.k = max(2, k)
        self._sorted: list[tuple[float, str]] = []
        self._expires: dict[str, int] = {}

    def note(self, peer_id: str, expires_ms: int) -> None:
        """A live advert from ``peer_id``, valid until ``expires_ms``."""
        if peer_id in self._expires:
            self._expires[peer_id] = max(self._expires[peer_id], expires_ms)
            return
        h = _id_hash(peer_id)
        if len(self._sorted) >= self.k:
            if h >= self._sorted[-1][0]:
                return
            _, dropped = self._sorted.pop()
            del self._expires[dropped]
        bisect.insort(self._sorted, (h, peer_id))
        self._expires[peer_id] = expires_ms

    def forget(self, peer_id: str) -> bool:
        """``peer_id`` left the mesh (its leave notice): no longer counted.
        False if it was not counted."""
        if self._expires.pop(peer_id, None) is None:
            return False
        self._sorted.remove((_id_hash(peer_id), peer_id))
        return True

    def expire(self, now_ms: int) -> None:
        gone = {p for p, t in self._expires.items() if t <= now_ms}
        if gone:
            self._sorted = [e for e in self._sorted if e[1] not in gone]
            for p in gone:
                del self._expires[p]

    def estimate(self) -> int:
        """Live peers (not counting ourselves)."""
        n = len(self._sorted)
        if n < self.k:
            return n
        return max(n, int((self.k - 1) / max(self._sorted[-1][0], 1e-12)))


@dataclass(slots=True)
class PeerEntry:
    peer_id: str
    advert: Advert
    first_seen_ms: int
    last_seen_ms: int
    expires_ms: int
    cls: ClassKey = ()
    raw: bytes = b""
    """The advert's envelope as received (relayed to a newcomer, §7.8)."""


def _rank(e: PeerEntry) -> tuple[int, int, str]:
    """Eviction order within a class: fewest cores, then least RAM, first."""
    return (e.advert.cores, e.advert.ram_mb, e.peer_id)


class PeerTable:
    """The bounded view (``max_peers`` adverts) and the mesh-size estimate."""

    def __init__(self, max_peers: int, sketch_k: int = 256) -> None:
        assert max_peers > 0
        self.max_peers = max_peers
        self._peers: dict[str, PeerEntry] = {}
        self._by_class: dict[ClassKey, list[tuple[int, int, str]]] = {}
        """Each class's members as (cores, RAM, peer id), smallest first."""
        self.size = MeshSize(sketch_k)
        self.evicted = 0
        """Entries evicted (or newcomers not kept) because the view was full."""
        self._left: OrderedDict[str, int] = OrderedDict()
        """Peers whose leave notice we took, with its ``seq`` (at most
        ``max_peers``, oldest forgotten first): an advert of theirs sent before
        it, arriving late, brings no one back."""

    def update(
        self, peer_id: str, advert: Advert, now_ms: int, *, raw: bytes = b"", age_ms: int = 0
    ) -> bool:
        """Record an advert (``age_ms`` old when it reached us: a relayed one);
        False if it was not newer than what we hold, or the view is full and
        this peer lost to the eviction rule."""
        entry = self._peers.get(peer_id)
        if entry is not None and advert.seq <= entry.advert.seq and entry.expires_ms > now_ms:
            return False
        if advert.seq <= self._left.get(peer_id, -1):
            return False
        self._left.pop(peer_id, None)
        expires = now_ms + advert.ttl_ms - max(0, age_ms)
        self.size.note(peer_id, expires)
        cls = capability_class(advert)
        if entry is None:
            entry = PeerEntry(peer_id, advert, now_ms, now_ms, expires, cls, raw)
            if len(self._peers) >= self.max_peers and not self._make_room(entry):
                return False
            self._peers[peer_id] = entry
        else:
            self._unindex(entry)
            entry.advert, entry.last_seen_ms, entry.expires_ms = advert, now_ms, expires
            entry.cls, entry.raw = cls, raw
        bisect.insort(self._by_class.setdefault(cls, []), _rank(entry))
        return True

    def leave(self, peer_id: str, seq: int) -> bool:
        """``peer_id``'s leave notice numbered ``seq``: drop it from the view and
        the size estimate at once, and remember the notice. True if the peer
        was in either; False if it was in neither, or if an advert of theirs
        as new or newer is held (an old notice, replayed or late)."""
        entry = self._peers.get(peer_id)
        if entry is not None and seq <= entry.advert.seq:
            return False
        if seq <= self._left.get(peer_id, -1):
            return False
        self._left[peer_id] = seq
        self._left.move_to_end(peer_id)
        while len(self._left) > self.max_peers:
            self._left.popitem(last=False)
        if entry is not None:
            self._unindex(self._peers.pop(peer_id))
        return self.size.forget(peer_id) or entry is not None

    def _make_room(self, new: PeerEntry) -> bool:
        """Evict one entry by the rule in the module docstring; False when the
        newcomer itself is the one to go."""
        self.evicted += 1
        crowded, members = max(
            self._by_class.items(), key=lambda kv: len(kv[1]) + (kv[0] == new.cls)
        )
        victim = members[0][2]
        if new.cls == crowded and _rank(new) < members[0]:
            return False
        self._unindex(self._peers.pop(victim))
        return True

    def _unindex(self, entry: PeerEntry) -> None:
        members = self._by_class[entry.cls]
        del members[bisect.bisect_left(members, _rank(entry))]
        if not members:
            del self._by_class[entry.cls]

    def expire(self, now_ms: int) -> list[str]:
        """Drop peers whose advert expired; returns their ids."""
        gone = [p for p, e in self._peers.items() if e.expires_ms <= now_ms]
        for p in gone:
            self._unindex(self._peers.pop(p))
        self.size.expire(now_ms)
        return gone

    def full(self) -> bool:
        """The view holds as many adverts as it may: peers may exist outside it."""
        return len(self._peers) >= self.max_peers

    def est_nodes(self) -> int:
        """The mesh's estimated size, this node included."""
        return max(len(self._peers), self.size.estimate()) + 1

    def alive(self, now_ms: int) -> list[PeerEntry]:
        return [e for e in self._peers.values() if e.expires_ms > now_ms]

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def next_expiry_ms(self) -> int | None:
        return min((e.expires_ms for e in self._peers.values()), default=None)

    def __len__(self) -> int:
        return len(self._peers)
