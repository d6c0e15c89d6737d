"""Per-job CPU time, peak memory and peak process count from cgroupfs.

Why: the engine's stats API only answers while a container runs, and a
container's own cgroup is deleted the moment it exits, so short jobs would
report nothing. Instead each job's container is started under a parent cgroup
of our own (``cgroup_parent=/<prefix>-<node>/<job key>``, cgroupfs driver).
The parent outlives the container and its counters are hierarchical, so after
exit it still holds the job's CPU time, memory high-water mark and pids peak.
We read them and then ``rmdir`` the parent (it is empty by then).

Rules:
- Only used when it can work: a local engine (unix socket) with the
  ``cgroupfs`` cgroup driver, and our cgroup root mounted. Otherwise
  ``usable()`` is False and the executor reports ``cpu_s`` /
  ``peak_memory_bytes`` / ``pids_peak`` as None.
- cgroup v1 (this project's machines): ``cpuacct.usage`` (ns),
  ``memory.max_usage_in_bytes``, ``pids.peak`` (kernels >= 6.x; else None).
  cgroup v2: ``cpu.stat`` usage_usec, ``memory.peak`` (kernel >= 5.19),
  ``pids.peak``. v2 is implemented to the kernel docs but not exercised here.
- A missing file is "unknown" (None), never an error.
- Only directories under our own ``/<prefix>-<node>`` parent are removed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class CgroupUsage:
    cpu_s: float | None
    peak_memory_bytes: int | None
    pids_peak: int | None


def safe_component(text: str, max_len: int = 64) -> str:
    """A string usable as one path component / container-name part."""
    s = _SAFE.sub("_", text)[:max_len].strip(".")
    return s or "x"


class CgroupAccounting:
    def __init__(self, root: str, node_dir: str) -> None:
        self.root = Path(root)
        self.node_dir = safe_component(node_dir)
        self.version = _detect_version(self.root)

    def usable(self) -> bool:
        return self.version is not None

    def parent_for(self, job_key: str) -> str:
        """The ``cgroup_parent`` to give the engine for this job."""
        return f"/{self.node_dir}/{safe_component(job_key, 96)}"

    def read(self, parent: str) -> CgroupUsage:
        rel = parent.lstrip("/")
        if self.version == 1:
            cpu_ns = _read_int(self.root / "cpuacct" / rel / "cpuacct.usage")
            mem = _read_int(self.root / "memory" / rel / "memory.max_usage_in_bytes")
            pids = _read_int(self.root / "pids" / rel / "pids.peak")
            return CgroupUsage(None if cpu_ns is None else cpu_ns / 1e9, mem, pids)
        if self.version == 2:
            base = self.root / rel
            usec = _read_keyed(base / "cpu.stat", "usage_usec")
            return CgroupUsage(
                None if usec is None else usec / 1e6,
                _read_int(base / "memory.peak"),
                _read_int(base / "pids.peak"),
            )
        return CgroupUsage(None, None, None)

    def remove(self, parent: str) -> None:
        """rmdir the job's parent cgroup in every hierarchy (deepest first). Quiet."""
        rel = parent.strip("/")
        if not rel.startswith(self.node_dir + "/"):
            raise ValueError(f"refusing to remove cgroup {parent!r} outside /{self.node_dir}")
        for base in self._hierarchies():
            _rmdir_tree(base / rel)

    def remove_node_dir(self) -> None:
        """rmdir ``/<node dir>`` if empty. Call only when no job of this node is starting."""
        for base in self._hierarchies():
            try:
                (base / self.node_dir).rmdir()
            except OSError:
                pass

    def reap(self) -> int:
        """Remove leftover job parents under our node dir; return how many were removed."""
        removed: set[str] = set()
        for base in self._hierarchies():
            node = base / self.node_dir
            if not node.is_dir():
                continue
            for child in node.iterdir():
                if child.is_dir() and _rmdir_tree(child):
                    removed.add(child.name)
            try:
                node.rmdir()
            except OSError:
                pass
        return len(removed)

    def _hierarchies(self) -> list[Path]:
        if self.version == 2:
            return [self.root]
        out = []
        try:
            for d in self.root.iterdir():
                if d.is_dir() and not d.is_symlink():
                    out.append(d)
        except OSError:
            pass
        return out


def _detect_version(root: Path) -> int | None:
    if (root / "cgroup.controllers").exists():
        return 2
    if (root / "memory" / "memory.max_usage_in_bytes").exists() and (root / "cpuacct").is_dir():
        return 1
    return None


def _rmdir_tree(path: Path) -> bool:
    """rmdir ``path`` and its empty sub-cgroups bottom-up; True if ``path`` is gone."""
    if not path.is_dir():
        return False
    for dirpath, _dirnames, _files in os.walk(path, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
    return not path.exists()


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    try:
        return int(text)
    except ValueError:
        return None  # "max" and friends


def _read_keyed(path: Path, key: str) -> int | None:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
    except (OSError, ValueError):
        return None
    return None
