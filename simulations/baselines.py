"""Reference schedulers for the ``load`` scenario (as in Sparrow's evaluation).

Both see the same hardware and the same job stream as the protocol run, with
no network and no bidding:

- **omniscient**: one global FIFO queue; at its arrival each job goes to the
  core slot where it *finishes* first, knowing every job's actual work and
  every node's actual speed (greedy earliest-finish-time list scheduling);
- **random**: each job goes to a node drawn uniformly at random and waits
  there (FIFO) for the first free core.

They return per-job completion times (finish − submit) in ms.
"""

from __future__ import annotations

import random

import numpy as np

from .workload import Hardware, JobPlan


def _slots(hw: list[Hardware]) -> tuple[np.ndarray, np.ndarray]:
    node = np.repeat(np.arange(len(hw)), [h.cores for h in hw])
    speed = np.array([hw[i].speed_gflops * 1e9 for i in node])
    return node, speed


def omniscient(hw: list[Hardware], jobs: list[JobPlan]) -> np.ndarray:
    _, speed = _slots(hw)
    free = np.zeros(len(speed))
    out = np.empty(len(jobs))
    for i, j in enumerate(jobs):
        finish = np.maximum(free, j.submit_ms) + j.actual_flops / speed * 1000.0
        s = int(np.argmin(finish))
        free[s] = finish[s]
        out[i] = finish[s] - j.submit_ms
    return out


def random_placement(hw: list[Hardware], jobs: list[JobPlan], seed: int) -> np.ndarray:
    rng = random.Random(seed)
    free = [np.zeros(h.cores) for h in hw]
    out = np.empty(len(jobs))
    for i, j in enumerate(jobs):
        n = rng.randrange(len(hw))
        f = free[n]
        s = int(np.argmin(f))
        finish = max(f[s], j.submit_ms) + j.actual_flops / (hw[n].speed_gflops * 1e9) * 1000.0
        f[s] = finish
        out[i] = finish - j.submit_ms
    return out
