"""The health-check image a node builds itself, and the image cache, against a
real engine (``eval "$(tests/docker_env.sh start)"``; skipped without one).

Rules checked: ``meshd/exec/health_image.py`` (a missing health-check image
is imported from the host's static busybox; without one the reason names the
fix) and ``meshd/runtime/images.py`` (an archive's image id is its config's
hash and must be the pinned id; a tampered archive is refused and not
loaded; the cache evicts the least recently used image meshd loaded, never
one in use nor one it did not load; it keeps the archives of the images it
loaded, to serve them, within their own bound, across restarts).
"""

from __future__ import annotations

import secrets
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshd.core.jobspec import JobSpec
from meshd.exec.health_image import find_static_busybox
from meshd.runtime.images import ImageCache, ImageRefused, archive_image_id
from meshd.store.blobs import BlobStore
from meshd.testing.docker_fixtures import TEST_IMAGE
from meshd.testing.images import import_marker_image, save_archive, tamper_archive

pytestmark = pytest.mark.docker

BUSYBOX_PATHS = ("/bin/busybox", "/usr/bin/busybox")


def _busybox() -> Path:
    try:
        return find_static_busybox(BUSYBOX_PATHS)
    except Exception as exc:
        pytest.skip(f"no static busybox here: {exc}")


@pytest.fixture
def scratch_images(docker_api: Any) -> Any:
    """Names of images a test makes; all removed afterwards."""
    made: list[str] = []
    yield made
    for name in made:
        try:
            docker_api.remove_image(name, force=True)
        except Exception:
            pass


async def test_a_missing_health_image_is_built_and_the_node_passes_its_check(
    make_docker_executor: Any, docker_api: Any, scratch_images: list[str]
) -> None:
    _busybox()
    name = f"meshd/health-{secrets.token_hex(4)}:1"
    scratch_images.append(name)
    ex = make_docker_executor(health_check_image=name)
    assert ex.image_id(name) is None
    result = await ex.health_check()
    assert result.status == "succeeded", result.reason
    assert ex.image_id(name) is not None


async def test_without_a_static_busybox_the_cold_reason_names_the_fix(
    make_docker_executor: Any, scratch_images: list[str]
) -> None:
    name = f"meshd/health-{secrets.token_hex(4)}:1"
    scratch_images.append(name)
    ex = make_docker_executor(health_check_image=name, busybox_paths=(sys.executable, "/nope"))
    result = await ex.health_check()
    assert result.status == "error"
    assert "apt-get install busybox-static" in result.reason, result.reason
    assert "dynamically linked" in result.reason and "/nope" in result.reason
    assert ex.image_id(name) is None


def test_an_archives_image_id_is_the_engines_id_and_a_changed_config_changes_it(
    docker_api: Any, tmp_path: Path
) -> None:
    data = save_archive(docker_api, TEST_IMAGE)
    (tmp_path / "a.tar").write_bytes(data)
    (tmp_path / "b.tar").write_bytes(tamper_archive(data, "config"))
    want = docker_api.inspect_image(TEST_IMAGE)["Id"]
    assert archive_image_id(tmp_path / "a.tar") == want
    assert archive_image_id(tmp_path / "b.tar") != want


def _cache(ex: Any, tmp_path: Path, **kw: Any) -> ImageCache:
    blobs = BlobStore(tmp_path / "blobs")

    async def fetch_blob(peer: str, digest: str, *, max_bytes: int | None = None) -> None:
        # The blob is already in this one store (the origin's and the worker's
        # here), as BlobTransfer.fetch_from finds it when it has it.
        assert blobs.has(digest.removeprefix("sha256:"))

    kw.setdefault("in_use", set)
    return ImageCache(
        ex,
        blobs,
        tmp_path / "images.json",
        fetch_blob=fetch_blob,
        counts=Counter(),
        max_image_bytes=64 << 20,
        cache_max_bytes=kw.pop("cache_max_bytes", 1 << 30),
        pull_images=False,
        **kw,
    )


def _spec(image: str) -> JobSpec:
    return JobSpec(job_id=f"job-{secrets.token_hex(4)}", image=image, command=["true"])


async def test_a_tampered_archive_is_refused_and_not_loaded(
    make_docker_executor: Any, docker_api: Any, scratch_images: list[str], tmp_path: Path
) -> None:
    bb = _busybox()
    ex = make_docker_executor()
    cache = _cache(ex, tmp_path)
    for what, code in (("config", "image_id"), ("layer", "load")):
        name = f"meshd/travel-{secrets.token_hex(4)}:1"
        scratch_images.append(name)
        image_id = import_marker_image(docker_api, name, secrets.token_hex(8), bb)
        spec = await cache.attach(_spec(name))
        assert spec.image_blob is not None and spec.image_blob.id == image_id
        bad = tamper_archive(save_archive(docker_api, name), what)
        docker_api.remove_image(name, force=True)
        digest = cache.blobs.put(bad)
        blob = spec.image_blob.model_copy(update={"digest": "sha256:" + digest, "size": len(bad)})
        with pytest.raises(ImageRefused) as err:
            await cache.ensure("origin", spec.model_copy(update={"image_blob": blob}))
        assert err.value.code == code, err.value
        assert cache.counts[f"image_refused_{code}"] == 1
        assert ex.image_id(name) is None and ex.image_id(image_id) is None


async def test_the_cache_evicts_the_least_recently_used_image_it_loaded(
    make_docker_executor: Any, docker_api: Any, scratch_images: list[str], tmp_path: Path
) -> None:
    bb = _busybox()
    ex = make_docker_executor()
    in_use: set[str] = set()
    names = [f"meshd/travel-{secrets.token_hex(4)}:1" for _ in range(4)]
    scratch_images.extend(names)
    ids = [import_marker_image(docker_api, n, secrets.token_hex(8), bb) for n in names]
    one_image = ex.image_size(ids[0])
    # room for two and a half images
    cache = _cache(ex, tmp_path, cache_max_bytes=int(one_image * 2.5), in_use=lambda: in_use)
    specs = [await cache.attach(_spec(n)) for n in names]
    for n in names:
        docker_api.remove_image(n, force=True)

    def present() -> list[bool]:
        return [ex.image_id(n) == i for n, i in zip(names, ids, strict=True)]

    await cache.ensure("origin", specs[0])
    await cache.ensure("origin", specs[1])
    assert present() == [True, True, False, False]
    in_use.add(names[0])  # a live run uses the oldest: the next one goes instead
    await cache.ensure("origin", specs[2])
    assert present() == [True, False, True, False]
    in_use.clear()
    await cache.ensure("origin", specs[0])  # used again: now the third is the oldest
    await cache.ensure("origin", specs[3])
    assert present() == [True, False, False, True]
    assert cache.counts["image_loaded"] == 4 and cache.counts["image_evicted"] == 2
    assert set(cache.index) == {ids[0], ids[3]}
    # An image meshd did not load is never evicted, however full the cache.
    assert ex.image_id(TEST_IMAGE) is not None


async def test_the_archives_of_loaded_images_are_kept_within_their_bound_to_be_served(
    make_docker_executor: Any, docker_api: Any, scratch_images: list[str], tmp_path: Path
) -> None:
    bb = _busybox()
    ex = make_docker_executor()
    names = [f"meshd/travel-{secrets.token_hex(4)}:1" for _ in range(2)]
    scratch_images.extend(names)
    for n in names:
        import_marker_image(docker_api, n, secrets.token_hex(8), bb)
    probe = _cache(ex, tmp_path / "probe")
    size = (await probe.attach(_spec(names[0]))).image_blob.size  # type: ignore[union-attr]
    # room for one archive and a half
    changed: list[tuple[str, ...]] = []

    async def on_archives() -> None:
        changed.append(cache.archives())

    cache = _cache(ex, tmp_path, archives_max_bytes=int(size * 1.5), on_archives=on_archives)
    specs = [await cache.attach(_spec(n)) for n in names]
    digests = [s.image_blob.digest for s in specs]  # type: ignore[union-attr]
    pieces = [s.image_blob.pieces for s in specs]  # type: ignore[union-attr]
    assert all(p is not None for p in pieces)
    for n in names:
        docker_api.remove_image(n, force=True)
    exported = dict(cache._exported)
    cache._exported.clear()  # from here on a worker only (it saved none as an origin)

    await cache.ensure("origin", specs[0], ("holder",))
    assert cache.archives() == (digests[0],)
    # its piece list is kept and served with it, not advertised
    assert cache.piece_lists() == (pieces[0],)
    assert cache.pinned() == {d.removeprefix("sha256:") for d in (digests[0], pieces[0])}  # type: ignore[union-attr]
    await cache.ensure("origin", specs[1])
    # over the bound: the older image's archive goes, the image stays
    assert cache.archives() == (digests[1],) and changed == [(digests[0],), (digests[1],)]
    assert not cache.blobs.has(digests[0].removeprefix("sha256:"))
    assert not cache.blobs.has(pieces[0].removeprefix("sha256:"))  # type: ignore[union-attr]
    assert cache.counts["image_archive_dropped"] == 1
    assert [ex.image_id(n) is not None for n in names] == [True, True]
    # after a restart the kept archive is still served
    again = _cache(ex, tmp_path, archives_max_bytes=int(size * 1.5))
    assert again.archives() == (digests[1],)
    # An archive this node also saved as an origin is forgotten, not deleted.
    again._exported, again.archives_max_bytes = exported, 0
    again._drop_archives()
    assert again.archives() == () and again.blobs.has(digests[1].removeprefix("sha256:"))
