"""Placement: whether to bid, what to bid, and how the origin ranks bids.

Pure functions over values. The rules (normative text in specs/PROTOCOL.md,
"Placement"):

- Runtimes: a job without ``requirements.runtime`` runs in the Docker
  sandbox, in its image, only where that image is present; the unsandboxed
  process executor (which ignores the image) takes only jobs that ask for
  ``runtime: process`` (specs/JOB.md §1), never another job.
- A worker bids iff it is warm, fits every requirement, is not excluded, has
  room (running + queued < capacity + queue bound) and its price is within the
  budget. Otherwise it has a *decline reason*. Reasons visible from the
  worker's advert (no GPU, too little RAM, cold, ...) are not sent: the origin
  derives them itself from the adverts it holds, so a mesh of N nodes does not
  answer every offer with N messages. Reasons the advert cannot show (busy
  since its last advert, budget) are sent as a ``decline``.
- Cost model (specs/CREDITS.md): a job's cost is
  ``duration_s × score_gflops × price × credit_rate`` credits, i.e. the GFLOP
  the worker delivered priced at its ``price`` per GFLOP. Estimates use
  ``estimated_flops`` where given (then cost does not depend on the worker's
  speed); otherwise a bid is priced at the timeout (an upper bound, capped at
  the budget) but timed with the origin's guess at the work
  (``Offer.expected_flops``), so a faster worker still bids an earlier finish.
- The score that prices and times a job is :func:`job_gflops`: the worker's
  measured ``gpu_gflops`` when the job needs a GPU (``requirements.gpus > 0``)
  and the worker advertises one, its CPU ``score_gflops`` otherwise. The bid
  carries that score, so the origin's cost accounting, the receipt and the
  claimed-vs-achieved check all use the same figure.
- Ranking: lower is better; expected finish (wait + duration) and price
  (the unit price when the job has no flops estimate) are each scaled by
  their spread over the bids, or by the best value when the spread is
  smaller (:func:`spread_scaled`: bids within a few per cent of each other
  differ by a few per cent, not by the whole range), the origin's own runs
  in flight at the worker are added in durations of the best bid (not
  scaled), all weighted by the ``speed`` profile; a small random jitter is added, bad standing adds a strong
  penalty and good standing divides by a small bonus (so newcomers are not
  starved). Load spreads because wait grows with a worker's queue and the
  origin counts awards it has in flight to each worker (a bid's wait leaves
  the offering origin's own runs out, so they are counted once).
- Determinism classes (specs/CREDITS.md §5): a worker states the class a job
  runs in (:func:`determinism_class`: its executor, and for a GPU job the GPU
  models and driver); for an exact-hash job the origin tries bidders of the
  classes its runs already have first (:func:`prefer_classes`), so that two
  results it compares came from one class.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass

from .events import LocalCapabilities
from .jobspec import TIERS, JobSpec
from .wire import Advert, Bid, Offer, OfferRequirements

REPUTATION_BONUS = 0.1
"""Most a good reputation divides a bid's rank by (1 + this)."""
REPUTATION_PENALTY = 2.0
"""A negative reputation ``rep`` adds ``PENALTY × (−rep)`` to a bid's rank (whose
normal range is about 0.05–1.15): a worker other origins caught lying (remote
reputation about −0.2 to −0.33 from their attestations alone) loses to any bid
that is not much worse, even when it is the idle, fastest bidder."""
TIE_JITTER = 0.1
"""Random spread added to every rank (tiebreak ∈ [0, 1) from the origin's RNG)."""

SPEED_WEIGHTS: dict[str, tuple[float, float]] = {
    # (weight of expected finish, weight of price)
    "fast": (0.8, 0.2),
    "balanced": (0.5, 0.5),
    "cheap": (0.2, 0.8),
}


@dataclass(frozen=True)
class Capacity:
    """What a node has, as used by the fit check (from LocalCapabilities or an Advert)."""

    cores: int
    ram_mb: int
    gpus: tuple[tuple[str, int], ...]
    gpu_runtime: bool
    runtimes: tuple[str, ...]
    images: tuple[str, ...]
    tier: str
    network_allowed: bool
    warm: bool
    cold_reason: str | None
    score_gflops: float
    price: float
    running: int
    queued: int
    capacity: int
    gpu_gflops: float | None = None
    image_ids: tuple[tuple[str, str], ...] = ()
    """(name, id) of local images, where known (our own; adverts carry none)."""

    @classmethod
    def from_advert(cls, a: Advert) -> Capacity:
        return cls(
            a.cores,
            a.ram_mb,
            tuple((g.model, g.memory_mb) for g in a.gpus),
            a.gpu_runtime,
            tuple(a.runtimes),
            tuple(a.images),
            a.tier,
            a.network_allowed,
            a.warm,
            a.cold_reason,
            a.score_gflops,
            a.price,
            a.running,
            a.queued,
            a.capacity,
            a.gpu_gflops,
        )

    @classmethod
    def from_local(
        cls, c: LocalCapabilities, *, warm: bool, cold_reason: str | None, running: int, queued: int
    ) -> Capacity:
        return cls(
            c.cores,
            c.ram_mb,
            c.gpus,
            c.gpu_runtime,
            c.runtimes,
            c.images,
            c.tier,
            c.network_allowed,
            warm,
            cold_reason,
            c.score_gflops,
            c.price,
            running,
            queued,
            c.capacity,
            c.gpu_gflops,
            c.image_ids,
        )


def image_present(image: str, images: tuple[str, ...]) -> bool:
    if image in images:
        return True
    return ":" not in image.rsplit("/", 1)[-1] and f"{image}:latest" in images


def image_fetch_bytes(cap: Capacity, req: OfferRequirements) -> int | None:
    """Bytes a node must fetch before it can run the job: 0 when it needs no
    image or has it (by name, and with the pinned id where both are known),
    the archive's size when the image travels (the offer pins an id and a
    size), None when the image is absent and does not travel."""
    if "docker" not in cap.runtimes:
        return 0
    present = image_present(req.image, cap.images)
    if present and req.image_id is not None:
        local = local_image_id(req.image, cap.image_ids)
        present = not local or local == req.image_id
    if present:
        return 0
    if req.image_id is not None and req.image_size > 0:
        return req.image_size
    return None


def fit_reason(cap: Capacity, req: OfferRequirements) -> str | None:
    """Why this capacity cannot run the job at all (static), or None."""
    return next(fit_reasons(cap, req), None)


def fit_reasons(cap: Capacity, req: OfferRequirements) -> Iterator[str]:
    """Every requirement this capacity fails, one reason each (the origin's
    refusal at submit counts peers per reason; a worker needs only the first)."""
    if not cap.warm:
        yield f"node is cold: {cap.cold_reason or 'health check pending'}"
    wanted = req.runtime or "docker"
    if wanted not in cap.runtimes:
        if not cap.runtimes:
            yield "node is a client (runs no jobs)"
        elif wanted == "docker" and "process" in cap.runtimes:
            yield "node's process executor is unsandboxed and runs only jobs asking for runtime process"
        else:
            yield f"runtime {wanted} not available (has {', '.join(cap.runtimes)})"
    elif wanted == "docker" and image_fetch_bytes(cap, req) is None:
        yield f"image {req.image} not present locally"
    if req.cpus > cap.cores:
        yield f"needs {req.cpus:g} CPUs, node has {cap.cores}"
    if req.memory_mb > cap.ram_mb:
        yield f"needs {req.memory_mb} MB RAM, node has {cap.ram_mb}"
    if req.gpus:
        fitting = [g for g in cap.gpus if g[1] >= req.gpu_min_memory_mb]
        if not cap.gpus:
            yield "node has no GPU"
        elif not cap.gpu_runtime:
            yield "engine has no GPU runtime"
        elif len(fitting) < req.gpus:
            yield f"needs {req.gpus} GPU(s) with ≥{req.gpu_min_memory_mb} MB, node has {len(fitting)}"
    if req.tier is not None and TIERS.index(cap.tier) < TIERS.index(req.tier):
        yield f"needs tier {req.tier}, node is {cap.tier}"
    if req.network and not cap.network_allowed:
        yield "job needs network; node does not allow it"


def offer_requirements(spec: JobSpec) -> OfferRequirements:
    """What an offer of ``spec`` asks of a worker (the origin sends it; a worker
    checks an award's descriptor against its own capacity with it too)."""
    r = spec.requirements
    return OfferRequirements(
        cpus=r.cpus,
        memory_mb=r.memory_mb,
        gpus=r.gpus,
        gpu_min_memory_mb=r.gpu_min_memory_mb,
        tier=r.tier,
        runtime=r.runtime,
        network=r.network,
        image=spec.image,
        image_id=spec.image_blob.id if spec.image_blob else None,
        image_size=spec.image_blob.size if spec.image_blob else 0,
    )


def job_gflops(cap: Capacity, gpus: int) -> float:
    """The score a job needing ``gpus`` GPUs is priced and timed with on ``cap``
    (module rules): the measured GPU score for a GPU job where advertised,
    else the CPU score."""
    if gpus > 0 and cap.gpu_gflops is not None and cap.gpu_gflops > 0:
        return cap.gpu_gflops
    return cap.score_gflops


def estimate_duration_s(
    offer_flops: float | None, timeout_s: float, score_gflops: float, overhead_s: float
) -> float:
    if offer_flops and score_gflops > 0:
        return min(timeout_s, offer_flops / (score_gflops * 1e9)) + overhead_s
    return timeout_s


def estimate_cost(
    offer_flops: float | None,
    timeout_s: float,
    score_gflops: float,
    price: float,
    credit_rate: float,
) -> float:
    """Credits the job is expected to cost on a worker (upper bound without flops)."""
    if offer_flops:
        return offer_flops / 1e9 * price * credit_rate
    return timeout_s * score_gflops * price * credit_rate


def actual_cost(duration_ms: int, score_gflops: float, price: float, credit_rate: float) -> float:
    return duration_ms / 1000.0 * score_gflops * price * credit_rate


def budget_timeout_s(
    timeout_s: float,
    max_budget: float | None,
    score_gflops: float,
    price: float,
    credit_rate: float,
) -> float:
    """The wall-clock limit that keeps a run's cost within the budget."""
    rate = score_gflops * price * credit_rate
    if max_budget is None or rate <= 0:
        return timeout_s
    return max(0.001, min(timeout_s, max_budget / rate))


class WorkHistory:
    """What earlier runs of each image took, in GFLOP (duration × the score
    that ran it): the origin's guess at a job that gives no ``estimated_flops``.

    Bounded: at most ``images`` images (the least recently learned or asked
    dropped first), ``runs`` samples each; the guess is their median."""

    def __init__(self, images: int, runs: int) -> None:
        self.images = images
        self.runs = runs
        self._work: OrderedDict[str, deque[float]] = OrderedDict()

    def learn(self, image: str, gflop: float) -> None:
        if gflop <= 0 or self.images <= 0 or self.runs <= 0:
            return
        samples = self._work.pop(image, None) or deque(maxlen=self.runs)
        samples.append(gflop)
        self._work[image] = samples
        while len(self._work) > self.images:
            self._work.popitem(last=False)

    def guess(self, image: str) -> float | None:
        """The median GFLOP of the image's remembered runs, or None."""
        samples = self._work.get(image)
        if not samples:
            return None
        self._work.move_to_end(image)
        ordered = sorted(samples)
        mid = len(ordered) // 2
        return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2

    def __len__(self) -> int:
        return len(self._work)


def run_budget(max_budget: float | None, flops: float | None, award_price: float) -> float | None:
    """The most one run may cost, which the worker stops it at: without a
    flops estimate the award's price is that bound (the bid's timeout bound,
    capped at the round's share of the budget the origin has left); with one
    the price is an estimate and the job's budget stays the bound."""
    if max_budget is None:
        return None
    return max_budget if flops else min(max_budget, award_price)


def decline_reason(
    cap: Capacity,
    offer: Offer,
    *,
    self_id: str,
    queue_max: int,
    overhead_s: float,
    max_image_bytes: int | None = None,
) -> tuple[str | None, bool]:
    """(reason or None, whether the origin could not know it from our advert).
    ``max_image_bytes``: the largest image archive this node fetches (None: no bound)."""
    if self_id in offer.exclude:
        return "excluded by the origin (earlier failure)", False
    static = fit_reason(cap, offer.requirements)
    if static is not None:
        return static, False
    fetch = image_fetch_bytes(cap, offer.requirements) or 0
    if max_image_bytes is not None and fetch > max_image_bytes:
        return (
            f"image {offer.requirements.image} is absent and its {fetch}-byte archive "
            f"exceeds this node's max_image_bytes ({max_image_bytes})",
            True,
        )
    if cap.running + cap.queued >= cap.capacity + queue_max:
        return f"busy: {cap.running} running, {cap.queued} queued", True
    if offer.max_budget is not None:
        gflops = job_gflops(cap, offer.requirements.gpus)
        cost = estimate_cost(
            offer.estimated_flops, offer.timeout_s, gflops, cap.price, offer.credit_rate
        )
        if cost > offer.max_budget and not offer.estimated_flops:
            # Without a flops estimate the cost is a bound: bid anyway, the
            # run is stopped at the budget (budget_timeout_s).
            return None, False
        if cost > offer.max_budget:
            return f"price {cost:.4g} credits exceeds budget {offer.max_budget:.4g}", True
    return None, False


def local_image_id(image: str, image_ids: tuple[tuple[str, str], ...]) -> str:
    """The local id of ``image`` (as :func:`image_present` names it), or ""."""
    ids = dict(image_ids)
    if image in ids:
        return ids[image]
    if ":" not in image.rsplit("/", 1)[-1]:
        return ids.get(f"{image}:latest", "")
    return ""


def determinism_class(
    runtimes: tuple[str, ...],
    gpu_models: tuple[str, ...],
    gpu_driver: str,
    *,
    uses_gpu: bool,
    image_id: str = "",
) -> str:
    """The determinism class a job runs in on a node: ``dc1:`` and the first
    32 hex digits of SHA-256 over the executor's name, the image's id ("" if
    unknown) and, for a job that uses a GPU, the sorted GPU models and the
    driver version (NUL-separated). Two honest runs of a deterministic job in
    one class give one digest."""
    parts = [runtimes[0] if runtimes else "", image_id]
    if uses_gpu:
        parts += [",".join(sorted(gpu_models)), gpu_driver]
    return "dc1:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


def prefer_classes(
    ranked: list[str], bids: dict[str, Bid], classes: set[str], *, group: int = 1
) -> list[str]:
    """``ranked`` with the bidders whose ``det_class`` is in ``classes`` first
    (each part keeps its order). With no class given and ``group`` > 1 runs to
    award together, the classes with at least ``group`` bidders in ``ranked``
    go first, so the group can be formed in one class. Unchanged when no
    class qualifies."""
    if not classes and group > 1:
        counts: dict[str, int] = {}
        for p in ranked:
            counts[bids[p].det_class] = counts.get(bids[p].det_class, 0) + 1
        classes = {c for c, n in counts.items() if c and n >= group}
    if not classes:
        return list(ranked)
    return [p for p in ranked if bids[p].det_class in classes] + [
        p for p in ranked if bids[p].det_class not in classes
    ]


def make_bid(
    cap: Capacity,
    offer: Offer,
    *,
    avg_run_s: float,
    overhead_s: float,
    det_class: str = "",
    image_bytes_per_s: float | None = None,
    origin_runs: int = 0,
) -> Bid:
    """Our bid for ``offer``. With ``image_bytes_per_s``, a job whose image
    must travel here starts later by the archive's size at that rate.

    ``origin_runs``: how many of the runs we hold (running or queued) are the
    offering origin's own. The expected wait leaves them out: the origin
    counts its own runs at each worker itself when it ranks the bids
    (``rank_bids``'s ``inflight``), including those awarded after this bid
    was made; counted here too, a bid made after some of them were accepted
    weighed them twice and lost to a stale bid from a worker holding more."""
    gflops = job_gflops(cap, offer.requirements.gpus)
    # Timed with the job's flops, else the origin's guess (earlier runs of its
    # image, or a default); priced with the job's flops only, else the bound.
    work = offer.estimated_flops or offer.expected_flops
    duration = estimate_duration_s(work, offer.timeout_s, gflops, overhead_s)
    others = max(0, cap.running + cap.queued - origin_runs)
    waiting_jobs = max(0, others + 1 - cap.capacity)
    wait_s = waiting_jobs * avg_run_s / max(1, cap.capacity)
    cost = estimate_cost(
        offer.estimated_flops, offer.timeout_s, gflops, cap.price, offer.credit_rate
    )
    if offer.max_budget is not None:
        cost = min(cost, offer.max_budget)
    fetch_s = 0.0
    if image_bytes_per_s:
        fetch_s = (image_fetch_bytes(cap, offer.requirements) or 0) / image_bytes_per_s
    return Bid(
        job_id=offer.job_id,
        attempt=offer.attempt,
        price=cost,
        est_start_ms=int((wait_s + fetch_s) * 1000),
        est_duration_ms=int(duration * 1000),
        score_gflops=gflops,
        running=cap.running,
        queued=cap.queued,
        det_class=det_class,
    )


def spread_scaled(x: float, lo: float, hi: float) -> float:
    """``x`` in [``lo``, ``hi``] (the best and worst of the bids) as a rank
    term: ``(x − lo) ÷ (hi − lo)`` (min-max) when the bids spread by more than
    ``lo`` itself, else ``(x − lo) ÷ lo`` (how much worse than the best).

    Min-max alone makes any spread, however small, the whole range: two
    workers whose compute scores differ by 6 % bid finishes 3.0 s and 3.1 s,
    and the quicker one's edge weighed as much as one run of ours queued
    there (``load``), so a burst left it one run more than the others
    (slots + 3 in the five-worker test). Scaled by ``lo`` a near-tie weighs
    by its size; a wide spread still uses the full range."""
    if hi <= lo:
        return 0.0
    return (x - lo) / max(hi - lo, lo)


def rank_bids(
    bids: dict[str, Bid],
    speed: str,
    reputation: dict[str, float],
    inflight: dict[str, int],
    tiebreak: dict[str, float],
    *,
    per_gflop: bool = False,
    bound_s: float = 0.0,
) -> list[str]:
    """Peer ids, best first. ``reputation`` in [-1, 1]; ``inflight`` awards we hold.

    ``per_gflop``: the job has no flops estimate, so each bid's ``price`` is
    the bound ``bound_s × score × unit price`` (``bound_s`` the job's timeout)
    and grows with the worker's speed; compare what the work would cost
    instead, ``price ÷ (bound_s × score)`` (the unit price). Otherwise a
    worker whose benchmark came out low looks cheap, and took most of a burst
    in the 6-daemon test. (Without ``bound_s`` the bid's duration stands in.)"""
    if not bids:
        return []
    w_finish, w_price = SPEED_WEIGHTS[speed]

    def base_finish(p: str) -> float:
        return bids[p].est_start_ms + bids[p].est_duration_ms

    def price(p: str) -> float:
        b = bids[p]
        if not per_gflop:
            return b.price
        secs = bound_s if bound_s > 0 else b.est_duration_ms / 1000
        gflop = secs * b.score_gflops
        return b.price / gflop if gflop > 0 else b.price

    finishes = {p: base_finish(p) for p in bids}
    prices = {p: price(p) for p in bids}
    f_min, f_max = min(finishes.values()), max(finishes.values())
    p_min, p_max = min(prices.values()), max(prices.values())

    def load(p: str) -> float:
        # Our runs already at the worker push its finish back by one duration
        # each, counted against the best bid's finish and not min-max scaled:
        # scaled, a long queue looked no worse than the spread of the bids,
        # and a cheaper worker kept winning a burst however long it grew.
        return inflight.get(p, 0) * bids[p].est_duration_ms / max(1.0, f_min)

    def key(p: str) -> tuple[float, float]:
        cost = w_finish * (spread_scaled(finishes[p], f_min, f_max) + load(p)) + (
            w_price * spread_scaled(prices[p], p_min, p_max)
        )
        rep = max(-1.0, min(1.0, reputation.get(p, 0.0)))
        # Bad standing weighs heavily; good standing only a little, so that
        # among near-equal bids newcomers still win work (and can earn trust)
        # instead of the best-known worker taking everything.
        jitter = TIE_JITTER * tiebreak.get(p, 0.0)
        if rep < 0:
            return (cost + 0.05 + jitter - REPUTATION_PENALTY * rep, tiebreak.get(p, 0.0))
        return ((cost + 0.05 + jitter) / (1.0 + REPUTATION_BONUS * rep), tiebreak.get(p, 0.0))

    return sorted(bids, key=key)
