#!/usr/bin/env bash
# GPU check for a node with an NVIDIA GPU: NVML discovery, advertised tier,
# measured GPU score, and a GPU job container run by meshd's Docker executor.
# Degrades cleanly without a GPU, a Docker engine or the NVIDIA runtime (says
# what it could not check); exits non-zero only if something present failed.
# Usage: tests/gpu/check.sh   (PYTHON=... to choose the interpreter;
#        MESHD_GPU_CHECK_IMAGE=... for the container image, default ubuntu:22.04)
set -u
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
py="${PYTHON:-}"
if [ -z "$py" ]; then
  if [ -x "$root/.venv/bin/python" ]; then py="$root/.venv/bin/python"; else py="python3"; fi
fi
echo "meshd GPU check ($(date -u +%FT%TZ), $(uname -n), python: $py)"
if command -v nvidia-smi >/dev/null 2>&1; then
  echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>&1 | head -4 | tr '\n' ';')"
else
  echo "nvidia-smi: not installed"
fi
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$py" "$here/check.py"
