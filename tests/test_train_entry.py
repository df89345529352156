import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from caslie.config import ConfigError, load_config
from caslie.train import run

REPO = Path(__file__).resolve().parents[1]


def test_run_saves_the_resolved_config_and_data_manifest(tmp_path):
    cfg = load_config(REPO / "configs/demo.yaml", [f"run.output_dir={tmp_path}", f"data.cache_dir={tmp_path / 'c'}",
                                                   f"data.votes={REPO / 'data/sample/votes'}"])  # fmt: skip
    result = run(cfg)
    saved = OmegaConf.load(result.run_dir / "config.yaml")
    assert saved.model.name_or_path == "tiny:mistral" and saved.data.fusion == "mv"
    assert saved.data.tasks == ["ap", "cc", "prp", "psi", "mpc", "sa", "sr"]
    assert result.data_manifest["rows"]["sa/train"] == 24
    assert (result.run_dir / "data_manifest.json").is_file()
    changed = load_config(
        REPO / "configs/demo.yaml", [f"run.output_dir={tmp_path}", "optim.lr=0.5"]
    )
    with pytest.raises(ConfigError, match="already holds a different config"):
        run(changed)


def test_hub_model_fails_fast_offline_naming_the_id(tmp_path):
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, "train.py", "--config", "configs/mistral_mv.yaml", f"run.output_dir={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert time.monotonic() - start < 60
    assert out.returncode == 2
    assert "mistralai/Mistral-7B-Instruct-v0.3" in out.stderr and "Traceback" not in out.stderr


def test_tiny_models_run_on_the_sample_and_log_offline():
    from caslie.train import tiny_model_defaults

    cfg = load_config(REPO / "configs/fashionclip.yaml", ["model.name_or_path=tiny:clip"])
    notes = tiny_model_defaults(cfg)
    assert cfg.data.source == "sample" and cfg.logger.wandb.mode == "offline" and len(notes) == 2
    real = load_config(REPO / "configs/fashionclip.yaml")
    assert tiny_model_defaults(real) == [] and real.data.source == "NingLab/MMECInstruct"
    local = load_config(REPO / "configs/demo.yaml", ["data.source=/data/rows.jsonl"])
    tiny_model_defaults(local)
    assert local.data.source == "/data/rows.jsonl"  # only the default hub dataset is replaced
