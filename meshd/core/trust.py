"""Trust: when to replicate, how results are judged, reputation and bans.

Theory of operation
-------------------
*Evidence.* This node's own signed observations are the primary evidence:
``valid`` / ``invalid`` (from replicated comparisons), ``completed`` (an
unverified result) and ``abandoned`` (lost lease, executor error). Each adds a
signed weight to a *score* and its absolute value to a *mass*; both decay with
``reputation_half_life_ms``, so old sins and old merits fade together.

*Reputation* (in [-1, 1], 0 for a stranger)::

    rep = (S_own + S_remote) / (M_own + M_remote + reputation_prior_mass)

``S_remote``/``M_remote`` come from gossiped :class:`Attestation` records
(``observe_remote``): each weighs ``attestation_weight × rep(issuer)``, only
issuers with a positive reputation that are not banned count, and
``M_remote`` is capped at ``attestation_max_mass`` — with the prior that
bounds what attestations alone can do to a stranger to ``±cap/(cap+prior)``,
above the ban threshold, so slander can lower a peer's rank but never ban it.

*Issuer credibility* is transitive but fades along chains: an issuer's
attestations count with weight ``c = min(1, rep(issuer) / attestation_full_reputation)``.
One own verified result gives a peer ``1/(1+prior) = 0.2`` (full weight by
default); a peer known only from attestations needs a remote mass of about
``prior × full/(1−full)`` (≈ 1, several attestations from credible issuers)
to get there, and a peer vouched for by a single weak issuer gets almost
nothing (``0.25 × 0.2 / 4.05 ≈ 0.012`` → ``c ≈ 0.06``). A Sybil ring therefore
gains little credibility from one member that did honest work: each member
must itself be vouched for by the mesh.

*Uptime* (from adverts): every ``peer_score_interval_ms`` the node samples
each peer it holds evidence for or sees advertising — up (advert alive) or
down — into an availability ``a`` (an exponential moving average over
``uptime_window_samples`` samples). It enters the reputation as one more
piece of evidence of fixed mass ``uptime_mass`` and score
``uptime_mass × (2a − 1)``: a peer that is always up gains at most
``uptime_mass/(uptime_mass + prior)`` (0.11), a peer that is mostly down
loses as much — a tiebreaker between otherwise equal peers, never enough to
ban, and not counted in an issuer's credibility (being online vouches for
nobody).

*Bans.* A peer is banned while ``rep < ban_reputation``, or for ever once it
was caught equivocating (:meth:`ban_forever`, proof kept by credits.py). A
banned peer gets no awards and its messages are dropped (``node._open``).

*One-strike conviction.* One own ``invalid`` verdict (a replica majority
proved the worker's result wrong) convicts it: banned, reputation -1, for
``conviction_ms`` — whatever its record. A patient liar (honest until
trusted, then wrong on a share ``l`` of its jobs) facing the floor ``f`` gets
``(1−f)/f`` wrong results accepted on average before its first replica
catches it (9 at 10%), and no more: without conviction it would be honest
again, re-earn trust and repeat. The origin then audits what it accepted from
it unreplicated (audit.py). The conviction reaches other origins as the
``invalid`` attestation the verdict publishes (credits.py): a credible
issuer's attestation resets the receiver's own streak too (scaled by the
issuer's credibility), so every origin verifies the worker anew — but
attestations never ban. A convicted liar that returns under a new identity is
a stranger: verified ``trust_after_valid`` times before it is trusted.

*Adaptive replication* (BOINC style, :meth:`replication_probability`): a
worker is *trusted* after ``trust_after_valid`` consecutive valid results;
one invalid result resets the streak. The streak is this node's own
``valid_streak`` plus a *remote streak* earned from other origins'
attestations, so that in a mesh of many origins a worker is verified about
``trust_after_valid`` times in total, not that many times per origin (which
would replicate nearly every job of a large mesh). A valid attestation adds
``c`` (the issuer's credibility) to the remote streak, at most
``attestation_streak_per_issuer`` per issuer, so a worker needs several
credible origins to vouch for it; an invalid one takes away
``c × trust_after_valid`` (a credible issuer's proof resets it). Once this
node has itself seen an invalid result from a worker, only its own streak
counts for it. Remote evidence can thus make a worker *trusted* (replicated
at the floor rate), never exempt from verification: the worst a lying
vouching ring buys is the floor rate a patient liar gets anyway. Untrusted: replicate with
``untrusted_replication``. Trusted: ``max(replication_fraction, 1/streak)``
(BOINC's 1/CV, floored by the base fraction everyone gets). With the defaults
(10, 5%) a newly trusted worker is replicated with 1/10, falling to the floor
at a streak of 20. The floor is what a patient liar (honest until trusted,
then lying on a fraction ``l`` of its jobs) faces: it is caught after about
``1/(floor × l)`` results (at most 40 for a half-liar at 5%), having had
``(1−floor)/floor`` lies accepted — which conviction and the audit bound
(below, and specs/CREDITS.md §4.1, §11.1).

*Standing changes* (a ban flip or a reputation move of at least
``peer_score_min_change`` since last reported) are handed to ``listener`` —
the node turns them into ``SetPeerScore`` effects.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from .params import CoreParams

OUTCOMES = ("valid", "completed", "invalid", "abandoned")


def outcome_weight(params: CoreParams, outcome: str) -> float:
    """Signed evidence weight of one outcome."""
    return {
        "valid": 1.0,
        "completed": params.completed_weight,
        "invalid": -params.invalid_weight,
        "abandoned": -1.0,
        "overclaimed": -params.overclaim_weight,
    }[outcome]


@dataclass
class Evidence:
    score: float = 0.0
    """Signed sum of decayed own outcome weights."""
    mass: float = 0.0
    """Sum of decayed absolute own weights."""
    remote_score: float = 0.0
    """Signed sum of decayed attestation weights (mass-capped)."""
    remote_mass: float = 0.0
    updated_ms: int = 0
    valid_streak: int = 0
    remote_streak: float = 0.0
    """Credibility-weighted valid attestations since the last invalid one."""
    remote_by: dict[str, float] | None = None
    """Per-issuer share of ``remote_streak`` (bounded by ``max_streak_issuers``)."""
    invalid: int = 0
    valid: int = 0
    uptime: float | None = None
    """Availability in [0, 1] sampled from adverts (None until first sampled)."""
    reported: tuple[float, bool] | None = None
    """(reputation, banned) last handed to the listener."""
    convicted_until: int = 0
    """While ``now_ms`` is before this, the peer stands convicted (own proof of
    a wrong result): banned, reputation -1."""


StandingListener = Callable[[str, float, bool], None]


class Trust:
    def __init__(self, params: CoreParams) -> None:
        self.params = params
        self._ev: dict[str, Evidence] = {}
        self._banned_forever: dict[str, str] = {}
        self.listener: StandingListener | None = None

    # ------------------------------------------------------------ evidence

    def _decay(self, ev: Evidence, now_ms: int) -> None:
        dt = now_ms - ev.updated_ms
        if dt <= 0:
            return
        f = math.pow(0.5, dt / self.params.reputation_half_life_ms)
        ev.score, ev.mass = ev.score * f, ev.mass * f
        ev.remote_score, ev.remote_mass = ev.remote_score * f, ev.remote_mass * f
        ev.updated_ms = now_ms

    def _entry(self, peer: str, now_ms: int) -> Evidence:
        ev = self._ev.get(peer)
        if ev is None:
            if len(self._ev) >= self.params.max_trust_entries:
                self._evict(now_ms)
            ev = self._ev[peer] = Evidence(updated_ms=now_ms)
        self._decay(ev, now_ms)
        return ev

    def _evict(self, now_ms: int) -> None:
        """Drop the tenth of entries with the least evidence (never a banned peer's)."""

        def weight(item: tuple[str, Evidence]) -> float:
            p, ev = item
            return math.inf if self.banned(p, now_ms) else ev.mass + ev.remote_mass

        victims = sorted(self._ev.items(), key=weight)[: max(1, len(self._ev) // 10)]
        for p, _ in victims:
            del self._ev[p]

    def observe(self, peer: str, outcome: str, now_ms: int, *, weight: float | None = None) -> None:
        """Record one of this node's own observations of ``peer`` (``weight``:
        the evidence's magnitude when it is graded, as an over-claim is)."""
        ev = self._entry(peer, now_ms)
        w = outcome_weight(self.params, outcome)
        if weight is not None:
            w = math.copysign(weight, w)
        ev.score += w
        ev.mass += abs(w)
        if outcome == "valid":
            ev.valid_streak += 1
            ev.valid += 1
        elif outcome == "invalid":
            ev.valid_streak = 0
            ev.invalid += 1
            ev.convicted_until = max(ev.convicted_until, now_ms + self.params.conviction_ms)
        self._report(peer, ev, now_ms)

    def convicted(self, peer: str, now_ms: int) -> bool:
        """Whether this node's own verdict proved ``peer`` wrong within ``conviction_ms``."""
        ev = self._ev.get(peer)
        return ev is not None and now_ms < ev.convicted_until

    def sample_uptime(self, peer: str, up: bool, now_ms: int) -> None:
        """One availability sample (the node takes one per peer per standing tick)."""
        ev = self._entry(peer, now_ms)
        x = 1.0 if up else 0.0
        ev.uptime = (
            x
            if ev.uptime is None
            else ev.uptime + (x - ev.uptime) / self.params.uptime_window_samples
        )

    def uptime_sampled(self) -> list[str]:
        """Peers with an availability record (sampled down when they stop advertising)."""
        return [p for p, ev in self._ev.items() if ev.uptime is not None]

    def credibility(self, issuer: str, now_ms: int) -> float:
        """Weight in [0, 1] of ``issuer``'s attestations (0: they do not count)."""
        rep = self._evidence_reputation(issuer, now_ms, uptime=False)
        if rep <= 0.0 or self.banned(issuer, now_ms):
            return 0.0
        return min(1.0, rep / self.params.attestation_full_reputation)

    def observe_remote(self, issuer: str, subject: str, outcome: str, now_ms: int) -> bool:
        """Fold in a gossiped attestation; False if the issuer does not count."""
        p = self.params
        cred = self.credibility(issuer, now_ms) if issuer != subject else 0.0
        if cred <= 0.0:
            return False
        issuer_rep = self.reputation(issuer, now_ms)
        ev = self._entry(subject, now_ms)
        w = outcome_weight(p, outcome) * p.attestation_weight * issuer_rep
        ev.remote_score += w
        ev.remote_mass += abs(w)
        cap = p.attestation_max_mass
        if ev.remote_mass > cap:
            scale = cap / ev.remote_mass
            ev.remote_score, ev.remote_mass = ev.remote_score * scale, cap
        if outcome == "valid":
            by = ev.remote_by if ev.remote_by is not None else {}
            ev.remote_by = by
            room = p.attestation_streak_per_issuer - by.get(issuer, 0.0)
            if room > 0 and (issuer in by or len(by) < p.max_streak_issuers):
                add = min(room, cred)
                by[issuer] = by.get(issuer, 0.0) + add
                ev.remote_streak += add
        elif outcome == "invalid":
            ev.remote_streak = max(0.0, ev.remote_streak - cred * p.trust_after_valid)
            if ev.remote_streak == 0.0:
                ev.remote_by = None
            # Another origin's conviction: this node verifies the worker anew
            # (a credible issuer's proof resets the own streak; never a ban).
            ev.valid_streak = math.floor(ev.valid_streak * (1.0 - cred))
        self._report(subject, ev, now_ms)
        return True

    # ------------------------------------------------------------ standing

    def reputation(self, peer: str, now_ms: int) -> float:
        """In [-1, 1]; 0 for a stranger, -1 for a proven equivocator."""
        return self._evidence_reputation(peer, now_ms)

    def _evidence_reputation(
        self, peer: str, now_ms: int, *, own: bool = True, uptime: bool = True
    ) -> float:
        """The reputation ratio over the chosen evidence: remote always, own
        observations and the uptime term unless left out."""
        if peer in self._banned_forever:
            return -1.0
        ev = self._ev.get(peer)
        if ev is None:
            return 0.0
        if own and now_ms < ev.convicted_until:
            return -1.0
        f = self._factor(ev, now_ms)
        score, mass = ev.remote_score * f, ev.remote_mass * f
        if own:
            score, mass = score + ev.score * f, mass + ev.mass * f
        if uptime and own and ev.uptime is not None:
            um = self.params.uptime_mass
            score += um * (2.0 * ev.uptime - 1.0)
            mass += um
        return _clamp(score / (mass + self.params.reputation_prior_mass))

    def rank_reputation(self, peer: str, now_ms: int) -> float:
        """What bid ranking uses: the reputation, or the remote evidence alone when
        that is worse — a worker other origins caught lying is avoided even by an
        origin it happened to be honest with (bans still need own evidence)."""
        rep = self.reputation(peer, now_ms)
        ev = self._ev.get(peer)
        if ev is None or ev.remote_score >= 0.0:
            return rep
        return min(rep, self._evidence_reputation(peer, now_ms, own=False))

    def _factor(self, ev: Evidence, now_ms: int) -> float:
        dt = max(0, now_ms - ev.updated_ms)
        return math.pow(0.5, dt / self.params.reputation_half_life_ms) if dt else 1.0

    def banned(self, peer: str, now_ms: int) -> bool:
        if peer in self._banned_forever:
            return True
        ev = self._ev.get(peer)
        if ev is None:
            return False
        return (
            now_ms < ev.convicted_until
            or self.reputation(peer, now_ms) < self.params.ban_reputation
        )

    def ban_forever(self, peer: str, reason: str, now_ms: int) -> None:
        """Ban on proof (equivocation); survives decay. Bounded like the evidence table."""
        if peer in self._banned_forever:
            return
        if len(self._banned_forever) >= self.params.max_trust_entries:
            self._banned_forever.pop(next(iter(self._banned_forever)))
        self._banned_forever[peer] = reason
        self._report(peer, self._entry(peer, now_ms), now_ms)

    def ban_reason(self, peer: str) -> str | None:
        return self._banned_forever.get(peer)

    def _report(self, peer: str, ev: Evidence, now_ms: int) -> None:
        rep, ban = self.reputation(peer, now_ms), self.banned(peer, now_ms)
        last = ev.reported
        if (
            last is not None
            and last[1] == ban
            and abs(last[0] - rep) < self.params.peer_score_min_change
        ):
            return
        ev.reported = (rep, ban)
        if self.listener is not None:
            self.listener(peer, rep, ban)

    def refresh(self, now_ms: int) -> None:
        """Re-check every peer's standing (decay can lift a ban)."""
        for peer, ev in list(self._ev.items()):
            if ev.reported is not None:
                self._report(peer, ev, now_ms)

    # ------------------------------------------------------------ replication

    def streak(self, peer: str) -> float:
        """Own consecutive valid results plus the remote streak (unless this node
        itself has caught the peer lying: then its own streak alone counts)."""
        ev = self._ev.get(peer)
        if ev is None:
            return 0.0
        return ev.valid_streak + (ev.remote_streak if ev.invalid == 0 else 0.0)

    def trusted(self, peer: str) -> bool:
        return self.streak(peer) >= self.params.trust_after_valid

    def replication_probability(self, worker: str) -> float:
        """Chance that a job given to ``worker`` is also run elsewhere for comparison."""
        p = self.params
        streak = self.streak(worker)
        if streak < p.trust_after_valid:
            return max(p.replication_fraction, p.untrusted_replication)
        return min(1.0, max(p.replication_fraction, 1.0 / streak))

    def should_replicate(self, worker: str, rng: random.Random) -> bool:
        return rng.random() < self.replication_probability(worker)

    def snapshot(self, now_ms: int) -> dict[str, dict[str, float | int | bool | None]]:
        return {
            p: {
                "reputation": self.reputation(p, now_ms),
                "valid_streak": ev.valid_streak,
                "remote_streak": round(ev.remote_streak, 3),
                "uptime": None if ev.uptime is None else round(ev.uptime, 3),
                "valid": ev.valid,
                "invalid": ev.invalid,
                "trusted": self.trusted(p),
                "banned": self.banned(p, now_ms),
            }
            for p, ev in self._ev.items()
        }


def _clamp(x: float) -> float:
    return max(-1.0, min(1.0, x))
