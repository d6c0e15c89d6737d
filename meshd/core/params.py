"""Protocol parameters: every bound the core keeps, in one frozen object.

Rules:
- Every queue, cache, window, retry count and timeout the core uses is a
  field here with a documented default. ``specs/PROTOCOL.md`` has the same
  table; ``tests/test_spec_params.py`` keeps the two in step.
- Units are last in names (``_ms``, ``_bytes``, ``_s``).
- Overrides come from ``config.toml``'s ``[params]`` table via
  :meth:`CoreParams.with_overrides`, which rejects unknown names and bad types.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from typing import Any

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class CoreParams:
    # --- adverts, liveness and the peer view (specs/PROTOCOL.md §7.1, §6)
    advert_interval_ms: int = 2_000
    """Shortest heartbeat interval: a node re-publishes its advert (also its
    heartbeat) at least this often only on a small mesh; the interval in force
    is ``1.5 × est_nodes × 1000 / advert_rate_budget`` ms within this and
    ``advert_interval_max_ms`` (``meshd.core.peers.advert_interval_for``)."""
    advert_ttl_ms: int = 10_000
    """An advert's validity at the shortest interval; it scales with the
    interval in force (``ttl_ms = interval × advert_ttl_ms / advert_interval_ms``,
    at most an hour), so a peer is gone after the same number of missed
    heartbeats on any mesh. Receivers honour the ``ttl_ms`` the sender put in."""
    advert_interval_max_ms: int = 720_000
    """Longest heartbeat interval, however large the mesh (with the default
    TTL ratio, a silent peer leaves the others' views within an hour, the
    longest TTL the wire allows)."""
    advert_rate_budget: float = 1.5
    """Adverts per second a node is willing to receive from the nodes it
    hears (its advert shard's, §5.2): every node keeps its own adverts,
    heartbeats (one per interval) and changes (one per two intervals)
    together, at most ``advert_rate_budget / est_nodes`` a second, so each
    node receives at most about this many (two thirds of it on a quiet mesh)
    while its shard is under ``advert_rate_budget × advert_interval_max_ms /
    1500`` nodes (720), which ``advert_shard_nodes`` (500) keeps it. At the
    9–10.5 ms a received advert costs a daemon on a quiet machine
    (``tests/bench/bench_advert_cost.py``, the slope of CPU over adverts
    received), 1.5 a second is at most 1.6% of a core, whatever the mesh's
    size (issue 14's target: 2% at 1,000 nodes)."""
    advert_burst: int = 3
    """Adverts a node may publish back to back on changes (turning warm or
    cold, free slots crossing zero, images, price or runtimes changing) before
    their rate (one per two heartbeat intervals) applies; a change beyond it
    waits for the next token. Three: a starting node's first advert and its
    turning warm take two, and one is left for its first change."""
    advert_view_max: int = 128
    """Peer view bound: adverts kept (an origin scans them at each submit and
    offer, about 10 µs each in the simulator's profile). When it is full, the entry evicted is the
    one with the fewest cores (then RAM, then the smallest peer id) among the
    capability class (runtimes, GPUs, tier, network, images, warmth) that
    holds most entries, so each class keeps its largest machines and the
    refusal at submit stays right while the mesh has fewer classes than this."""
    mesh_size_sketch: int = 256
    """Peers whose hashed ids the mesh-size estimate keeps at most (those of
    its shard below a falling cut: a k-minimum-values sketch, about
    ``1/sqrt(this)`` relative error beyond it, exact below it)."""
    advert_pull_peers: int = 3
    """A newcomer (a node just started) asks this many of the first peers it
    connects to for the adverts they hold (``advert_pull``, §7.8), so it sees
    the mesh at once rather than after the others' next heartbeats. 0 turns
    it off."""
    advert_pull_max: int = 64
    """Adverts one ``advert_table`` answer carries at most (also kept under
    ``max_message_bytes``): the answering peer's freshest."""
    advert_shard_nodes: int = 500
    """Most nodes one advert shard should hold (§5.2): a node splits its shard
    in two (doubles its shard count ``S``) once its estimate puts more than
    this many nodes in it, and merges back (halves ``S``) below a quarter of
    it, so a node receives the adverts of at most about this many peers
    however large the mesh. A mesh below it has one shard, the plain adverts
    topic. 0 turns sharding off. Keep it under ``advert_rate_budget ×
    advert_interval_max_ms / 1500`` (720), where the heartbeat's ceiling
    would start to bind and the adverts a node receives to grow with its
    shard."""
    advert_shard_transition_ms: int = 1_440_000
    """After its shard count changes, a node keeps publishing and listening on
    its old shard's topic as well for this long, and changes it no sooner
    again: every peer of the new shard heartbeats in that time (two of the
    longest intervals, ``advert_interval_max_ms``), so no one disappears."""

    # --- message acceptance
    max_message_bytes: int = 64 * 1024
    """Largest signed envelope accepted on gossip or a direct stream (blobs excepted)."""
    max_clock_skew_ms: int = 30_000
    """A message stamped further in the future than this is rejected."""
    max_message_age_ms: int = 120_000
    """A message older than this is rejected as stale (replay window)."""
    rejections_kept: int = 100
    """Newest refused peer inputs kept with their detail and the peer at fault."""
    replay_cache_size: int = 65_536
    """(sender, nonce) pairs remembered to reject replays inside the window."""
    local_messages_per_step: int = 64
    """Messages between this node's own roles (its origin and its own worker,
    §8.5) delivered in-process within one ``Node.step``; the rest wait for the
    next step, which is due at once (``Node.next_deadline``)."""
    self_run_grace_ms: int = 5_000
    """How long after it started a node's own worker is no candidate for its
    own jobs, even when no peer's advert fits (§8.5): time to hear the mesh —
    dial the bootstrap peers, join the adverts topic and receive at least one
    round of adverts (``advert_interval_ms``). Keep it above
    ``advert_interval_ms``. A job offered meanwhile waits for it to end; the
    wait does not count against its queue timeout."""

    # --- placement
    bid_window_ms: int = 250
    """Shortest bid window: how long the origin waits for bids before ranking
    what it has, on a mesh that answers quickly."""
    bid_window_max_ms: int = 15_000
    """Longest bid window. The window doubles after a round in which candidates
    existed but no bid arrived in time, and grows with the bid delays the
    origin measured lately (``bid_window_factor``), up to this. A round closes
    early once every candidate answered, so a long ceiling costs nothing on a
    quick mesh; on a busy one (bids 2 to 10 s late) a short one closed every
    round empty and re-offered it: the burst livelock."""
    bid_window_factor: float = 1.5
    """The window is at least this × the 90th percentile of the last
    ``bid_delay_samples`` bid delays (offer published → bid received). It
    closes early when every candidate answered, so a longer window only costs
    time when a candidate stays silent; a short one on a loaded mesh hands the
    job to whoever answers first (the 6-daemon test on 2 cores: one worker
    took 14 of 20 burst jobs with a fixed 250 ms window)."""
    bid_delay_samples: int = 64
    """Recent bid delays the origin keeps to size its windows."""
    saturated_hold_max_ms: int = 15_000
    """Longest a round whose bidders all hold as many of the origin's runs as
    they have slots is kept open (counted from the offer) for a less loaded
    candidate that has not answered. It ends earlier when such a candidate
    bids, or when one of the origin's runs on a bidder ends (that bidder could
    then start the job at once)."""
    bids_enough: int = 8
    """The window closes early once this many bids per needed worker arrived
    (or every known candidate answered). More bids rank better (the simulator's
    1,000-node load run: 1.36× the omniscient mean at 2, 1.11× at 8, 1.13× at 16)."""
    silent_rounds: int = 5
    """A live candidate that let this many of our offer rounds in a row close
    without its bid or decline while another candidate's answer arrived (and
    sent us no direct message meanwhile) cannot reach us, once the silence
    also lasted ``silent_after_ms`` (§8.6): it is no candidate and is named
    in our offers' ``exclude`` for ``silent_exclude_ms``."""
    silent_after_ms: int = 30_000
    """Shortest silence (from the first of those rounds) that marks a
    candidate unable to reach us: a slow or busy worker answers, late or with
    a decline, well within it."""
    silent_exclude_ms: int = 60_000
    """How long a candidate marked unable to reach us is left out of our
    rounds before it is a candidate again (any direct message from it ends
    the mark at once)."""
    late_bid_window_ms: int = 50
    """A bid that missed its round, for a job still waiting for a worker, opens
    a window to collect other late bids before ranking (no new offer): this
    long, or until the offer is as old as the learned window, whichever ends
    later (at most ``bid_window_max_ms``)."""
    reoffer_base_ms: int = 1_000
    """First delay before a job with no usable bid is offered again."""
    reoffer_max_ms: int = 15_000
    """Cap of the exponential re-offer back-off."""
    max_queue_time_ms: int = 3_600_000
    """A job nobody takes fails after waiting this long (with the declines): the
    default, and the cap, of the queue timeout a submit may give (``mesh submit
    --queue-timeout``)."""
    max_attempts: int = 4
    """Execution attempts per job (first run plus retries) before it fails."""
    job_fault_runs: int = 2
    """Runs that fail by the job's own fault (nonzero exit, its timeout, out of
    memory, output over the cap, an input it named that cannot be fetched)
    after which the job fails: the first run plus one confirming run elsewhere."""
    work_history_images: int = 256
    """Images whose earlier runs' work (GFLOP) the origin remembers, to estimate
    jobs that give no ``estimated_flops`` (least recently used dropped first)."""
    work_history_runs: int = 8
    """Succeeded runs remembered per image; the estimate is their median."""
    default_job_gflop: float = 100.0
    """Work assumed for a job with no ``estimated_flops`` and no earlier run of
    its image (about 20 s on a 5 GFLOPS core): a stated guess, never the timeout."""
    max_declines_kept: int = 64
    """Decline reasons kept per job, for `mesh job` ("why nobody took it")."""
    max_bids_kept: int = 64
    """Bids kept per offer attempt."""
    startup_overhead_s: float = 1.0
    """Added to every duration estimate (container start, input fetch)."""
    max_image_bytes: int = 1024 * 1024 * 1024
    """Largest job image (its ``docker save`` archive) this node serves as an
    origin or fetches as a worker; an offer whose image is larger and absent
    here is declined. At most the blob store's largest blob (1 GiB): the
    archive travels in ranges, so no message bound limits it."""
    image_transfer_bytes_per_s: float = 20.0 * 1024 * 1024
    """The rate a worker assumes for fetching and loading a job image it
    lacks: the transfer's share of its bid's expected start."""
    max_image_holders: int = 4
    """Peers besides the origin a worker asks for a travelling image's
    archive: those whose live advert lists the archive
    (``Advert.image_archives``, specs/PROTOCOL.md §5.1), at most this many."""
    run_time_initial_s: float = 5.0
    """A worker's guess at its average run time before it has finished one
    (how long each award queued ahead of a new one makes it wait)."""
    run_time_weight: float = 0.2
    """Weight of each finished run in that moving average (0 < w ≤ 1)."""

    # --- leases and execution
    executor_failures_cold: int = 3
    """Failed health checks (or executor faults) in a row that turn a warm
    node cold; a node not yet warm stays cold after the first."""
    lease_ms: int = 15_000
    """A worker that sends no heartbeat for this long loses the job. An award
    whose acknowledgement timed out still counts against its worker for this
    long unless the worker answers first (§8.4.1)."""
    heartbeat_interval_ms: int = 3_000
    """Worker → origin heartbeat period while a job is held."""
    log_push_ms: int = 200
    """A running job's output goes to its origin in an early heartbeat at most
    this long after it was read (so `mesh logs -f` shows a line within it plus
    a round trip), rather than waiting for the next periodic heartbeat."""
    result_resend_ms: int = 2_000
    """A worker re-sends an unacknowledged result this often (until lease end)."""
    award_ack_timeout_ms: int = 5_000
    """An award not accepted within this is treated as refused, for a peer
    with no measured round trip yet; afterwards the time-out follows that
    peer's round trips (``meshd.core.rtt``: smoothed RTT + 4 × its variation,
    doubled after each time-out), between the two bounds below."""
    award_ack_timeout_min_ms: int = 1_000
    """Floor of the adaptive award time-out (a quick peer still gets time for
    a durable log append and a busy moment)."""
    award_ack_timeout_max_ms: int = 30_000
    """Ceiling of the adaptive award time-out, and of the slack a lease adds
    for a slow peer's round trip."""
    rtt_peers_kept: int = 4_096
    """Peers whose round-trip estimate is kept (least recently sampled dropped)."""
    max_offers_in_flight: int = 16
    """Most offer rounds an origin has open at once; further jobs wait their
    turn in submission order (``offers_deferred``) instead of flooding the
    mesh with offers and bids it cannot answer in time. The limit in force
    adapts below this (additive increase on each acknowledged award, halved
    on a sign of congestion: an award time-out, a round no candidate answered
    in time, a busy refusal; at most once per ``congestion_cooldown_ms``)."""
    congestion_cooldown_ms: int = 1_000
    """Least time between two halvings of the open-round limit."""
    max_awards_in_flight: int = 16
    """Awards an origin has sent and not yet seen acknowledged; no new round
    opens while this many wait."""
    reoffer_jitter: float = 0.2
    """Each re-offer back-off is drawn uniformly within ± this fraction, so
    jobs that failed together do not come back together."""
    worker_busy_wait_ms: int = 2_000
    """A worker whose inbox makes messages wait longer than this (reported by
    the shell, ``InboxLoad``) declines offers and refuses awards as busy
    rather than accepting work it cannot acknowledge in time."""
    worker_queue_max: int = 16
    """Awarded jobs a worker holds waiting for a free slot."""
    max_jobs_tracked: int = 100_000
    """Jobs kept in memory (finished ones are evicted oldest first)."""

    # --- verification, reputation, credits (see specs/CREDITS.md)
    replication_fraction: float = 0.05
    """Share of jobs run on two workers regardless of reputation: the spot-check
    floor. 5% sits on the measured curve (specs/CREDITS.md §11.1): with
    one-strike conviction and the audit, 10% patient liars leave no wrong result
    standing at 0.06 extra runs per job; each liar gets ``(1−f)/f`` lies
    accepted (and later retracted) before it is caught."""
    trust_after_valid: int = 10
    """Consecutive valid results before a worker is trusted (BOINC-style)."""
    untrusted_replication: float = 1.0
    """Replication probability for a worker that is not yet trusted."""
    credit_free_allowance: float = 10.0
    """Debt (credits) an origin may run up and still be served by a saturated
    worker: a worker with no free slot declines offers from origins whose
    balance in its own ledger is below ``-credit_free_allowance`` (an idle
    worker serves everyone, so newcomers can start). See specs/CREDITS.md §7.5."""
    reputation_half_life_ms: int = 86_400_000
    """Reputation evidence halves in weight over this time."""
    ban_reputation: float = -0.5
    """Below this reputation a peer is awarded no work and not relayed."""
    max_disagreeing_results: int = 4
    """Results collected for one job without a majority before it fails as
    unverifiable (a nondeterministic job, or colluding liars)."""
    reputation_prior_mass: float = 4.0
    """Weight of the neutral prior in the reputation ratio: a stranger needs this
    much evidence before its reputation moves halfway to the evidence's mean."""
    invalid_weight: float = 10.0
    """Reputation penalty of one invalid (out-voted) result; a valid one counts 1.
    Large, so a stranger is banned by its first proven lie and a long-standing
    peer that turns liar falls below ``ban_reputation`` within a few more."""
    conviction_ms: int = 172_800_000
    """How long one own ``invalid`` verdict (a worker's result proven wrong by a
    replica majority) bans the worker, whatever its record: one-strike
    conviction, specs/CREDITS.md §6.1. At least ``audit_window_ms``, so a
    convicted worker gets no new work while its past results are audited."""
    audit_window_ms: int = 86_400_000
    """On a conviction the origin re-verifies the convicted worker's results it
    accepted unreplicated within this window before the conviction (CREDITS.md §4.1)."""
    result_hold_ms: int = 3_600_000
    """How long a result accepted unreplicated stays *provisional* before it is
    *final* (specs/CREDITS.md §4.2, JOB.md §4): an audit that overturns it
    within the hold replaces it before it was ever final. Costs no runs, only
    the wait for finality; 1 h sits on the measured curve (CREDITS.md §11.1:
    at 10% patient liars, 0 wrong results final per 10,000 jobs from about
    1,000 s in the simulator). At most ``audit_window_ms``. 0: final at once."""
    audit_max_per_worker: int = 256
    """Unreplicated accepted results remembered per worker for an audit (oldest
    dropped first): at the default floor a patient liar gets ~9 before it is
    caught, so this covers a liar 28 times more patient."""
    audit_max_workers: int = 10_000
    """Workers whose unreplicated results are remembered for an audit (the one
    with the oldest remembered result is forgotten first)."""
    completed_weight: float = 0.1
    """Reputation credit of an unverified result (weak evidence: it may be a lie)."""
    attestation_weight: float = 0.25
    """Weight of a gossiped attestation relative to an own observation (times the
    issuer's reputation)."""
    attestation_max_mass: float = 2.0
    """Cap on the decayed weight all gossiped attestations about one peer can add;
    keeps attestations alone from ever banning a peer."""
    attestation_full_reputation: float = 0.05
    """Issuer reputation at which its attestations count in full towards a
    worker's streak (one own verified result gives 0.2; about four credible
    attestations give a peer we never used 0.05); below it they count in
    proportion, so credibility fades along chains of vouching."""
    attestation_streak_per_issuer: float = 2.0
    """Most one issuer's attestations add to a worker's remote streak: with the
    defaults a worker needs at least five credible origins to vouch for it."""
    max_streak_issuers: int = 64
    """Issuers remembered per worker for the per-issuer streak cap."""
    uptime_mass: float = 0.5
    """Evidence weight of a peer's availability (sampled from its adverts every
    ``peer_score_interval_ms``): half a verified result, so it separates
    otherwise equal peers but can neither ban nor make an issuer credible."""
    uptime_window_samples: int = 60
    """Samples the availability average spans (an hour at the default interval)."""
    max_trust_entries: int = 10_000
    """Peers with reputation evidence kept; the ones with least evidence go first."""
    max_attestations_seen: int = 65_536
    """(issuer, subject, job) attestations remembered so each counts once."""
    peer_score_min_change: float = 0.1
    """A reputation change at least this large (or a ban flip) emits SetPeerScore."""
    peer_score_interval_ms: int = 60_000
    """How often standing is re-checked for decay-driven changes (bans expiring)."""
    receipt_resend_ms: int = 5_000
    """The origin re-sends a receipt not yet countersigned this often."""
    receipt_resend_max: int = 5
    """Re-sends of one receipt before the origin stops asking for a countersignature."""
    max_ledger_receipts: int = 100_000
    """Countersigned receipts a node keeps for balances (oldest dropped first)."""
    max_records_indexed: int = 200_000
    """(issuer, seq) -> record digest entries kept to detect equivocation."""
    max_equivocations_kept: int = 256
    """Equivocation proofs (pairs of conflicting signed records) kept in memory."""
    max_receipts_pending: int = 10_000
    """Receipts the origin still re-sends awaiting a countersignature."""
    clawback_window_ms: int = 172_800_000
    """A ``receipt_reversal`` (clawback, specs/CREDITS.md §7.6) counts only if
    its ``seq`` is at most this long (× 1,000 per ms, the record sequence's
    clock) after that of the receipt it reverses:
    ``audit_window_ms`` plus a day for the audit itself, so an origin can take
    back pay only for results an audit could still retract."""
    bond_valid_receipts: int = 20
    """The bond against whitewashing (specs/CREDITS.md §7.7): a worker's
    earnings are held, in no balance, until the ledger holds this many of its
    receipts with verdict ``valid`` (results a replica confirmed); a clawback
    (§7.6) before then forfeits them. Twice ``trust_after_valid``: a patient
    liar, lying once trusted, is convicted long before. 0: no bond."""
    max_reversals_waiting: int = 1_024
    """Reversals held, uncounted, until the receipt they name reaches the
    ledger (oldest forgotten first; a forgotten one stays in the ledger and
    never counts)."""
    ledger_sync_interval_ms: int = 30_000
    """Ledger anti-entropy (specs/CREDITS.md §7.4): how often a node sends a
    ``ledger_summary`` of its countersigned receipts to one live peer drawn at
    random, which answers with the receipts this node lacks. 0 turns it off."""
    ledger_sync_max_origins: int = 128
    """Origins one ``ledger_summary`` describes (a node with more summarises
    them in turns, a window of peer ids at a time); a received summary with
    more is refused."""
    ledger_sync_max_receipts: int = 48
    """Countersigned receipts one ``ledger_delta`` carries (also kept under
    ``max_message_bytes``); the rest follows from a cursor."""
    ledger_sync_max_followups: int = 8
    """Summaries a node sends straight after a cut-short ``ledger_delta`` (to
    the same peer, from the cursor it gave) before it waits for the next
    interval again."""

    # --- abuse protection (token buckets per signed sender; see specs/CREDITS.md)
    rate_offer_per_s: float = 20.0
    """Sustained offers accepted per origin."""
    rate_offer_burst: int = 200
    """Offers an origin may send in a burst."""
    rate_bid_per_s: float = 50.0
    """Sustained bids and declines accepted per peer."""
    rate_bid_burst: int = 500
    """Bids and declines a peer may send in a burst."""
    rate_direct_per_s: float = 50.0
    """Sustained other direct messages (awards, heartbeats, results, ...) per peer."""
    rate_direct_burst: int = 500
    """Other direct messages a peer may send in a burst."""
    rate_gossip_per_s: float = 20.0
    """Sustained gossip messages of any topic accepted per author."""
    rate_gossip_burst: int = 200
    """Gossip messages an author may send in a burst."""
    rate_sync_per_s: float = 2.0
    """Sustained sync messages (``ledger_summary``, ``ledger_delta``,
    ``advert_pull``, ``advert_table``) accepted per peer: each may cost the receiver a few hundred signature
    checks or digests, so they have their own, small bucket."""
    rate_sync_burst: int = 20
    """Ledger sync messages a peer may send in a burst (a catch-up's follow-ups)."""
    rate_limit_peers: int = 4_096
    """Peers with token buckets kept; when full, the eighth charged least
    recently are forgotten (and come back with full buckets)."""
    rate_transport_per_s: float = 300.0
    """Sustained gossip and direct messages accepted per *transport* peer (a
    stream's remote peer; gossip's libp2p publisher), charged before anything
    is decoded, so one peer's garbage costs at most this many decodes and
    signature checks a second. At least the per-author rates together
    (20 + 50 + 50 = 120/s), so an honest peer meets its author limits first,
    and the GossipSub forwarding budget of a neighbour on our three topics
    (3 × 100/s), so a busy relay is not cut off where the transport peer is
    the forwarder."""
    rate_transport_burst: int = 3_000
    """Messages a transport peer may send in a burst before its rate applies:
    ten seconds of that rate, above the author bursts together (1,200) and a
    pubsub replay of recent messages to a (re)joining peer."""

    score_mismatch_ratio: float = 1.5
    """Tolerance of the claimed-score cross-check (specs/CREDITS.md §6): a worker
    whose claimed compute score exceeds the *best* score it achieved over its last
    ``score_check_window`` accepted runs of jobs with ``estimated_flops`` by more
    than this factor is over-claiming (load only slows an honest run down)."""
    score_check_window: int = 16
    """Accepted runs per worker the claimed-score cross-check looks back on."""
    score_check_min_samples: int = 5
    """Accepted runs a worker must have in that window before it can be judged."""
    score_check_slack_ms: int = 2_000
    """What the origin's own clock may hold beyond the run itself (the award's
    and the result's transit, the input fetch, the container's start): the
    duration judged is ``max(reported, award-to-result span − this)``
    (specs/CREDITS.md §6), so a short job's fixed overheads do not read as a
    slow worker; a worker under-reporting can hide at most this much a run."""
    overclaim_weight: float = 0.5
    """Reputation evidence weight of an over-claim per accepted run, times
    ``gap − 1`` (0.5 for a 2× over-claim), at most ``invalid_weight``."""

    def with_overrides(self, overrides: dict[str, Any]) -> CoreParams:
        """A copy with ``overrides`` applied; ValueError names a bad key or value."""
        known = {f.name: f for f in fields(self)}
        clean: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(f"unknown parameter {key!r}")
            default = getattr(self, key)
            if (
                isinstance(default, bool)
                or not isinstance(value, (int, float))
                or isinstance(value, bool)
            ):
                raise ValueError(f"parameter {key!r} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                raise ValueError(f"parameter {key!r} must be an integer, got {value!r}")
            if value < 0:
                raise ValueError(f"parameter {key!r} must not be negative")
            clean[key] = value
        return dataclasses.replace(self, **clean)


def param_docs(cls: type = CoreParams) -> dict[str, str]:
    """Field name → docstring, read from the class source (for the spec table check)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    docs: dict[str, str] = {}
    body = tree.body[0].body  # type: ignore[attr-defined]
    for prev, node in zip(body, body[1:], strict=False):
        if (
            isinstance(prev, ast.AnnAssign)
            and isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
        ):
            docs[prev.target.id] = " ".join(str(node.value.value).split())  # type: ignore[union-attr]
    return docs


def markdown_table(cls: type = CoreParams) -> str:
    """The spec's parameter table (specs/PROTOCOL.md §2), generated from the class."""
    docs = param_docs(cls)
    rows = ["| name | type | default | purpose |", "|---|---|---|---|"]
    for f in fields(cls):
        default = getattr(cls(), f.name)
        rows.append(
            f"| `{f.name}` | {type(default).__name__} | `{default!r}` | {docs.get(f.name, '')} |"
        )
    return "\n".join(rows)
