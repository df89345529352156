"""EC3 captioning and CQE voting as 2-task SLURM jobs through ``slurm/caption.sbatch`` and
``slurm/vote.sbatch``: each task writes its own cache shard, and the merged caches equal what one
process writes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from caslie.config import load_config
from caslie.data.cache import CaptionCache, VoteCache
from tests.slurm.cluster import SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CPU_JOB = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]
CASLIE = str(Path(sys.executable).parent / "caslie")


def single_process(command: str, config: str, overrides: list[str], options: list[str]) -> None:
    out = subprocess.run([CASLIE, command, "--config", config, *overrides, *options], cwd=REPO,
                         capture_output=True, text=True, timeout=900)  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]


def as_job(slurm: SlurmCluster, template: str, config: str, overrides: list[str],
           options: list[str], out: Path) -> str:  # fmt: skip
    job = slurm.sbatch(REPO / "slurm" / template, [config, *overrides, *options], CPU_JOB, cwd=REPO,
                       env={"CASLIE": CASLIE}, out=out)  # fmt: skip
    state = slurm.wait_done(job)
    assert state == "COMPLETED", job.log()[-3000:]
    return job.log()


def test_caption_job_shards_merge_to_the_single_process_cache(slurm: SlurmCluster, tmp_path: Path):
    config, options = "configs/caption/demo.yaml", ["--tasks", "cc", "sr", "--limit", "2"]
    one = [f"data.captions={tmp_path / 'one'}", f"data.cache_dir={tmp_path / 'c1'}"]
    two = [f"data.captions={tmp_path / 'two'}", f"data.cache_dir={tmp_path / 'c2'}"]
    single_process("caption", config, one, options)
    log = as_job(slurm, "caption.sbatch", config, two, options, tmp_path / "caption.out")
    assert "Traceback" not in log
    shards = sorted(p.name.split("-")[0] for p in (tmp_path / "two").glob("r*.jsonl"))
    assert shards == ["r0000", "r0001"]  # one shard per SLURM task
    a = CaptionCache(str(tmp_path / "one")).load(model="tiny:llava")
    b = CaptionCache(str(tmp_path / "two")).load(model="tiny:llava")
    assert a and {k: v["caption"] for k, v in a.items()} == {k: v["caption"] for k, v in b.items()}


def test_vote_job_shards_merge_to_the_single_process_cache(slurm: SlurmCluster, tmp_path: Path):
    config, options = "configs/cqe/demo.yaml", ["--tasks", "cc", "sa", "--limit", "3"]
    voters = "data.voters=[tiny-llama,tiny-mistral]"
    one = [f"data.votes={tmp_path / 'one'}", f"data.cache_dir={tmp_path / 'c1'}", voters]
    two = [f"data.votes={tmp_path / 'two'}", f"data.cache_dir={tmp_path / 'c2'}", voters]
    single_process("vote", config, one, options)
    log = as_job(slurm, "vote.sbatch", config, two, options, tmp_path / "vote.out")
    assert "Traceback" not in log
    cfg = load_config(REPO / config, [voters])
    for voter in cfg.data.voters:
        a = VoteCache(str(tmp_path / "one")).load(voter)
        b = VoteCache(str(tmp_path / "two")).load(voter)
        assert a and {k: v["vote"] for k, v in a.items()} == {k: v["vote"] for k, v in b.items()}
        assert len(list((tmp_path / "two" / voter).glob("*.jsonl"))) == 2
