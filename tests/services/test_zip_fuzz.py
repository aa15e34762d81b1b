"""A few seconds of scripts/fuzz/zips.py: the zip validator (``services/common/zips.py``) and the library's
bounded member reads either accept a hostile zip or raise their own error; whatever is accepted extracts
inside its folder; no input hangs or allocates without bound.

The full run (``python scripts/fuzz/zips.py --seconds 600``) is the same with a larger budget; CI runs 60 s
(``.ci/run``). The fuzzer runs in a subprocess under its own address-space cap, so an unbounded allocation
is a reported MemoryError there, not a problem for this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "fuzz" / "zips.py"


@pytest.mark.slow  # ~15 s: 10 s of fuzzing plus start-up
def test_zip_validator_survives_a_short_fuzz_run(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--seconds", "10", "--mem-mib", "1024", "--out", str(tmp_path)],
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
        assert target["peak_traced_mib"] < 48, name
    assert summary["targets"]["check_extract"]["outcomes"].get("ok", 0) > 0  # some zips were extracted
    # the resident set stays within the address-space budget the run was given above its start-up size
    assert summary["max_rss_mib"] - summary["start_rss_mib"] < 1024, summary
