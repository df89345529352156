"""``caslie grid --slurm``: a grid's runs as one SLURM job array on the one-node test cluster."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, demo_grid, write_grid

from tests.slurm.cluster import Job, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CASLIE = str(Path(sys.executable).parent / "caslie")


def test_the_demo_grid_is_an_array_that_completes_and_a_resubmit_has_nothing_to_do(
    slurm: SlurmCluster, tmp_path: Path
):
    grid = demo_grid(tmp_path)
    cmd = [CASLIE, "grid", str(grid), "--slurm", "--sbatch=--gpus-per-node=0",
           "--sbatch=--cpus-per-task=1", "--sbatch=--time=20"]  # fmt: skip
    out = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    match = re.search(r"train: 3 step\(s\) as job array (\d+)", out.stdout)
    assert match, out.stdout
    array = match.group(1)
    root = tmp_path / "runs" / "demo"
    for task in (0, 1, 2):
        state = slurm.wait_done(Job(f"{array}_{task}", root / "logs" / f"train-{array}_{task}.out"))
        assert state == "COMPLETED", (root / "logs" / f"train-{array}_{task}.out").read_text()[
            -3000:
        ]
    for run, fusion in (("text", "none"), ("uia", "uia"), ("mv", "mv")):
        assert (root / run / "status.json").is_file()
        assert json.loads((root / run / "metrics.json").read_text())["identity"]["fusion"] == fusion
    again = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "nothing to submit" in again.stdout


def test_a_chain_grid_runs_caption_then_vote_then_train_as_dependent_arrays(
    slurm: SlurmCluster, tmp_path: Path
):
    cache = f"data.cache_dir={tmp_path / 'cache'}"
    small = '"data.tasks=[ap,sa]"'
    grid = write_grid(
        tmp_path,
        f"""name: chain
overrides: [trainer.max_epochs=1, logger.wandb.mode=disabled, {cache}, eval.max_new_tokens=4,
            {small}, "data.voters=[tiny-llama,tiny-mistral,tiny-llava]"]
chains:
  tiny:
    caption: {{config: {REPO / "configs/caption/demo.yaml"}, overrides: [{small}, {cache}]}}
    vote: {{config: {REPO / "configs/cqe/demo.yaml"}, overrides: [{small}, {cache}]}}
axes:
  fusion:
    mv: [data.fusion=mv]
""",
    )
    cmd = [CASLIE, "grid", str(grid), "--slurm", "--sbatch=--gpus-per-node=0",
           "--sbatch=--cpus-per-task=1", "--sbatch=--time=20"]  # fmt: skip
    out = subprocess.run(cmd, env=slurm.env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    ids = dict(re.findall(r"(caption|vote|train): 1 step\(s\) as job array (\d+)", out.stdout))
    assert set(ids) == {"caption", "vote", "train"}, out.stdout
    assert f"vote: 1 step(s) as job array {ids['vote']} after {ids['caption']}" in out.stdout
    assert (
        f"train: 1 step(s) as job array {ids['train']} after {ids['caption']}, {ids['vote']}"
        in (out.stdout)
    )
    root = tmp_path / "runs" / "chain"
    times = {}
    for stage, array in ids.items():
        log = root / "logs" / f"{stage}-{array}_0.out"
        assert slurm.wait_done(Job(f"{array}_0", log)) == "COMPLETED", log.read_text()[-3000:]
        info = slurm.job(f"{array}_0")
        times[stage] = (info["StartTime"], info["EndTime"])
    # Each stage starts only once the one before has ended (ISO times compare as text).
    assert times["caption"][1] <= times["vote"][0] and times["vote"][1] <= times["train"][0]
    assert (root / "tiny" / ".caption.done").is_file() and (root / "tiny" / ".vote.done").is_file()
    assert any((root / "tiny" / "captions").rglob("*.jsonl"))
    identity = json.loads((root / "tiny-mv" / "metrics.json").read_text())["identity"]
    assert identity["caption_model"] == "tiny:llava" and identity["fusion"] == "mv"
    assert identity["voters"] == ["tiny-llama", "tiny-mistral", "tiny-llava"]
