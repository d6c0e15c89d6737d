"""Job submission and results for ``mesh``: building a descriptor, uploading
local inputs, waiting with a live view, and unpacking outputs safely.

Rules:
- The daemon validates the descriptor (``meshd.core.jobspec``); this module
  only assembles it, so an error names the field as the daemon sees it.
- Local inputs are uploaded (``POST /v1/blobs``) before the job is submitted
  and referenced as ``{"path": NAME, "digest": "sha256:…", "size": N}``;
  the digest the daemon reports must equal the one computed here.
- In a descriptor file, an input may name a local file with ``"local":
  "./data.csv"`` (``path`` defaults to its base name): it is uploaded and
  replaced by its digest before submission.
- A descriptor file in NEXAPod's schema 1.0 (``schema_version: "1.0"``) is
  mapped to a meshd descriptor (``meshd.core.nexapod``); its local
  ``input_files`` are relative to the file's directory.
- Outputs are unpacked all-or-nothing: every tar member is checked with
  ``tarfile``'s ``data`` filter (no absolute paths, no ``..``, no links out,
  no devices) before any file is written, into a directory that is new or
  empty. Bounded by :data:`MAX_RESULT_MEMBERS`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

from mesh_cli.errors import JobError, UsageError
from meshd.api.client import ApiClient
from meshd.core.nexapod import NexapodError, from_nexapod, is_nexapod

WAIT_POLL_S = 0.5
"""How often `submit --wait` polls the job."""
MAX_INPUT_FILES = 256
"""Local files one submit may upload (the descriptor's own input limit)."""
MAX_RESULT_MEMBERS = 100_000
"""Tar members accepted in a job's output."""
HASH_CHUNK_BYTES = 1024 * 1024
_URI_RE = re.compile(r"^(https?|s3|ipfs)://")


# ------------------------------------------------------------- descriptors


def load_spec_file(path: Path) -> dict[str, Any]:
    """A descriptor from a .json or .yaml/.yml file."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # yaml and json raise several types
        raise UsageError(f"{path} is not valid {path.suffix.lstrip('.').upper()}: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(
            f"{path} must hold a mapping (a job descriptor), not {type(data).__name__}"
        )
    if is_nexapod(data):
        try:
            return from_nexapod(data, str(path.parent))
        except NexapodError as exc:
            raise UsageError(f"{path} (a NEXAPod 1.0 descriptor): {exc}") from None
    return data


def parse_pairs(values: list[str] | None, flag: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


def spec_from_args(args: Any, base: dict[str, Any] | None) -> dict[str, Any]:
    """Descriptor from flags, on top of ``base`` (a file's descriptor) if given."""
    spec = dict(base or {})
    if args.image:
        spec["image"] = args.image
    if args.command:
        spec["command"] = list(args.command)
    if "image" not in spec or "command" not in spec:
        raise UsageError("a job needs --image IMG and a command after `--` (or a descriptor FILE)")
    req = dict(spec.get("requirements") or {})
    for flag, key in (
        ("cpus", "cpus"),
        ("memory", "memory_mb"),
        ("gpus", "gpus"),
        ("gpu_memory", "gpu_min_memory_mb"),
    ):
        if getattr(args, flag) is not None:
            req[key] = getattr(args, flag)
    if args.network:
        req["network"] = True
    if args.runtime:
        req["runtime"] = args.runtime
    if req:
        spec["requirements"] = req
    for flag, key in (
        ("timeout", "timeout_s"),
        ("max_budget", "max_budget"),
        ("estimated_flops", "estimated_flops"),
        ("speed", "speed"),
        ("replicas", "replicas"),
    ):
        if getattr(args, flag) is not None:
            spec[key] = getattr(args, flag)
    if args.env:
        spec["env"] = {**(spec.get("env") or {}), **parse_pairs(args.env, "--env")}
    if args.label:
        spec["labels"] = {**(spec.get("labels") or {}), **parse_pairs(args.label, "--label")}
    if args.output:
        spec["outputs"] = [*(spec.get("outputs") or []), *args.output]
    inputs = list(spec.get("inputs") or [])
    inputs += [_input_from_flag(v) for v in args.input or []]
    if inputs:
        spec["inputs"] = inputs
    return spec


def _input_from_flag(value: str) -> dict[str, Any]:
    """``PATH``, ``NAME=PATH``, ``URI`` or ``NAME=URI`` → an input entry."""
    name, sep, source = value.partition("=")
    if not sep or Path(value).exists() or _URI_RE.match(value):
        name, source = "", value
    if _URI_RE.match(source):
        return {"path": name or source.rstrip("/").rsplit("/", 1)[-1], "uri": source}
    return {"path": name, "local": source}


# ----------------------------------------------------------------- uploads


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK_BYTES):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _expand_local(entry: dict[str, Any]) -> list[tuple[str, Path]]:
    """(name inside /mesh/inputs, local file) pairs for one ``local`` entry."""
    local = Path(str(entry["local"])).expanduser()
    name = str(entry.get("path") or local.name)
    if local.is_file():
        return [(name, local)]
    if local.is_dir():
        files = sorted(p for p in local.rglob("*") if p.is_file())
        return [(f"{name}/{p.relative_to(local).as_posix()}", p) for p in files]
    raise UsageError(f"input {local} does not exist (or is not a file or directory)")


def upload_inputs(client: ApiClient, spec: dict[str, Any], echo: Any) -> dict[str, Any]:
    """Upload every ``local`` input; the descriptor with digests in their place."""
    resolved: list[dict[str, Any]] = []
    uploads: list[tuple[str, Path]] = []
    for entry in spec.get("inputs") or []:
        if isinstance(entry, dict) and "local" in entry:
            uploads += _expand_local(entry)
        else:
            resolved.append(entry)
    if len(uploads) > MAX_INPUT_FILES:
        raise UsageError(f"{len(uploads)} input files; at most {MAX_INPUT_FILES} per job")
    names = [n for n, _ in uploads]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise UsageError(
            f"two inputs would both be /mesh/inputs/{sorted(dup)[0]}; name them NAME=PATH"
        )
    for name, path in uploads:
        digest = _sha256_file(path)
        size = path.stat().st_size
        with path.open("rb") as f:
            answer = client.upload_blob(f, size)
        if answer.get("digest") != digest:
            raise JobError(
                f"the daemon stored {path} as {answer.get('digest')}, but it hashes to {digest}"
            )
        echo(f"uploaded {path} ({size} bytes) as /mesh/inputs/{name}")
        resolved.append({"path": name, "digest": digest, "size": size})
    if resolved or "inputs" in spec:
        spec = {**spec, "inputs": resolved}
    return spec


# ------------------------------------------------------------------ waiting


def wait_for_job(
    client: ApiClient, job_id: str, console: Any, *, poll_s: float = WAIT_POLL_S
) -> dict[str, Any]:
    """Poll until the job ends; live view on a terminal, a line per change otherwise."""
    from mesh_cli.render import TERMINAL_STATES, wait_line, wait_panel

    if console.is_terminal:
        from rich.live import Live

        job = client.job(job_id)
        with Live(wait_panel(job), console=console, refresh_per_second=4) as live:
            while job.get("state") not in TERMINAL_STATES:
                time.sleep(poll_s)
                job = client.job(job_id)
                live.update(wait_panel(job))
        return job
    last = ""
    while True:
        job = client.job(job_id)
        line = wait_line(job)
        if line != last:
            console.print(f"[{time.strftime('%H:%M:%S')}] {line}")
            last = line
        if job.get("state") in TERMINAL_STATES:
            return job
        time.sleep(poll_s)


# ------------------------------------------------------------------ results


HAS_TAR_FILTERS = hasattr(tarfile, "data_filter")
"""Python 3.11.4+ has tarfile's extraction filters; Debian 12's 3.11.2 has not."""


def _within(path: str, root: str) -> bool:
    return os.path.commonpath([path, root]) == root


def _data_filter_compat(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """The refusals of tarfile's ``data`` filter, for Pythons without it:
    leading slashes dropped, nothing outside ``dest``, no links leading out of it, no
    devices or FIFOs; modes lose setuid/setgid/sticky and group/other write;
    owners are dropped."""
    root = os.path.realpath(dest)
    name = member.name.lstrip("/" + os.sep)  # as the filter does: "/a" unpacks as "a"
    target = os.path.realpath(os.path.join(root, name))
    if not _within(target, root):
        raise JobError(f"refusing to unpack the output: {member.name!r} is outside the destination")
    if member.ischr() or member.isblk() or member.isfifo() or member.isdev():
        raise JobError(f"refusing to unpack the output: {member.name!r} is a special file")
    if member.issym() or member.islnk():
        if os.path.isabs(member.linkname):
            raise JobError(
                f"refusing to unpack the output: {member.name!r} links to an absolute path"
            )
        base = os.path.dirname(target) if member.issym() else root
        if not _within(os.path.realpath(os.path.join(base, member.linkname)), root):
            raise JobError(
                f"refusing to unpack the output: {member.name!r} links outside the destination"
            )
    safe = copy.copy(member)
    safe.name = name
    safe.mode = member.mode & 0o755
    if member.isfile() and not member.mode & 0o100:
        safe.mode &= 0o644
    safe.uid = safe.gid = 0
    safe.uname = safe.gname = ""
    return safe


def _check_members(tar: tarfile.TarFile, dest: Path) -> list[tarfile.TarInfo]:
    members: list[tarfile.TarInfo] = []
    for member in tar:
        if len(members) >= MAX_RESULT_MEMBERS:
            raise JobError(
                f"the output holds more than {MAX_RESULT_MEMBERS} entries; refusing to unpack"
            )
        if not HAS_TAR_FILTERS:
            members.append(_data_filter_compat(member, str(dest)))
            continue
        try:
            members.append(tarfile.data_filter(member, str(dest)))
        except tarfile.FilterError as exc:
            raise JobError(f"refusing to unpack the output: {exc}") from None
    return members


def fetch_result(
    client: ApiClient, job_id: str, dest: Path, *, tar_path: Path | None = None
) -> int:
    """Download a job's output tar and unpack it into ``dest``; returns the file count.

    With ``tar_path`` the tar is saved there unopened instead (returns 0).
    """
    if tar_path is not None:
        with tar_path.open("wb") as f:
            client.download_result(job_id, f)
        return 0
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise JobError(
            f"{dest} already exists and is not an empty directory; choose another -o DIR"
        )
    with tempfile.TemporaryFile() as tmp:
        client.download_result(job_id, tmp)
        tmp.seek(0)
        try:
            with tarfile.open(fileobj=tmp, mode="r:*") as tar:
                members = _check_members(tar, dest.absolute())
                dest.mkdir(parents=True, exist_ok=True)
                if HAS_TAR_FILTERS:
                    tar.extractall(dest, members=members, filter="data")
                else:  # the members were checked by _data_filter_compat
                    tar.extractall(dest, members=members)
        except tarfile.TarError as exc:
            raise JobError(f"the output of {job_id} is not a valid tar archive: {exc}") from None
    return sum(1 for m in members if m.isfile())
