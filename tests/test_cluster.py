"""The allocation a job runs on: ``auto`` devices and nodes from SLURM, the requeue job id."""

import pytest

from caslie.cluster import (
    in_slurm_step,
    resolve_devices,
    restarted_by_slurm,
    slurm_allocation,
    slurm_job_id,
)
from caslie.config import load_config
from caslie.errors import ConfigError

STEP = {
    "SLURM_NTASKS": "8",
    "SLURM_NNODES": "2",
    "SLURM_NTASKS_PER_NODE": "4",
    "SLURM_JOB_NAME": "train",
}


def test_auto_follows_the_slurm_allocation_and_explicit_counts_win():
    assert slurm_allocation(STEP) == (4, 2)
    assert resolve_devices("gpu", "auto", "auto", STEP) == (4, 2)
    assert resolve_devices("gpu", "2", "auto", STEP) == (2, 2)
    # Without --ntasks-per-node SLURM gives per-node counts such as "3(x2)", or only the total.
    assert slurm_allocation(
        {**STEP, "SLURM_NTASKS_PER_NODE": "", "SLURM_TASKS_PER_NODE": "3(x2)"}
    ) == (3, 2)
    assert slurm_allocation({"SLURM_NTASKS": "6", "SLURM_NNODES": "3"}) == (2, 3)


def test_outside_slurm_auto_is_one_cpu_process_and_an_interactive_shell_is_no_job():
    assert resolve_devices("cpu", "auto", "auto", {}) == (1, 1)
    assert not in_slurm_step({**STEP, "SLURM_JOB_NAME": "bash"})  # salloc's shell
    assert resolve_devices("cpu", "auto", "auto", {**STEP, "SLURM_JOB_NAME": "interactive"}) == (
        1,
        1,
    )


def test_the_config_sizes_accumulation_to_the_allocation(monkeypatch):
    for key, value in STEP.items():
        monkeypatch.setenv(key, value)
    cfg = load_config(None, ["optim.effective_batch_size=128", "optim.micro_batch_size=4"])
    assert cfg.allocation == (4, 2) and cfg.world_size == 8
    assert cfg.accumulate_grad_batches == 4  # 128 / (4 x 8)
    with pytest.raises(ConfigError, match="not divisible by optim.micro_batch_size=4 x 8 device"):
        load_config(None, ["optim.effective_batch_size=16", "optim.micro_batch_size=4"])
    with pytest.raises(
        ConfigError, match="trainer.devices must be a positive number or auto, not 'two'"
    ):
        load_config(None, ["trainer.devices=two"])


def test_the_requeue_id_is_validated_and_restarts_are_recognised():
    assert slurm_job_id({"SLURM_JOB_ID": "123"}) == "123"
    assert (
        slurm_job_id({"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "2"})
        == "5_2"
    )
    assert slurm_job_id({"SLURM_JOB_ID": "1; rm -rf /"}) is None
    assert slurm_job_id({}) is None
    assert restarted_by_slurm({"SLURM_RESTART_COUNT": "2"})
    assert not restarted_by_slurm({"SLURM_RESTART_COUNT": "0"}) and not restarted_by_slurm({})
