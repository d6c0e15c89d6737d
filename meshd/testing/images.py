"""Images for the image-travel tests: small job images made on the spot, and
image archives tampered with on purpose.

- :func:`import_marker_image` imports (``docker import``) a busybox root
  holding ``/etc/marker`` with a given token, so a job's output proves which
  image it ran in.
- :func:`tamper_archive` rewrites a ``docker save`` archive: ``"config"``
  changes the image config (so the archive's image id is no longer the
  pinned one), ``"layer"`` appends a file to the first layer while keeping
  the config (so only the engine's own layer check can catch it).
- :func:`second_engine` starts (and always stops) a private ``dockerd`` with
  ``tests/docker_env.sh``: its own data root, exec root and socket, no
  bridge or iptables of its own (two engines on one host would fight over
  them), no images unless asked.
- :class:`LoadRecorder` wraps a real executor and records the bytes its
  ``docker load`` is given.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from meshd.exec.health_image import IMAGE_CHANGES, health_root_tar

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER_ENV = REPO_ROOT / "tests" / "docker_env.sh"


def import_marker_image(
    api: Any, name: str, token: str, busybox: Path, *, payload: bytes = b""
) -> str:
    """Import a busybox image with ``/etc/marker`` = ``token`` (and ``/payload``
    holding ``payload``, to make it larger) as ``name``; its id."""
    src = io.BytesIO(health_root_tar(busybox))
    out = io.BytesIO()
    with tarfile.open(fileobj=src, mode="r:") as tin, tarfile.open(fileobj=out, mode="w") as tout:
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
        body = token.encode() + b"\n"
        info = tarfile.TarInfo("etc/marker")
        info.size, info.mode = len(body), 0o644
        tout.addfile(info, io.BytesIO(body))
        if payload:
            info = tarfile.TarInfo("payload")
            info.size, info.mode = len(payload), 0o644
            tout.addfile(info, io.BytesIO(payload))
    repo, _, tag = name.rpartition(":")
    api.import_image_from_data(
        out.getvalue(), repository=repo, tag=tag, changes=list(IMAGE_CHANGES)
    )
    return str(api.inspect_image(name)["Id"])


class LoadRecorder:
    """A real executor whose ``docker load`` input is recorded as the engine
    reads it (``received``): what reached the engine, byte for byte."""

    def __init__(self, executor: Any) -> None:
        self._executor = executor
        self.received = bytearray()
        self.loads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._executor, name)

    def load_image(self, data: Any) -> None:
        self.loads += 1

        def tapped() -> Iterator[bytes]:
            chunks = iter(lambda: data.read(1 << 20), b"") if hasattr(data, "read") else data
            for chunk in chunks:
                self.received += chunk
                yield chunk

        self._executor.load_image(tapped())


def save_archive(api: Any, name: str) -> bytes:
    """``docker save`` of one image, as bytes."""
    return b"".join(api.get_image(name))


def tamper_archive(data: bytes, what: str) -> bytes:
    """``data`` (a ``docker save`` archive) with its config or first layer changed."""
    src = tarfile.open(fileobj=io.BytesIO(data), mode="r:")
    manifest = json.loads(src.extractfile("manifest.json").read())  # type: ignore[union-attr]
    config_name, layer_name = manifest[0]["Config"], manifest[0]["Layers"][0]
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as dst:
        for m in src.getmembers():
            body = src.extractfile(m).read() if m.isfile() else None  # type: ignore[union-attr]
            if what == "config" and m.name == config_name and body is not None:
                config = json.loads(body)
                config.setdefault("config", {})["Env"] = ["PATH=/bin", "TAMPERED=1"]
                body = json.dumps(config).encode()
            elif what == "layer" and m.name == layer_name and body is not None:
                body = _append_file(body, "etc/tampered", b"1\n")
            if body is not None:
                m.size = len(body)
                dst.addfile(m, io.BytesIO(body))
            else:
                dst.addfile(m)
    return out.getvalue()


def _append_file(layer: bytes, name: str, body: bytes) -> bytes:
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(layer), mode="r:") as tin,
        tarfile.open(fileobj=out, mode="w") as tout,
    ):
        for m in tin.getmembers():
            tout.addfile(m, tin.extractfile(m) if m.isfile() else None)
        info = tarfile.TarInfo(name)
        info.size = len(body)
        tout.addfile(info, io.BytesIO(body))
    return out.getvalue()


def engine_problem() -> str | None:
    """Why a second private Docker engine cannot be started here, or None."""
    if os.geteuid() != 0:
        return "needs root to start private Docker engines"
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        return "no dockerd/docker on this machine (apt-get install docker.io)"
    return None


@contextmanager
def second_engine(engine_dir: Path, *, images: bool = False) -> Iterator[str]:
    """Start a private engine under ``engine_dir``; yield its ``DOCKER_HOST``; stop it."""
    env = dict(os.environ)
    env.update(
        MESHD_DOCKER_DIR=str(engine_dir),
        MESHD_DOCKERD_EXTRA_ARGS="--bridge=none --iptables=false --ip-masq=false",
        MESHD_DOCKER_IMAGES="1" if images else "0",
    )
    try:
        cp = subprocess.run(
            ["bash", str(DOCKER_ENV), "start"], env=env, capture_output=True, text=True, timeout=180
        )
        if cp.returncode != 0:
            raise RuntimeError(f"second engine did not start: {cp.stderr[-2000:]}")
        yield cp.stdout.strip().removeprefix("export DOCKER_HOST=")
    finally:
        subprocess.run(["bash", str(DOCKER_ENV), "stop"], env=env, capture_output=True, timeout=120)
