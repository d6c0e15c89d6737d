#!/usr/bin/env bash
# The test command (README quick start, and what CI runs).
#
# 1. installs meshd with its test extras into ./.venv (created if missing);
# 2. as root, starts a private Docker engine (tests/docker_env.sh: installs
#    docker.io + busybox-static with apt if missing, builds the test images);
#    without one the Docker tests are skipped and say why;
# 3. runs pytest (extra arguments are passed through), then stops the engine
#    it started.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PY="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
    if ! "$PY" -m venv .venv 2>/dev/null; then
        echo "run.sh: installing python3-venv" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >&2
        "$PY" -m venv .venv
    fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
export PATH="$PWD/.venv/bin:$PATH"
if [[ "${MESHD_SETUP_ONLY:-0}" == 1 ]]; then
    exit 0  # .ci/run: install only, before its lint/type checks
fi

engine_started=0
stop_engine() { if [[ $engine_started == 1 ]]; then bash tests/docker_env.sh stop || true; fi; }
trap stop_engine EXIT
if [[ "${MESHD_SKIP_DOCKER:-0}" != 1 && $(id -u) == 0 ]]; then
    if env_line=$(bash tests/docker_env.sh start); then
        eval "$env_line"
        engine_started=1
    else
        echo "run.sh: no Docker engine could be started; Docker tests will be skipped" >&2
    fi
fi

.venv/bin/python -m pytest "$@"
