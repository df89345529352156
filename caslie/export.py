"""``caslie export``: a run's trained model as files other tools load.

A LoRA run exports either the adapter in PEFT's layout (``peft``: ``PeftModel.from_pretrained`` and
the Hub read it) or the adapter merged into its base model (``merged``: plain transformers). A
FashionCLIP run exports its fine-tuned CLIP model and task heads (:mod:`caslie.export_clip`).

Everything that can be checked without weights is checked first, cheapest first: the run folder,
the format, ``--out``, then the checkpoint. A base model that takes minutes to load is never loaded
only to fail on a typo.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard

from caslie.checkpoints import checkpoint_path, read_checkpoint
from caslie.config import Config, load_config
from caslie.errors import CheckpointError, ConfigError, MissingPathError
from caslie.export_clip import export_clip
from caslie.models.lora import build_lora_model
from caslie.pretrained import Checkpoint, model_config, resolve_pretrained, tokenizer_for

log = logging.getLogger(__name__)

FORMATS = ("merged", "peft")
"""``--format`` values; ``merged`` is the default (what ``caslie export`` always wrote)."""


def run_config(run_dir: Path) -> Config:
    """A run folder's saved config.

    Raises:
        MissingPathError: ``run_dir`` holds no ``config.yaml``.
    """
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise MissingPathError(
            f"{run_dir} is not a run folder ({path} does not exist); pass the folder train.py "
            f"wrote, runs/<run.name>"
        )
    return load_config(path)


def run_checkpoint(cfg: Config, run_dir: Path, which: str = "best") -> dict[str, Any]:
    """The run's checkpoint, checked against the config's model kind (no model is loaded).

    Raises:
        MissingPathError: no such checkpoint.
        CheckpointError: the checkpoint is unreadable or was not saved by this kind of model.
    """
    path = checkpoint_path(run_dir, which)
    ckpt = read_checkpoint(path)
    keys = list(ckpt["state_dict"])
    if cfg.model.kind == "fashionclip":
        fits = any(k.startswith("clip.") for k in keys)
    else:
        fits = any("lora_" in k for k in keys)
    if not fits:
        raise CheckpointError(
            f"{path} holds no {cfg.model.kind} weights (e.g. {keys[:2]}); it was saved by "
            f"another kind of run than {run_dir / 'config.yaml'} describes"
        )
    return ckpt


def _adapted(cfg: Config, ckpt: dict[str, Any]) -> tuple[Any, Any]:
    """The run's base model with the checkpoint's adapter loaded (a peft model), and its tokenizer."""
    tokenizer = tokenizer_for(cfg.model)
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


def load_adapted(run_dir: Path, which: str = "best") -> tuple[Any, Any]:
    """The run's base model with the checkpoint's adapter loaded (a peft model) and its tokenizer.

    The checkpoint is read (and refused) before the base model loads.
    """
    cfg = run_config(run_dir)
    return _adapted(cfg, run_checkpoint(cfg, run_dir, which))


def _check_out(out: Path, run_dir: Path, force: bool) -> None:
    """Refuse an ``--out`` that is a file, or a non-empty folder without ``force``; never one that
    holds the run or the current folder (``force`` replaces ``out`` as a whole)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder for the export")
    if not any(out.iterdir()):
        return
    if not force:
        raise ConfigError(
            f"--out {out} exists and is not empty; choose another folder, or add --force to "
            f"replace it"
        )
    for kept in (run_dir, Path.cwd()):
        if kept.resolve().is_relative_to(out.resolve()):
            raise ConfigError(f"--out {out} holds {kept.resolve()}; --force would delete it")


def _peft(cfg: Config, model: Any, tokenizer: Any, out: Path) -> None:
    """Save the adapter (``adapter_config.json``, ``adapter_model.safetensors``) and tokenizer.

    The adapter names its base model as the run's config does, not the folder that a ``tiny:``
    name or the hub cache resolved to. Embeddings are saved only when the run resized them (an
    added pad token): PEFT's default would also save the full ``lm_head`` whenever it is a LoRA
    target, and look the base model up on the hub to decide.
    """
    adapter = model.peft_config["default"]
    adapter.base_model_name_or_path = cfg.model.name_or_path
    adapter.revision = cfg.model.revision
    base_vocab = model_config(Checkpoint.from_config(cfg.model)).vocab_size
    resized = model.get_input_embeddings().weight.shape[0] != base_vocab
    model.save_pretrained(out, safe_serialization=True, save_embedding_layers=resized)
    tokenizer.save_pretrained(out)
    # PEFT's model card names the resolved folder (base_model and a base_model:adapter: tag); the
    # Hub takes only a hub id there, and a local path says nothing to anyone else.
    name = cfg.model.name_or_path
    hub_id = not (name.startswith("tiny:") or Path(name).exists())
    card = ModelCard.load(out / "README.md")
    tags = [t for t in card.data.tags or [] if not t.startswith("base_model:")]
    card.data.tags = tags + [f"base_model:adapter:{name}"] * hub_id
    card.data.base_model = name if hub_id else None
    card.save(out / "README.md")


def _write(cfg: Config, ckpt: dict[str, Any], fmt: str, out: Path) -> None:
    if cfg.model.kind == "fashionclip":
        export_clip(cfg, ckpt, out)
        return
    model, tokenizer = _adapted(cfg, ckpt)
    if fmt == "peft":
        _peft(cfg, model, tokenizer, out)
    else:
        model.merge_and_unload().save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)


def export_run(run_dir: Path, out: Path, fmt: str = "merged", which: str = "best",
               force: bool = False) -> Path:  # fmt: skip
    """Export a run's checkpoint to ``out`` (see the module docstring for the formats).

    The files are written to a sibling folder first and moved into place at the end, so a failed
    export leaves no half-written ``out`` (and with ``force`` the old one stays until then).

    Args:
        run_dir: The run folder (``config.yaml``, ``checkpoints/``).
        out: The folder to write.
        fmt: ``merged`` or ``peft`` (LoRA runs; a FashionCLIP run takes ``merged`` only).
        which: ``best``, ``last`` or a checkpoint file.
        force: Replace a non-empty ``out``.

    Returns:
        ``out``.

    Raises:
        CaslieError: any of the checks above fails (nothing is written then).
    """
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    cfg = run_config(run_dir)
    if cfg.model.kind == "fashionclip" and fmt == "peft":
        raise ConfigError(
            f"--format peft: {run_dir} is a FashionCLIP run (model.kind=fashionclip), which trains "
            f"the whole model and no adapter; use --format merged"
        )
    _check_out(out, run_dir, force)
    ckpt = run_checkpoint(cfg, run_dir, which)
    resolve_pretrained(cfg.model.name_or_path)  # a missing base model: one line, before any write
    out = out.resolve()
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        _write(cfg, ckpt, fmt, partial)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    log.info("%s export written to %s", fmt, out)
    return out
