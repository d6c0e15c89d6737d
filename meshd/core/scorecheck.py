"""Claimed against achieved compute score: a bounded, per-worker cross-check.

Theory of operation
-------------------
A worker bids with its measured compute score (GFLOPS, ``score_gflops``);
a faster claim wins bids (placement.py ranks by estimated finish time) and,
for jobs without ``estimated_flops``, is what the worker is paid by. For a
job *with* ``estimated_flops`` the origin can see what the worker achieved:
``estimated_flops / duration_s / 10⁹``. One run says little — a busy
machine, a slow start or an input fetch make an honest run slower than its
claim — so each accepted run (its output in the job's canonical group) adds
one sample ``achieved / claimed`` to a window of the worker's last
``score_check_window`` samples, and the worker is judged on the *best*
sample in that window once it holds ``score_check_min_samples``:

    gap = 1 / max(window)

An honest worker achieves its claim whenever its machine is not loaded, so
one such run among the window keeps its gap near 1 however slow the other
runs were (load only ever slows a run down). A worker claiming ``k`` times
its speed can never do better than ``1/k``: its gap stays ``k``. A gap above
``score_mismatch_ratio`` (the tolerance) is an over-claim: every further
accepted run is then evidence ``overclaimed`` of weight

    overclaim_weight × (gap − 1), at most invalid_weight

(trust.py), so the penalty grows with the gap: 0.5 for a 2× over-claim (a
run nets ``completed_weight − 0.5 = −0.4``), 9.5 for 20×. The worker's own
verdicts decide nothing else: its results still count, it is only ranked
lower (and banned if its reputation falls below ``ban_reputation``).

*Whose clock.* The duration is :func:`judged_duration_ms`: the larger of
the worker's report and :func:`observed_duration_ms` less
``score_check_slack_ms``. The observed span runs from sending the award to
receiving the result on the origin's own clock: the run cannot have started
before the award left nor ended after its result arrived, so it bounds the
run from above. The span also holds the award's and the result's transit,
the input fetch, the container's start and any wait in the worker's queue;
the slack allows for the usual share of those (so a short job's overheads
do not read as a slow worker), and what exceeds it only slows a sample
down, as load does — the best sample in the window decides. A worker
reporting ``1/k`` of its real durations therefore achieves, to the check,
at most ``flops / (real − slack)``: on runs much longer than the slack its
gap stays about ``k``.

Bounds: ``score_check_window`` samples per worker; at most
``max_trust_entries`` workers (the one sampled longest ago is forgotten).
Samples are clamped to [1/1000, 1000] so a zero duration cannot poison one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .params import CoreParams


@dataclass(frozen=True)
class ScoreVerdict:
    """The state of one worker's check after a sample."""

    samples: int
    best: float
    """Highest achieved/claimed in the window."""
    gap: float
    """``1 / best``: how many times faster the claim is than the best run."""
    weight: float
    """Evidence weight of the over-claim (0: within tolerance, or too few samples)."""


def observed_duration_ms(awarded_ms: int, result_ms: int) -> int:
    """What the origin saw of a run: from sending the award to receiving the
    result, on its own monotonic clock (never negative)."""
    return max(0, result_ms - awarded_ms)


def judged_duration_ms(reported_ms: int, observed_ms: int, slack_ms: int) -> int:
    """The duration a run is judged by: the worker's report, or what the
    origin saw less ``score_check_slack_ms`` (its fixed overheads) if that is
    longer. A worker cannot look faster than that."""
    return max(reported_ms, observed_ms - slack_ms)


class ScoreCheck:
    """Per worker, the last ``score_check_window`` achieved/claimed ratios."""

    def __init__(self, params: CoreParams) -> None:
        self.params = params
        self._by_worker: dict[str, deque[float]] = {}

    def sample(self, worker: str, claimed_gflops: float, achieved_gflops: float) -> ScoreVerdict:
        """Fold in one accepted run; says whether the worker now over-claims."""
        p = self.params
        window = self._by_worker.pop(worker, None)
        if window is None:
            if len(self._by_worker) >= p.max_trust_entries:
                self._by_worker.pop(next(iter(self._by_worker)))
            window = deque(maxlen=p.score_check_window)
        window.append(min(1000.0, max(0.001, achieved_gflops / claimed_gflops)))
        self._by_worker[worker] = window  # re-inserted: dict order is by last sample
        best = max(window)
        gap = 1.0 / best
        weight = 0.0
        if len(window) >= p.score_check_min_samples and gap > p.score_mismatch_ratio:
            weight = min(p.invalid_weight, p.overclaim_weight * (gap - 1.0))
        return ScoreVerdict(len(window), best, gap, weight)

    def samples(self, worker: str) -> int:
        return len(self._by_worker.get(worker, ()))
