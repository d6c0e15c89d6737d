"""Benchmark: a job image travelling over the mesh vs ``docker save | docker load``.

    eval "$(MESHD_DOCKER_DIR=/tmp/meshd-docker-NAME bash tests/docker_env.sh start)"
    python tests/bench/bench_image.py [--mb 32] [--runs 5]

Two engines, as a job's image meets them: the origin's (``DOCKER_HOST``),
which has the image, and a second private engine started here for the
worker, which has not. The image is busybox plus ``--mb`` MiB of random
bytes (incompressible, so no side gains from compression).

- mesh: the origin's ``ImageCache.attach`` (``docker save`` into its blob
  store, the archive's id checked), in a process of its own (as the origin
  is another machine), serving its store over the real blob protocol; then
  the worker's ``ImageCache.ensure`` here (fetch between the two libp2p
  hosts on loopback: the piece list, then the archive's ranges, each checked
  as it arrives and streamed into ``docker load`` meanwhile; the whole
  digest and image-id checks; the cache's index). Timed from asking the
  origin to attach to the image being loaded. Phases: ``save`` (the
  origin's attach), ``fetch`` (the archive's fetch, the streamed load
  overlapping it), ``check+load`` (the rest: the piece list, the end of the
  load, the checks after it);
- baseline: ``docker -H origin save IMG | docker -H worker load`` (the CLI
  pipe, no checks, no network hop).

Runs are interleaved (baseline, mesh, ...) after a warm-up of each; before
each run the worker's engine loses the image and the origin's store its
archive. Figures: median seconds of each and the ratio baseline / mesh
(1.0: as fast as the local pipe; target at least 0.5). Not part of the
pass/fail test run.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import docker
import trio

from meshd.core.events import BLOB_PROTOCOL
from meshd.core.jobspec import JobSpec
from meshd.exec import ExecParams
from meshd.exec.docker_exec import DockerExecutor
from meshd.exec.health_image import find_static_busybox
from meshd.runtime.images import ImageCache
from meshd.runtime.params import RuntimeParams
from meshd.store.blobs import BlobStore
from meshd.testing.images import import_marker_image, second_engine
from meshd.testing.nethosts import LINE, blob_transfer, make_host

TARGET_RATIO = 0.5


def _sock(url: str) -> str:
    """A ``docker -H`` address for an SDK base URL or DOCKER_HOST value."""
    if url.startswith("http+docker://"):
        return "unix:///var/run/docker.sock"
    return url


def baseline(origin_url: str, worker_url: str, image: str) -> float:
    t0 = time.perf_counter()
    save = subprocess.Popen(["docker", "-H", origin_url, "save", image], stdout=subprocess.PIPE)
    load = subprocess.run(
        ["docker", "-H", worker_url, "load", "-q"], stdin=save.stdout, capture_output=True
    )
    assert save.stdout is not None
    save.stdout.close()
    if save.wait() != 0 or load.returncode != 0:
        raise SystemExit(f"docker save | docker load failed: {load.stderr.decode()[-500:]}")
    return time.perf_counter() - t0


def _cache(ex: DockerExecutor, blobs: BlobStore, index: Path, fetch: object) -> ImageCache:
    return ImageCache(
        ex,
        blobs,
        index,
        fetch_blob=fetch,  # type: ignore[arg-type]
        in_use=set,
        counts=Counter(),
        max_image_bytes=1 << 30,
        cache_max_bytes=1 << 40,
        pull_images=False,
    )


async def serve_origin(origin_url: str) -> None:
    """The origin, in its own process (``--serve``): a libp2p host serving its
    blob store. Each stdin line ``attach IMAGE`` empties the store, runs
    ``ImageCache.attach`` and answers one JSON line (the image blob and the
    seconds it took); EOF ends it."""
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-origin-"))
    ex = DockerExecutor(ExecParams(), "bench-origin", base_url=origin_url)
    host = make_host(LINE)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            blobs = BlobStore(tmp / "blobs")
            # serves any range the fetcher's --chunk-kib asks for
            serving = RuntimeParams(blob_chunk_bytes=63 << 20)
            host.handle(BLOB_PROTOCOL, blob_transfer(blobs, host, serving).serve)
            cache = _cache(ex, blobs, tmp / "images.json", None)
            print(json.dumps({"addr": host.listen_addrs[0], "peer": host.peer_id}), flush=True)
            while line := await trio.to_thread.run_sync(sys.stdin.readline):
                image = line.split()[1]
                for d in list(blobs.digests()):
                    blobs.delete(d)
                cache._exported.clear()
                t0 = time.perf_counter()
                spec = await cache.attach(JobSpec(job_id="bench-0001", image=image, command=["t"]))
                took = time.perf_counter() - t0
                assert spec.image_blob is not None
                print(json.dumps({"blob": spec.image_blob.model_dump(), "s": took}), flush=True)
            nursery.cancel_scope.cancel()
    finally:
        ex.close()
        shutil.rmtree(tmp, ignore_errors=True)


async def bench(args: argparse.Namespace, origin_url: str, worker_url: str) -> None:
    bb = find_static_busybox(("/bin/busybox", "/usr/bin/busybox"))
    image = f"meshd/bench-image-{secrets.token_hex(4)}:1"
    oapi = docker.APIClient(base_url=origin_url, version="auto", timeout=120)
    wapi = docker.APIClient(base_url=worker_url, version="auto", timeout=120)
    import_marker_image(oapi, image, "bench", bb, payload=os.urandom(args.mb << 20))
    size_mb = oapi.inspect_image(image)["Size"] / (1 << 20)
    tmp = Path(tempfile.mkdtemp(prefix="meshd-bench-image-"))
    wx = DockerExecutor(ExecParams(), "bench-worker", base_url=worker_url)
    origin = subprocess.Popen(
        [sys.executable, __file__, "--serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "DOCKER_HOST": origin_url},
    )
    assert origin.stdin is not None and origin.stdout is not None
    parts: dict[str, list[float]] = {"save": [], "fetch": [], "check+load": []}
    base_t: list[float] = []
    mesh_t: list[float] = []
    try:
        hello = json.loads(await trio.to_thread.run_sync(origin.stdout.readline))
        async with trio.open_nursery() as nursery:
            host = make_host(LINE, [hello["addr"]])
            await nursery.start(host.run)
            wblobs = BlobStore(tmp / "w")
            rp = RuntimeParams(
                blob_chunk_bytes=args.chunk_kib << 10, blob_chunks_in_flight=args.in_flight
            )
            fetcher = blob_transfer(wblobs, host, rp)
            fetch_s: list[float] = []

            async def timed_fetch(peer: str, digest: str, **kw: Any) -> None:
                t0 = time.perf_counter()
                await fetcher.fetch_from(peer, digest, **kw)
                fetch_s.append(time.perf_counter() - t0)

            wcache = _cache(wx, wblobs, tmp / "w.json", timed_fetch)

            def reset() -> None:
                try:
                    wapi.remove_image(image, force=True)
                except docker.errors.ImageNotFound:
                    pass
                wcache.index.clear()

            def attach() -> dict[str, object]:
                assert origin.stdin is not None and origin.stdout is not None
                origin.stdin.write(f"attach {image}\n")
                origin.stdin.flush()
                return json.loads(origin.stdout.readline())  # type: ignore[no-any-return]

            async def mesh() -> float:
                t0 = time.perf_counter()
                got = await trio.to_thread.run_sync(attach)
                spec = JobSpec(
                    job_id="bench-0001", image=image, command=["t"], image_blob=got["blob"]
                )
                t1 = time.perf_counter()
                await wcache.ensure(hello["peer"], spec)
                dt = time.perf_counter() - t0
                assert spec.image_blob is not None
                assert wapi.inspect_image(image)["Id"] == spec.image_blob.id
                parts["save"].append(t1 - t0)
                parts["fetch"].append(fetch_s[-1])
                parts["check+load"].append(dt - (t1 - t0) - fetch_s[-1])
                return dt

            for i in range(args.runs + 1):  # the first pair is the warm-up
                reset()
                bt = await trio.to_thread.run_sync(
                    baseline, _sock(origin_url), _sock(worker_url), image
                )
                reset()
                mt = await mesh()
                if i:
                    base_t.append(bt)
                    mesh_t.append(mt)
                print(
                    f"run {i}{' (warm-up)' if not i else ''}: baseline {bt:.3f} s, mesh {mt:.3f} s",
                    file=sys.stderr,
                )
            nursery.cancel_scope.cancel()
    finally:
        origin.stdin.close()
        try:
            origin.wait(timeout=30)
        except subprocess.TimeoutExpired:
            origin.kill()
            origin.wait()
        try:
            oapi.remove_image(image, force=True)
            wapi.remove_image(image, force=True)
        except docker.errors.DockerException:
            pass
        wx.close()
        shutil.rmtree(tmp, ignore_errors=True)
    bm, mm = statistics.median(base_t), statistics.median(mesh_t)
    ratio = bm / mm
    print(f"image: {size_mb:.1f} MiB in the engine, {args.runs} runs each (interleaved)")
    print(f"docker save | docker load (baseline): median {bm:.3f} s")
    print(f"mesh (save + serve + fetch + checks + load): median {mm:.3f} s")
    print(
        "  of which (medians): "
        + ", ".join(f"{k} {statistics.median(v[1:]):.3f} s" for k, v in parts.items())
    )
    verdict = "meets" if ratio >= TARGET_RATIO else "misses"
    print(f"ratio baseline/mesh: {ratio:.2f}x ({verdict} the {TARGET_RATIO}x target)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=32, help="random payload in the image, MiB")
    ap.add_argument("--runs", type=int, default=5)
    rp = RuntimeParams()
    ap.add_argument(
        "--chunk-kib", type=int, default=rp.blob_chunk_bytes >> 10, help="blob_chunk_bytes, KiB"
    )
    ap.add_argument("--in-flight", type=int, default=rp.blob_chunks_in_flight)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    origin_url = os.environ.get("DOCKER_HOST")
    if not origin_url:
        raise SystemExit('set DOCKER_HOST: eval "$(tests/docker_env.sh start)"')
    if args.serve:
        trio.run(serve_origin, origin_url)
        return
    with second_engine(Path(f"/tmp/mdb-{secrets.token_hex(3)}")) as worker_url:
        trio.run(bench, args, origin_url, worker_url)


if __name__ == "__main__":
    main()
