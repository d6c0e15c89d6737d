"""Images that travel, in the core: the offer pins the image, a worker that
lacks it bids with the transfer in its estimate instead of declining
(``meshd/core/placement.py``, ``Worker.on_offer``; specs/PROTOCOL.md §5.1,
§8.1, §8.2), the origin serves the archive only to a worker holding a
live run of the job, and a peer that advertises the archive serves it to
anyone and is named to the fetching worker as a holder."""

from __future__ import annotations

import dataclasses

from meshd.core.events import Tick
from meshd.core.jobspec import ImageBlob, parse_job_spec
from meshd.core.origin import offer_requirements
from meshd.core.params import CoreParams
from meshd.core.placement import Capacity, decline_reason, fit_reason, image_fetch_bytes, make_bid
from meshd.core.wire import Offer, OfferRequirements

IMAGE = "example/job:1"
IMAGE_ID = "sha256:" + "ab" * 32
OTHER_ID = "sha256:" + "cd" * 32
BLOB = "sha256:" + "ef" * 32
PIECES = "sha256:" + "9a" * 32
MiB = 1024 * 1024


def cap(**kw: object) -> Capacity:
    base = Capacity(
        cores=4,
        ram_mb=8192,
        gpus=(),
        gpu_runtime=False,
        runtimes=("docker",),
        images=("meshd/busybox:1",),
        tier="cpu",
        network_allowed=False,
        warm=True,
        cold_reason=None,
        score_gflops=50.0,
        price=0.01,
        running=0,
        queued=0,
        capacity=4,
    )
    return dataclasses.replace(base, **kw)


def offer(**req: object) -> Offer:
    return Offer(
        job_id="job-0000001",
        attempt=1,
        spec_digest=BLOB,
        requirements=OfferRequirements(image=IMAGE, **req),  # type: ignore[arg-type]
        timeout_s=60.0,
        bid_window_ms=500,
    )


def test_the_offer_pins_the_image_of_a_descriptor_with_an_image_blob() -> None:
    spec = parse_job_spec(
        {
            "job_id": "job-0000001",
            "image": IMAGE,
            "command": ["true"],
            "image_blob": {"id": IMAGE_ID, "digest": BLOB, "size": 5 * MiB},
        }
    )
    r = offer_requirements(spec)
    assert (r.image_id, r.image_size) == (IMAGE_ID, 5 * MiB)
    plain = offer_requirements(spec.model_copy(update={"image_blob": None}))
    assert (plain.image_id, plain.image_size) == (None, 0)


def test_a_worker_lacking_a_travelling_image_bids_with_the_transfer_in_its_estimate() -> None:
    p = CoreParams()
    travelling = offer(image_id=IMAGE_ID, image_size=40 * MiB)
    assert image_fetch_bytes(cap(), travelling.requirements) == 40 * MiB
    reason, _ = decline_reason(
        cap(),
        travelling,
        self_id="me",
        queue_max=4,
        overhead_s=1.0,
        max_image_bytes=p.max_image_bytes,
    )
    assert reason is None
    bid = make_bid(
        cap(),
        travelling,
        avg_run_s=1.0,
        overhead_s=1.0,
        image_bytes_per_s=p.image_transfer_bytes_per_s,
    )
    want_ms = int(40 * MiB / p.image_transfer_bytes_per_s * 1000)
    assert bid.est_start_ms == want_ms
    # The same job where the image is already here starts at once.
    here = cap(images=(IMAGE,), image_ids=((IMAGE, IMAGE_ID),))
    assert image_fetch_bytes(here, travelling.requirements) == 0
    bid_here = make_bid(
        here,
        travelling,
        avg_run_s=1.0,
        overhead_s=1.0,
        image_bytes_per_s=p.image_transfer_bytes_per_s,
    )
    assert bid_here.est_start_ms == 0


def test_an_image_that_does_not_travel_is_still_declined() -> None:
    assert fit_reason(cap(), offer().requirements) == f"image {IMAGE} not present locally"
    # pinned but with no size: nothing to fetch from
    assert fit_reason(cap(), offer(image_id=IMAGE_ID).requirements) is not None


def test_a_local_image_with_another_id_than_the_pinned_one_must_travel() -> None:
    stale = cap(images=(IMAGE,), image_ids=((IMAGE, OTHER_ID),))
    assert image_fetch_bytes(stale, offer(image_id=IMAGE_ID, image_size=MiB).requirements) == MiB
    # An advert carries no ids: the name is taken as present.
    advert_like = cap(images=(IMAGE,))
    assert (
        image_fetch_bytes(advert_like, offer(image_id=IMAGE_ID, image_size=MiB).requirements) == 0
    )


def test_an_image_over_the_workers_limit_is_declined_with_a_sent_reason() -> None:
    big = offer(image_id=IMAGE_ID, image_size=65 * MiB)
    reason, send = decline_reason(
        cap(), big, self_id="me", queue_max=4, overhead_s=1.0, max_image_bytes=64 * MiB
    )
    assert reason is not None and "max_image_bytes" in reason and send is True


def test_the_image_blob_is_validated() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ImageBlob(id="latest", digest=BLOB, size=1)
    with pytest.raises(ValidationError):
        ImageBlob(id=IMAGE_ID, digest=BLOB, size=0)


def test_on_a_core_mesh_workers_without_the_image_take_the_job_and_only_they_may_fetch_it() -> None:
    from meshd.testing.corenet import CoreNet, FakeWorker, default_caps

    bare = FakeWorker(caps=default_caps(images=()))
    cold = FakeWorker(caps=default_caps(images=()), healthy=False)  # never holds a run
    # The origin lacks the image too (one that has it would run the job itself, §8.5).
    net = CoreNet(4, workers=[bare, bare, bare, cold])
    net.run_for(3_000)  # adverts
    origin = net.node(0)
    spec = parse_job_spec({"image": IMAGE, "command": ["true"], "timeout_s": 30})

    # Without an image_blob, nobody has the image: the job waits.
    stuck = net.submit(0, spec)
    net.run_for(3_000)
    assert net.job(0, stuck).state in ("queued", "offered") and not net.job(0, stuck).runs

    travelling = spec.model_copy(
        update={
            "image_blob": ImageBlob(
                id=IMAGE_ID, digest=BLOB, size=5 * MiB, pieces=PIECES, piece_bytes=MiB
            )
        }
    )
    job_id = net.submit(0, travelling)
    live: dict[str, bool] = {}

    def running() -> bool:
        runs = [r for r in net.job(0, job_id).runs.values() if r.state == "active"]
        if runs:
            live["worker"] = all(
                origin.may_serve_blob(r.worker, d) for r in runs for d in (BLOB, PIECES)
            )
            live["bystander"] = any(origin.may_serve_blob(net.order[3], d) for d in (BLOB, PIECES))
        return bool(runs)

    assert net.run_until(running)
    assert live == {"worker": True, "bystander": False}
    assert net.run_until(lambda: net.job(0, job_id).state == "succeeded")
    assert not any(origin.may_serve_blob(p, d) for p in net.order[1:] for d in (BLOB, PIECES))


def test_a_peer_advertising_the_archive_is_named_as_a_holder_and_serves_anyone() -> None:
    from meshd.testing.corenet import CoreNet, FakeWorker, default_caps

    bare = FakeWorker(caps=default_caps(images=()))
    # Holds the archive (it ran the job before); cold, so it runs nothing now.
    holder = FakeWorker(
        caps=default_caps(images=(), image_archives=(BLOB,), image_pieces=(PIECES,)),
        healthy=False,
    )
    net = CoreNet(4, workers=[bare, holder, bare, bare])
    net.run_for(3_000)  # adverts
    origin, kept = net.node(0), net.node(1)
    assert origin.ctx.peers.get(net.order[1]).advert.image_archives == [BLOB]
    # It serves its archive and the archive's piece list (not advertised) to
    # any peer, nothing else it was not entitled to.
    others = [p for p in net.order if p != net.order[1]]
    assert all(kept.may_serve_blob(p, d) for p in others for d in (BLOB, PIECES))
    assert not kept.may_serve_blob(net.order[2], "sha256:" + "11" * 32)

    spec = parse_job_spec(
        {
            "image": IMAGE,
            "command": ["true"],
            "timeout_s": 30,
            "image_blob": {"id": IMAGE_ID, "digest": BLOB, "size": 5 * MiB},
        }
    )
    job_id = net.submit(0, spec)
    assert net.run_until(lambda: net.job(0, job_id).state == "succeeded")
    fetches = [f for p in net.order for f in net.slots[p].input_fetches if f.job_id == job_id]
    assert fetches and all(f.image_holders == (net.order[1],) for f in fetches)
    assert {f.origin for f in fetches} == {net.order[0]}


def test_a_change_of_the_archives_kept_is_advertised_at_once() -> None:
    from meshd.testing.corenet import CoreNet, default_caps

    net = CoreNet(2)
    net.run_for(3_000)
    seen = net.node(0).ctx.peers.get(net.order[1])
    assert seen is not None and seen.advert.image_archives == []
    # halfway between two periodic adverts
    half = net.now_ms + CoreParams().advert_interval_ms // 2
    net._schedule(half, net.order[1], Tick())
    assert net.run_until(lambda: net.now_ms >= half)
    t0 = net.now_ms
    net.input(1, default_caps(image_archives=(BLOB,)))

    def seen_archive() -> bool:
        entry = net.node(0).ctx.peers.get(net.order[1])
        return entry is not None and entry.advert.image_archives == [BLOB]

    assert net.run_until(seen_archive)
    # well before the next periodic advert: one gossip hop
    assert net.now_ms - t0 < CoreParams().advert_interval_ms // 4
