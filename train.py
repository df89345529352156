#!/usr/bin/env python
"""python train.py --config configs/X.yaml [key=value | --key=value ...]

The composition root: config -> datamodule + module + callbacks + loggers + Trainer; fit, then test
the best checkpoint on every evaluation split. ``run(cfg)`` is the whole job, callable from tests;
``main()`` is the command line. Nothing in ``caslie/`` imports this file, ``datamodules/`` or
``callbacks/``; ``caslie`` commands that need a training run start this file as a process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from callbacks.data_manifest import DataManifest
from callbacks.eval_report import EvalReport
from callbacks.progress_lines import ProgressLines
from callbacks.resume_point import ResumePoint
from callbacks.throughput import TokenThroughput
from caslie.checkpoints import AtomicCheckpointIO, checkpoint_path, resolve_ckpt
from caslie.cluster import in_slurm_step, requeue
from caslie.config import Config, DataConfig, load_config, split_argv, to_dict
from caslie.config_print import add_config_flags
from caslie.console import setup_logging
from caslie.csv_log import RunCSVLogger
from caslie.data.sources import default_image_root
from caslie.errors import EXIT_USER_ERROR, CaslieError, ConfigError
from caslie.evaluation import PRIMARY_MEAN
from caslie.images import ImageLimits
from caslie.models.fashionclip import FashionCLIPModule
from caslie.models.lora import LoRAInstructModule
from caslie.pretrained import (
    Checkpoint,
    load_processor,
    model_config,
    precision_for,
    repeated_layers,
    resolve_dtype,
    tokenizer_for,
)
from caslie.run_dir import (
    AUTO_NAME,
    RunFinished,
    auto_run_name,
    is_rank_zero,
    mark_finished,
    resolve_run_name,
    run_identity,
    save_config,
    start_plan,
    wandb_run_id,
)
from caslie.run_lock import RunLock
from caslie.signals import StopRequested
from caslie.strategy import build_strategy
from caslie.validate import config_flags
from caslie.wandb_staging import staging_in
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


def show_bar(cfg: Config) -> bool:
    """A progress bar on a terminal; in a log file (SLURM ``.out``, a pipe) plain lines instead."""
    return cfg.trainer.enable_progress_bar and sys.stderr.isatty()


def build_trainer(cfg: Config, run_dir: Path, loggers: list, callbacks: list) -> L.Trainer:
    """The Lightning Trainer for a run config.

    Inside ``srun`` the devices and nodes follow the SLURM allocation (``auto``), and Lightning's
    own SLURM signal handling is off: :class:`~callbacks.resume_point.ResumePoint` saves and
    requeues at a whole state instead of inside the signal handler.
    """
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
    plugins: list = [AtomicCheckpointIO()]
    if in_slurm_step():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    devices, num_nodes = cfg.allocation
    clip = None if t.strategy == "fsdp" else t.gradient_clip_val  # the module clips FSDP's
    if not show_bar(cfg) and t.enable_progress_bar:
        callbacks = [*callbacks, ProgressLines(t.log_every_n_steps)]
    try:
        return L.Trainer(
            accelerator=t.accelerator, devices=devices, num_nodes=num_nodes,
            strategy=build_strategy(t, lambda names: repeated_layers(
                Checkpoint.from_config(cfg.model),
                cfg.model.kind == "lora", names)),
            precision=precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
            accumulate_grad_batches=cfg.accumulate_grad_batches, gradient_clip_val=clip,
            log_every_n_steps=t.log_every_n_steps, num_sanity_val_steps=t.num_sanity_val_steps,
            enable_progress_bar=show_bar(cfg), enable_model_summary=is_rank_zero(),
            use_distributed_sampler=False, default_root_dir=str(run_dir), logger=loggers or False,
            callbacks=callbacks, plugins=plugins, **optional,
        )  # fmt: skip
    except (ValueError, MisconfigurationException) as err:  # Lightning's own checks of trainer.*
        raise ConfigError(f"the trainer.* settings do not work here: {err}") from None


def _own_best(best_cb: ModelCheckpoint | None) -> str:
    """The best checkpoint of this run folder. A resumed checkpoint names its best by the absolute
    path it was saved under: after the run folder was moved or copied, that path is another
    folder's file, so the same name in this folder is used (or none, with a warning)."""
    if best_cb is None or not best_cb.best_model_path:
        return ""
    best, here = Path(best_cb.best_model_path), Path(best_cb.dirpath or "")
    if best.parent.resolve() == here.resolve():
        return str(best)
    moved = here / best.name
    if moved.is_file():
        return str(moved)
    log.warning("the best checkpoint %s is not in this run folder: testing the final weights", best)
    return ""


def _wandb_logger(cfg: Config, run_dir: Path, resuming: bool) -> WandbLogger | None:
    wb = cfg.logger.wandb
    if wb.mode == "disabled":
        return None
    logger = WandbLogger(
        name=cfg.run.name, project=wb.project, entity=wb.entity, group=wb.group, tags=list(wb.tags),
        save_dir=str(run_dir), id=wandb_run_id(run_dir, resuming), resume="allow", mode=wb.mode,
        config=to_dict(cfg),
    )  # fmt: skip
    # Lightning always passes wandb's deprecated `anonymous` setting, which makes wandb warn at
    # every start; leaving it out changes nothing else.
    logger._wandb_init.pop("anonymous", None)
    return logger


def _finish_wandb(logger: WandbLogger | None, trainer: L.Trainer, exit_code: int) -> None:
    """Close this process's W&B run (a crashed one too, so a retry in the same process starts clean).

    A SIGTERM from SLURM reaches W&B's service process too, which then exits at once; closing the
    run can only fail then, so it is done quietly (every metric is also in ``csv/metrics.csv``, and
    a resumed run continues the same W&B run).
    """
    if logger is None or not trainer.is_global_zero or logger._experiment is None:
        return
    if exit_code < 128:
        logger.experiment.finish(exit_code=exit_code)
        return
    import wandb

    quiet = [logging.getLogger(name) for name in ("asyncio", "wandb")]
    levels = [q.level for q in quiet]
    for q in quiet:
        q.setLevel(logging.CRITICAL)
    try:
        for close in (lambda: logger.experiment.finish(exit_code=exit_code),
                      lambda: wandb.teardown(exit_code)):  # fmt: skip
            with contextlib.suppress(Exception):
                close()
    finally:
        for q, level in zip(quiet, levels, strict=True):
            q.setLevel(level)


@contextlib.contextmanager
def _resuming_quietly(run_dir: Path, resuming: bool) -> Iterator[None]:
    """A resumed fit without Lightning's warning that this run's own checkpoint folder is not empty
    (it holds the checkpoint being resumed). Elsewhere, and for any other folder, it still shows:
    there it means another run's checkpoints could be overwritten."""
    with warnings.catch_warnings():
        if resuming:
            # ModelCheckpoint names its folder by its real path.
            folder = (run_dir / "checkpoints").resolve()
            warnings.filterwarnings(
                "ignore", message=re.escape(f"Checkpoint directory {folder} exists and is not empty"),
                module=r"lightning\.pytorch\.callbacks\.model_checkpoint",
            )  # fmt: skip
        yield


def _checkpoint_callbacks(cfg: Config, run_dir: Path) -> tuple[ModelCheckpoint | None, list]:
    """The best checkpoint (by ``val``, when validated) and the resume point ``last.ckpt``."""
    best = None
    if "val" in cfg.data.eval_splits:
        by_loss = cfg.eval.select == "loss" or not generates_on_val(cfg)
        monitor, mode = ("val/loss", "min") if by_loss else (BEST_MONITOR, "max")
        best = ModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="best", monitor=monitor, mode=mode,
            save_top_k=1, enable_version_counter=False,
        )  # fmt: skip
    last = ResumePoint(
        run_dir / "checkpoints" / "last.ckpt", every_n_steps=cfg.trainer.checkpoint_every_n_steps,
        every_minutes=cfg.trainer.checkpoint_every_minutes,
    )  # fmt: skip
    return best, [c for c in (best, last) if c is not None]


def run(cfg: Config, callbacks: list | None = None) -> RunResult:
    """Fit the configured model (``model.kind``: ``lora`` or ``fashionclip``) on the configured data,
    then test the best checkpoint on every eval split.

    Writes ``<run.output_dir>/<run.name>/``: ``config.yaml``, ``data_manifest.json``,
    ``checkpoints/{best,last}.ckpt`` (adapter weights plus training state), ``predictions/<split>.jsonl``,
    ``metrics.json``, ``status.json`` and the W&B run (``wandb/``). ``trainer.ckpt_path=last``
    (``--resume``) continues the run; a finished run is left alone unless ``run.overwrite``.

    Args:
        cfg: The run config.
        callbacks: Extra Lightning callbacks.

    Raises:
        RunFinished: the run has already finished (nothing was done).
        StopRequested: a stop signal arrived; the resume point is saved.
    """
    for note in tiny_model_defaults(cfg):
        log.warning(note)
    run_dir = Path(cfg.run.output_dir) / resolve_run_name(cfg)
    with RunLock(run_dir):  # one training process per run folder, until this run returns
        return _run_locked(cfg, run_dir, callbacks)


def _run_locked(cfg: Config, run_dir: Path, callbacks: list | None) -> RunResult:
    """:func:`run`, once this process holds the run folder's lock."""
    ckpt_request = start_plan(cfg, run_dir)
    L.seed_everything(cfg.run.seed, workers=True, verbose=False)
    dm, module = build_data_and_module(cfg, run_dir)

    ckpt = resolve_ckpt(ckpt_request, run_dir)
    best_cb, checkpoints = _checkpoint_callbacks(cfg, run_dir)
    image_root = (
        Path(cfg.data.image_root) if cfg.data.image_root else default_image_root(cfg.data.source)
    )
    limits = ImageLimits(size=cfg.data.image_size, allow_private=cfg.data.allow_private_urls)
    report = EvalReport(run_dir, image_root, cfg.logger.wandb.log_predictions, run_identity(cfg),
                        limits)  # fmt: skip
    loggers: list = [RunCSVLogger(str(run_dir), name="csv", version="")]
    trainer = build_trainer(
        cfg,
        run_dir,
        loggers,
        [*checkpoints, DataManifest(run_dir), TokenThroughput(), report, *(callbacks or [])],
    )
    # Everything that can refuse the config has run (start_plan compared it with the folder's):
    # only now does the run folder take it.
    save_config(cfg, run_dir, allow_change=True)
    wandb_logger = _wandb_logger(cfg, run_dir, resuming=ckpt is not None)
    if wandb_logger is not None:
        trainer.loggers = [*trainer.loggers, wandb_logger]
        module.wandb_run_id = wandb_logger._id
    exit_code = 1
    with staging_in(run_dir):  # W&B's copies of the logged tables stay with this run
        try:
            with _resuming_quietly(run_dir, resuming=ckpt is not None):
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
            best = _own_best(best_cb)
            # Not verbose: print_summary shows the project's own table (per task and split, with
            # means) instead of Lightning's one row per logged value.
            trainer.test(module, datamodule=dm, ckpt_path=best or None, weights_only=True,
                         verbose=False)  # fmt: skip
            exit_code = 0
        except StopRequested as stop:
            exit_code = stop.exit_code
            raise
        finally:
            _finish_wandb(wandb_logger, trainer, exit_code=exit_code)
    mark_finished(run_dir)
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
    report = EvalReport(run_dir, image_root, 0, run_identity(cfg))
    loggers = [RunCSVLogger(str(run_dir), name="csv", version="")]
    trainer = build_trainer(cfg, run_dir, loggers, [DataManifest(run_dir), report])
    trainer.test(module, datamodule=dm, ckpt_path=ckpt, weights_only=True, verbose=False)
    metrics = module.eval_results.get("metrics", {})
    return RunResult(run_dir, dm.manifest, metrics, ckpt or "", report.table)


def main(argv: list[str] | None = None) -> int:
    """The command line: ``--config``, ``--resume``, ``--print-config``, ``--validate`` and dotted
    overrides (``a.b=c``, ``--a.b=c``, ``--a.b c``) in any order."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", required=True, action="append",
        help="YAML config (its base: files are merged first); repeat it to merge fragments in "
        "order, e.g. --config configs/mistral_mv.yaml --config configs/strategy/fsdp.yaml",
    )  # fmt: skip
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
    add_config_flags(parser)
    # wandb hands its service's socket to child processes in this variable. A job inherits it
    # from whatever launched it (a notebook, a test session, the shell sbatch ran in) and would
    # join that process's service: a socket on another host, or one still holding the stream of
    # a job killed before it could finish, whose resumed run then fails with "run ID is in use".
    # This process owns its W&B run, so it starts its own service.
    os.environ.pop("WANDB_SERVICE", None)
    options, overrides = split_argv(sys.argv[1:] if argv is None else argv)
    args, unknown = parser.parse_known_args(options)
    overrides = unknown + overrides  # an unknown option gets the config's key suggestions
    setup_logging(is_rank_zero())
    try:
        cfg = load_config(args.config, overrides + ["trainer.ckpt_path=last"] * args.resume)
        if cfg.run.name == AUTO_NAME:
            cfg.run.name = auto_run_name(args.config, overrides)
        command = "predict" if args.predict else "train"
        code = config_flags(cfg, command, args.print_config, args.validate, "train.py")
        if code is not None:
            return code
        result = predict(cfg, args.adapter_run, args.checkpoint) if args.predict else run(cfg)
    except CaslieError as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return EXIT_USER_ERROR
    except RunFinished as done:
        if is_rank_zero():
            print(f"train.py: {done}", file=sys.stderr)
        return 0
    except StopRequested as stop:
        if is_rank_zero():  # the loggers are closed: now the job may be requeued (and killed)
            requeued = stop.requeue and requeue()
            then = "the SLURM job is requeued" if requeued else "rerun with --resume to continue"
            print(f"train.py: {stop}; {then}", file=sys.stderr, flush=True)
        return stop.exit_code
    if is_rank_zero():
        print_summary(result)
    return 0


def print_summary(result: RunResult) -> None:
    """The end of a run, on stdout: its folder, the tested checkpoint, the data notes and table."""
    print(f"\nrun folder: {result.run_dir}")
    print(f"tested checkpoint: {result.best_checkpoint or '(final weights)'}")
    manifest = result.data_manifest
    print(json.dumps({"caption_used_pct": manifest.get("caption_used_pct", {})}))
    for key, what in (("trimmed", "training examples trimmed to data.max_length"),
                      ("skipped_too_long", "examples skipped as too long")):  # fmt: skip
        if manifest.get(key):
            print(f"{what}: {json.dumps(manifest[key])}")
    print(result.table)


if __name__ == "__main__":
    sys.exit(main())
