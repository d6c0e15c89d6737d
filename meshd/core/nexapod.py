"""NEXAPod job descriptors (schema 1.0) mapped to meshd descriptors (specs/JOB.md §1.1).

A NEXAPod descriptor is recognised by ``schema_version: "1.0"`` (a string;
meshd's own is the integer ``1``). :func:`from_nexapod` maps it field by
field to a meshd descriptor mapping, which is then validated as any other
(``meshd.core.jobspec.parse_job_spec``):

| NEXAPod | meshd |
|---|---|
| ``schema_version: "1.0"`` | ``schema_version: 1`` |
| ``job_id`` | ``job_id`` lowercased, other characters than a-z 0-9 - made ``-``, when that is a valid meshd id (else the origin assigns one); the original in ``labels.nexapod_job_id`` |
| ``type`` | ``type``, and ``env.MESH_JOB_TYPE`` |
| ``docker_image`` | ``image``; ``command`` is ``["/mesh/run"]`` (NEXAPod has no command: the image's ``/mesh/run`` dispatches on ``MESH_JOB_TYPE``) |
| ``input_files`` + ``input_uri`` | ``inputs``: ``{path: name, uri: input_uri/name}`` each; without ``input_uri``, local files (relative to the descriptor's directory) uploaded by ``mesh submit`` |
| ``estimated_flops`` | ``estimated_flops`` |
| ``tier`` (0 1 2, or CPU / CONSUMER_GPU / HPC) | ``requirements.tier`` cpu / consumer-gpu / datacenter-gpu |
| ``requirements.gpu`` | ``requirements.gpus`` 1 (true) or 0 |
| ``requirements.ram_gb`` (or ``memory_gb``) | ``requirements.memory_mb`` = ceil(GB × 1024) |
| ``tolerance`` (a number t) | ``tolerance: {rel: t, abs: t}`` |
| ``credit_rate`` | ``credit_rate`` |

Rules: pure (reads no files; paths are only joined); any other field, and a
value of the wrong type, is a :class:`NexapodError` naming it. Imports only
the standard library, so ``mesh`` stays quick to start.
"""

from __future__ import annotations

import math
import re
from pathlib import PurePosixPath
from typing import Any

NEXAPOD_SCHEMA_VERSION = "1.0"
NEXAPOD_COMMAND = ("/mesh/run",)
"""What a NEXAPod job runs: its image's entry point (NEXAPod has no command field)."""
TIERS = {0: "cpu", 1: "consumer-gpu", 2: "datacenter-gpu"}
TIER_NAMES = {
    "CPU": "cpu",
    "CONSUMER_GPU": "consumer-gpu",
    "CONSUMER GPU": "consumer-gpu",
    "HPC": "datacenter-gpu",
}
FIELDS = (
    "schema_version",
    "job_id",
    "type",
    "input_files",
    "docker_image",
    "estimated_flops",
    "tier",
    "requirements",
    "input_uri",
    "tolerance",
    "credit_rate",
)
REQUIREMENT_FIELDS = ("gpu", "ram_gb", "memory_gb")
_JOB_ID_RE = re.compile(r"^[a-z0-9][a-z0-9\-]{7,63}$")


class NexapodError(ValueError):
    """An invalid NEXAPod descriptor; ``fields`` lists ``{"loc": ..., "msg": ...}``."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        self.fields = fields
        super().__init__("; ".join(f"{f['loc']}: {f['msg']}" for f in fields))


def is_nexapod(data: Any) -> bool:
    """Whether a descriptor mapping claims NEXAPod's schema 1.0."""
    return isinstance(data, dict) and data.get("schema_version") == NEXAPOD_SCHEMA_VERSION


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _job_id(raw: str) -> str | None:
    cand = re.sub(r"[^a-z0-9-]", "-", raw.lower())
    return cand if _JOB_ID_RE.match(cand) else None


def from_nexapod(data: dict[str, Any], base_dir: str = ".") -> dict[str, Any]:
    """The meshd descriptor for a NEXAPod schema 1.0 descriptor (see the table above).

    ``base_dir``: where local ``input_files`` are (the descriptor's directory)."""
    errors: list[dict[str, str]] = []

    def bad(loc: str, msg: str) -> None:
        errors.append({"loc": loc, "msg": msg})

    for key in data:
        if key not in FIELDS:
            bad(str(key), f"unknown field (NEXAPod schema 1.0 has: {', '.join(FIELDS)})")
    out: dict[str, Any] = {"schema_version": 1, "command": list(NEXAPOD_COMMAND)}
    env: dict[str, str] = {}
    req: dict[str, Any] = {}

    image = data.get("docker_image")
    if not isinstance(image, str) or not image:
        bad("docker_image", "required: the image to run (a string)")
    else:
        out["image"] = image
    if "job_id" in data:
        if not isinstance(data["job_id"], str) or not data["job_id"]:
            bad("job_id", "must be a non-empty string")
        else:
            out["labels"] = {"nexapod_job_id": data["job_id"][:256]}
            if (jid := _job_id(data["job_id"])) is not None:
                out["job_id"] = jid
    if "type" in data:
        if not isinstance(data["type"], str):
            bad("type", "must be a string")
        else:
            out["type"] = data["type"]
            env["MESH_JOB_TYPE"] = data["type"]
    if "estimated_flops" in data:
        if not _number(data["estimated_flops"]):
            bad("estimated_flops", "must be a number")
        else:
            out["estimated_flops"] = float(data["estimated_flops"])
    if "credit_rate" in data:
        if not _number(data["credit_rate"]):
            bad("credit_rate", "must be a number")
        else:
            out["credit_rate"] = float(data["credit_rate"])
    if "tolerance" in data:
        if not _number(data["tolerance"]):
            bad("tolerance", "must be a number (used as both relative and absolute tolerance)")
        else:
            t = float(data["tolerance"])
            out["tolerance"] = {"rel": t, "abs": t}
    if "tier" in data:
        tier = data["tier"]
        if isinstance(tier, int) and not isinstance(tier, bool) and tier in TIERS:
            req["tier"] = TIERS[tier]
        elif isinstance(tier, str) and tier.upper() in TIER_NAMES:
            req["tier"] = TIER_NAMES[tier.upper()]
        else:
            bad("tier", "must be 0 (CPU), 1 (CONSUMER_GPU) or 2 (HPC)")
    reqs = data.get("requirements", {})
    if not isinstance(reqs, dict):
        bad("requirements", "must be a mapping")
        reqs = {}
    for key, value in reqs.items():
        loc = f"requirements.{key}"
        if key not in REQUIREMENT_FIELDS:
            bad(loc, f"unknown field (NEXAPod requirements have: {', '.join(REQUIREMENT_FIELDS)})")
        elif key == "gpu":
            if not isinstance(value, bool):
                bad(loc, "must be true or false")
            else:
                req["gpus"] = 1 if value else 0
        elif not _number(value) or value <= 0:
            bad(loc, "must be a positive number of GiB")
        else:
            req["memory_mb"] = math.ceil(float(value) * 1024)
    if req:
        out["requirements"] = req
    out["inputs"] = _inputs(data, base_dir, bad)
    if env:
        out["env"] = env
    if errors:
        raise NexapodError(errors)
    return out


def _inputs(data: dict[str, Any], base_dir: str, bad: Any) -> list[dict[str, str]]:
    files = data.get("input_files", [])
    uri = data.get("input_uri") or ""
    if not isinstance(uri, str):
        bad("input_uri", "must be a string (an http(s)://, s3:// or ipfs:// prefix)")
        uri = ""
    if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
        bad("input_files", "must be a list of file names")
        return []
    inputs = []
    for i, name in enumerate(files):
        if uri:
            inputs.append({"path": name, "uri": uri.rstrip("/") + "/" + name})
        elif PurePosixPath(name).is_absolute() or ".." in PurePosixPath(name).parts:
            bad(f"input_files.{i}", "a local input must be a relative path without '..'")
        else:
            inputs.append({"path": name, "local": str(PurePosixPath(base_dir) / name)})
    return inputs
