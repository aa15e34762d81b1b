"""A few seconds of scripts/fuzz/checkpoints.py: every reader either reads an input or raises its own error.

The full run (``python scripts/fuzz/checkpoints.py --seconds 600``) is the same with a larger budget. The
fuzzer runs in a subprocess under its own address-space cap, so an unbounded allocation is a reported
MemoryError there, not a problem for this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
SCRIPT = REPO / "scripts" / "fuzz" / "checkpoints.py"


@pytest.mark.slow  # ~15 s: 10 s of fuzzing plus start-up
def test_checkpoint_readers_survive_a_short_fuzz_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "10", "--mem-mib", "1536", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert proc.stdout, proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    crashes = [c for t in summary["targets"].values() for c in t["crashes"]]
    assert proc.returncode == 0 and not crashes, json.dumps(crashes, indent=2)[:6000]
    for name, target in summary["targets"].items():
        assert target["inputs"] > 0, name
        assert target["slowest_s"] < 5, name
    assert summary["max_rss_mib"] < 1500
