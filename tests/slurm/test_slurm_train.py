"""Training as SLURM jobs through the project's own template (``slurm/train.sbatch``), as a 2-task
CPU DDP job on the one-node test cluster: a plain submit, a job that gets SIGUSR1 in validation and
again in training (it requeues itself and resumes into the same W&B run), and a job killed with
SIGKILL mid-epoch then resubmitted (it resumes from the last periodic checkpoint). Every
interrupted job must end exactly where the uninterrupted one ends."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO

from tests.slurm.cluster import Job, SlurmCluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Two CPU tasks in place of the template's GPUs (options on the sbatch line win over #SBATCH).
CPU_JOB = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=20"]
# One row per validation batch and 48 generated tokens: validation lasts long enough to be hit
# by a signal; a step-interval checkpoint every 3 steps for the hard kill.
SETTINGS = ["trainer.max_epochs=2", "trainer.log_every_n_steps=1", "optim.eval_batch_size=1",
            "eval.max_new_tokens=48", "trainer.checkpoint_every_n_steps=3"]  # fmt: skip


def submit(slurm: SlurmCluster, root: Path, name: str) -> Job:
    args = ["configs/demo.yaml", f"run.output_dir={root}", f"run.name={name}",
            f"data.cache_dir={root / 'cache'}", *SETTINGS]  # fmt: skip
    return slurm.sbatch(REPO / "slurm/train.sbatch", args, CPU_JOB, cwd=REPO,
                        env={"PYTHON": sys.executable}, out=root / f"{name}.out")  # fmt: skip


def adapter(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


def assert_same_end(run_dir: Path, reference: Path) -> None:
    """Same metrics and bit-identical final adapter weights."""
    assert (
        json.loads((run_dir / "metrics.json").read_text())["metrics"]
        == json.loads((reference / "metrics.json").read_text())["metrics"]
    )
    mine, theirs = adapter(run_dir), adapter(reference)
    assert mine.keys() == theirs.keys() and mine
    for key in mine:
        assert torch.equal(mine[key], theirs[key]), key


def wandb_ids(run_dir: Path) -> set[str]:
    return {p.name.rsplit("-", 1)[1] for p in (run_dir / "wandb").glob("offline-run-*")}


@pytest.fixture(scope="module")
def uninterrupted(slurm: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("slurm-runs")
    job = submit(slurm, root, "plain")
    assert slurm.wait_done(job) == "COMPLETED", job.log()[-3000:]
    return root / "plain"


def test_submitted_job_trains_as_two_ddp_tasks_and_reports(uninterrupted: Path):
    log = (uninterrupted.parent / "plain.out").read_text()
    assert "Starting with 2 processes" in log and "attempt 0" in log
    metrics = json.loads((uninterrupted / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"val", "test_ind", "test_ood"}
    assert metrics["test_ind"]["cc"]["n"] + metrics["test_ind"]["cc"]["failed"] == 12
    assert (uninterrupted / "status.json").exists()
    assert "Traceback" not in log
    assert log.count("run folder:") == 1  # one summary, from rank zero


def test_sigusr1_in_validation_then_training_requeues_and_ends_as_uninterrupted(
    slurm: SlurmCluster, uninterrupted: Path, tmp_path: Path
):
    job = submit(slurm, tmp_path, "usr1")
    slurm.wait_log(job, r"validation: batch 2/")
    slurm.run("scancel", "--signal=USR1", job.id)
    stop = slurm.wait_log(job, r"stopped by SIGUSR1 during (\w+)")
    assert stop.group(1) == "validation"
    slurm.wait_log(job, r"the SLURM job is requeued")

    # The requeued attempt resumes; the second signal lands in training, after a few steps.
    first_end = len(job.log())
    slurm.wait_for(lambda: slurm.state(job.id) in ("PENDING", "RUNNING"), 60, "the requeue")
    slurm.wait_log(job, r"resuming from \S+last\.ckpt", after=first_end)
    step = slurm.wait_log(job, r"train epoch \d/2 step (\d+)/", after=first_end)
    assert int(step.group(1)) > 0
    slurm.run("scancel", "--signal=USR1", job.id)
    stop = slurm.wait_log(job, r"stopped by SIGUSR1 during (\w+)", after=first_end)
    assert stop.group(1) == "training"

    assert slurm.wait_done(job) == "COMPLETED", job.log()[-3000:]
    log = job.log()
    assert slurm.job(job.id)["Restarts"] == "2"
    assert [int(a) for a in re.findall(r"attempt (\d+)", log)] == [0, 1, 2]
    assert len(wandb_ids(tmp_path / "usr1")) == 1  # every attempt logs into one W&B run
    assert len(list((tmp_path / "usr1/wandb").glob("offline-run-*"))) == 3
    assert "Traceback" not in log
    assert_same_end(tmp_path / "usr1", uninterrupted)


def test_sigkill_mid_epoch_then_resubmit_resumes_from_the_periodic_checkpoint(
    slurm: SlurmCluster, uninterrupted: Path, tmp_path: Path
):
    job = submit(slurm, tmp_path, "kill")
    slurm.wait_log(job, r"train epoch 1/2 step 5/")
    # SIGKILL to the training step's tasks only: killing the batch shell first makes SLURM end the
    # job step with a SIGTERM, which can reach a task before the SIGKILL does and save a resume point.
    slurm.run("scancel", "--signal=KILL", f"{job.id}.0")
    assert slurm.wait_done(job) in ("FAILED", "CANCELLED")
    saved = torch.load(tmp_path / "kill/checkpoints/last.ckpt", map_location="cpu",
                       weights_only=True)["global_step"]  # fmt: skip
    # trainer.checkpoint_every_n_steps=3, and the kill came in the first of two 11-step epochs
    assert saved % 3 == 0 and 3 <= saved < 11
    assert not (tmp_path / "kill/status.json").exists()

    again = submit(slurm, tmp_path, "kill")  # the same command: the template resumes
    assert slurm.wait_done(again) == "COMPLETED", again.log()[-3000:]
    log = again.log()
    assert re.search(rf"resuming from \S+kill/checkpoints/last\.ckpt \(step {saved}\)", log), log
    assert len(wandb_ids(tmp_path / "kill")) == 1
    assert_same_end(tmp_path / "kill", uninterrupted)


def test_rerunning_a_finished_job_leaves_it_alone(slurm: SlurmCluster, uninterrupted: Path):
    def written() -> dict:  # the run folder lock records its latest holder: not the run's output
        return {
            p: p.stat().st_mtime_ns
            for p in uninterrupted.rglob("*")
            if p.is_file() and p.name != ".lock"
        }

    before = written()
    job = submit(slurm, uninterrupted.parent, "plain")
    assert slurm.wait_done(job) == "COMPLETED"
    assert "already finished" in job.log()
    assert written() == before
