"""The health-check image a Docker node builds for itself, with no registry.

Theory of operation
-------------------
A fresh Docker node has no image to run its health check with, and meshd
pulls nothing from a registry. So when ``ExecParams.health_check_image`` is
missing, the executor builds it from a static ``busybox`` on the host (Debian
package ``busybox-static``): :func:`health_root_tar` packs a tiny root — the
binary, the applets the health check and simple jobs call linked to it, a
``/tmp``, the ``/mesh/{inputs,outputs}`` mount points and ``/etc/passwd`` —
and the engine imports it (``docker import``), as ``tests/images/build.sh``
does by hand.

Rules:
- Only a *static* binary will do (the image has no libc): a binary with an
  ELF ``PT_INTERP`` program header is refused (:func:`is_static_elf`).
- Candidates are tried in ``ExecParams.busybox_paths`` order; none usable ->
  :class:`HealthImageUnavailable`, whose message names every candidate, why
  each was refused, and first the exact command that fixes it
  (:data:`FIX_COMMAND`). Nothing is written to disk: the tar is built in
  memory (a static busybox is about 2 MB).
"""

from __future__ import annotations

import io
import struct
import tarfile
from collections.abc import Sequence
from pathlib import Path

APPLETS = (
    "sh cat echo true false sleep sha256sum head dd yes ls mkdir rm touch wc id env "
    "grep nc seq tr printf test kill"
).split()
"""Applets linked to busybox in the image (busybox dispatches on argv[0])."""
IMAGE_CHANGES = ("ENV PATH=/bin", 'CMD ["/bin/sh"]')
"""Dockerfile instructions applied at import."""
FIX_COMMAND = "apt-get install busybox-static"
"""The command that gives a Debian/Ubuntu host the static busybox it needs."""
_PT_INTERP = 3
_MAX_HEADER_BYTES = 64 * 1024


class HealthImageUnavailable(Exception):
    """No usable static busybox on this host; the message says what to do."""


def is_static_elf(path: Path) -> str | None:
    """None if ``path`` is a statically linked ELF executable, else why not."""
    try:
        with open(path, "rb") as f:
            head = f.read(_MAX_HEADER_BYTES)
    except OSError as exc:
        return f"{path}: {exc.strerror or exc}"
    if head[:4] != b"\x7fELF" or len(head) < 64:
        return f"{path} is not an ELF executable"
    bits, order = head[4], head[5]
    if bits not in (1, 2) or order not in (1, 2):
        return f"{path} has an unknown ELF class"
    end = "<" if order == 1 else ">"
    if bits == 2:
        (phoff,) = struct.unpack_from(end + "Q", head, 0x20)
        phentsize, phnum = struct.unpack_from(end + "HH", head, 0x36)
    else:
        (phoff,) = struct.unpack_from(end + "I", head, 0x1C)
        phentsize, phnum = struct.unpack_from(end + "HH", head, 0x2A)
    if phentsize < 4 or phoff + phentsize * phnum > len(head):
        return f"{path} has program headers beyond its first {_MAX_HEADER_BYTES} bytes"
    for i in range(phnum):
        (p_type,) = struct.unpack_from(end + "I", head, phoff + i * phentsize)
        if p_type == _PT_INTERP:
            return f"{path} is dynamically linked"
    return None


def find_static_busybox(paths: Sequence[str]) -> Path:
    """The first candidate that is a static ELF; else HealthImageUnavailable."""
    why: list[str] = []
    for p in paths:
        problem = is_static_elf(Path(p))
        if problem is None:
            return Path(p)
        why.append(problem)
    # the fix first: the reason may be cut to MAX_ERROR_CHARS on its way
    raise HealthImageUnavailable(
        f"fix: `{FIX_COMMAND}` (no static busybox: {'; '.join(why) or 'no candidate paths'})"
    )


def health_root_tar(busybox: Path) -> bytes:
    """The image's root filesystem as an uncompressed tar, built in memory."""
    data = busybox.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(
            name: str,
            *,
            mode: int,
            kind: bytes = tarfile.DIRTYPE,
            body: bytes = b"",
            link: str = "",
        ) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, 0
            info.linkname = link
            info.size = len(body) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(body) if kind == tarfile.REGTYPE else None)

        for d in ("bin", "etc", "mesh", "mesh/inputs", "mesh/outputs"):
            add(d, mode=0o755)
        add("tmp", mode=0o1777)
        add("bin/busybox", mode=0o755, kind=tarfile.REGTYPE, body=data)
        for applet in APPLETS:
            add(f"bin/{applet}", mode=0o777, kind=tarfile.SYMTYPE, link="busybox")
        passwd = b"root:x:0:0:root:/:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n"
        group = b"root:x:0:\nnogroup:x:65534:\n"
        add("etc/passwd", mode=0o644, kind=tarfile.REGTYPE, body=passwd)
        add("etc/group", mode=0o644, kind=tarfile.REGTYPE, body=group)
    return buf.getvalue()
