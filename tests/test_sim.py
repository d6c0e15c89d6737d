"""The simulator: scenarios hold the invariants, broken cores are caught, runs replay.

Small meshes (16-20 nodes, 40-60 jobs) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from meshd.core.params import CoreParams
from meshd.core.peers import advert_topic, shard_of
from meshd.core.wire import Opened, Rejected
from simulations import engine
from simulations.__main__ import main
from simulations.codec import Forged, SimCodec
from simulations.engine import answer_order
from simulations.knobs import Knobs
from simulations.scenarios import Run, RunConfig, run

# Core bug found by the simulator (fixed): origin_award_failed() iterated job.runs
# while _run_refused -> _award_next -> _award inserted into it (RuntimeError:
# dictionary changed size during iteration). These seeds reproduced it.
AWARD_FAILED_BUG = {("churn", 9)}


def _check(scenario: str, seed: int, nodes: int = 20, jobs: int = 60, **pins: str) -> dict:
    res = run(RunConfig(scenario, seed, nodes, jobs, dict(pins))).result
    assert res["ok"], f"{res['failure']}\nreplay: {res['replay']}"
    assert res["lost"] == 0 and res["succeeded"] + res["failed"] == res["submitted"] == jobs
    return res


@pytest.mark.parametrize(
    "scenario,seed",
    [(s, n) for s in ("load", "churn", "cheaters", "partition", "swarm") for n in (1, 3, 4)],
)
def test_scenario_holds_invariants(scenario: str, seed: int) -> None:
    pins = {"load": "0.5"} if scenario == "load" else {}
    res = _check(scenario, seed, **pins)
    if scenario in ("load", "partition", "churn"):
        assert res["failed"] == 0, res["fail_reasons"]


@pytest.mark.parametrize("scenario,seed", sorted(AWARD_FAILED_BUG))
def test_award_send_failed_regression(scenario: str, seed: int) -> None:
    res = run(RunConfig(scenario, seed, 20, 60)).result
    assert res["ok"], f"{res['failure']}\nreplay: {res['replay']}"


def test_cheaters_are_caught_and_no_agreed_result_is_wrong() -> None:
    # seed 4: both liars win awards within 80 jobs (a liar that wins none cannot be caught)
    res = _check("cheaters", 4, nodes=20, jobs=80, lie_rate="1.0")
    assert res["liars"] == 2 and res["liars_caught"] == 2
    assert (
        res["verification_overhead"] > 0.5
    )  # strangers are replicated (untrusted_replication = 1)


def test_trust_travels_between_origins_so_verification_falls_to_the_floor() -> None:
    """Every node is an origin, so each sees a given worker only a few times:
    without the remote streak (attestation_streak_per_issuer=0) nearly every
    job stays replicated; with it the last quarter of jobs approaches the
    10% floor."""
    honest = {"liar_fraction": "0.0", "spammer_fraction": "0.0"}

    def last_quarter(**pins: str) -> float:
        res = _check("cheaters", 2, nodes=20, jobs=600, **honest, **pins)
        return float(res["verification_overhead_by_quarter"].split(" / ")[-1])

    with_remote = last_quarter()
    without = last_quarter(**{"core.attestation_streak_per_issuer": "0.0"})
    assert without > 0.5, without
    assert with_remote < 0.3 and with_remote < without / 2, (with_remote, without)


def test_dropped_work_is_caught_as_lost_job_with_replay_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [
        "run",
        "load",
        "--seed",
        "7",
        "--nodes",
        "12",
        "--jobs",
        "20",
        "--set",
        "liveness_ms=60000",
        "--mutant",
        "drop_queued_work",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "job(s) lost" in out
    assert (
        "python -m simulations run load --seed 7 --nodes 12 --jobs 20 --set liveness_ms=60000 "
        "--mutant drop_queued_work" in " ".join(out.split())
    )


def test_wrong_comparison_is_caught_as_wrong_result() -> None:
    res = run(RunConfig("cheaters", 3, 20, 80, {"lie_rate": "1.0"}, "every_result_agrees")).result
    assert not res["ok"]
    assert "wrong result accepted" in res["failure"]
    assert res["replay"].endswith("--mutant every_result_agrees")


def test_same_seed_same_trace_and_different_seed_differs() -> None:
    a = run(RunConfig("swarm", 11, 16, 40)).result
    b = run(RunConfig("swarm", 11, 16, 40)).result
    c = run(RunConfig("swarm", 12, 16, 40)).result
    assert a["trace"] == b["trace"] and a["events"] == b["events"]
    assert a["trace"] != c["trace"]


def test_trace_does_not_depend_on_hash_seed() -> None:
    code = (
        "from simulations.scenarios import RunConfig, run;"
        "print(run(RunConfig('churn', 3, 16, 40)).result['trace'])"
    )
    traces = set()
    for hs in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hs}
        out = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=env,
            check=True,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )
        traces.add(out.stdout.strip())
    assert len(traces) == 1


def test_lazy_offer_walk_gives_the_same_placement_as_full_gossip() -> None:
    lazy = _check("load", 2, nodes=20, jobs=60, load="0.7")
    full = _check("load", 2, nodes=20, jobs=60, load="0.7", gossip_mode="full")
    assert full["counters"]["bid_late"] > 0 and lazy["counters"]["bid_late"] == 0
    assert full["completion_mean_s"] == pytest.approx(lazy["completion_mean_s"], rel=0.15)


def _membership(nodes: int, shard_nodes: int) -> tuple[dict, Run]:
    r = run(
        RunConfig(
            "load",
            1,
            nodes,
            40,
            {
                "load": "0.5",
                "core.advert_shard_nodes": str(shard_nodes),
                # the ceiling that binds beyond 960 nodes at the defaults binds
                # here beyond 20: a 20-node shard heartbeats every 15 s
                "core.advert_interval_max_ms": "15000",
            },
        )
    )
    assert r.result["ok"] and r.result["succeeded"] == 40, r.result["failure"]
    return r.result["membership"], r


def test_adverts_reach_their_shard_so_each_node_hears_as_many_as_the_mesh_grows() -> None:
    """Shards of at most 20 nodes (specs/PROTOCOL.md §5.2), the heartbeat's
    ceiling reached at 20 nodes: a 160-node mesh in 8 shards costs each node
    about the adverts a 40-node mesh in 2 does, a fraction of what it costs
    unsharded; each node's view holds its shard's peers alone, and every
    job is still placed."""
    small, _ = _membership(40, 20)
    big, r = _membership(160, 20)
    flat, _ = _membership(160, 0)
    assert small["advert_shards_median"] == 2 and big["advert_shards_median"] == 8
    assert flat["advert_shards_median"] == 1
    got = big["adverts_received_per_node_per_s"]
    assert got <= 1.5 * small["adverts_received_per_node_per_s"], (got, small)
    assert flat["adverts_received_per_node_per_s"] >= 3 * got, (flat, got)
    e = r.engine
    for slot in e.slots:
        peers = slot.node.peers
        assert e.advert_topics_of[slot.idx] == peers.advert_topics(slot.peer_id)
        assert advert_topic(slot.peer_id, peers.shards) in e.advert_topics_of[slot.idx]
        # a shard may have split since the start (its view keeps the other
        # half's adverts until they expire): within the shard it started in
        widest = min(8, peers.shards, peers.shards_from or 8)
        mine = shard_of(slot.peer_id, widest)
        assert all(shard_of(p.peer_id, widest) == mine for p in peers.alive(e.now))


def test_a_grown_mesh_starts_with_one_warm_advert_per_node() -> None:
    """The grown mesh's start (engine.py, "Scale"): each node's executor is
    checked before it advertises, so it sends one advert at boot and every
    view holds warm peers; a restarted node boots in the daemon's order,
    cold and then warm."""
    r = Run(RunConfig("scale", 1, 30, 1))
    e = r.engine
    r._schedule()
    # every node booted (within 2 s), before the first heartbeat (2 s after a node's first advert)
    e.run_until(e.now + 1_999)
    assert [s.node.counters["adverts_sent"] for s in e.slots] == [1] * 30
    for s in e.slots:
        assert all(p.advert.warm for p in s.node.peers.alive(e.now))
    assert sum(len(s.node.peers) for s in e.slots) > 20 * 29
    slot = e.slots[0]
    e.crash(slot, torn=False)
    e.restart(slot)
    e.run_until(e.now + 100)
    assert slot.node.counters["adverts_sent"] == 2 and slot.node.worker.warm


def test_a_run_turns_the_collector_off_and_restores_it() -> None:
    """A run executes with the cyclic collector off (its long-lived state is
    never walked) and leaves it as it found it, on or off, failed runs
    included."""
    seen: list[bool] = []
    assert gc.isenabled()
    r = Run(RunConfig("scale", 1, 12, 4))
    r.engine.call_at(r.t_start, lambda: seen.append(gc.isenabled()))
    assert r.execute()["ok"]
    assert seen == [False] and gc.isenabled()
    r = Run(RunConfig("scale", 1, 12, 4))
    r.engine.call_at(r.t_start, lambda: (_ for _ in ()).throw(engine.SimFailure("boom")))
    assert r.execute()["failure"] == "boom" and gc.isenabled()
    gc.disable()
    try:
        assert Run(RunConfig("scale", 1, 12, 4)).execute()["ok"] and not gc.isenabled()
    finally:
        gc.enable()


def test_scale_is_the_load_scenario_at_half_utilisation() -> None:
    """`scale` (the headline size by default) simulates exactly what
    `load --set load=0.5` does for the same seed and size."""
    scale = _check("scale", 3, nodes=16, jobs=30)
    load = _check("load", 3, nodes=16, jobs=30, load="0.5")
    assert scale["trace"] == load["trace"] and scale["events"] == load["events"]
    assert scale["cpu_s"] > 0 and "ratio_mean_vs_omniscient" in scale


def test_events_run_in_time_then_scheduling_order_as_a_heap_would() -> None:
    """The engine's queue (a FIFO per virtual ms) runs events in the order a
    heap of (time, sequence) gives, including those scheduled while it runs:
    for the ms being run (after the ones already due), and in its past (next)."""
    eng = engine.Engine(1, [], Knobs(), CoreParams())
    t0 = eng.now
    ran: list[tuple[str, int]] = []

    def ev(name: str, then: tuple[int, str] | None = None) -> Callable[[], None]:
        def run() -> None:
            ran.append((name, eng.now))
            if then is not None:
                eng.call_at(eng.now + then[0], ev(then[1]))

        return run

    eng.call_at(t0 + 5, ev("a", (-3, "past")))
    eng.call_at(t0 + 1, ev("b", (0, "same-ms")))
    eng.call_at(t0 + 5, ev("c"))
    eng.call_at(t0 + 1, ev("d"))
    eng.call_at(t0 + 9, ev("late"))
    eng.run_until(t0 + 5)
    assert ran == [
        ("b", t0 + 1),
        ("d", t0 + 1),
        ("same-ms", t0 + 1),
        ("a", t0 + 5),
        ("past", t0 + 2),
        ("c", t0 + 5),
    ]
    assert eng.now == t0 + 5
    eng.run_until(t0 + 20)
    assert ran[-1] == ("late", t0 + 9) and len(ran) == 7


def test_answer_order_is_the_stable_sorts_prefix_ties_included() -> None:
    """An offer's walk order: the first nodes of the stable argsort of the
    answer times, ties broken by index, however the cut falls among them."""
    rng = np.random.default_rng(5)
    for n, m in ((1, 1), (10, 3), (10, 10), (10, 64), (500, 1), (500, 64), (2_000, 64)):
        r = rng.integers(2, 40, n)  # few distinct values: many ties at every cut
        full = np.argsort(r, kind="stable").tolist()
        first, complete = answer_order(r, m)
        assert len(first) >= min(m, n) and first == full[: len(first)]
        assert complete == (len(first) == n)


def test_an_offer_walk_past_its_prefix_goes_on_in_the_same_order(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """With a one-node prefix every walk sorts the rest when it gets there:
    the run is the same, step for step, as with the default prefix."""
    base = _check("load", 2, nodes=20, jobs=40, load="0.7")
    monkeypatch.setattr(engine, "OFFER_ORDER_PREFIX", 1)
    short = _check("load", 2, nodes=20, jobs=40, load="0.7")
    assert short["trace"] == base["trace"] and short["events"] == base["events"]


def test_sim_codec_models_authentication() -> None:
    from meshd.core.identity import Identity
    from meshd.core.wire import Attestation

    codec, ident = SimCodec(), Identity.from_seed_int(5)
    att = codec.seal(
        ident, Attestation(subject="x", job_id="job-0000001", outcome="valid", seq=1), 1, b"\0" * 8
    )
    assert isinstance(att, Opened) and att.sender == ident.peer_id
    assert (
        codec.open(att.raw, 1 << 16) is att
    )  # a wrapped envelope's bytes open to the same message
    assert codec.open(b"simenv:\xff\xff\xff\xff\xff\xff", 1 << 16) == Rejected(
        "bad_signature", "unknown envelope token"
    )
    assert codec.open(Forged(ident.peer_id, "result"), 1 << 16).reason == "bad_signature"  # type: ignore[union-attr]
    assert codec.open(b"\x93garbage", 1 << 16).reason == "malformed"  # type: ignore[union-attr]
    assert codec.open(bytes(70_000), 1 << 16).reason == "oversize"  # type: ignore[union-attr]


def test_thinned_receipts_model_converged_ledgers_whose_sync_sends_nothing() -> None:
    """With receipts thinned (engine.py, "Scale": above 256 nodes, or a
    ``receipt_fanout`` pinned) the engine does not deliver ledger summaries,
    as a converged mesh's equal summaries would change nothing: no node
    answers one and no ledger grows by sync; an origin still hears its own
    receipts' countersignatures. Nothing thinned, sync runs in full."""

    def sync(fanout: str) -> tuple[dict, dict[str, int]]:
        pins = {"receipt_fanout": fanout, "core.ledger_sync_interval_ms": "2000"}
        r = Run(RunConfig("scale", 5, 20, 60, pins))
        res = r.execute()
        assert res["ok"], res["failure"]
        totals: dict[str, int] = {"pending": 0}
        for s in r.engine.slots:
            for k in (
                *("ledger_sync_sent", "ledger_sync_answered", "ledger_sync_receipts_added"),
                *("receipts_issued", "accepted_receipt", "receipts_uncosigned"),
            ):
                totals[k] = totals.get(k, 0) + s.node.counters[k]
            totals["pending"] += len(s.node.ledger._receipts_pending)
        return res, totals

    thinned, t = sync("4")
    assert t["ledger_sync_sent"] > 20 and thinned["ledger_sync_converged"] == t["ledger_sync_sent"]
    assert t["ledger_sync_answered"] == 0 and t["ledger_sync_receipts_added"] == 0
    # every origin heard its receipts' countersignatures: nothing re-sent
    assert t["receipts_issued"] == t["accepted_receipt"] == 60
    assert t["pending"] == t["receipts_uncosigned"] == 0
    full, t = sync("-1")
    assert "ledger_sync_converged" not in full
    assert t["ledger_sync_answered"] > 20 and t["ledger_sync_sent"] > 20


def test_the_command_ends_without_teardown_but_with_its_output_and_status(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``python -m simulations run`` ends by ``exit_now`` (no teardown of the
    run's heap): its summary still reaches a pipe, its JSON is written, and
    its status says whether the run held."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "simulations", "run", *args],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )

    out = tmp_path / "run.json"
    good = cli("swarm", "--seed", "1", "--nodes", "8", "--jobs", "6", "--json", str(out))
    assert good.returncode == 0, good.stderr
    assert "trace" in good.stdout and '"ok": true' in out.read_text()
    bad = cli(
        *("load", "--seed", "7", "--nodes", "12", "--jobs", "20"),
        *("--set", "liveness_ms=60000", "--mutant", "drop_queued_work"),
    )
    assert bad.returncode == 1 and "job(s) lost" in bad.stdout


def test_progress_lines_leave_the_run_as_it_was(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """``run --progress S`` prints a line every S virtual seconds of the
    submission phase and one at the end, and the run is the one without it
    (same trace and steps); a value that is no duration is refused in one line."""

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "simulations", "run", "burst", "--seed", "2", *args],
            capture_output=True,
            text=True,
            cwd=os.path.dirname(os.path.dirname(__file__)),
        )

    size = ("--nodes", "30", "--jobs", "20")
    plain, sliced = tmp_path / "plain.json", tmp_path / "sliced.json"
    assert cli(*size, "--json", str(plain)).returncode == 0
    shown = cli(*size, "--progress", "0.5", "--json", str(sliced))
    assert shown.returncode == 0, shown.stderr
    lines = [ln for ln in shown.stderr.splitlines() if ln.startswith("progress: ")]
    assert len(lines) >= 4 and lines[-1].endswith("(the end)") and "terminal 20/20" in lines[-1]
    a, b = json.loads(plain.read_text()), json.loads(sliced.read_text())
    assert (a["trace"], a["events"]) == (b["trace"], b["events"])
    for bad in ("nan", "-1", "inf"):
        refused = cli(*size, "--progress", bad)
        assert refused.returncode == 2 and "Traceback" not in refused.stderr
        assert f"--progress {float(bad)}" in refused.stderr


@pytest.mark.parametrize(("scenario", "nodes", "jobs"), [("churn", 30, 120), ("scale", 300, 900)])
def test_a_run_leaves_next_to_no_reference_cycles(scenario: str, nodes: int, jobs: int) -> None:
    """Runs turn the cyclic collector off (``scenarios.GC_OFF_DURING_RUN``),
    which is only sound while they make next to no cyclic garbage: a grown
    mesh's start leaves a few hundred objects in cycles (closures), and each
    restart the crashed core's object graph (under a thousand objects),
    however many steps they take; nothing per step or per job."""
    gc.collect()
    gc.disable()
    try:
        r = run(RunConfig(scenario, 2, nodes, jobs))
        assert r.result["ok"], r.result["failure"]
        found = gc.collect()  # the run still referenced: only its garbage is found
        restarts = r.engine.stats.get("restarts", 0)
        assert r.engine.events > 30_000 and (scenario == "scale" or restarts > 0)
        assert found <= 1_000 * (1 + restarts), (
            f"{found} objects in cycles after {r.engine.events} steps, {restarts} restarts"
        )
    finally:
        gc.enable()
