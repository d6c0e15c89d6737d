"""Job descriptors (``meshd/core/jobspec.py``).

Rules checked (module header): "Versioned, strict: unknown fields and wrong
types are errors that name the field (``JobSpecError.fields``)"; "Bounded:
command length, env size, number of inputs/outputs/labels"; inputs and
outputs are relative paths that cannot escape their directory.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from meshd.core.jobspec import (
    MAX_ENV,
    MAX_OUTPUTS,
    JobSpecError,
    canonical_bytes,
    parse_job_spec,
)

DIGEST = "sha256:" + "0f" * 32


def spec(**extra: Any) -> dict[str, Any]:
    return {"image": "meshd/busybox:1", "command": ["echo", "hi"], **extra}


def bad_fields(data: Any) -> dict[str, str]:
    with pytest.raises(JobSpecError) as info:
        parse_job_spec(data)
    return {f["loc"]: f["msg"] for f in info.value.fields}


def test_minimal_spec_gets_documented_defaults() -> None:
    s = parse_job_spec(spec())
    assert s.schema_version == 1
    assert s.requirements.gpus == 0 and s.requirements.memory_mb == 256
    assert s.timeout_s == 600.0 and s.speed == "balanced" and s.replicas is None


@pytest.mark.parametrize(
    ("data", "loc"),
    [
        (spec(gpus=1), "gpus"),  # a top-level typo of requirements.gpus
        (spec(requirements={"gpu": 1}), "requirements.gpu"),
        (spec(requirements={"gpus": -1}), "requirements.gpus"),
        (spec(requirements={"gpus": "two"}), "requirements.gpus"),
        (spec(requirements={"memory_mb": 1}), "requirements.memory_mb"),
        (spec(requirements={"tier": "quantum"}), "requirements.tier"),
        (spec(timeout_s=0), "timeout_s"),
        (spec(speed="ludicrous"), "speed"),
        (spec(replicas=9), "replicas"),
        (spec(schema_version=2), "schema_version"),
        (spec(env={"1BAD": "x"}), "env"),
        (spec(image="bad image!"), "image"),
        (spec(job_id="UPPER"), "job_id"),
        (spec(tolerance={"rel": 2}), "tolerance.rel"),
        ({"image": "x"}, "command"),
        (spec(command=[]), "command"),
    ],
)
def test_invalid_field_is_named(data: dict[str, Any], loc: str) -> None:
    fields = bad_fields(data)
    assert loc in fields, fields


def test_unknown_field_says_so() -> None:
    assert bad_fields(spec(requirements={"gpus": 1, "cuda": "12"})) == {
        "requirements.cuda": "unknown field"
    }


def test_every_bad_field_is_reported_at_once() -> None:
    fields = bad_fields(spec(timeout_s=-1, requirements={"gpus": -1}, bogus=1))
    assert {"timeout_s", "requirements.gpus", "bogus"} <= set(fields)


def test_error_message_names_fields() -> None:
    with pytest.raises(JobSpecError, match=r"requirements\.gpus"):
        parse_job_spec(spec(requirements={"gpus": 100}))


def test_non_mapping_is_refused() -> None:
    assert bad_fields(["image", "x"]) == {"(root)": "a job descriptor must be a mapping"}


@pytest.mark.parametrize(
    "path", ["../etc/passwd", "/etc/passwd", "a/../../b", "a/..", "..", "a b", ""]
)
def test_input_path_traversal_is_refused(path: str) -> None:
    fields = bad_fields(spec(inputs=[{"path": path, "digest": DIGEST}]))
    assert "inputs.0.path" in fields


@pytest.mark.parametrize("path", ["../out", "/abs", "x/../../y"])
def test_output_path_traversal_is_refused(path: str) -> None:
    assert "outputs" in bad_fields(spec(outputs=["ok.txt", path]))


def test_dotted_names_that_do_not_traverse_are_allowed() -> None:
    s = parse_job_spec(
        spec(
            inputs=[
                {"path": "data/..hidden", "digest": DIGEST},
                {"path": "a.b/c..d", "uri": "https://example.com/x"},
            ],
            outputs=["result..txt", "sub/dir/file.bin"],
        )
    )
    assert [i.path for i in s.inputs] == ["data/..hidden", "a.b/c..d"]


@pytest.mark.parametrize(
    "digest", ["sha256:" + "0F" * 32, "sha256:" + "0" * 63, "md5:" + "0" * 32, "0" * 64]
)
def test_input_digest_format(digest: str) -> None:
    assert "inputs.0.digest" in bad_fields(spec(inputs=[{"path": "a", "digest": digest}]))


def test_input_needs_a_source_and_a_uri_may_be_pinned() -> None:
    assert "inputs.0" in bad_fields(spec(inputs=[{"path": "a"}]))
    pinned = parse_job_spec(spec(inputs=[{"path": "a", "digest": DIGEST, "uri": "https://x/y"}]))
    assert (pinned.inputs[0].uri, pinned.inputs[0].digest) == ("https://x/y", DIGEST)
    assert "inputs.0.uri" in bad_fields(spec(inputs=[{"path": "a", "uri": "file:///etc/passwd"}]))


def test_bounds_are_enforced() -> None:
    assert "env" in bad_fields(spec(env={f"K{i}": "v" for i in range(MAX_ENV + 1)}))
    assert "outputs" in bad_fields(spec(outputs=[f"o{i}" for i in range(MAX_OUTPUTS + 1)]))


def test_digest_is_sha256_and_canonical() -> None:
    a = parse_job_spec(spec(env={"A": "1", "B": "2"}, labels={"x": "1", "y": "2"}))
    b = parse_job_spec(spec(labels={"y": "2", "x": "1"}, env={"B": "2", "A": "1"}))
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", a.digest())
    assert a.digest() == b.digest(), "key order must not change the digest"
    assert a.digest() != parse_job_spec(spec(command=["echo", "ho"])).digest()


def test_canonical_bytes_sorts_nested_keys() -> None:
    assert canonical_bytes({"b": {"d": 1, "c": 2}, "a": [{"z": 0, "y": 1}]}) == canonical_bytes(
        {"a": [{"y": 1, "z": 0}], "b": {"c": 2, "d": 1}}
    )


def test_spec_round_trips_through_json_dump() -> None:
    s = parse_job_spec(
        spec(
            requirements={"gpus": 1, "tier": "consumer-gpu"},
            replicas=2,
            inputs=[{"path": "in/x", "digest": DIGEST}],
        )
    )
    again = parse_job_spec(s.model_dump(mode="json"))
    assert again == s and again.digest() == s.digest()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_s", float("inf")),
        ("timeout_s", float("nan")),
        ("max_budget", float("inf")),
        ("bounty", 1e300),
        ("estimated_flops", float("inf")),
        ("credit_rate", float("-inf")),
    ],
)
def test_non_finite_and_extreme_numbers_are_refused(field: str, value: float) -> None:
    with pytest.raises(JobSpecError, match=field):
        parse_job_spec({"image": "meshd/busybox:1", "command": ["true"], field: value})
