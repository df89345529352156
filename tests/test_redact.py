"""Secrets read through ${oc.env:...} are used by the run and never written."""

from pathlib import Path

import pytest
from conftest import demo_config
from omegaconf import OmegaConf

from caslie.config import changed_keys, load_config, to_dict, to_yaml
from caslie.redact import keep_secrets_out

REPO = Path(__file__).resolve().parents[1]
HF = "hf_FAKEtoken0123456789"
WANDB = "0123456789abcdef0123456789abcdef01234567"
INTERPOLATED = ["caption.length_instruction=${oc.env:HF_TOKEN}",
                "cqe.models.private=${oc.env:WANDB_API_KEY}"]  # fmt: skip


@pytest.fixture
def secrets(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", HF)
    monkeypatch.setenv("WANDB_API_KEY", WANDB)


def test_the_run_sees_the_value_and_the_saved_config_the_interpolation(secrets):
    cfg = load_config(REPO / "configs/demo.yaml", INTERPOLATED)
    assert cfg.caption.length_instruction == HF and cfg.cqe.models["private"] == WANDB
    saved = to_yaml(cfg)
    assert HF not in saved and WANDB not in saved
    reloaded = OmegaConf.create(saved)
    assert reloaded.caption._get_node("length_instruction")._value() == "${oc.env:HF_TOKEN}"
    assert to_dict(cfg)["cqe"]["models"]["private"] == "${oc.env:WANDB_API_KEY}"
    assert changed_keys(saved, to_yaml(load_config(REPO / "configs/demo.yaml", INTERPOLATED))) == []


def test_a_secret_pasted_by_value_is_replaced_by_its_variable(secrets):
    cfg = load_config(REPO / "configs/demo.yaml", [f"caption.length_instruction=key {HF} end"])
    assert to_dict(cfg)["caption"]["length_instruction"] == "key ${oc.env:HF_TOKEN} end"


def test_only_secret_looking_variables_of_some_length_are_replaced():
    env = {"HOME": "/home/someone", "MY_TOKEN": "abc", "DB_PASSWORD": "hunter22"}
    out = keep_secrets_out({"a": "/home/someone/abc/hunter22", "b": ["hunter22"]}, {}, env)
    assert out == {"a": "/home/someone/abc/${oc.env:DB_PASSWORD}", "b": ["${oc.env:DB_PASSWORD}"]}


@pytest.mark.slow
@pytest.mark.integration
def test_no_secret_reaches_the_run_folder_or_the_wandb_files(secrets, tmp_path):
    from train import run

    cfg = demo_config(tmp_path, *INTERPOLATED, "trainer.max_steps=2", "trainer.max_epochs=1",
                      "logger.wandb.mode=offline", "data.tasks=[sa]")  # fmt: skip
    result = run(cfg)
    written = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert any("wandb" in p.parts and p.suffix == ".wandb" for p in written)
    assert any(p.name == "debug.log" for p in written)
    leaks = [
        p for p in written if HF.encode() in p.read_bytes() or WANDB.encode() in p.read_bytes()
    ]
    assert not leaks
    assert "${oc.env:HF_TOKEN}" in (result.run_dir / "config.yaml").read_text()
