#!/usr/bin/env python
"""python train.py --config configs/X.yaml [key=value | --key=value ...]

The composition root: config -> datamodule + module + callbacks + loggers + Trainer; fit, then test
the best checkpoint on every evaluation split. ``run(cfg)`` is the whole job, callable from tests;
``main()`` is the command line. Nothing in ``caslie/`` imports this file, ``datamodules/`` or
``callbacks/``; ``caslie`` commands that need a training run start this file as a process.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.data_manifest import DataManifest
from callbacks.eval_report import EvalReport
from callbacks.throughput import TokenThroughput
from caslie.checkpoints import AtomicCheckpointIO, checkpoint_path, resolve_ckpt
from caslie.config import Config, DataConfig, load_config, to_dict
from caslie.data.records import default_image_root
from caslie.errors import EXIT_USER_ERROR, CaslieError, ConfigError
from caslie.evaluation import PRIMARY_MEAN
from caslie.models.fashionclip import FashionCLIPModule
from caslie.models.lora import LoRAInstructModule
from caslie.pretrained import (
    Checkpoint,
    load_processor,
    model_config,
    precision_for,
    resolve_dtype,
    tokenizer_for,
)
from caslie.run_dir import AUTO_NAME, auto_run_name, resolve_run_name, save_config, wandb_run_id
from datamodules.base import CaslieDataModule
from datamodules.clip import CLIPDataModule
from datamodules.mmec import MMECDataModule

log = logging.getLogger("train")

BEST_MONITOR = f"val/{PRIMARY_MEAN}"
"""What the best checkpoint maximises when val is scored by generation (W&B sweeps optimise it)."""


@dataclass
class RunResult:
    """What a run produced.

    Attributes:
        run_dir: The run folder.
        data_manifest: Rows per task and split, skips, trimmed examples, caption used %.
        metrics: ``{split: {task: metrics}}`` of the final test, on the best checkpoint.
        best_checkpoint: The checkpoint tested (empty when there was no validation).
        table: The per-task table printed at the end.
    """

    run_dir: Path
    data_manifest: dict[str, Any]
    metrics: dict[str, Any] = field(default_factory=dict)
    best_checkpoint: str = ""
    table: str = ""


def tiny_model_defaults(cfg: Config) -> list[str]:
    """A ``tiny:`` model is a local, offline run: point its hub-only settings at local ones.

    The default hub dataset becomes the shipped sample and W&B ``online`` becomes ``offline``. The
    changes are returned (and logged by :func:`run`), and the saved config shows them.
    """
    notes: list[str] = []
    if not cfg.model.name_or_path.startswith("tiny:"):
        return notes
    if cfg.data.source == DataConfig.source:
        cfg.data.source = "sample"
        notes.append(
            f"data.source={DataConfig.source} -> sample (a tiny model runs on the shipped sample)"
        )
    if cfg.logger.wandb.mode == "online":
        cfg.logger.wandb.mode = "offline"
        notes.append("logger.wandb.mode=online -> offline (a tiny model runs offline)")
    return notes


def build_data_and_module(
    cfg: Config, run_dir: Path, adapter: bool = True
) -> tuple[CaslieDataModule, L.LightningModule]:
    """The datamodule and LightningModule that ``model.kind`` names (nothing is loaded yet but the
    tokenizer or processor: the data build runs in ``prepare_data``, the weights in
    ``configure_model``)."""
    if cfg.model.kind == "fashionclip":
        ckpt = Checkpoint.from_config(cfg.model, what="CLIP model")
        clip_config = model_config(ckpt)
        if clip_config.model_type != "clip":
            raise ConfigError(
                f"model.kind=fashionclip needs a CLIP checkpoint; model.name_or_path "
                f"'{cfg.model.name_or_path}' is a {clip_config.model_type} model"
            )
        processor = load_processor(ckpt)
        max_tokens = clip_config.text_config.max_position_embeddings
        dm: CaslieDataModule = CLIPDataModule(
            cfg.data, processor.tokenizer, processor.image_processor, cfg.optim.micro_batch_size,
            cfg.optim.eval_batch_size, cfg.run.seed, max_tokens,
        )  # fmt: skip
        return dm, FashionCLIPModule(cfg)
    tokenizer = tokenizer_for(cfg.model)
    context = getattr(
        model_config(Checkpoint.from_config(cfg.model)), "max_position_embeddings", None
    )
    dm = MMECDataModule(
        cfg.data, tokenizer, cfg.optim.micro_batch_size, cfg.optim.eval_batch_size, cfg.run.seed,
        generate_on_val=generates_on_val(cfg), context_length=context,
    )  # fmt: skip
    return dm, LoRAInstructModule(cfg, tokenizer, run_dir, adapter=adapter)


def generates_on_val(cfg: Config) -> bool:
    """Whether validation scores predictions (FashionCLIP always; LoRA with ``eval.generate_on_val``)."""
    if "val" not in cfg.data.eval_splits:
        return False
    return cfg.model.kind == "fashionclip" or cfg.eval.generate_on_val


def build_trainer(cfg: Config, run_dir: Path, loggers: list, callbacks: list) -> L.Trainer:
    """The Lightning Trainer for a run config."""
    t = cfg.trainer
    precision = (
        t.precision if t.precision != "auto" else precision_for(resolve_dtype(cfg.model.dtype))
    )
    optional = {
        k: v
        for k, v in {
            "val_check_interval": t.val_check_interval,
            "limit_train_batches": t.limit_train_batches,
            "limit_val_batches": t.limit_val_batches,
        }.items()  # fmt: skip
        if v is not None
    }
    try:
        return L.Trainer(
            accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
            precision=precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
            accumulate_grad_batches=cfg.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
            log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=t.num_sanity_val_steps,
            enable_progress_bar=t.enable_progress_bar, use_distributed_sampler=False,
            default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks,
            plugins=[AtomicCheckpointIO()], **optional,
        )  # fmt: skip
    except (ValueError, MisconfigurationException) as err:  # Lightning's own checks of trainer.*
        raise ConfigError(f"the trainer.* settings do not work here: {err}") from None


def _wandb_logger(cfg: Config, run_dir: Path, resuming: bool) -> WandbLogger | None:
    wb = cfg.logger.wandb
    if wb.mode == "disabled":
        return None
    return WandbLogger(
        name=cfg.run.name, project=wb.project, entity=wb.entity, group=wb.group, tags=list(wb.tags),
        save_dir=str(run_dir), id=wandb_run_id(run_dir, resuming), resume="allow", mode=wb.mode,
        config=to_dict(cfg),
    )  # fmt: skip


def _finish_wandb(logger: WandbLogger | None, trainer: L.Trainer, exit_code: int) -> None:
    """Close this process's W&B run (a crashed one too, so a retry in the same process starts clean)."""
    if logger is not None and trainer.is_global_zero and logger._experiment is not None:
        logger.experiment.finish(exit_code=exit_code)


def _checkpoint_callbacks(cfg: Config, run_dir: Path) -> tuple[ModelCheckpoint | None, list]:
    best = None
    if "val" in cfg.data.eval_splits:
        by_loss = cfg.eval.select == "loss" or not generates_on_val(cfg)
        monitor, mode = ("val/loss", "min") if by_loss else (BEST_MONITOR, "max")
        best = ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
            save_top_k=1, enable_version_counter=False,
        )  # fmt: skip
    last = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=0, save_last=True,
                           every_n_train_steps=cfg.trainer.checkpoint_every_n_steps)  # fmt: skip
    return best, [c for c in (best, last) if c is not None]


def run(cfg: Config, callbacks: list | None = None) -> RunResult:
    """Fit the configured model (``model.kind``: ``lora`` or ``fashionclip``) on the configured data,
    then test the best checkpoint on every eval split.

    Writes ``<run.output_dir>/<run.name>/``: ``config.yaml``, ``data_manifest.json``,
    ``checkpoints/{best,last}.ckpt`` (adapter weights plus training state), ``predictions/<split>.jsonl``,
    ``metrics.json``, and the W&B run (``wandb/``). ``trainer.ckpt_path=last`` resumes the run.

    Args:
        cfg: The run config.
        callbacks: Extra Lightning callbacks.
    """
    for note in tiny_model_defaults(cfg):
        log.warning(note)
    run_dir = Path(cfg.run.output_dir) / resolve_run_name(cfg)
    save_config(cfg, run_dir)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm, module = build_data_and_module(cfg, run_dir)

    ckpt = resolve_ckpt(cfg.trainer.ckpt_path, run_dir)
    # The module stores the sampler position in its checkpoints and the data module resumes from
    # it, which Lightning's check for stateful loaders cannot see.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
    wandb_logger = _wandb_logger(cfg, run_dir, resuming=ckpt is not None)
    loggers: list = [CSVLogger(str(run_dir), name="csv", version="")]
    if wandb_logger is not None:
        loggers.append(wandb_logger)
        module.wandb_run_id = wandb_logger._id
    best_cb, checkpoints = _checkpoint_callbacks(cfg, run_dir)
    image_root = (
        Path(cfg.data.image_root) if cfg.data.image_root else default_image_root(cfg.data.source)
    )
    report = EvalReport(run_dir, image_root, cfg.logger.wandb.log_predictions)
    trainer = build_trainer(
        cfg,
        run_dir,
        loggers,
        [*checkpoints, DataManifest(run_dir), TokenThroughput(), report, *(callbacks or [])],
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
        best = best_cb.best_model_path if best_cb is not None else ""
        trainer.test(module, datamodule=dm, ckpt_path=best or None, weights_only=True)
    except BaseException:
        _finish_wandb(wandb_logger, trainer, exit_code=1)
        raise
    _finish_wandb(wandb_logger, trainer, exit_code=0)
    metrics = module.eval_results.get("metrics", {})
    return RunResult(run_dir, dm.manifest, metrics, best, report.table)


def predict(cfg: Config, adapter_run: Path | None = None, which: str = "best") -> RunResult:
    """Evaluation only: the configured model (a released checkpoint such as ``NingLab/CASLIE-M``), or
    its base plus the adapter of a training run, tested on every evaluation split with the same
    data, fusion, prompts, generation, predictions and ``metrics.json`` as a training run's test.

    Writes ``<run.output_dir>/<run.name>/`` (with ``adapter_run``: ``<adapter_run>/predict/``).

    Args:
        cfg: The run config (for ``adapter_run``, the run's own config plus any overrides).
        adapter_run: A training run folder whose adapter is loaded.
        which: The run's checkpoint: ``best``, ``last`` or a file.
    """
    if adapter_run is not None:
        ckpt: str | None = str(checkpoint_path(adapter_run, which))
        run_dir = adapter_run / "predict"
    else:
        ckpt = None
        run_dir = Path(cfg.run.output_dir) / resolve_run_name(cfg)
    for note in tiny_model_defaults(cfg):
        log.warning(note)
    save_config(cfg, run_dir, allow_change=True)  # a re-run replaces the last prediction
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm, module = build_data_and_module(cfg, run_dir, adapter=adapter_run is not None)
    image_root = (
        Path(cfg.data.image_root) if cfg.data.image_root else default_image_root(cfg.data.source)
    )
    report = EvalReport(run_dir, image_root, 0)
    loggers = [CSVLogger(str(run_dir), name="csv", version="")]
    trainer = build_trainer(cfg, run_dir, loggers, [DataManifest(run_dir), report])
    trainer.test(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    metrics = module.eval_results.get("metrics", {})
    return RunResult(run_dir, dm.manifest, metrics, ckpt or "", report.table)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``--config``, ``--resume`` and dotted overrides in any order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, help="YAML config (its base: files are merged first)"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run from its newest checkpoint (same as trainer.ckpt_path=last)",
    )
    parser.add_argument("--predict", action="store_true",
                        help="evaluation only: test the configured model (see caslie predict)")  # fmt: skip
    parser.add_argument(
        "--adapter-run", type=Path, help="with --predict: a run whose adapter is tested"
    )
    parser.add_argument(
        "--checkpoint", default="best", help="with --adapter-run: best, last or a file"
    )
    args, overrides = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_config(args.config, overrides + ["trainer.ckpt_path=last"] * args.resume)
        if cfg.run.name == AUTO_NAME:
            cfg.run.name = auto_run_name(args.config, overrides)
        result = predict(cfg, args.adapter_run, args.checkpoint) if args.predict else run(cfg)
    except CaslieError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    print(f"\nrun folder: {result.run_dir}")
    print(f"tested checkpoint: {result.best_checkpoint or '(final weights)'}")
    manifest = result.data_manifest
    print(json.dumps({"caption_used_pct": manifest.get("caption_used_pct", {})}))
    for key, what in (("trimmed", "training examples trimmed to data.max_length"),
                      ("skipped_too_long", "examples skipped as too long")):  # fmt: skip
        if manifest.get(key):
            print(f"{what}: {json.dumps(manifest[key])}")
    print(result.table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
