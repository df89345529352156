"""The run folder: config checks and rank-zero atomic writes, run names, W&B ids."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from caslie.config import load_config
from caslie.errors import ConfigError
from caslie.run_dir import (
    auto_run_name,
    is_rank_zero,
    resolve_run_name,
    save_config,
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
    with pytest.raises(ConfigError, match=r"different config \(changed: optim.lr"):
        save_config(other, tmp_path / "run")


def _checkpoint(run_dir: Path) -> None:
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"trained")


def test_a_failed_attempt_without_checkpoints_does_not_block_the_corrected_retry(tmp_path: Path):
    save_config(load_config(None, ["run.name=x", "data.votes=cache/wrong"]), tmp_path / "run")
    fixed = load_config(None, ["run.name=x", "data.votes=cache/votes"])
    path = save_config(fixed, tmp_path / "run")  # nothing was trained: replaced
    assert OmegaConf.load(path).data.votes == "cache/votes"


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
