"""What handling one input costs a node, in µs of its single loop (the CPU model's figures).

The engine's CPU model (knob ``cpu_model``, see ``engine.py``) makes a node
handle one input at a time; each costs the figure of its kind here, times the
node's ``cpu_slowdown``, plus the durable append of the records the step
returned and the signing of each message it sends. The figures were measured
with the real code on the development machine (2 cores, shared with other
work) by

    python tests/bench/bench_costs.py --n 400 --runs 5

(medians of 5 runs; the baseline, one raw Ed25519 verify with
``cryptography``, took 138 µs in that run). A second run of the same command
(baseline 110 µs) agreed within 20% on the message figures but not on the
synced append (1,259 µs for one record) nor JobSubmitted (311 µs): the disk
and the CPU are shared with other work. The defaults are the first run's,
except ``local_event_us``, which only the second run measured. A received message's figure is
``open_envelope`` (msgpack, Ed25519 verify, pydantic) plus ``Node.step`` with
the simulator's codec (the core's own work); signing what the step sends is
``seal_per_message``, charged per message. The exception is an advert, whose
figure is the whole daemon's, measured on real daemons
(:data:`DAEMON_ADVERT_US`, ``tests/bench/bench_advert_cost.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

DAEMON_ADVERT_US = 10_500
"""The marginal CPU one received advert costs a real daemon, all of it: py-libp2p
receiving it (and its strict-signing check), the gossip validator (Ed25519
verify, pydantic), forwarding it to the node's mesh peers, the core's step and
the node's own adverts' share (one per 7 received in the measuring mesh, one
per several hundred on a large one, so this errs high). Measured as the slope
of CPU over adverts received between two runs of 8 ``meshd start`` processes
on loopback that differ only in advert pacing:

    python tests/bench/bench_advert_cost.py --nodes 8 --window-s 30

(CPU-seconds over adverts, all nodes together). On a quiet 2-core machine
two runs gave 9.18 and 10.43 ms (one per 7.0 received was the node's own);
beside a busy loop on both cores, 7.58 ms; on the machine shared by five
engineers at load average ~10, five runs gave 4.45–6.17 ms, too low: the
busier the machine, the lower this slope reads. The highest quiet run is
taken. The CPU model charges it for
each advert a node receives (``gossip_advert_us``), and a run's
``membership`` reports adverts received per second times it as a share of a
core. The other messages' figures below are the core's part only (opening
plus the step): their libp2p part was not measured."""


@dataclass(frozen=True)
class CpuCosts:
    gossip_advert_us: int = DAEMON_ADVERT_US
    """A gossiped advert: what it costs a whole daemon (:data:`DAEMON_ADVERT_US`,
    measured on real daemons), since py-libp2p's receiving and forwarding run
    on the same loop as the core. Of it, opening the advert (142) and the
    core's step (5) are 147 (``bench_costs.py --n 400 --runs 5``)."""
    gossip_offer_us: int = 174
    """A gossiped offer: open offer 152 + step offer (core only) 22 (same command)."""
    gossip_other_us: int = 160
    """Receipt countersignatures and attestations: taken as a bid (open + small
    core step); not measured separately (same command, bid rows)."""
    direct_bid_us: int = 161
    """A bid or a decline: open bid 155 + step bid (core only) 6 (same command)."""
    direct_award_us: int = 214
    """An award at a worker: step award with the real codec 250 less one seal
    (the award reply, 36), i.e. open + parse of the spec + core (same command)."""
    direct_other_us: int = 161
    """Other direct messages (award replies, heartbeats, results, acks,
    cancels, receipts): taken as a bid (same command, bid rows)."""
    job_submitted_us: int = 150
    """A local JobSubmitted: step (core only) 150, mostly the cost estimate over
    the peer view and the job record (same command)."""
    local_event_us: int = 16
    """Other local events (executor, fetch, checker, SendFailed): mean of an
    InputsFetched and an ExecutionFinished step (core only), 16 (same command,
    "step executor event" row)."""
    append_batch_base_us: int = 2_240
    """A synced ``EventLog.append_batch`` of one record (LevelDB, fsync):
    2,240 µs; charged once per step that returned appends (same command)."""
    append_per_record_us: int = 85
    """Each further record in the same batch: (3,520 for 16 records − 2,240) / 15
    (same command)."""
    seal_per_message_us: int = 39
    """Signing one message we send or publish: seal offer 40 / bid 36 / advert
    41 (same command)."""

    def append_us(self, records: int) -> int:
        """A durable batch of ``records`` records (0: nothing to write)."""
        if records <= 0:
            return 0
        return self.append_batch_base_us + (records - 1) * self.append_per_record_us


DEFAULT_COSTS = CpuCosts()
