"""CaslieModule: what every caslie LightningModule shares, so a model family holds only what differs.

* **Data-dependent tables** (label tries, answer budgets, classification heads) are built in
  :meth:`bind` from the datamodule, which ``setup()`` hands over once its data is ready: the data
  build runs in the datamodule's ``prepare_data`` (once per node), never before the Trainer exists.
* **Evaluation**: steps add prediction rows (``id``, ``split``, ``task``, ``gold``, ``generated``...);
  at the end of an evaluation epoch the rows of every rank are gathered, each row counted once,
  parsed, scored and logged as ``<split>/<task>/<metric>`` and ``<split>/primary_mean``.
  ``self.eval_results`` then holds ``{"metrics", "rows"}`` (plus :meth:`eval_extras`).
* **Checkpoints** carry ``checkpoint["caslie"]``: the W&B run id, the exact-resume state (epoch,
  batches done, RNG) and :meth:`checkpoint_meta`.
* **Exact resume**: Lightning restores weights, optimiser, scheduler and loop counters. It cannot
  restore the data position (the batch samplers are built before the checkpoint is read), so the
  datamodule is told where the epoch stood (``resume_at``), and the saved RNG state is put back at
  the first training batch, where the uninterrupted run would be. A checkpoint saved during a
  validation (``rerun_validation``) holds the RNG state of that validation's start instead, put
  back when the validation runs again.
* **Optimisation**: AdamW with warm-up and cosine decay over the parameters that train.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.fsdp import FullyShardedDataParallel

from caslie.config import Config
from caslie.data.pipeline import changed_parts
from caslie.errors import CheckpointError
from caslie.evaluation import PRIMARY_MEAN, gather_rows, score_rows
from caslie.optim import adamw_with_schedule
from caslie.resume import rank_rng_state, rng_state, rng_states_of_all_ranks, set_rng_state

log = logging.getLogger(__name__)


class CaslieModule(L.LightningModule):
    """Base class of the LoRA and FashionCLIP modules.

    Args:
        cfg: The run config.
        run_dir: The run folder (where emergency checkpoints go), if any.
    """

    def __init__(self, cfg: Config, run_dir: Path | None = None):
        super().__init__()
        self.cfg, self.run_dir = cfg, run_dir
        self.eval_results: dict[str, Any] = {}
        self.wandb_run_id: str | None = None
        self._rows: list[dict[str, Any]] = []
        self._pending_rng: dict[str, Any] | None = None
        self._pending_val_rng: dict[str, Any] | None = None
        self._val_start_rng: dict[str, Any] | None = None
        self._bound = False

    # ------------------------------------------------------------------------------ data binding

    def setup(self, stage: str) -> None:
        """Bind the datamodule's tables once; seed before a fit builds the weights.

        The seed is set here, after the data build, so that a cold build and a cache hit leave the
        same random state for the weights that ``configure_model`` initialises next.
        """
        if not self._bound:
            self.bind(self.trainer.datamodule)
            self._bound = True
        if stage == "fit":
            L.seed_everything(self.cfg.run.seed, workers=True, verbose=False)

    def bind(self, datamodule: Any) -> None:
        """Build what depends on the data (label tables, heads); also callable without a Trainer."""
        self._bound = True

    # ------------------------------------------------------------------------------- checkpoints

    def checkpoint_meta(self) -> dict[str, Any]:
        """Model-specific entries for ``checkpoint["caslie"]``."""
        return {}

    def keep_in_checkpoint(self, state_dict: dict[str, Any]) -> dict[str, Any]:
        """The weights a checkpoint stores (all of them; adapter models keep only the adapter)."""
        return state_dict

    def check_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint that does not fit this model (raise :class:`CheckpointError`)."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = self.keep_in_checkpoint(checkpoint["state_dict"])
        rerun = bool(checkpoint.get("caslie", {}).get("rerun_validation"))  # set by ResumePoint
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        checkpoint["caslie"] = (
            self.resume_state(rerun)
            | {
                "rerun_validation": rerun,
                "wandb_run_id": self.wandb_run_id,
                "data": getattr(datamodule, "data_fingerprint", {}),
            }  # fmt: skip
            | self.checkpoint_meta()
        )

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        meta = checkpoint.get("caslie", {})
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self.check_same_data(meta.get("data") or {})
        self.wandb_run_id = meta.get("wandb_run_id")
        self.restore_resume_state(meta)

    def check_same_data(self, saved: dict[str, str]) -> None:
        """Refuse to resume training on data other than the checkpoint's, unless
        ``data.allow_changed`` (then say what changed and go on).

        Raises:
            CheckpointError: naming what changed (rows, caches, settings or tokenizer).
        """
        now = getattr(self.trainer.datamodule, "data_fingerprint", {})
        changed = changed_parts(saved, now) if saved and now else []
        if not changed:
            return
        what = ", ".join(changed)
        if self.cfg.data.allow_changed:
            log.warning("resuming on changed data (%s), as data.allow_changed asks", what)
            return
        raise CheckpointError(
            f"the data changed since this run's checkpoint was saved ({what}); resuming would "
            f"continue on other data. Restore it, start over with run.overwrite=true, or resume "
            f"anyway with --resume data.allow_changed=true"
        )

    # ------------------------------------------------------------------------------ exact resume

    def resume_state(self, rerun_validation: bool = False) -> dict[str, Any]:
        """Where training stands: epoch, batches done in it, RNG state (with ``rerun_validation``:
        the state at the start of the running validation, which the resumed run repeats)."""
        progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
        own = self._val_start_rng if rerun_validation and self._val_start_rng else rng_state()
        rng = rng_states_of_all_ranks(own)  # collective: every rank takes part in a save
        return {"epoch": self.trainer.current_epoch, "batches_done": progress.processed, "rng": rng}

    def restore_resume_state(self, meta: dict[str, Any]) -> None:
        """Tell the datamodule where to start; keep the RNG state for the next training batch (or
        for the validation that runs again)."""
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if "batches_done" in meta and datamodule is not None:
            datamodule.resume_at(meta["epoch"], meta["batches_done"])
        rng = None
        if meta.get("rng"):
            rng, own = rank_rng_state(meta["rng"])
            if not own:
                log.warning(
                    "the checkpoint was saved by a job with another number of ranks: "
                    "this rank resumes with rank zero's random state (not exact)"
                )
        if meta.get("rerun_validation"):
            self._pending_val_rng = rng
        else:
            self._pending_rng = rng

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        rng, self._pending_rng = self._pending_rng, None
        if rng:
            set_rng_state(rng)

    def on_validation_start(self) -> None:
        if self.trainer.sanity_checking or self.trainer.state.fn != "fit":
            return
        rng, self._pending_val_rng = self._pending_val_rng, None
        if rng:
            set_rng_state(rng)
        self._val_start_rng = rng_state()

    # -------------------------------------------------------------------------------- evaluation

    def scores_val(self) -> bool:
        """Whether validation produces prediction rows to score (else only its loss counts)."""
        return True

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        """Keep this rank's prediction rows of the running evaluation epoch."""
        self._rows.extend(rows)

    def eval_extras(self) -> dict[str, Any]:
        """Entries added to ``eval_results`` after a test (counts a model keeps)."""
        return {}

    def on_validation_epoch_start(self) -> None:
        self._rows = []

    def on_test_epoch_start(self) -> None:
        self._rows = []

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking and self.scores_val():
            self.finish_eval()
        self._rows = []

    def on_test_epoch_end(self) -> None:
        self.finish_eval()
        self.eval_results |= self.eval_extras()
        self._rows = []

    def finish_eval(self) -> dict[str, Any]:
        """Gather rows over ranks, score them, log the metrics; every rank gets the same metrics
        (so checkpoint monitors agree). Returns ``{split: {task: metrics}}``."""
        rows = gather_rows(self._rows)
        metrics = score_rows(rows, self.cfg.eval.parser)
        self.eval_results = {"metrics": metrics, "rows": rows}
        # Every rank holds the same values, so the mean over ranks (sync_dist) changes nothing; it
        # tells Lightning that they are reduced, and costs one small collective per value.
        for split, per_task in metrics.items():
            for task, values in per_task.items():
                if task == PRIMARY_MEAN:
                    if values is not None:
                        self.log(f"{split}/{PRIMARY_MEAN}", float(values), add_dataloader_idx=False,
                                 sync_dist=True)  # fmt: skip
                    continue
                for name, value in values.items():
                    if isinstance(value, (int, float)) and name != "primary":
                        self.log(f"{split}/{task}/{name}", float(value), add_dataloader_idx=False,
                                 sync_dist=True)  # fmt: skip
        return metrics

    # ------------------------------------------------------------------------------ optimisation

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.parameters() if p.requires_grad]
        return adamw_with_schedule(
            params, self.cfg.optim, int(self.trainer.estimated_stepping_batches)
        )

    def configure_gradient_clipping(self, optimizer: Any, gradient_clip_val: Any = None,
                                    gradient_clip_algorithm: str | None = None) -> None:  # fmt: skip
        # Lightning cannot clip FSDP gradients by norm (the Trainer gets no clip value then); the
        # FSDP wrapper computes the norm over every shard, as one process would over the whole.
        clip = self.cfg.trainer.gradient_clip_val
        if clip and isinstance(self.trainer.model, FullyShardedDataParallel):
            self.trainer.model.clip_grad_norm_(clip)
            return
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, all) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in model.parameters())
