"""``caslie export``: the checks that come before any model loads, and the two LoRA formats."""

import json
import shutil

import pytest
import torch
from conftest import demo_config
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from caslie.checkpoints import AtomicCheckpointIO
from caslie.cli import main as caslie_main
from caslie.config import to_yaml
from caslie.export import load_adapted
from caslie.pretrained import Checkpoint, load_model
from caslie.tiny import ensure_tiny

PROMPT = "Is the claw hammer forged in one piece?"


def _run_folder(tmp_path, *overrides: str):
    """A LoRA run folder whose base model was a local folder, since deleted: anything that opens
    the base model fails naming that folder."""
    base = shutil.copytree(ensure_tiny("mistral"), tmp_path / "base")
    run_dir = tmp_path / "runs" / "demo"
    run_dir.mkdir(parents=True)
    cfg = demo_config(tmp_path, f"model.name_or_path={base}", *overrides)
    (run_dir / "config.yaml").write_text(to_yaml(cfg))
    shutil.rmtree(base)
    (run_dir / "checkpoints").mkdir()
    return run_dir, base


def _save(path, obj):
    torch.save(obj, path)
    return path


def _error(capsys, *args: str) -> str:
    """Run ``caslie export ARGS``: exit code 2 and the one-line error it printed."""
    capsys.readouterr()  # what came before (building the tiny model) is not the command's
    assert caslie_main(["export", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("caslie: error: ") and "\n" not in err, err
    return err


LORA_STATE = {"model.base_model.model.lm_head.lora_A.default.weight": torch.zeros(2, 2)}


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing best", "best.ckpt does not exist"),
        ("missing file", "nope.ckpt does not exist"),
        ("corrupt", "is not a readable checkpoint"),
        ("damaged", "is damaged"),
        ("no state_dict", "is not a caslie checkpoint"),
        ("other kind", "holds no lora weights"),
    ],
)
def test_checkpoint_errors_come_before_the_base_model_is_opened(tmp_path, capsys, case, expected):
    run_dir, base = _run_folder(tmp_path)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    which = str(tmp_path / "nope.ckpt") if case == "missing file" else "best"
    if case == "corrupt":
        ckpt.write_bytes(b"not a torch file")
    elif case == "damaged":
        # A real save (with its checksum) whose bytes changed afterwards.
        AtomicCheckpointIO().save_checkpoint({"state_dict": LORA_STATE}, ckpt)
        data = bytearray(ckpt.read_bytes())
        data[-40] ^= 0xFF
        ckpt.write_bytes(bytes(data))
    elif case == "no state_dict":
        _save(ckpt, {"weights": LORA_STATE})
    elif case == "other kind":
        _save(ckpt, {"state_dict": {"clip.logit_scale": torch.zeros(())}})
    err = _error(capsys, str(run_dir), "--out", str(tmp_path / "out"), "--checkpoint", which)
    assert expected in err and str(base) not in err
    assert not (tmp_path / "out").exists()


def test_a_valid_checkpoint_gets_as_far_as_the_deleted_base_model(tmp_path, capsys):
    """The control of the test above: with the checkpoint right, the base model is what fails."""
    run_dir, base = _run_folder(tmp_path)
    _save(run_dir / "checkpoints" / "best.ckpt", {"state_dict": LORA_STATE})
    err = _error(capsys, str(run_dir), "--out", str(tmp_path / "out"))
    assert f"'{base}' does not exist" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_a_folder_without_config_yaml_is_refused(tmp_path, capsys):
    err = _error(capsys, "--run", str(tmp_path), "--out", str(tmp_path / "out"))
    assert f"{tmp_path / 'config.yaml'} does not exist" in err


def test_the_run_folder_is_given_once(tmp_path, capsys):
    assert "RUN_DIR or --run" in _error(capsys, str(tmp_path), "--run", str(tmp_path), "--out", "x")
    assert "RUN_DIR or --run" in _error(capsys, "--out", "x")


def test_a_non_empty_out_is_refused_before_the_checkpoint_is_read(tmp_path, capsys):
    run_dir, _ = _run_folder(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _error(capsys, str(run_dir), "--out", str(out))  # no checkpoint either: out comes first
    assert f"--out {out} exists and is not empty" in err and "--force" in err
    assert (out / "keep.txt").read_text() == "mine"
    (tmp_path / "file").write_text("x")
    assert "is a file" in _error(capsys, str(run_dir), "--out", str(tmp_path / "file"), "--force")


def test_force_never_replaces_a_folder_that_holds_the_run_or_the_current_one(
    tmp_path, capsys, monkeypatch
):
    run_dir, _ = _run_folder(
        tmp_path
    )  # no checkpoint: a missed check stops there, deleting nothing
    err = _error(capsys, str(run_dir), "--out", str(tmp_path / "runs"), "--force")
    assert f"holds {run_dir}; --force would delete it" in err
    (tmp_path / "here" / "work").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "here" / "work")
    err = _error(capsys, str(run_dir), "--out", "..", "--force")
    assert f"holds {tmp_path / 'here' / 'work'}; --force would delete it" in err
    assert (run_dir / "config.yaml").is_file()


def test_peft_format_on_a_fashionclip_run_is_one_line(tmp_path, capsys):
    run_dir, _ = _run_folder(tmp_path, "model.kind=fashionclip")
    err = _error(capsys, str(run_dir), "--format", "peft", "--out", str(tmp_path / "out"))
    assert "is a FashionCLIP run" in err and "--format merged" in err


def _logits(model, tokenizer):
    ids = torch.tensor([tokenizer(PROMPT)["input_ids"]])
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.slow
@pytest.mark.integration
def test_peft_export_loads_with_peft_from_pretrained(demo_run, tmp_path):
    cfg, result = demo_run
    out = tmp_path / "adapter"
    assert caslie_main(["export", str(result.run_dir), "--format", "peft", "--out", str(out)]) == 0
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == cfg.model.name_or_path == "tiny:mistral"
    assert "/" not in (out / "README.md").read_text().split("---")[1]  # no local path in the card
    adapted, tokenizer = load_adapted(result.run_dir)
    exported_tokenizer = AutoTokenizer.from_pretrained(out)
    assert exported_tokenizer(PROMPT)["input_ids"] == tokenizer(PROMPT)["input_ids"]
    assert exported_tokenizer.pad_token == tokenizer.pad_token
    base = load_model(Checkpoint.from_config(cfg.model), AutoModelForCausalLM).eval()
    plain = _logits(base, tokenizer)
    reloaded = PeftModel.from_pretrained(base, out).eval()
    expected = _logits(adapted, tokenizer)
    assert torch.allclose(_logits(reloaded, tokenizer), expected, atol=1e-5)
    assert not torch.allclose(plain, expected, atol=1e-3)  # the adapter changes the outputs


@pytest.mark.slow
@pytest.mark.integration
def test_merged_export_replaces_an_older_one_only_with_force(demo_run, tmp_path, capsys):
    cfg, result = demo_run
    out = tmp_path / "merged"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")  # an older export in the other format
    args = ["export", str(result.run_dir), "--out", str(out)]
    assert caslie_main(args) == 2 and "--force" in capsys.readouterr().err
    assert caslie_main([*args, "--force"]) == 0
    assert not (out / "adapter_config.json").exists()  # replaced as a whole, nothing stale left
    merged = AutoModelForCausalLM.from_pretrained(out).eval()
    adapted, tokenizer = load_adapted(result.run_dir)
    base = load_model(Checkpoint.from_config(cfg.model), AutoModelForCausalLM).eval()
    m, a, b = (_logits(x, tokenizer) for x in (merged, adapted, base))
    assert torch.allclose(m, a, atol=1e-4)
    assert not torch.allclose(m, b, atol=1e-3)
