"""The run folder: config checks and rank-zero atomic writes, run names, W&B ids."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from caslie.config import load_config
from caslie.errors import ConfigError
from caslie.run_dir import (
    RunFinished,
    auto_run_name,
    is_finished,
    is_rank_zero,
    mark_finished,
    resolve_run_name,
    save_config,
    start_plan,
    wandb_run_id,
    write_atomic,
)


def test_save_config_refuses_a_different_config_in_the_same_run(tmp_path: Path):
    cfg = load_config(None, ["run.name=x"])
    path = save_config(cfg, tmp_path / "run")
    assert OmegaConf.load(path).optim.lr == cfg.optim.lr
    save_config(cfg, tmp_path / "run")  # same config: fine (resume)
    other = load_config(None, ["run.name=x", "optim.lr=0.5"])
    _checkpoint(tmp_path / "run")
    with pytest.raises(ConfigError, match=r"different config \(.*config.yaml differs in: optim.lr"):
        save_config(other, tmp_path / "run")


def _checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"trained")


def test_a_failed_attempt_without_checkpoints_does_not_block_the_corrected_retry(tmp_path: Path):
    save_config(load_config(None, ["run.name=x", "data.votes=cache/wrong"]), tmp_path / "run")
    fixed = load_config(None, ["run.name=x", "data.votes=cache/votes"])
    path = save_config(fixed, tmp_path / "run")  # nothing was trained: replaced
    assert OmegaConf.load(path).data.votes == fixed.data.votes
    assert Path(fixed.data.votes).parts[-2:] == ("cache", "votes")


def test_only_rank_zero_writes_and_every_rank_checks(tmp_path, monkeypatch):
    from lightning.pytorch.utilities import rank_zero_only

    cfg = load_config(None, ["run.name=x"])
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not is_rank_zero()
    save_config(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "config.yaml").exists()
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    save_config(cfg, tmp_path / "run")
    _checkpoint(tmp_path / "run")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    with pytest.raises(ConfigError, match="different config"):  # rank 1 checks too
        save_config(load_config(None, ["run.name=x", "optim.lr=0.5"]), tmp_path / "run")


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    for i in range(3):
        write_atomic(tmp_path / "f.json", f"{i}")
    assert (tmp_path / "f.json").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_auto_names_are_readable_unique_and_ignore_restarts():
    name = auto_run_name("configs/mistral_mv.yaml", ["optim.lr=2e-4", "--model.lora_r=8"])
    assert name == "mistral_mv-lr2e-4-lora_r8"
    assert auto_run_name(
        "configs/mistral_mv.yaml", ["optim.lr=2e-4", "trainer.ckpt_path=last"]
    ) == ("mistral_mv-lr2e-4")
    assert auto_run_name("c.yaml", ["data.tasks=[sa,cc]"]) == "c-tasks-sa-cc"
    long_a = auto_run_name("c.yaml", [f"data.x{i}=value{i}" for i in range(20)])
    long_b = auto_run_name("c.yaml", [f"data.x{i}=value{i}" for i in range(19)] + ["data.x19=v"])
    assert len(long_a) <= 96 and long_a != long_b
    load_config(None, [f"run.name={long_a}"])  # a valid folder name


def test_sweep_trials_get_their_own_folder_and_the_agents_run_id(tmp_path):
    agent = {"WANDB_SWEEP_ID": "sw1", "WANDB_RUN_ID": "abc123"}
    cfg = load_config(None, ["run.name=mistral_mv"])
    assert resolve_run_name(cfg, agent) == "mistral_mv-abc123" == cfg.run.name
    assert resolve_run_name(cfg, agent) == "mistral_mv-abc123"  # idempotent
    assert resolve_run_name(load_config(None, ["run.name=m"]), {}) == "m"
    assert resolve_run_name(load_config(None, ["run.name=auto"]), {}).startswith("auto-")
    assert wandb_run_id(tmp_path, resuming=False, environ=agent) == "abc123"
    assert (tmp_path / "wandb_run_id").read_text() == "abc123"
    fresh = wandb_run_id(tmp_path, resuming=False, environ={})
    assert fresh != "abc123" and wandb_run_id(tmp_path, resuming=True, environ={}) == fresh


def test_an_auto_name_survives_a_resume():
    plain = resolve_run_name(load_config(None, ["run.name=auto"]), {})
    resumed = resolve_run_name(load_config(None, ["run.name=auto", "trainer.ckpt_path=last"]), {})
    other = resolve_run_name(load_config(None, ["run.name=auto", "optim.lr=0.5"]), {})
    assert plain == resumed != other


def _started_run(run_dir: Path, *overrides: str):
    cfg = load_config(None, ["run.name=x", *overrides])
    save_config(cfg, run_dir)
    _checkpoint(run_dir)
    (run_dir / "predictions").mkdir()
    (run_dir / "metrics.json").write_text("{}")
    (run_dir / "hpc_ckpt_3.ckpt").write_bytes(b"old")
    return cfg


def test_a_rerun_continues_only_when_asked_and_never_retrains_by_accident(tmp_path):
    run_dir = tmp_path / "run"
    cfg = _started_run(run_dir)
    assert start_plan(load_config(None, ["run.name=x"]), run_dir / "fresh") is None  # a new run
    with pytest.raises(ConfigError, match="unfinished run: pass --resume .* run.overwrite=true"):
        start_plan(cfg, run_dir)
    resume = load_config(None, ["run.name=x", "trainer.ckpt_path=last"])
    assert start_plan(resume, run_dir) == "last"
    mark_finished(run_dir)
    assert is_finished(run_dir)
    for again in (cfg, resume):
        with pytest.raises(RunFinished, match="already finished .* run.overwrite=true"):
            start_plan(again, run_dir)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()  # untouched
    changed = load_config(None, ["run.name=x", "optim.lr=0.5"])
    with pytest.raises(ConfigError, match="different config"):  # a name clash, not a rerun
        start_plan(changed, run_dir)


def test_overwrite_starts_over_except_in_a_requeued_slurm_job(tmp_path):
    run_dir = tmp_path / "run"
    _started_run(run_dir)
    # The requeued job's command line still says run.overwrite=true: it resumes instead.
    over = load_config(None, ["run.name=x", "run.overwrite=true"])
    requeued = {"SLURM_JOB_ID": "7", "SLURM_RESTART_COUNT": "1"}
    assert start_plan(over, run_dir, environ=requeued) == "last"
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    mark_finished(run_dir)
    with pytest.raises(RunFinished):
        start_plan(over, run_dir, environ=requeued)
    changed = load_config(None, ["run.name=x", "run.overwrite=true", "optim.lr=0.5"])
    assert start_plan(changed, run_dir, environ={"SLURM_RESTART_COUNT": "0"}) is None
    left = sorted(p.name for p in run_dir.iterdir())
    assert left == ["config.yaml"]  # checkpoints, predictions, metrics and hpc_ckpt removed
