"""Plumbing shared by the benchmark scripts: peak memory of a child, and running a child case."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def peak_rss_mb() -> float:
    """Peak RSS of this process in MB: ru_maxrss, but from /proc's VmHWM where there is one, because
    Linux carries ru_maxrss over fork+exec from the parent (a benchmark driver holding its data)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spawn(script: str | Path, *args: str) -> dict:
    """Run ``script *args`` in a fresh interpreter (offline, the repo importable) and return the JSON
    object its last stdout line holds; its stderr tail is the error if it fails."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])
