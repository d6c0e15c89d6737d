"""The science examples' programs on this machine, without Docker or a mesh.

The same scripts the image runs (``examples/sci/``), on small sizes, with
this environment's NumPy; and the pieces around them: the ensemble gather
step, the custom checker, and the image archive's determinism
(``examples/image/docker_archive.py``). The mesh runs are in
``tests/test_examples.py``.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from types import ModuleType

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SCI = REPO / "examples" / "sci"


def load(path: Path, name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run(script: str, out: Path, inputs: Path | None = None, **env: str) -> str:
    full = {**os.environ, "MESH_OUTPUTS": str(out), "MESH_INPUTS": str(inputs or out / "none")}
    cp = subprocess.run(
        [sys.executable, str(SCI / script)],
        env={**full, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cp.returncode == 0, cp.stderr
    return cp.stdout


def test_quantum_ghz_probabilities_are_one_half_and_qaoa_beats_random(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "circuit.json").write_text('{"ghz_qubits": 8, "qaoa_qubits": 8}')
    run("quantum.py", tmp_path / "out", inputs)
    ghz = json.loads((tmp_path / "out" / "ghz.json").read_text())
    assert ghz["qubits"] == 8
    assert abs(ghz["p_all_zero"] - 0.5) < 1e-12 and abs(ghz["p_all_one"] - 0.5) < 1e-12
    qaoa = json.loads((tmp_path / "out" / "qaoa.json").read_text())
    psi = np.load(tmp_path / "out" / "qaoa_state.npy")
    assert psi.shape == (256,) and abs(np.vdot(psi, psi).real - 1.0) < 1e-12
    # a random cut has expectation |E|/2; p = 1 QAOA must do better
    assert qaoa["expected_cut"] > 0.5 * len(qaoa["edges"]) + 1.0


def test_lorenz96_ensemble_spread_grows_with_lead_time(tmp_path: Path) -> None:
    gather = load(REPO / "examples" / "weather" / "gather.py", "gather_local")
    dirs = []
    for m in range(4):
        d = tmp_path / f"m{m}"
        run("lorenz96.py", d, MEMBER=str(m), L96_LEADS="6")
        dirs.append(d)
    lead, mean, spread = gather.ensemble_stats(gather.load_members(dirs))
    assert lead[-1] == 6.0 and np.isfinite(mean).all()
    assert 3e-4 < spread[0] < 3e-3
    bins = [np.exp(np.log(spread[(lead >= a) & (lead < a + 2)]).mean()) for a in (0, 2, 4)]
    assert bins[0] < bins[1] < bins[2]
    # the same member twice: bit-identical (the job is deterministic on one machine)
    run("lorenz96.py", tmp_path / "again", MEMBER="0", L96_LEADS="6")
    assert (tmp_path / "again" / "member.npy").read_bytes() == (dirs[0] / "member.npy").read_bytes()


def test_gather_mean_and_spread_are_those_of_the_members(tmp_path: Path) -> None:
    gather = load(REPO / "examples" / "weather" / "gather.py", "gather_local2")
    rng = np.random.default_rng(3)
    ens = rng.normal(size=(5, 7, 40))
    lead, mean, spread = gather.ensemble_stats(ens)
    assert np.allclose(mean, ens.mean(axis=(0, 2)))
    assert np.allclose(spread, np.sqrt(ens.var(axis=0, ddof=1).mean(axis=1)))
    assert np.allclose(lead, np.arange(7) * 0.2)


def test_surrogate_reaches_the_noise_floor(tmp_path: Path) -> None:
    run("surrogate.py", tmp_path, SURROGATE_POINTS="300")
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["n_val"] == 60 and m["val_rmse_ev"] < 3 * m["noise_ev"]
    alpha = np.load(tmp_path / "alpha.npy")
    assert alpha.shape == (240,) and np.isfinite(alpha).all()


def test_checker_accepts_a_global_phase_and_rejects_another_state(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    psi = rng.normal(size=64) + 1j * rng.normal(size=64)
    psi /= np.linalg.norm(psi)
    other = np.roll(psi, 1)

    def side(name: str, state: np.ndarray) -> Path:
        d = tmp_path / name
        d.mkdir()
        np.save(d / "qaoa_state.npy", state)
        (d / "qaoa.json").write_text('{"expected_cut": 19.80774}')
        return d

    a, b, c = side("a", psi), side("b", psi * np.exp(0.7j)), side("c", other)
    check = [sys.executable, str(SCI / "check_state.py")]
    assert subprocess.run([*check, str(a), str(b)], capture_output=True).returncode == 0
    bad = subprocess.run([*check, str(a), str(c)], capture_output=True, text=True)
    assert bad.returncode == 1 and "fidelity" in bad.stdout


def test_image_archive_is_a_function_of_its_inputs(tmp_path: Path) -> None:
    da = load(REPO / "examples" / "image" / "docker_archive.py", "docker_archive_local")
    rootfs = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs, "w") as tar:
        info = tarfile.TarInfo("etc/hello")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))

    def build(out: str, created: int = 1735689600, cmd: str = "/mesh/run") -> tuple[str, bytes]:
        diff_id = da.sha256_file(rootfs)
        config = da.image_config(diff_id, created, ["PATH=/bin"], [cmd], "amd64")
        image_id = da.write_archive(rootfs, tmp_path / out, "meshd/t:1", config, diff_id, created)
        return image_id, (tmp_path / out).read_bytes()

    id1, bytes1 = build("one.tar")
    id2, bytes2 = build("two.tar")
    assert id1 == id2 and bytes1 == bytes2
    assert build("three.tar", created=1735689601)[0] != id1
    assert build("four.tar", cmd="/bin/sh")[0] != id1
    with tarfile.open(tmp_path / "one.tar") as tar:
        manifest = json.loads(tar.extractfile("manifest.json").read())  # type: ignore[union-attr]
        config = json.loads(tar.extractfile(manifest[0]["Config"]).read())  # type: ignore[union-attr]
    assert manifest[0]["RepoTags"] == ["meshd/t:1"]
    assert config["created"] == "2025-01-01T00:00:00Z"
    assert config["rootfs"]["diff_ids"] == ["sha256:" + da.sha256_file(rootfs)]
