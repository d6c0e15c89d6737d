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

The table keeps, as entries come and go, each class's members, how many
entries carry each shard count, and a time before which no entry expires;
until then every entry is alive, so the periodic expiry, the live list and
the shard count heard need no scan of the view (at 10,000 simulated nodes
those scans, every few seconds on every node, were a quarter of a run).

The mesh size a node paces itself by is estimated from *every* advert it
receives, kept or not (:class:`MeshSize`, a k-minimum-values sketch of the
senders' hashed ids), so it keeps growing past the view bound.

Pacing (:func:`advert_interval_for`): a node heartbeats once an interval of
``1.5 × shard_nodes × 1000 / advert_rate_budget`` ms (``shard_nodes`` the
estimated nodes of its shard, ``est_nodes / S``) (between
``advert_interval_ms`` and ``advert_interval_max_ms``) passed without an
advert; its adverts on change take tokens refilled one per two intervals
(the worker's bucket). At most 1.5 adverts per interval in all, so each node
receives at most about ``advert_rate_budget`` adverts a second whatever the
mesh size (up to the size where the ceiling binds).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

from .events import TOPIC_ADVERTS
from .params import CoreParams
from .wire import LEAVE_TTL_MS, MAX_ADVERT_SHARDS, MAX_ADVERT_TTL_MS, Advert

ClassKey = tuple[object, ...]
NEVER = 2**63
"""A time after every expiry (an empty view's earliest)."""

ADVERT_SHARD_PREFIX = TOPIC_ADVERTS + "/"
"""Topics of a sharded mesh: ``/meshd/adverts/1/<S>/<index>`` (§5.2)."""
TOPIC_MEMO = 1_024
"""Adverts topics whose parse is remembered (:func:`parse_advert_topic`, the
least recently used forgotten first): a node hears one or two, so every
advert it receives finds its topic there. A memo only: it changes no answer."""
ID_HASH_MEMO = 65_536
"""Peer ids whose hash positions are remembered (:func:`_id_hash`,
:func:`_size_hash`), the least recently used forgotten first: each advert
received asks for its sender's. A memo only: it changes no answer."""


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


def shard_of(peer_id: str, shards: int) -> int:
    """The shard (0 … ``shards`` − 1) of ``peer_id`` among ``shards``: the
    leading bits of its id's hash, so a shard splits into two and two merge
    into one as ``shards`` doubles and halves."""
    return min(shards - 1, int(_id_hash(peer_id) * shards))


def advert_topic(peer_id: str, shards: int) -> str:
    """The topic ``peer_id`` publishes its adverts on in a mesh of ``shards``
    shards: the plain adverts topic when there is one."""
    if shards <= 1:
        return TOPIC_ADVERTS
    return f"{ADVERT_SHARD_PREFIX}{shards}/{shard_of(peer_id, shards)}"


@functools.lru_cache(maxsize=TOPIC_MEMO)
def parse_advert_topic(topic: str) -> tuple[int, int] | None:
    """``(shards, index)`` of an adverts topic, or None if ``topic`` is none:
    ``shards`` a power of two within ``MAX_ADVERT_SHARDS``, ``index`` below it,
    both in plain decimal (memoised, :data:`TOPIC_MEMO`)."""
    if topic == TOPIC_ADVERTS:
        return 1, 0
    if not topic.startswith(ADVERT_SHARD_PREFIX):
        return None
    parts = topic[len(ADVERT_SHARD_PREFIX) :].split("/")
    if len(parts) != 2 or not all(p.isdigit() and p == str(int(p)) for p in parts):
        return None
    shards, index = int(parts[0]), int(parts[1])
    if not 2 <= shards <= MAX_ADVERT_SHARDS or shards & (shards - 1) or index >= shards:
        return None
    return shards, index


def shard_count_for(params: CoreParams, est_nodes: int, shards: int) -> int:
    """The shard count a node in ``shards`` shards moves to, one step at a
    time: double while a shard would hold more than ``advert_shard_nodes``
    nodes, halve while it would hold fewer than a quarter of it (so a split
    shard, half of a full one, stays split until it lost half its nodes)."""
    target = params.advert_shard_nodes
    if target <= 0:
        return 1
    if est_nodes > shards * target and shards < MAX_ADVERT_SHARDS:
        return shards * 2
    if shards > 1 and 4 * est_nodes < shards * target:
        return shards // 2
    return shards


def shard_count_fits(params: CoreParams, est_nodes: int, shards: int) -> bool:
    """Whether ``shards`` is one :func:`shard_count_for` would keep for a mesh
    of ``est_nodes`` (a count peers use that we may follow)."""
    return shard_count_for(params, est_nodes, shards) == shards


_last_classed: tuple[Advert | None, ClassKey] = (None, ())
"""The advert :func:`capability_class` saw last and its class: a simulator
hands one decoded advert to every node of its shard in turn (adverts are
frozen, so the same object has the same class)."""


def capability_class(a: Advert) -> ClassKey:
    """What separates peers for the fit check, apart from cores and RAM (the
    eviction rule keeps the largest of each class)."""
    global _last_classed
    if a is _last_classed[0]:
        return _last_classed[1]
    cls = _capability_class(a)
    _last_classed = (a, cls)
    return cls


def _capability_class(a: Advert) -> ClassKey:
    return (
        tuple(sorted(a.runtimes)),
        a.gpu_runtime,
        tuple(sorted((g.model, g.memory_mb) for g in a.gpus)),
        a.tier,
        a.network_allowed,
        tuple(sorted(a.images)),
        a.warm,
    )


@functools.lru_cache(maxsize=ID_HASH_MEMO)
def _id_hash(peer_id: str) -> float:
    """A peer id's position in [0, 1): the same on every node (memoised,
    :data:`ID_HASH_MEMO`)."""
    digest = hashlib.blake2b(peer_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@functools.lru_cache(maxsize=ID_HASH_MEMO)
def _size_hash(peer_id: str) -> float:
    """A second position in [0, 1), independent of :func:`_id_hash` (which
    places the peer in its shard): the size sketch's, so the peers it keeps
    of a shard are a fair sample of each half of it (memoised,
    :data:`ID_HASH_MEMO`)."""
    return _id_hash("size/" + peer_id)


class MeshSize:
    """How many peers are alive, estimated from the adverts received.

    Keeps every live peer in the counted range (a shard's, §5.2; the whole
    mesh by default) whose size hash (:func:`_size_hash`) is below a cut,
    and when each one's advert expires. The cut starts at 1 (the count is
    exact) and falls to the largest hash dropped whenever more than ``k``
    are kept, so at most ``k`` are; the range holds about ``kept / cut``
    peers and the mesh ``1 / width`` times that. The size hash is not the
    shard hash, so when the range halves (a split) the peers kept in the
    new half are all of its peers below the cut: the estimate holds at
    once. Memory and work per advert are bounded by ``k``.
    """

    def __init__(self, k: int) -> None:
        self.k = max(2, k)
        self._sorted: list[tuple[float, str]] = []
        self._expires: dict[str, int] = {}
        self._earliest = NEVER
        """No kept peer expires before this (a bound: ``expire`` skips its scan before it)."""
        self.cut = 1.0
        """Every live peer of the range with a size hash below this is kept."""
        self.lo, self.width = 0.0, 1.0
        """The range of shard hashes counted (a shard's, §5.2); the whole mesh by default."""

    def _in_range(self, peer_id: str) -> bool:
        return self.lo <= _id_hash(peer_id) < self.lo + self.width

    def set_range(self, lo: float, width: float) -> None:
        """Count only ids whose shard hash falls in ``[lo, lo + width)`` (the
        shard we hear) and scale the count by ``1 / width``; ids outside it
        are forgotten."""
        self.lo, self.width = lo, width
        kept = [e for e in self._sorted if self._in_range(e[1])]
        for _, p in set(self._sorted) - set(kept):
            del self._expires[p]
        self._sorted = kept

    def note(self, peer_id: str, expires_ms: int) -> None:
        """A live advert from ``peer_id``, valid until ``expires_ms``."""
        held = self._expires.get(peer_id)
        if held is not None:
            if expires_ms > held:
                self._expires[peer_id] = expires_ms
            return
        h = _size_hash(peer_id)
        if h >= self.cut or not self._in_range(peer_id):
            return
        bisect.insort(self._sorted, (h, peer_id))
        self._expires[peer_id] = expires_ms
        if expires_ms < self._earliest:
            self._earliest = expires_ms
        if len(self._sorted) > self.k:
            self.cut, dropped = self._sorted.pop()
            del self._expires[dropped]

    def forget(self, peer_id: str) -> bool:
        """``peer_id`` left the mesh (its leave notice): no longer counted.
        False if it was not counted."""
        if self._expires.pop(peer_id, None) is None:
            return False
        self._sorted.remove((_size_hash(peer_id), peer_id))
        return True

    def expire(self, now_ms: int) -> None:
        if now_ms < self._earliest:  # nothing kept expires yet
            return
        gone = {p for p, t in self._expires.items() if t <= now_ms}
        if gone:
            self._sorted = [e for e in self._sorted if e[1] not in gone]
            for p in gone:
                del self._expires[p]
        self._earliest = min(self._expires.values(), default=NEVER)

    def estimate(self, extra: int = 0) -> int:
        """Nodes in the whole mesh: the live peers of the range (those kept,
        divided by the cut), plus ``extra`` more in it (ourselves), scaled by
        the range's width."""
        return round((len(self._sorted) / self.cut + extra) / self.width)


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
        self._shard_votes: dict[int, int] = {}
        """How many entries' adverts carry each shard count (none at 0)."""
        self._earliest = NEVER
        """No entry expires before this (a bound, exact after ``expire``): before
        it every entry is alive, and ``alive``, ``expire`` and ``shard_votes``
        need no scan."""
        self.size = MeshSize(sketch_k)
        self.evicted = 0
        """Entries evicted (or newcomers not kept) because the view was full."""
        self._left: OrderedDict[str, int] = OrderedDict()
        """Peers whose leave notice we took, with its ``seq`` (at most
        ``max_peers``, oldest forgotten first): an advert of theirs sent before
        it, arriving late, brings no one back."""
        self.shards = 1
        """The advert shard count we are in (§5.2): beyond 1, peers of other
        shards exist that we never hear of."""
        self.shards_from: int | None = None
        """The count we left, while we still publish and listen on its topic too."""

    def update(
        self, peer_id: str, advert: Advert, now_ms: int, *, raw: bytes = b"", age_ms: int = 0
    ) -> bool:
        """Record an advert (``age_ms`` old when it reached us: a relayed one);
        False if it was not newer than what we hold, or the view is full and
        this peer lost to the eviction rule."""
        entry = self._peers.get(peer_id)
        if entry is not None and advert.seq <= entry.advert.seq and entry.expires_ms > now_ms:
            return False
        left = self._left
        if left and peer_id in left:
            if advert.seq <= left[peer_id]:
                return False
            del left[peer_id]
        expires = now_ms + advert.ttl_ms - (age_ms if age_ms > 0 else 0)
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
        self._index(entry)
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
        # the class holding most entries, the newcomer counted in (the first such, as max() picks)
        most, new_cls = -1, new.cls
        crowded: ClassKey = ()
        members: list[tuple[int, int, str]] = []
        for cls, held in self._by_class.items():
            n = len(held) + (cls == new_cls)
            if n > most:
                most, crowded, members = n, cls, held
        victim = members[0][2]
        if new.cls == crowded and _rank(new) < members[0]:
            return False
        self._unindex(self._peers.pop(victim))
        return True

    def _index(self, entry: PeerEntry) -> None:
        """Count an entry added or renewed: its class's members, its shard
        count's votes, the earliest expiry."""
        bisect.insort(self._by_class.setdefault(entry.cls, []), _rank(entry))
        votes, shards = self._shard_votes, entry.advert.shards
        votes[shards] = votes.get(shards, 0) + 1
        if entry.expires_ms < self._earliest:
            self._earliest = entry.expires_ms

    def _unindex(self, entry: PeerEntry) -> None:
        members = self._by_class[entry.cls]
        del members[bisect.bisect_left(members, _rank(entry))]
        if not members:
            del self._by_class[entry.cls]
        votes, shards = self._shard_votes, entry.advert.shards
        if votes[shards] == 1:
            del votes[shards]
        else:
            votes[shards] -= 1

    def expire(self, now_ms: int) -> list[str]:
        """Drop peers whose advert expired; returns their ids."""
        gone: list[str] = []
        if now_ms >= self._earliest:
            gone = [p for p, e in self._peers.items() if e.expires_ms <= now_ms]
            for p in gone:
                self._unindex(self._peers.pop(p))
            self._earliest = min((e.expires_ms for e in self._peers.values()), default=NEVER)
        self.size.expire(now_ms)
        return gone

    def full(self) -> bool:
        """Peers may exist outside the view: it holds as many adverts as it
        may, or the mesh is sharded and we hear only our shard (§5.2)."""
        return self.shards > 1 or len(self._peers) >= self.max_peers

    def est_nodes(self) -> int:
        """The mesh's estimated size, this node included."""
        return max(len(self._peers) + 1, self.size.estimate(extra=1))

    def shard_nodes(self) -> int:
        """The estimated nodes of our shard, us included (whose adverts we
        receive, and who receive ours: what pacing is by)."""
        return max(1, -(-self.est_nodes() // self.shards))

    def set_shards(self, own_id: str, shards: int, shards_from: int | None) -> None:
        """Move to ``shards`` shards (``shards_from`` the count we still serve
        too, or None); the size sketch counts the new shard's range at once
        (after a split it holds that half already; after a merge it lacks the
        other half until its heartbeats come, §5.2). Peers of other shards
        stay in the view until their adverts expire."""
        self.shards, self.shards_from = shards, shards_from
        self.size.set_range(shard_of(own_id, shards) / shards, 1.0 / shards)

    def advert_topics(self, own_id: str) -> tuple[str, ...]:
        """The topics we publish our adverts on and listen to: our shard's,
        and the old one's during a change (§5.2)."""
        now = advert_topic(own_id, self.shards)
        if self.shards_from is None:
            return (now,)
        return (now, advert_topic(own_id, self.shards_from))

    def alive(self, now_ms: int) -> list[PeerEntry]:
        if now_ms < self._earliest:  # every entry is
            return list(self._peers.values())
        return [e for e in self._peers.values() if e.expires_ms > now_ms]

    def shard_votes(self, now_ms: int, since_ms: int | None = None) -> dict[int, int]:
        """How many live entries' adverts carry each shard count (§5.2); with
        ``since_ms``, only adverts issued then or later (issued: when the
        entry's TTL began, a relayed advert's age taken off)."""
        if since_ms is None and now_ms < self._earliest:
            return dict(self._shard_votes)
        votes: dict[int, int] = {}
        for e in self.alive(now_ms):
            if since_ms is None or e.expires_ms - e.advert.ttl_ms >= since_ms:
                votes[e.advert.shards] = votes.get(e.advert.shards, 0) + 1
        return votes

    def get(self, peer_id: str) -> PeerEntry | None:
        return self._peers.get(peer_id)

    def next_expiry_ms(self) -> int | None:
        return min((e.expires_ms for e in self._peers.values()), default=None)

    def __len__(self) -> int:
        return len(self._peers)
