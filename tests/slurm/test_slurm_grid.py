"""``caslie grid --slurm``: a grid's runs as one SLURM job array on the one-node test cluster."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import fusion_grid

from tests.slurm.cluster import Job, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASLIE = str(Path(sys.executable).parent / "caslie")


def test_grid_submits_an_array_that_completes_and_a_resubmit_has_nothing_to_do(
    slurm: SlurmCluster, tmp_path: Path
):
    grid = fusion_grid(tmp_path, "sg")
    cmd = [CASLIE, "grid", str(grid), "--slurm", "--sbatch=--gpus-per-node=0",
           "--sbatch=--cpus-per-task=1", "--sbatch=--time=20"]  # fmt: skip
    out = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    match = re.search(r"train: 2 step\(s\) as job array (\d+)", out.stdout)
    assert match, out.stdout
    array = match.group(1)
    root = tmp_path / "runs" / "sg"
    for task in (0, 1):
        state = slurm.wait_done(Job(f"{array}_{task}", root / "logs" / f"train-{array}_{task}.out"))
        assert state == "COMPLETED", (root / "logs" / f"train-{array}_{task}.out").read_text()[
            -3000:
        ]
    for run, fusion in (("text", "none"), ("mv", "mv")):
        assert (root / run / "status.json").is_file()
        assert json.loads((root / run / "metrics.json").read_text())["identity"]["fusion"] == fusion
    again = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to submit" in again.stdout
