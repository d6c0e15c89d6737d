"""Launcher used by ProcessExecutor: set rlimits, then exec the job's command.

Run as ``python -I -S _rlimit_exec.py AS NPROC FSIZE NOFILE -- cmd args...``
(each limit in bytes / count; 0 means "leave as inherited"). It exists so
limits are set in the child without ``preexec_fn`` (unsafe in a threaded
parent such as a trio program). Stdlib only; it must import nothing from
meshd because it runs with ``-S`` (no site-packages).
"""

import os
import resource
import sys


def main(argv: list[str]) -> int:
    if len(argv) < 7 or argv[5] != "--":
        print("usage: _rlimit_exec.py AS NPROC FSIZE NOFILE -- cmd...", file=sys.stderr)
        return 126
    limits = (
        (resource.RLIMIT_AS, int(argv[1])),
        (resource.RLIMIT_NPROC, int(argv[2])),
        (resource.RLIMIT_FSIZE, int(argv[3])),
        (resource.RLIMIT_NOFILE, int(argv[4])),
    )
    for which, value in limits:
        if value > 0:
            _soft, hard = resource.getrlimit(which)
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(which, (value, value))
    cmd = argv[6:]
    try:
        os.execvp(cmd[0], cmd)
    except OSError as e:
        print(f"meshd: cannot execute {cmd[0]!r}: {e.strerror}", file=sys.stderr)
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
