"""Wall time and peak RSS of a command, measured through a small launcher.

Linux carries a process's peak RSS across exec: a command forked straight from a benchmark
that holds a large model or PyTorch would report the benchmark's own size. The launcher is a
small Python process; the command runs as its child, whose peak starts from the launcher's,
and the launcher prints its waited children's peak last on stdout.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import NamedTuple

LAUNCHER = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
)


class Measured(NamedTuple):
    returncode: int
    seconds: float
    peak_bytes: int
    stderr: str


def run_with_peak_rss(cmd: list[str]) -> Measured:
    """Run `cmd` (its stdout is read for the launcher's figure, its stderr captured)."""
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *cmd], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    return Measured(res.returncode, seconds, int(res.stdout.split()[-1]) * 1024, res.stderr)
