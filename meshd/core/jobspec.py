"""The job descriptor: what a user asks the mesh to run (``specs/JOB.md``).

Rules:
- Versioned (``schema_version``), strict: unknown fields and wrong types are
  errors that name the field (``JobSpecError.fields``).
- Pure: validation reads no files; local input files are uploaded by the CLI
  and referenced here by digest.
- Bounded: command length, env size, number of inputs/outputs/labels.
"""

from __future__ import annotations

import fnmatch
import hashlib
import re
from typing import Annotated, Any, Literal

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

JOB_SCHEMA_VERSION = 1
MAX_COMMAND_ARGS = 256
MAX_ARG_LEN = 8192
MAX_ENV = 128
MAX_INPUTS = 256
MAX_OUTPUTS = 64
MAX_LABELS = 32
MAX_TOLERANCE_FILES = 64
MIN_PIECE_BYTES = 64 << 10
MAX_PIECE_BYTES = 64 << 20
"""Bounds of an image archive's piece size (``ImageBlob.piece_bytes``)."""
PIECE_HASH_BYTES = 32
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_IMAGE_RE = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-/:@]{0,254}$")
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_REL_PATH_RE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_.\-/]{1,255}$")
_URI_RE = re.compile(r"^(https?|s3|ipfs)://[^\s]{1,2000}$")
_GLOB_RE = re.compile(r"^(?!/)(?!.*(^|/)\.\.(/|$))[A-Za-z0-9_.\-/*?\[\]!]{1,255}$")

Tier = Literal["cpu", "consumer-gpu", "datacenter-gpu"]
TIERS: tuple[str, ...] = ("cpu", "consumer-gpu", "datacenter-gpu")
Speed = Literal["fast", "balanced", "cheap"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class Requirements(_Strict):
    """What a worker must offer to bid."""

    cpus: Annotated[float, Field(gt=0, le=1024)] = 1.0
    memory_mb: Annotated[int, Field(ge=16, le=4_194_304)] = 256
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_min_memory_mb: Annotated[int, Field(ge=0, le=1_048_576)] = 0
    tier: Tier | None = None
    """Minimum tier (cpu < consumer-gpu < datacenter-gpu)."""
    runtime: Literal["docker", "process"] | None = None
    network: bool = False
    """The job needs network access (granted only where the node allows it)."""


class InputRef(_Strict):
    """One input, placed at ``/mesh/inputs/<path>``: a blob (by ``digest``), or a
    URI, optionally pinned by ``digest`` (the worker refuses other content)."""

    path: str
    digest: str | None = None
    uri: str | None = None
    size: Annotated[int, Field(ge=0)] | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _REL_PATH_RE.match(v):
            raise ValueError("must be a relative path without '..' (letters, digits, _ . - /)")
        return v

    @field_validator("digest")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST_RE.match(v):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits")
        return v

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str | None) -> str | None:
        if v is not None and not _URI_RE.match(v):
            raise ValueError("must be an http(s)://, s3:// or ipfs:// URI")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> InputRef:
        if self.digest is None and self.uri is None:
            raise ValueError("give 'digest' (an uploaded blob) or 'uri' (optionally with 'digest')")
        return self


class ImageBlob(_Strict):
    """The job's image as it travels: a ``docker save`` archive stored as a
    blob at the origin (``digest``, ``size`` bytes) whose image id is ``id``.
    Filled in by the origin's shell at submit when its engine has the image;
    a worker that lacks the image fetches the blob, checks the digest and the
    archive's image id, and loads it."""

    id: str
    digest: str
    size: Annotated[int, Field(ge=1, le=1 << 40)]
    pieces: str | None = None
    """The digest of the archive's *piece list* (``piece_list_bytes``): the
    sha256 of each ``piece_bytes`` piece, so a worker checks each range as
    it arrives and streams checked bytes into its engine; absent: the whole
    archive is checked before it is loaded."""
    piece_bytes: Annotated[int, Field(ge=MIN_PIECE_BYTES, le=MAX_PIECE_BYTES)] | None = None

    @field_validator("id", "digest", "pieces")
    @classmethod
    def _digest(cls, v: str | None) -> str | None:
        if v is not None and not _DIGEST_RE.match(v):
            raise ValueError("must be 'sha256:' followed by 64 lowercase hex digits")
        return v

    @model_validator(mode="after")
    def _pieces_together(self) -> ImageBlob:
        if (self.pieces is None) != (self.piece_bytes is None):
            raise ValueError("pieces and piece_bytes come together")
        return self


def piece_count(size: int, piece_bytes: int) -> int:
    """Pieces of ``piece_bytes`` (the last one shorter) in ``size`` bytes."""
    return -(-size // piece_bytes)


def piece_list_bytes(size: int, piece_bytes: int) -> int:
    """Bytes of the piece list of a ``size``-byte archive: one raw 32-byte
    sha256 per piece, in order (specs/PROTOCOL.md §5.1)."""
    return PIECE_HASH_BYTES * piece_count(size, piece_bytes)


class FileTolerance(_Strict):
    """The tolerance of the output files whose relative path matches ``path``."""

    path: str
    """A shell-style pattern over the whole relative path: ``*`` any run of
    characters (``/`` included), ``?`` one character, ``[seq]``/``[!seq]`` a set."""
    rel: Annotated[float, Field(ge=0, le=1)] = 0.0
    abs: Annotated[float, Field(ge=0, le=1e300)] = 0.0

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _GLOB_RE.match(v):
            raise ValueError(
                "must be a relative path pattern without '..' (letters, digits, _ . - / * ? [ ] !)"
            )
        return v


class Tolerance(_Strict):
    """Numeric comparison of replicated outputs (see specs/CREDITS.md §5).

    ``rel``/``abs`` hold for every output file that no entry of ``files``
    matches; the first entry of ``files`` whose pattern matches a file's path
    gives that file's own ``rel``/``abs``."""

    rel: Annotated[float, Field(ge=0, le=1)] = 0.0
    abs: Annotated[float, Field(ge=0, le=1e300)] = 0.0
    files: list[FileTolerance] = Field(default_factory=list, max_length=MAX_TOLERANCE_FILES)

    def for_path(self, path: str) -> tuple[float, float]:
        """``(rel, abs)`` for the output file at relative ``path``."""
        for entry in self.files:
            if fnmatch.fnmatchcase(path, entry.path):
                return entry.rel, entry.abs
        return self.rel, self.abs


class JobSpec(_Strict):
    """A job descriptor (``specs/JOB.md``)."""

    schema_version: Literal[1] = 1
    job_id: str | None = None
    """Assigned by the origin when absent (content-derived, unique per submit)."""
    image: Annotated[str, Field(min_length=1, max_length=255)]
    command: Annotated[
        list[Annotated[str, Field(max_length=MAX_ARG_LEN)]],
        Field(min_length=1, max_length=MAX_COMMAND_ARGS),
    ]
    env: dict[str, Annotated[str, Field(max_length=MAX_ARG_LEN)]] = Field(
        default_factory=dict, max_length=MAX_ENV
    )
    inputs: list[InputRef] = Field(default_factory=list, max_length=MAX_INPUTS)
    outputs: list[str] = Field(default_factory=list, max_length=MAX_OUTPUTS)
    """Paths under /mesh/outputs to collect; empty means everything there."""
    requirements: Requirements = Field(default_factory=Requirements)
    estimated_flops: Annotated[float, Field(ge=0, le=1e21)] | None = None
    timeout_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 600.0
    max_budget: Annotated[float, Field(gt=0, le=1e12)] | None = None
    speed: Speed = "balanced"
    credit_rate: Annotated[float, Field(gt=0, le=1000)] = 1.0
    bounty: Annotated[float, Field(ge=0, le=1e12)] = 0.0
    tolerance: Tolerance | None = None
    checker_image: str | None = None
    """A container that judges two outputs (exit 0 = equivalent)."""
    image_blob: ImageBlob | None = None
    """The image as a blob at the origin, so workers without it can run the
    job (set by the origin's shell; see ``ImageBlob``)."""
    replicas: Annotated[int, Field(ge=1, le=5)] | None = None
    """Force this many independent runs (overrides the node's replication policy)."""
    type: Annotated[str, Field(max_length=64)] = "batch"
    labels: dict[Annotated[str, Field(max_length=64)], Annotated[str, Field(max_length=256)]] = (
        Field(default_factory=dict, max_length=MAX_LABELS)
    )

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        if not _IMAGE_RE.match(v):
            raise ValueError("not a valid image reference")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _ENV_KEY_RE.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
        return v

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, v: list[str]) -> list[str]:
        for p in v:
            if not _REL_PATH_RE.match(p):
                raise ValueError(f"output path {p!r} must be relative without '..'")
        return v

    @field_validator("job_id")
    @classmethod
    def _job_id(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[a-z0-9][a-z0-9\-]{7,63}$", v):
            raise ValueError("must be 8-64 chars of a-z, 0-9 and '-'")
        return v

    def digest(self) -> str:
        """sha256 over the canonical msgpack of the descriptor (sorted keys)."""
        return "sha256:" + hashlib.sha256(canonical_bytes(self.model_dump(mode="json"))).hexdigest()


class JobSpecError(ValueError):
    """An invalid job descriptor; ``fields`` lists ``{"loc": "a.b", "msg": ...}``."""

    def __init__(self, fields: list[dict[str, str]]) -> None:
        self.fields = fields
        super().__init__("; ".join(f"{f['loc']}: {f['msg']}" for f in fields) or "invalid job")


def parse_job_spec(data: Any) -> JobSpec:
    """Validate a descriptor dict; raise JobSpecError naming each bad field."""
    if not isinstance(data, dict):
        raise JobSpecError([{"loc": "(root)", "msg": "a job descriptor must be a mapping"}])
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        fields = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            msg = err["msg"]
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            fields.append({"loc": loc, "msg": msg})
        raise JobSpecError(fields) from None


def canonical_bytes(value: Any) -> bytes:
    """Deterministic msgpack: maps with keys sorted, recursively."""
    return msgpack.packb(_sorted(value), use_bin_type=True)


_LEAVES = frozenset({str, int, float, bool, bytes, type(None)})
"""Types ``_sorted`` returns as they are (no call needed for them)."""


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: v if type(v) in _LEAVES else _sorted(v) for k in sorted(value) for v in (value[k],)
        }
    if isinstance(value, (list, tuple)):
        return [v if type(v) in _LEAVES else _sorted(v) for v in value]
    return value
