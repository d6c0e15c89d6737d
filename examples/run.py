"""Run the science examples on a local mesh of real daemons, end to end.

    python examples/run.py surrogate|weather|quantum|nexapod|all [--members N] [--dir D] [--keep]

What it does, printing each `mesh` command it runs:

1. builds the example image ``meshd/sci:1`` if it is not loaded
   (``examples/build-images.sh``; needs a Docker engine, root for mmdebstrap);
2. starts three ``meshd start`` processes on 127.0.0.1 with the Docker
   executor (node0 alone, the others bootstrapped from it), all sharing this
   machine's engine, and waits until each sees the others;
3. submits the example(s) from node0 with the `mesh` CLI, waits, fetches the
   outputs and prints what the science says:
   - ``surrogate``: the fitted kernel ridge model's validation error;
   - ``weather``: N Lorenz-96 members as N jobs, gathered client-side into
     the ensemble mean and spread by lead time (``weather/gather.py``);
   - ``quantum``: GHZ and QAOA, replicas judged by the custom checker;
   - ``nexapod``: the quantum job from its NEXAPod schema 1.0 descriptor;
4. stops the daemons (and removes the temp dir unless ``--keep``).

The functions are what ``tests/test_examples.py`` runs and checks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from meshd.testing.procs import DaemonProcess, mesh_cli, start_mesh, stop_all  # noqa: E402

IMAGE = os.environ.get("MESHD_SCI_IMAGE", "meshd/sci:1")
JOB_TIMEOUT_S = 600.0


def _mesh(node: Path, *args: str, timeout_s: float = JOB_TIMEOUT_S) -> str:
    print("   $ mesh " + " ".join(args), flush=True)
    cp = mesh_cli(node, *args, timeout_s=timeout_s)
    if cp.returncode != 0:
        raise RuntimeError(f"mesh {' '.join(args)} failed ({cp.returncode}): {cp.stderr.strip()}")
    return cp.stdout


def build_image() -> str:
    """The example image's id, building it with build-images.sh if needed."""
    cp = subprocess.run(
        ["bash", str(HERE / "build-images.sh")], text=True, capture_output=True, timeout=1800
    )
    if cp.returncode != 0:
        raise RuntimeError("examples/build-images.sh failed:\n" + cp.stderr[-3000:])
    return cp.stdout.strip()


def start(root: Path, nodes: int = 3) -> list[DaemonProcess]:
    """``nodes`` daemons with the Docker executor, each seeing the others."""
    return start_mesh(root, nodes, executor="docker")


def job(node: Path, job_id: str) -> dict[str, Any]:
    """The job as its origin records it (``mesh job --json``)."""
    return dict(json.loads(_mesh(node, "job", job_id, "--json")))


def submit_wait(node: Path, descriptor: Path, out: Path, *extra: str) -> dict[str, Any]:
    """Submit a descriptor file, wait for it, fetch its outputs into ``out``."""
    job_id = _mesh(node, "submit", str(descriptor), *extra, "--wait", "-o", str(out)).strip()
    return job(node, job_id.splitlines()[0])


def surrogate(node: Path, out: Path) -> dict[str, Any]:
    info = submit_wait(node, HERE / "surrogate" / "job.yaml", out)
    metrics = json.loads((out / "metrics.json").read_text())
    print(
        f"   surrogate: validation RMSE {metrics['val_rmse_ev']:.2e} eV/atom over "
        f"{metrics['n_val']} held-out points (noise {metrics['noise_ev']:g}, "
        f"energy range {metrics['energy_range_ev']:.3f} eV)"
    )
    return {"job": info, "metrics": metrics}


def weather(node: Path, out: Path, members: int) -> dict[str, Any]:
    """N members submitted at once, then waited for, fetched and gathered."""
    sys.path.insert(0, str(HERE / "weather"))
    import gather

    ids = []
    for m in range(members):
        ids.append(
            _mesh(node, "submit", str(HERE / "weather" / "member.yaml"), "--env", f"MEMBER={m}")
            .strip()
            .splitlines()[0]
        )
    jobs, dirs = [], []
    for m, job_id in enumerate(ids):
        _mesh(node, "wait", job_id, "--timeout", str(JOB_TIMEOUT_S))
        d = out / f"member-{m:02d}"
        _mesh(node, "result", job_id, "-o", str(d))
        jobs.append(job(node, job_id))
        dirs.append(d)
    lead, mean, spread = gather.ensemble_stats(gather.load_members(dirs))
    print("   $ python examples/weather/gather.py " + " ".join(str(d) for d in dirs[:2]) + " ...")
    gather.main([str(d) for d in dirs] + ["-o", str(out / "ensemble.csv")])
    return {"jobs": jobs, "lead": lead, "mean": mean, "spread": spread}


def quantum(node: Path, out: Path, descriptor: Path | None = None) -> dict[str, Any]:
    info = submit_wait(node, descriptor or HERE / "quantum" / "job.yaml", out)
    ghz = json.loads((out / "ghz.json").read_text())
    qaoa = json.loads((out / "qaoa.json").read_text())
    print(
        f"   quantum: GHZ({ghz['qubits']}) P(0…0)={ghz['p_all_zero']:.12f} "
        f"P(1…1)={ghz['p_all_one']:.12f}; QAOA({qaoa['qubits']}) <C>={qaoa['expected_cut']:.3f} "
        f"of {qaoa['max_cut']:.0f} (ratio {qaoa['approximation_ratio']:.3f})"
    )
    return {"job": info, "ghz": ghz, "qaoa": qaoa}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the science examples on a local 3-node mesh.")
    ap.add_argument("example", choices=("surrogate", "weather", "quantum", "nexapod", "all"))
    ap.add_argument("--members", type=int, default=8, help="weather ensemble size (default 8)")
    ap.add_argument("--dir", type=Path, help="where node data and outputs go (default: temp)")
    ap.add_argument("--keep", action="store_true", help="keep the directory afterwards")
    args = ap.parse_args(argv)
    if args.members < 2:
        ap.error("--members must be at least 2")
    base = args.dir or Path(tempfile.mkdtemp(prefix="meshd-examples-"))
    base.mkdir(parents=True, exist_ok=True)
    print(f"==> image {IMAGE}: {build_image()}", flush=True)
    print(f"==> starting 3 daemons (Docker executor) under {base}", flush=True)
    procs = start(base / "mesh")
    node = procs[0].data_dir
    todo = (
        ["surrogate", "weather", "quantum", "nexapod"] if args.example == "all" else [args.example]
    )
    try:
        for name in todo:
            print(f"==> {name}", flush=True)
            out = base / "out" / name
            if name == "surrogate":
                surrogate(node, out)
            elif name == "weather":
                weather(node, out, args.members)
            elif name == "quantum":
                quantum(node, out)
            else:
                quantum(node, out, HERE / "quantum" / "nexapod.json")
        print(f"==> done; outputs under {base / 'out'}")
        return 0
    except (RuntimeError, TimeoutError) as exc:
        print(f"examples: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(procs)
        if not args.keep and args.dir is None:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
