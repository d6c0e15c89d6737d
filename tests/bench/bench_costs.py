"""Per-message CPU costs of a node, for the simulator's CPU model (run by hand, not by pytest).

    python tests/bench/bench_costs.py [--n 400] [--runs 5]

Measures on this machine, with the real code:

- ``wire.seal`` and ``wire.open_envelope`` (Ed25519 sign / verify, msgpack,
  pydantic) of an offer, a bid and an advert;
- ``Node.step`` for a received bid (origin), offer (worker), advert and award
  (worker), and a local ``JobSubmitted``, with the simulator's codec (no
  crypto: the core's own work) and with the real codec (core + open + seal of
  what it sends), so the core's share can be read off;
- a durable ``EventLog.append_batch`` (LevelDB, synced) of 1 and 16 records.

Every figure is the median over ``--runs`` runs, in µs per operation, and as
a ratio to a baseline measured in the same run: one raw Ed25519 verify with
``cryptography``. ``simulations/costs.py`` takes its defaults from this table.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey  # noqa: E402

from meshd.core.events import (  # noqa: E402
    TOPIC_ADVERTS,
    TOPIC_OFFERS,
    DirectReceived,
    ExecutionFinished,
    ExecutorHealth,
    GossipReceived,
    InputsFetched,
    JobSubmitted,
)
from meshd.core.identity import Identity  # noqa: E402
from meshd.core.node import Node, WireCodec  # noqa: E402
from meshd.core.params import CoreParams  # noqa: E402
from meshd.core.wire import Award, Bid, Offer, OfferRequirements, open_envelope, seal  # noqa: E402
from meshd.store.eventlog import EventLog  # noqa: E402
from simulations.codec import SimCodec  # noqa: E402
from simulations.workload import IMAGE, Hardware, honest_digest  # noqa: E402

PEERS = [Identity.from_seed_int(1000 + i) for i in range(64)]
HW = Hardware(cores=4, score_gflops=50.0, speed_gflops=50.0, price=0.001)
BIG_HW = Hardware(cores=4096, score_gflops=50.0, speed_gflops=50.0, price=0.001)
MAX_BYTES = CoreParams().max_message_bytes
NOW = 1_000_000


def nonce(i: int) -> bytes:
    return i.to_bytes(8, "big")


def job_id(i: int) -> str:
    return f"job-{i:07d}"


def spec(i: int) -> Any:
    from meshd.core.jobspec import JobSpec

    return JobSpec(image=IMAGE, command=["work", job_id(i)], estimated_flops=1e11, timeout_s=600.0)


def offer(i: int) -> Offer:
    return Offer(
        job_id=job_id(i),
        attempt=1,
        spec_digest=honest_digest(job_id(i)),
        requirements=OfferRequirements(image=IMAGE),
        estimated_flops=1e11,
        timeout_s=600.0,
        bid_window_ms=250,
    )


def bid(i: int) -> Bid:
    return Bid(
        job_id=job_id(i),
        attempt=1,
        price=0.001,
        est_start_ms=0,
        est_duration_ms=2_000,
        score_gflops=50.0,
    )


def award(i: int) -> Award:
    s = spec(i).model_copy(update={"job_id": job_id(i)})
    return Award(
        job_id=job_id(i),
        attempt=1,
        replica=0,
        spec=s.model_dump(mode="json"),
        price=0.001,
        lease_ms=15_000,
    )


def advert_body(i: int) -> Any:
    node = Node(CoreParams(), PEERS[i % len(PEERS)], random.Random(i), NOW)
    node.step(HW.caps(), NOW)
    adv = node.worker.make_advert()
    return adv.model_copy(update={"seq": NOW + i})


def new_node(codec: Any, hw: Hardware = HW, seed: int = 7) -> Node:
    """A warm node with 16 peers' adverts in its view (the simulator's view size)."""
    node = Node(CoreParams(), Identity.from_seed_int(seed), random.Random(seed), NOW, codec=codec)
    node.step(hw.caps(), NOW)
    node.step(ExecutorHealth(True), NOW)
    for i in range(16):
        data = codec.seal(PEERS[i], advert_body(i), NOW, nonce(10_000 + i))
        node.step(GossipReceived(TOPIC_ADVERTS, PEERS[i].peer_id, data), NOW)
    return node


def per_op_us(fn: Callable[[int], Any], n: int, setup: Callable[[], Any] | None = None) -> float:
    """µs per call of ``fn(i)`` over ``n`` calls (``setup`` runs first, untimed)."""
    if setup is not None:
        setup()
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t0) / n * 1e6


# ------------------------------------------------------------ measurements


def m_baseline(n: int) -> float:
    ident = PEERS[0]
    key = Ed25519PublicKey.from_public_bytes(ident.public_key)
    msg = bytes(range(256)) * 1
    sig = ident.sign(msg)
    return per_op_us(lambda i: key.verify(sig, msg), n)


def m_seal(body_of: Callable[[int], Any], n: int) -> float:
    bodies = [body_of(i) for i in range(n)]
    return per_op_us(lambda i: seal(PEERS[0], bodies[i], NOW, nonce(i)), n)


def m_open(body_of: Callable[[int], Any], n: int) -> float:
    raws = [seal(PEERS[i % 64], body_of(i), NOW, nonce(i)) for i in range(n)]
    return per_op_us(lambda i: open_envelope(raws[i], MAX_BYTES), n)


def m_step_bid(codec: Any, n: int) -> float:
    """Origin: n jobs submitted, one bid per job (windows stay open)."""
    node = new_node(codec)
    for i in range(n):
        node.step(JobSubmitted(spec(i), job_id(i)), NOW)
    msgs = [
        DirectReceived(PEERS[i % 64].peer_id, codec.seal(PEERS[i % 64], bid(i), NOW, nonce(i)))
        for i in range(n)
    ]
    return per_op_us(lambda i: node.step(msgs[i], NOW + 1), n)


def m_step_offer(codec: Any, n: int) -> float:
    node = new_node(codec)
    msgs = [
        GossipReceived(
            TOPIC_OFFERS, PEERS[i % 64].peer_id, codec.seal(PEERS[i % 64], offer(i), NOW, nonce(i))
        )
        for i in range(n)
    ]
    return per_op_us(lambda i: node.step(msgs[i], NOW + 1), n)


def m_step_advert(codec: Any, n: int) -> float:
    node = new_node(codec)
    msgs = [
        GossipReceived(
            TOPIC_ADVERTS,
            PEERS[i % 16].peer_id,
            codec.seal(
                PEERS[i % 16],
                advert_body(i % 16).model_copy(update={"seq": NOW + 100 + i}),
                NOW,
                nonce(i),
            ),
        )
        for i in range(n)
    ]
    return per_op_us(lambda i: node.step(msgs[i], NOW + 1), n)


def m_step_award(codec: Any, n: int) -> float:
    """Worker with room for every award: accept, append, reply, start."""
    node = new_node(codec, BIG_HW)
    msgs = [
        DirectReceived(PEERS[i % 64].peer_id, codec.seal(PEERS[i % 64], award(i), NOW, nonce(i)))
        for i in range(n)
    ]
    return per_op_us(lambda i: node.step(msgs[i], NOW + 1), n)


def m_step_local(codec: Any, n: int) -> float:
    """Worker: an InputsFetched then an ExecutionFinished per accepted award (mean of both)."""
    node = new_node(codec, BIG_HW)
    for i in range(n):
        data = codec.seal(PEERS[i % 64], award(i), NOW, nonce(i))
        node.step(DirectReceived(PEERS[i % 64].peer_id, data), NOW)
    fetched = [InputsFetched(job_id(i), 1, 0, True) for i in range(n)]
    done = [
        ExecutionFinished(
            job_id(i), 1, 0, "succeeded", 0, "", 900, 900, 1 << 20, honest_digest(job_id(i)), 1024
        )
        for i in range(n)
    ]
    t_fetch = per_op_us(lambda i: node.step(fetched[i], NOW + 1), n)
    t_done = per_op_us(lambda i: node.step(done[i], NOW + 2), n)
    return (t_fetch + t_done) / 2


def m_step_submit(codec: Any, n: int) -> float:
    node = new_node(codec)
    inputs = [JobSubmitted(spec(i), job_id(i)) for i in range(n)]
    return per_op_us(lambda i: node.step(inputs[i], NOW + 1), n)


def m_append(records: int, n: int) -> float:
    body = {
        "job_id": job_id(0),
        "attempt": 1,
        "replica": 0,
        "worker": PEERS[1].peer_id,
        "price": 0.001,
        "score": 50.0,
    }
    with (
        tempfile.TemporaryDirectory() as d,
        EventLog.open(Path(d) / "log", PEERS[0], genesis_ts_ms=0) as log,
    ):
        return per_op_us(
            lambda i: log.append_batch(
                [("run_awarded", body, NOW + i, b"k%d:%d" % (i, r)) for r in range(records)]
            ),
            n,
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=400, help="operations per measurement")
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args(argv)
    n, sim, real = a.n, SimCodec(), WireCodec()
    rows: list[tuple[str, Callable[[], float]]] = [
        ("baseline: raw Ed25519 verify", lambda: m_baseline(n * 4)),
        ("seal offer", lambda: m_seal(offer, n)),
        ("seal bid", lambda: m_seal(bid, n)),
        ("seal advert", lambda: m_seal(advert_body, n // 4)),
        ("open offer", lambda: m_open(offer, n)),
        ("open bid", lambda: m_open(bid, n)),
        ("open advert", lambda: m_open(advert_body, n // 4)),
        ("step bid (core only)", lambda: m_step_bid(sim, n)),
        ("step bid (real codec)", lambda: m_step_bid(real, n)),
        ("step offer (core only)", lambda: m_step_offer(sim, n)),
        ("step offer (real codec)", lambda: m_step_offer(real, n)),
        ("step advert (core only)", lambda: m_step_advert(sim, n)),
        ("step advert (real codec)", lambda: m_step_advert(real, n)),
        ("step award (core only)", lambda: m_step_award(sim, n)),
        ("step award (real codec)", lambda: m_step_award(real, n)),
        ("step JobSubmitted (core only)", lambda: m_step_submit(sim, n)),
        ("step executor event (core only)", lambda: m_step_local(sim, n)),
        ("append_batch 1 record (synced)", lambda: m_append(1, max(20, n // 8))),
        ("append_batch 16 records (synced)", lambda: m_append(16, max(20, n // 8))),
    ]
    results: dict[str, float] = {}
    for name, fn in rows:
        results[name] = statistics.median(fn() for _ in range(a.runs))
    base = results[rows[0][0]]
    print(f"{'what':40} {'µs/op':>10} {'× verify':>10}")
    for name, us in results.items():
        print(f"{name:40} {us:10.1f} {us / base:10.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
