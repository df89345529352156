"""``run(cfg)``: the whole job behind ``python train.py`` (fit, then test), callable from tests."""

from __future__ import annotations

import json
import logging
import secrets
import string
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caslie.config import Config, save_config, to_dict

log = logging.getLogger(__name__)


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


def task_labels(splits: dict[str, Any]) -> dict[str, set[str]]:
    """Gold labels of each task over all splits (what generation may answer)."""
    labels: dict[str, set[str]] = defaultdict(set)
    for ds in splits.values():
        for task, target in zip(ds["task"], ds["target"], strict=True):
            labels[task].add(target)
    return dict(labels)


def _wandb_logger(cfg: Config, run_dir: Path, resuming: bool):
    from lightning.pytorch.loggers import WandbLogger
    from lightning.pytorch.utilities import rank_zero_only

    wb = cfg.logger.wandb
    if wb.mode == "disabled":
        return None
    id_file = run_dir / "wandb_run_id"
    if resuming and id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
        if rank_zero_only.rank == 0:  # only rank zero opens the W&B run
            id_file.write_text(run_id)
    return WandbLogger(
        name=cfg.run.name, project=wb.project, entity=wb.entity, group=wb.group, tags=list(wb.tags),
        save_dir=str(run_dir), id=run_id, resume="allow", mode=wb.mode, config=to_dict(cfg),
    )  # fmt: skip


def _finish_wandb(logger, trainer, exit_code: int) -> None:
    """Close this process's W&B run (a crashed one too, so a retry in the same process starts clean)."""
    if logger is not None and trainer.is_global_zero and logger._experiment is not None:
        logger.experiment.finish(exit_code=exit_code)


def build_trainer(cfg: Config, run_dir: Path, loggers: list, callbacks: list):
    """The Lightning Trainer for a run config."""
    import lightning as L

    from caslie.checkpoints import AtomicCheckpointIO
    from caslie.models.lora import precision_for, resolve_dtype

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
    return L.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
        accumulate_grad_batches=cfg.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=t.num_sanity_val_steps,
        enable_progress_bar=t.enable_progress_bar, use_distributed_sampler=False,
        default_root_dir=str(run_dir), logger=loggers or False, callbacks=callbacks,
        plugins=[AtomicCheckpointIO()], **optional,
    )  # fmt: skip


def tiny_model_defaults(cfg: Config) -> list[str]:
    """A ``tiny:`` model is a local, offline run: point its hub-only settings at local ones.

    The default hub dataset becomes the shipped sample and W&B ``online`` becomes ``offline``. The
    changes are returned (and logged by :func:`run`), and the saved config shows them.
    """
    from caslie.config import DataConfig

    notes = []
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


def _build_lora(cfg: Config, run_dir: Path) -> tuple:
    """Data module, LoRA module, data manifest and whether val is scored by generation."""
    import lightning as L

    from caslie.models.lora import LoRAInstructModule
    from caslie.offline import tokenizer_for
    from datamodules.mmec import MMECDataModule

    tokenizer = tokenizer_for(cfg.model)
    generate_on_val = cfg.eval.generate_on_val and "val" in cfg.data.eval_splits
    dm = MMECDataModule(
        cfg.data, tokenizer, cfg.optim.micro_batch_size, cfg.optim.eval_batch_size, cfg.run.seed,
        generate_on_val=generate_on_val,
    )  # fmt: skip
    dm.setup()
    dm.check_eval_splits()
    # Seed after the data build, so a cache hit and a cold build give the same adapter init.
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    module = LoRAInstructModule(cfg, tokenizer, task_labels(dm.splits), run_dir)
    return dm, module, dm.built.manifest, generate_on_val


def _build_fashionclip(cfg: Config, run_dir: Path) -> tuple:
    """Data module, FashionCLIP module, data manifest; val is always scored by prediction."""
    import lightning as L
    from transformers import AutoConfig, AutoProcessor

    from caslie.models.fashionclip import FashionCLIPModule
    from caslie.offline import resolve_pretrained
    from datamodules.clip import CLIPDataModule

    path = resolve_pretrained(cfg.model.name_or_path, "CLIP model")
    processor = AutoProcessor.from_pretrained(path, revision=cfg.model.revision)
    max_tokens = AutoConfig.from_pretrained(
        path, revision=cfg.model.revision
    ).text_config.max_position_embeddings
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm = CLIPDataModule(cfg.data, processor.tokenizer, processor.image_processor, cfg.optim.micro_batch_size,
                        cfg.optim.eval_batch_size, cfg.run.seed, max_tokens)  # fmt: skip
    module = FashionCLIPModule(cfg, dm.label_index)
    return dm, module, dm.manifest, True


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
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.utilities import rank_zero_only

    from callbacks.eval_report import EvalReport
    from callbacks.throughput import TokenThroughput
    from caslie.checkpoints import resolve_ckpt
    from caslie.data.records import default_image_root

    for note in tiny_model_defaults(cfg):
        log.warning(note)
    run_dir = Path(cfg.run.output_dir) / cfg.run.name
    save_config(cfg, run_dir)
    builder = _build_fashionclip if cfg.model.kind == "fashionclip" else _build_lora
    dm, module, manifest, generate_on_val = builder(cfg, run_dir)
    if rank_zero_only.rank == 0:
        (run_dir / "data_manifest.json").write_text(json.dumps(manifest, indent=2))

    ckpt = resolve_ckpt(cfg.trainer.ckpt_path, run_dir)
    # The module stores the sampler position in its checkpoints and the data module resumes from
    # it, which Lightning's check for stateful loaders cannot see.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before")
    wandb_logger = _wandb_logger(cfg, run_dir, resuming=ckpt is not None)
    loggers = [CSVLogger(str(run_dir), name="csv", version="")]
    if wandb_logger is not None:
        loggers.append(wandb_logger)
        module.wandb_run_id = wandb_logger._id
    checkpoints = []
    if "val" in cfg.data.eval_splits:
        monitor, mode = ("val/primary_mean", "max") if generate_on_val else ("val/loss", "min")
        checkpoints.append(ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
            save_top_k=1, enable_version_counter=False,
        ))  # fmt: skip
    last_cb = ModelCheckpoint(dirpath=run_dir / "checkpoints", save_top_k=0, save_last=True,
                              every_n_train_steps=cfg.trainer.checkpoint_every_n_steps)  # fmt: skip
    image_root = (
        Path(cfg.data.image_root) if cfg.data.image_root else default_image_root(cfg.data.source)
    )
    report = EvalReport(run_dir, image_root, cfg.logger.wandb.log_predictions, manifest)
    trainer = build_trainer(
        cfg,
        run_dir,
        loggers,
        [*checkpoints, last_cb, TokenThroughput(), report, *(callbacks or [])],
    )
    try:
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
        best = checkpoints[0].best_model_path if checkpoints else ""
        trainer.test(module, datamodule=dm, ckpt_path=best or None)
    except BaseException:
        _finish_wandb(wandb_logger, trainer, exit_code=1)
        raise
    _finish_wandb(wandb_logger, trainer, exit_code=0)
    return RunResult(run_dir, manifest, module.eval_results.get("metrics", {}), best, report.table)
