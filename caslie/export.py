"""``caslie export``: merge a run's LoRA adapter into its base model and save a standalone model."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from caslie.checkpoints import checkpoint_path, read_checkpoint
from caslie.config import load_config
from caslie.errors import CheckpointError
from caslie.models.lora import build_lora_model
from caslie.pretrained import tokenizer_for

log = logging.getLogger(__name__)


def load_adapted(run_dir: Path, which: str = "best"):
    """The run's base model with the checkpoint's adapter loaded (a peft model) and its tokenizer."""
    cfg = load_config(run_dir / "config.yaml")
    tokenizer = tokenizer_for(cfg.model)
    ckpt = read_checkpoint(checkpoint_path(run_dir, which))  # before the (large) base model loads
    model_cfg = dataclasses.replace(cfg.model, gradient_checkpointing=False)
    model = build_lora_model(model_cfg, tokenizer)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}
    result = model.load_state_dict(state, strict=False)
    lora_missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or lora_missing:
        raise CheckpointError(
            f"the checkpoint does not fit {cfg.model.name_or_path} with this LoRA config "
            f"(unexpected: {result.unexpected_keys[:3]}, missing adapter weights: {lora_missing[:3]})"
        )
    return model.eval(), tokenizer


def export_merged(run_dir: Path, out: Path, which: str = "best") -> Path:
    """Merge the adapter into the base weights and save model and tokenizer to ``out``.

    Returns:
        ``out``, loadable with ``AutoModelForCausalLM.from_pretrained`` without peft.
    """
    model, tokenizer = load_adapted(run_dir, which)
    merged = model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("merged model written to %s", out)
    return out
