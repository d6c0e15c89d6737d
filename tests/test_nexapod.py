"""NEXAPod schema 1.0 descriptors mapped to meshd's (``meshd/core/nexapod.py``,
specs/JOB.md §1.1).

Rules checked (module header): recognised by ``schema_version: "1.0"``;
mapped field by field as the table says, the result a valid meshd
descriptor; any other field, and a value of the wrong type, is an error
naming it; pure (local inputs only joined to the descriptor's directory).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from meshd.core.jobspec import parse_job_spec
from meshd.core.nexapod import NexapodError, from_nexapod, is_nexapod

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "quantum" / "nexapod.json"

# NEXAPod's own sample descriptor (its Runner/fold_job.json), inputs by URI.
FOLD = {
    "schema_version": "1.0",
    "job_id": "fold_ensemble_v1",
    "type": "protein_folding",
    "input_files": ["input1.fasta", "params.json"],
    "docker_image": "nexapod/folding:latest",
    "estimated_flops": 1.2e12,
    "tier": 1,
    "requirements": {"gpu": True, "ram_gb": 8},
    "input_uri": "s3://nexapod-inputs/fold_ensemble_v1/",
    "tolerance": 0.01,
    "credit_rate": 1.0,
}


def errors(data: dict[str, Any]) -> dict[str, str]:
    with pytest.raises(NexapodError) as info:
        from_nexapod(data)
    return {f["loc"]: f["msg"] for f in info.value.fields}


def test_the_example_maps_field_by_field_to_a_valid_meshd_descriptor() -> None:
    data = json.loads(EXAMPLE.read_text())
    assert is_nexapod(data) and not is_nexapod({"schema_version": 1})
    spec = from_nexapod(data, "examples/quantum")
    assert spec == {
        "schema_version": 1,
        "job_id": "quantum-ghz-qaoa-v1",
        "image": "meshd/sci:1",
        "command": ["/mesh/run"],
        "type": "quantum_simulation",
        "env": {"MESH_JOB_TYPE": "quantum_simulation"},
        "inputs": [{"path": "circuit.json", "local": "examples/quantum/circuit.json"}],
        "estimated_flops": 3.0e10,
        "requirements": {"tier": "cpu", "gpus": 0, "memory_mb": 512},
        "tolerance": {"rel": 1e-9, "abs": 1e-9},
        "credit_rate": 1.0,
        "labels": {"nexapod_job_id": "quantum_ghz_qaoa_v1"},
    }
    # the CLI replaces local inputs by uploaded digests; the rest validates as is
    parsed = parse_job_spec({**spec, "inputs": []})
    assert parsed.tolerance is not None and parsed.tolerance.for_path("x.npy") == (1e-9, 1e-9)


def test_nexapods_own_sample_maps_inputs_to_uris_and_the_gpu_tier() -> None:
    spec = from_nexapod(FOLD)
    assert spec["inputs"] == [
        {"path": "input1.fasta", "uri": "s3://nexapod-inputs/fold_ensemble_v1/input1.fasta"},
        {"path": "params.json", "uri": "s3://nexapod-inputs/fold_ensemble_v1/params.json"},
    ]
    assert spec["requirements"] == {"tier": "consumer-gpu", "gpus": 1, "memory_mb": 8192}
    assert spec["job_id"] == "fold-ensemble-v1"
    parsed = parse_job_spec(spec)
    assert parsed.requirements.gpus == 1 and parsed.requirements.tier == "consumer-gpu"
    assert parsed.tolerance is not None and parsed.tolerance.rel == 0.01
    # a named tier and an id too short for meshd (the origin assigns one)
    short = from_nexapod({**FOLD, "tier": "HPC", "job_id": "f_1"})
    assert short["requirements"]["tier"] == "datacenter-gpu" and "job_id" not in short
    assert short["labels"] == {"nexapod_job_id": "f_1"}


def test_the_issues_rejected_descriptor_is_now_accepted() -> None:
    """The descriptor meshd used to refuse with 'schema_version: Input should be 1;
    requirements.memory_gb: unknown field; tolerance: Input should be a valid
    dictionary; input_uri: unknown field; tier: unknown field'."""
    data = {**FOLD, "requirements": {"gpu": False, "memory_gb": 2}}
    spec = parse_job_spec(from_nexapod(data))
    assert spec.requirements.memory_mb == 2048 and spec.requirements.gpus == 0


def test_unknown_fields_and_wrong_types_are_named() -> None:
    bad = errors({**FOLD, "command": ["sh"], "requirements": {"gpu": True, "vram_gb": 4}})
    assert set(bad) == {"command", "requirements.vram_gb"}
    assert bad["command"].startswith("unknown field (NEXAPod schema 1.0 has: schema_version")
    bad = errors({**FOLD, "tier": 7, "tolerance": "tight", "input_files": "a.txt"})
    assert set(bad) == {"tier", "tolerance", "input_files"}
    bad = errors({k: v for k, v in FOLD.items() if k != "docker_image"})
    assert set(bad) == {"docker_image"}
    bad = errors({**FOLD, "input_uri": "", "input_files": ["../secret"]})
    assert set(bad) == {"input_files.0"}
    bad = errors({**FOLD, "requirements": {"gpu": "yes", "ram_gb": -1}})
    assert set(bad) == {"requirements.gpu", "requirements.ram_gb"}
